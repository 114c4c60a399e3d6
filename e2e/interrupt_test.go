package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/node"
)

// stageLeft lists the state root's staging directories (in /dev/shm and
// its tmp/).
func (h *host) stageLeft() []string {
	abs, _ := filepath.Abs(h.root)
	prefix := filepath.Base(cgroup.BaseFor("/", abs)) + "-"
	var out []string
	for _, dir := range []string{"/dev/shm", filepath.Join(h.root, "tmp")} {
		m, _ := filepath.Glob(filepath.Join(dir, prefix+"*"))
		out = append(out, m...)
	}
	return out
}

// pendingOps is how many crtree commands' recovery markers are left: a
// command that ended by itself, however it failed, leaves none.
func (h *host) pendingOps() int {
	hh, err := node.NewHost(h.root)
	if err != nil {
		h.t.Fatal(err)
	}
	return hh.PendingOps()
}

// interruptAt starts crtree with args in a process group of its own and
// sends SIGINT to the group after the given time, as a terminal's Ctrl-C
// does (CRIU, in a group of its own, must not get it), and returns its
// exit status (-1 if a signal killed it) and stderr.
func (h *host) interruptAt(after time.Duration, args ...string) (int, string) {
	h.t.Helper()
	cmd := h.cmd(args...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	time.Sleep(after)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	cmd.Wait()
	return cmd.ProcessState.ExitCode(), errb.String()
}

// TestInterruptDump sends SIGINT to crtree dump at several moments: it
// undoes what it did by itself before it exits (status 130, the reason
// on stderr, no recovery marker left for others to act on), the workload
// runs on, unfrozen, and nothing stands in the output directory.
func TestInterruptDump(t *testing.T) {
	h := newHost(t)
	h.startHog("/victim", 256)
	h.must("run", "/victim/child", "--", "sh", "-c", "while :; do echo tick; sleep 0.1; done")
	out := filepath.Join(t.TempDir(), "out")
	os.MkdirAll(out, 0o755)
	archive := filepath.Join(out, "v.crtree")
	interrupted := 0
	for _, after := range []time.Duration{30 * time.Millisecond, 150 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond} {
		code, stderr := h.interruptAt(after, "dump", "/victim", "-o", archive)
		if des, _ := os.ReadDir(out); code == -1 && len(h.frozen()) == 0 && h.pendingOps() == 0 && len(des) == 0 {
			// The signal came before crtree handled signals (it starts in
			// a few milliseconds): it did nothing.
			t.Logf("dump killed by SIGINT after %v, before it began", after)
			continue
		}
		if code == 0 {
			// Done before the signal: restore for the next round.
			t.Logf("dump ended within %v", after)
			h.must("restore", "--keep-binds", archive)
			os.Remove(archive)
			continue
		}
		interrupted++
		if code != 130 || !strings.Contains(stderr, "interrupted by SIGINT") || !strings.Contains(stderr, "nothing was dumped") {
			t.Fatalf("interrupted after %v: status %d, stderr %q; want 130 and why", after, code, stderr)
		}
		if n := h.pendingOps(); n != 0 {
			t.Fatalf("interrupted after %v: %d recovery markers left: the dump did not undo by itself", after, n)
		}
		if f := h.frozen(); len(f) > 0 {
			t.Fatalf("interrupted after %v: left frozen: %v", after, f)
		}
		ls := h.ls()
		if ls["/victim"].State != "running" || ls["/victim/child"].State != "running" {
			t.Fatalf("interrupted after %v: nodes %+v", after, ls)
		}
		if des, _ := os.ReadDir(out); len(des) != 0 {
			t.Fatalf("interrupted after %v: left %v in the output directory", after, des)
		}
		h.must("exec", "/victim/child", "--", "true")
	}
	if interrupted == 0 {
		t.Fatal("every dump ended before its SIGINT: nothing was tested")
	}
	h.must("dump", "--leave-running", "/victim", "-o", archive)
}

// TestInterruptRestore sends SIGINT to crtree restore at several
// moments: an interrupted restore removes every node it created before
// it exits (status 130), leaving no marker, node storage or cgroup.
func TestInterruptRestore(t *testing.T) {
	h := newHost(t)
	h.startHog("/src", 256)
	h.must("run", "/src/a", "--", "sleep", "1e5")
	archive := filepath.Join(t.TempDir(), "src.crtree")
	h.must("dump", "/src", "-o", archive)
	interrupted := 0
	// Every 100 ms of a restore, CRIU's part included.
	for after := 30 * time.Millisecond; after < 1500*time.Millisecond; after += 100 * time.Millisecond {
		code, stderr := h.interruptAt(after, "restore", "--keep-binds", archive, "--name", "r")
		ls := h.ls()
		if _, made := ls["/r"]; code == -1 && !made {
			// The signal came before crtree handled signals (it starts in
			// a few milliseconds): it did nothing.
			t.Logf("restore killed by SIGINT after %v, before it began", after)
			continue
		}
		if code == 0 {
			t.Logf("restore ended within %v", after)
			if ls["/r"].State != "running" || ls["/r/a"].State != "running" {
				t.Fatalf("restore finished but left %v", ls)
			}
			h.must("rm", "-r", "-f", "/r")
			continue
		}
		interrupted++
		if code != 130 || !strings.Contains(stderr, "interrupted by SIGINT") {
			t.Fatalf("interrupted after %v: status %d, stderr %q; want 130 and why", after, code, stderr)
		}
		for p := range ls {
			if strings.HasPrefix(p, "/r") {
				t.Fatalf("interrupted after %v: left %s (%v)", after, p, ls)
			}
		}
		if n := h.pendingOps(); n != 0 {
			t.Fatalf("interrupted after %v: %d recovery markers left", after, n)
		}
		des, _ := os.ReadDir(filepath.Join(h.root, "nodes"))
		if len(des) != 0 {
			t.Fatalf("interrupted after %v: node storage left: %v", after, des)
		}
	}
	if interrupted == 0 {
		t.Fatal("every restore ended before its SIGINT: nothing was tested")
	}
	// An interrupted restore removes its staging directory in the
	// background (__rmstage): give the last one its time, then gc must
	// find nothing of it.
	if !poll(10*time.Second, 50*time.Millisecond, func() bool { return len(h.stageLeft()) == 0 }) {
		t.Errorf("staging directories never removed: %v", h.stageLeft())
	}
	// gc may remove the state root's own cgroup, empty now; nothing else.
	for _, line := range strings.Split(strings.TrimSpace(h.must("gc")), "\n") {
		if line == "nothing to remove" {
			continue
		}
		if strings.Contains(line, "/nodes/") || strings.Contains(line, "leftovers") || strings.Count(filepath.Base(line), "-") != 1 {
			t.Errorf("gc found leftovers: %s", line)
		}
	}
}

// TestInterruptDumpToPipe is Ctrl-C on "crtree dump -o - | reader": the
// reader dies of it too, and crtree, whose writes then fail, must not die
// of SIGPIPE but undo what it did, as for the signal itself.
func TestInterruptDumpToPipe(t *testing.T) {
	h := newHost(t)
	h.startHog("/p", 256)
	interrupted := 0
	// Not --leave-running: its writes come once CRIU is done, after the
	// signal has cancelled them, so none would meet the closed pipe.
	for _, after := range []time.Duration{150 * time.Millisecond, 300 * time.Millisecond, 450 * time.Millisecond, 700 * time.Millisecond} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		dump := h.cmd("dump", "/p", "-o", "-")
		dump.Stdout = w
		var errb bytes.Buffer
		dump.Stderr = &errb
		dump.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := dump.Start(); err != nil {
			t.Fatal(err)
		}
		reader := exec.Command("cat")
		reader.Stdin = r
		reader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: dump.Process.Pid}
		if err := reader.Start(); err != nil {
			t.Fatal(err)
		}
		r.Close()
		w.Close()
		time.Sleep(after)
		syscall.Kill(-dump.Process.Pid, syscall.SIGINT)
		dump.Wait()
		reader.Wait()
		code := dump.ProcessState.ExitCode()
		if code == 0 {
			// Done before the signal (the node is gone): a new one for
			// the next round.
			t.Logf("after %v: the dump had ended", after)
			h.startHog("/p", 256)
			continue
		}
		interrupted++
		if code == -1 {
			t.Fatalf("after %v: crtree was killed by %v; stderr %q", after, dump.ProcessState.Sys(), errb.String())
		}
		if n := h.pendingOps(); n != 0 {
			t.Fatalf("after %v: %d recovery markers left", after, n)
		}
		if f := h.frozen(); len(f) > 0 {
			t.Fatalf("after %v: left frozen: %v", after, f)
		}
		if st := h.ls()["/p"].State; st != "running" {
			t.Fatalf("after %v: /p is %q", after, st)
		}
	}
	if interrupted == 0 {
		t.Fatal("every dump ended before its SIGINT: nothing was tested")
	}
}
