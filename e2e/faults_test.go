package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crtree/crtree/internal/node"
	"github.com/crtree/crtree/internal/testutil"
)

// host is one state root driven through the crtree binary.
type host struct {
	t    *testing.T
	root string
	// netns, if set, is the network namespace (/run/netns/NAME) crtree
	// runs in: a "host" of its own on this machine.
	netns string
}

func newHost(t *testing.T) *host {
	testutil.RequireE2E(t)
	h := &host{t: t, root: filepath.Join(t.TempDir(), "state")}
	t.Cleanup(func() { teardown(t, h.root) })
	return h
}

func (h *host) cmd(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(binDir, "crtree"), args...)
	if h.netns != "" {
		cmd = exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.netns, "--", filepath.Join(binDir, "crtree")}, args...)...)
	}
	cmd.Env = append(os.Environ(), "CRTREE_ROOT="+h.root)
	return cmd
}

// run runs crtree and returns stdout and the error, with stderr in it.
func (h *host) run(args ...string) (string, error) {
	cmd := h.cmd(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("crtree %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), err
}

func (h *host) must(args ...string) string {
	h.t.Helper()
	out, err := h.run(args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

type entry struct {
	ID         string `json:"id"`
	Path       string `json:"path"`
	State      string `json:"state"`
	Pid        int    `json:"pid"`
	Supervisor int    `json:"supervisorPid"`
}

func (h *host) ls() map[string]entry {
	h.t.Helper()
	var es []entry
	if err := json.Unmarshal([]byte(h.must("ls", "-r", "--json")), &es); err != nil {
		h.t.Fatal(err)
	}
	m := map[string]entry{}
	for _, e := range es {
		m[e.Path] = e
	}
	return m
}

// startHog starts a node holding mib MiB of random memory and waits for it.
func (h *host) startHog(path string, mib int, hogArgs ...string) {
	h.t.Helper()
	args := []string{"run", "--bind", filepath.Join(binDir, "memhog") + ":/memhog:ro", path, "--", "/memhog", "-mib", fmt.Sprint(mib)}
	h.must(append(args, hogArgs...)...)
	for i := 0; i < 300; i++ {
		if out, _ := h.run("logs", path); strings.Contains(out, "ready") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatalf("%s never got ready", path)
}

// frozen reports whether any cgroup of the state root is asked to freeze.
func (h *host) frozen() []string {
	hh, err := node.NewHost(h.root)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	filepath.Walk(hh.CgroupBase.Path(), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Name() == "cgroup.freeze" {
			if data, _ := os.ReadFile(p); strings.HasPrefix(string(data), "1") {
				out = append(out, filepath.Dir(p))
			}
		}
		return nil
	})
	return out
}

// waitHelpersGone waits until no process that a crtree command recorded
// as its helper (CRIU, which outlives a killed crtree to finish cleanly)
// runs, and returns those still running after limit.
func (h *host) waitHelpersGone(limit time.Duration) []node.Proc {
	var running []node.Proc
	poll(limit, 50*time.Millisecond, func() bool {
		running = nil
		markers, _ := filepath.Glob(filepath.Join(h.root, "ops", "*.json"))
		for _, m := range markers {
			var op node.Op
			if data, err := os.ReadFile(m); err != nil || json.Unmarshal(data, &op) != nil {
				continue
			}
			for _, p := range op.Helpers {
				if node.Alive(p.Pid, p.Start) {
					running = append(running, p)
				}
			}
		}
		return len(running) == 0
	})
	return running
}

// TestKillDuringDump kills crtree dump at several moments: the workload
// never stays frozen (the supervisor thaws it by itself), it keeps
// running, and no archive or partial archive is left.
func TestKillDuringDump(t *testing.T) {
	h := newHost(t)
	h.startHog("/victim", 256)
	h.must("run", "/victim/child", "--", "sh", "-c", "while :; do echo tick; sleep 0.1; done")
	out := filepath.Join(t.TempDir(), "out")
	os.MkdirAll(out, 0o755)
	for _, after := range []time.Duration{20 * time.Millisecond, 80 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		cmd := h.cmd("dump", "/victim", "-o", filepath.Join(out, "v.crtree"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// No condition to wait for: the moment of the kill, at several
		// points of the dump, is what is tested.
		time.Sleep(after)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if _, err := os.Stat(filepath.Join(out, "v.crtree")); err == nil {
			// Too late to interrupt: the archive was complete, so the nodes
			// were (being) removed, as they should. Restore for the next round.
			t.Logf("dump had committed its archive within %v; restoring for the next round", after)
			if _, ok := h.ls()["/victim"]; ok {
				h.must("rm", "-r", "-f", "/victim")
			}
			h.must("restore", "--keep-binds", filepath.Join(out, "v.crtree"))
			os.Remove(filepath.Join(out, "v.crtree"))
			continue
		}
		// No crtree command runs now: the supervisors must thaw by
		// themselves (CRIU, which outlives crtree to finish cleanly, may
		// freeze the node once more as it leaves; that is thawed too).
		// Logs are read from the host's files, which thaws nothing.
		logFile := filepath.Join(h.root, "nodes", h.ls()["/victim/child"].ID, "rootfs", ".crtree", "log")
		ticks := func() int { data, _ := os.ReadFile(logFile); return strings.Count(string(data), "tick") }
		deadline := time.Now().Add(15 * time.Second)
		before := ticks()
		for ticks() <= before+2 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if ticks() <= before+2 {
			t.Fatalf("killed after %v: the workload does not run within 15s (frozen: %v)", after, h.frozen())
		}
		// Once the CRIU of the killed dump has left (it may freeze the
		// node once more as it goes), the node ends up thawed, still
		// without any crtree command.
		if helpers := h.waitHelpersGone(30 * time.Second); len(helpers) > 0 {
			t.Fatalf("killed after %v: the dump's CRIU %v still runs after 30s", after, helpers)
		}
		if !poll(10*time.Second, 100*time.Millisecond, func() bool { return len(h.frozen()) == 0 }) {
			t.Fatalf("killed after %v: frozen again: %v", after, h.frozen())
		}
		ls := h.ls()
		if ls["/victim"].State != "running" || ls["/victim/child"].State != "running" {
			t.Fatalf("killed after %v: nodes %+v", after, ls)
		}
		des, _ := os.ReadDir(out)
		if len(des) != 0 {
			t.Fatalf("killed after %v: left %v in the output directory", after, des)
		}
	}
	// The dump still works afterwards.
	h.must("dump", "--leave-running", "/victim", "-o", filepath.Join(out, "v.crtree"))
}

// TestKillDuringRestore kills crtree restore at several moments: what it
// left is never shown as healthy, rm -r -f removes it, and gc finds
// nothing else.
func TestKillDuringRestore(t *testing.T) {
	h := newHost(t)
	h.startHog("/src", 128)
	h.startHog("/src/a", 64)
	h.must("run", "/src/a/b", "--", "sleep", "1e5")
	archive := filepath.Join(t.TempDir(), "src.crtree")
	h.must("dump", "/src", "-o", archive)
	for i, after := range []time.Duration{30 * time.Millisecond, 150 * time.Millisecond, 300 * time.Millisecond, 600 * time.Millisecond} {
		name := fmt.Sprintf("r%d", i)
		cmd := h.cmd("restore", "--keep-binds", archive, "--name", name)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// No condition to wait for: the moment of the kill, at several
		// points of the restore, is what is tested.
		time.Sleep(after)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		ls := h.ls()
		if cmd.ProcessState.Success() {
			for _, p := range []string{"/" + name, "/" + name + "/a", "/" + name + "/a/b"} {
				if ls[p].State != "running" {
					t.Fatalf("restore finished but %s is %q", p, ls[p].State)
				}
			}
			continue
		}
		// Killed before it was complete: every node it made is reported
		// incomplete. (Killed just after: all three run.)
		incomplete, running := 0, 0
		for p, e := range ls {
			if strings.HasPrefix(p, "/"+name) {
				switch e.State {
				case "incomplete":
					incomplete++
				case "running":
					running++
				default:
					t.Fatalf("killed after %v: %s is %q", after, p, e.State)
				}
			}
		}
		if incomplete > 0 && running > 0 || running > 0 && running != 3 {
			t.Fatalf("killed after %v: %d nodes incomplete, %d running: %v", after, incomplete, running, ls)
		}
		t.Logf("killed after %v: %d incomplete, %d running", after, incomplete, running)
		if _, ok := ls["/"+name]; ok {
			h.must("rm", "-r", "-f", "/"+name)
		}
	}
	gc := h.must("gc")
	if strings.Contains(gc, "/nodes/") {
		t.Errorf("gc found node storage left behind:\n%s", gc)
	}
}

// TestOutputDiskFull dumps into a full file system: a clear error, the
// workload untouched, nothing left in the directory.
func TestOutputDiskFull(t *testing.T) {
	h := newHost(t)
	h.startHog("/big", 64)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	_, err := h.run("dump", "/big", "-o", filepath.Join(dir, "big.crtree"))
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("dump to a full disk: %v", err)
	}
	if des, _ := os.ReadDir(dir); len(des) != 0 {
		t.Fatalf("left %v", des)
	}
	if h.ls()["/big"].State != "running" || len(h.frozen()) != 0 {
		t.Fatalf("workload not running after a failed dump")
	}
}

// TestReadOnlyStateRoot: every change is refused with a clear error, and
// running nodes are untouched.
func TestReadOnlyStateRoot(t *testing.T) {
	h := newHost(t)
	h.must("run", "/n", "--", "sleep", "1e5")
	if err := syscall.Mount(h.root, h.root, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(h.root, syscall.MNT_DETACH)
	if err := syscall.Mount("", h.root, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	_, err := h.run("run", "/m", "--", "sleep", "1e5")
	if err == nil || !strings.Contains(err.Error(), "read-only file system") {
		t.Fatalf("run on a read-only state root: %v", err)
	}
	if out := h.must("ls"); !strings.Contains(out, "/n ") {
		t.Fatalf("ls on a read-only state root:\n%s", out)
	}
	syscall.Unmount(h.root, syscall.MNT_DETACH)
	if h.ls()["/n"].State != "running" {
		t.Fatal("node not running")
	}
}

// TestCriuMissing: a clear error naming what to do, workload untouched.
func TestCriuMissing(t *testing.T) {
	h := newHost(t)
	h.must("run", "/n", "--", "sleep", "1e5")
	_, err := h.run("--criu", "/nonexistent/criu", "dump", "/n", "-o", filepath.Join(t.TempDir(), "x"))
	if err == nil || !strings.Contains(err.Error(), "make deps") {
		t.Fatalf("dump without CRIU: %v", err)
	}
	if h.ls()["/n"].State != "running" {
		t.Fatal("node not running")
	}
}
