package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
	"github.com/crtree/crtree/internal/treefs"
)

// treeServerLine is how a tree's server records that it mounted, with its
// PID, in the state root's logs/tree-mounts.log.
var treeServerLine = regexp.MustCompile(`\[(\d+)\]: \S+ \S+ mounted$`)

// treeServers returns the PIDs of the tree servers a state root's log
// names.
func treeServers(root string) []int {
	f, err := os.Open(filepath.Join(root, "logs", "tree-mounts.log"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := treeServerLine.FindStringSubmatch(sc.Text()); m != nil {
			pid, _ := strconv.Atoi(m[1])
			pids = append(pids, pid)
		}
	}
	return pids
}

// liveTreeServers returns those of pids still running within limit.
func liveTreeServers(pids []int, limit time.Duration) []int {
	deadline := time.Now().Add(limit)
	var live []int
	for _, pid := range pids {
		for running(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if running(pid) {
			live = append(live, pid)
		}
	}
	return live
}

// unmountTrees detaches every crtree tree mounted under dir (a test's work
// directory): their servers then end.
func unmountTrees(t logger, dir string) {
	ms, err := mountinfo.GetMounts(mountinfo.FSTypeFilter(treefs.FSType))
	if err != nil {
		t.Log("teardown:", err)
		return
	}
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, dir+"/") {
			if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil {
				t.Log("teardown: unmount", m.Mountpoint, err)
			}
		}
	}
}

// endTreeServers fails the test if a tree server of root outlives its
// mount (and its node) by more than 10 s, and kills it then.
func endTreeServers(t logger, root string) {
	live := liveTreeServers(treeServers(root), 10*time.Second)
	for _, pid := range live {
		unix.Kill(pid, unix.SIGKILL)
	}
	if len(live) > 0 {
		t.Fatal("teardown: tree servers left running: ", live)
	}
}

// serversgone: every tree server the state root's log names has ended
// (within 10 s).
func cmdServersgone(ts *testscript.TestScript, neg bool, args []string) {
	live := liveTreeServers(treeServers(ts.Getenv("CRTREE_ROOT")), 10*time.Second)
	if (len(live) == 0) == neg {
		ts.Fatalf("tree servers running: %v", live)
	}
}

// nodecgroup VAR PATH: set VAR to the cgroup directory of the node.
func cmdNodecgroup(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: nodecgroup VAR PATH")
	}
	h, err := node.NewHost(ts.Getenv("CRTREE_ROOT"))
	ts.Check(err)
	p, _, err := hier.ParsePath(args[1])
	ts.Check(err)
	err = h.Store.View(func(t *hier.Tree) error {
		n, err := t.Lookup(p)
		if err != nil {
			return err
		}
		ts.Setenv(args[0], h.Group(t, n).Path())
		return nil
	})
	ts.Check(err)
}

// mountTree mounts h's tree on a new directory; at cleanup, before the
// nodes are torn down, it is unmounted and its server must end.
func (h *host) mountTree() string {
	h.t.Helper()
	parent := h.t.TempDir()
	dir := filepath.Join(parent, "tree")
	if err := os.Mkdir(dir, 0o755); err != nil {
		h.t.Fatal(err)
	}
	h.must("mount", dir)
	h.t.Cleanup(func() {
		unmountTrees(h.t, parent)
		endTreeServers(h.t, h.root)
	})
	return dir
}

// nodeFiles are the files every node's directory holds on the host.
var nodeFiles = []string{".checkpoint", ".hostname", ".memory", ".pid", ".procs", ".state"}

// checkListing checks the output of ls -RA on a mounted tree: every node
// directory listed holds the node's files, and every one whose .state it
// can still read (the node may be removed meanwhile) is a made node:
// running or exited, never creating or incomplete. A directory removed
// between its parent's listing and its own (ls could not open it, or read
// nothing in it) is skipped. It returns how many node directories it saw.
func checkListing(t *testing.T, dir, out, stderr string) int {
	seen := 0
	for _, section := range strings.Split(out, "\n\n") {
		lines := strings.Split(strings.TrimSpace(section), "\n")
		head := strings.TrimSuffix(lines[0], ":")
		if head == dir || !strings.HasPrefix(head, dir+"/") || strings.Contains(stderr, "'"+head+"'") {
			continue
		}
		if len(lines) == 1 {
			// Nothing in it, not even its files: removed after ls opened
			// it (glibc's readdir takes the ENOENT of a removed
			// directory for its end).
			continue
		}
		seen++
		names := map[string]bool{}
		for _, l := range lines[1:] {
			names[l] = true
		}
		for _, f := range nodeFiles {
			if !names[f] {
				t.Errorf("%s listed without %s: %q", head, f, lines[1:])
			}
		}
		state, err := os.ReadFile(filepath.Join(head, ".state"))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("read %s/.state: %v", head, err)
			}
			continue
		}
		if s := strings.TrimSpace(string(state)); s != "running" && !strings.HasPrefix(s, "exited") {
			t.Errorf("%s listed as %q: a node not yet made (or left incomplete) is shown", head, s)
		}
	}
	return seen
}

// ls -R in a loop while nodes are created and removed, by crtree run and
// rm and by archives copied into the tree and removed with rm -rf, never
// shows a half-made node, never fails but for a directory removed between
// its listing and its reading, and the server lives on.
func TestTreeListWhileChanging(t *testing.T) {
	h := newHost(t)
	h.must("run", "/pool", "--", "sleep", "1e5")
	h.must("run", "/src", "--", "sleep", "1e5")
	h.must("run", "/src/child", "--", "sleep", "1e5")
	archive := filepath.Join(t.TempDir(), "src.crtree")
	h.must("dump", "/src", "-o", archive)
	dir := h.mountTree()

	stop := make(chan struct{})
	listed := make(chan [2]int)
	go func() {
		rounds, nodes := 0, 0
		defer func() { listed <- [2]int{rounds, nodes} }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var out, errb strings.Builder
			ls := exec.Command("ls", "-RA", dir)
			ls.Stdout, ls.Stderr = &out, &errb
			err := ls.Run()
			for _, l := range strings.Split(strings.TrimSpace(errb.String()), "\n") {
				if l != "" && !strings.HasSuffix(l, "No such file or directory") {
					t.Errorf("ls -RA: %v: %s", err, l)
				}
			}
			nodes += checkListing(t, dir, out.String(), errb.String())
			rounds++
		}
	}()
	for i := 0; i < 12; i++ {
		h.must("run", fmt.Sprintf("/pool/n%d", i), "--", "sleep", "1e5")
		h.must("run", fmt.Sprintf("/pool/n%d/c", i), "--", "sleep", "1e5")
		if i > 0 {
			h.must("rm", "-r", "-f", fmt.Sprintf("/pool/n%d", i-1))
		}
		if i%3 == 0 {
			if out, err := exec.Command("cp", archive, filepath.Join(dir, "pool")+"/").CombinedOutput(); err != nil {
				t.Fatalf("cp %s into the tree: %v: %s", archive, err, out)
			}
			if out, err := exec.Command("rm", "-rf", filepath.Join(dir, "pool", "src")).CombinedOutput(); err != nil {
				t.Fatalf("rm -rf pool/src: %v: %s", err, out)
			}
		}
	}
	close(stop)
	r := <-listed
	t.Logf("ls -RA ran %d times while the tree changed, %d node directories checked", r[0], r[1])
	if r[0] < 10 || r[1] == 0 {
		t.Fatalf("ls -RA ran %d times, saw %d nodes: not a check", r[0], r[1])
	}
	if out, err := exec.Command("ls", "-A", filepath.Join(dir, "pool")).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != strings.Join(append(nodeFiles, "n11"), "\n") {
		t.Fatalf("after the changes, ls pool: %v: %q", err, out)
	}
}

// Unmounting while a copy of .checkpoint is in progress: crtree umount
// refuses, saying why; umount -l detaches the tree, the copy completes to
// a verified archive, the server ends and the subtree runs on, held by
// nothing. A copy into the tree cut short (its writer killed) restores
// nothing and leaves nothing.
func TestTreeUnmountDuringCopy(t *testing.T) {
	h := newHost(t)
	h.startHog("/hog", 256)
	h.must("run", "/pool", "--", "sleep", "1e5")
	dir := h.mountTree()
	out := filepath.Join(t.TempDir(), "hog.crtree")
	cp := exec.Command("cp", filepath.Join(dir, "hog", ".checkpoint"), out)
	var cpErr strings.Builder
	cp.Stderr = &cpErr
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	if !poll(30*time.Second, 20*time.Millisecond, func() bool { return busy(h, "/hog") == "being dumped" }) {
		t.Fatal("the copy of .checkpoint never started a dump")
	}
	// stat does not wait for the dump: it returns while the dump runs,
	// with what has been written so far.
	if o, err := exec.Command("stat", "-c", "%s", filepath.Join(dir, "hog", ".checkpoint")).CombinedOutput(); err != nil {
		t.Fatalf("stat .checkpoint during the copy: %v: %s", err, o)
	}
	if b := busy(h, "/hog"); b != "being dumped" {
		t.Fatalf("stat of .checkpoint returned once the dump had ended (/hog held: %q), not while it ran", b)
	}
	if _, err := h.run("umount", dir); err == nil || !strings.Contains(err.Error(), "busy: a file or directory in it is open") {
		t.Fatalf("crtree umount during the copy: %v", err)
	}
	if o, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
		t.Fatalf("umount -l: %v: %s", err, o)
	}
	if err := cp.Wait(); err != nil {
		t.Fatalf("cp .checkpoint, detached meanwhile: %v: %s", err, cpErr.String())
	}
	h.must("inspect", "--verify", out)
	if live := liveTreeServers(treeServers(h.root), 10*time.Second); len(live) > 0 {
		t.Fatalf("tree server still running once detached and its file closed: %v", live)
	}
	if st := h.ls()["/hog"]; st.State != "running" || busy(h, "/hog") != "" {
		t.Fatalf("/hog after the copy: %+v, held %q", st, busy(h, "/hog"))
	}

	dir = h.mountTree()
	// A copy into the tree (of a node without binds, 48 MiB in its
	// /dev/shm): while its close waits for the restore, the file can be
	// looked at (stat returns while cp is still in close).
	h.must("run", "/big", "--", "sh", "-c", "head -c 50000000 /dev/urandom > /dev/shm/x && echo ready && exec sleep 1e5")
	if !poll(30*time.Second, 50*time.Millisecond, func() bool {
		o, _ := h.run("logs", "/big")
		return strings.Contains(o, "ready")
	}) {
		t.Fatal("/big never got ready")
	}
	big := filepath.Join(t.TempDir(), "big.crtree")
	h.must("dump", "/big", "-o", big)
	dst := filepath.Join(dir, "pool", "big.crtree")
	cpIn := exec.Command("cp", big, dst)
	if err := cpIn.Start(); err != nil {
		t.Fatal(err)
	}
	cpDone := make(chan error, 1)
	go func() { cpDone <- cpIn.Wait() }()
	fi, err := os.Stat(big)
	if err != nil {
		t.Fatal(err)
	}
	if !poll(60*time.Second, 20*time.Millisecond, func() bool {
		st, err := os.Stat(dst)
		return err == nil && st.Size() == fi.Size()
	}) {
		t.Fatal("the archive being copied in never reached its size")
	}
	select {
	case err := <-cpDone:
		t.Fatalf("cp ended (%v) before a stat of its file after the last write: the restore was too quick to check this", err)
	default:
	}
	if err := <-cpDone; err != nil {
		t.Fatalf("cp of the archive into the tree: %v", err)
	}
	if st := h.ls()["/pool/big"]; st.State != "running" {
		t.Fatalf("restored by cp: %+v", st)
	}
	h.must("rm", "-r", "-f", "/pool/big")

	// A copy into the tree cut short.
	w := exec.Command("sh", "-c", `exec 3>"$1"; head -c 100000 "$2" >&3; echo written; exec sleep 1e5`, "sh", filepath.Join(dir, "pool", "half.crtree"), out)
	stdout, _ := w.StdoutPipe()
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if n, _ := stdout.Read(buf); !strings.HasPrefix(string(buf[:n]), "written") {
		t.Fatalf("writer: %q", buf[:n])
	}
	w.Process.Kill()
	w.Wait()
	if !poll(10*time.Second, 20*time.Millisecond, func() bool {
		_, err := os.Stat(filepath.Join(dir, "pool", "half.crtree"))
		return errors.Is(err, os.ErrNotExist)
	}) {
		t.Fatal("the cut-short archive's file stayed")
	}
	if helpers := h.waitHelpersGone(10 * time.Second); len(helpers) > 0 {
		t.Fatalf("left running: %v", helpers)
	}
	for p := range h.ls() {
		if p != "/hog" && p != "/pool" {
			t.Fatalf("a cut-short archive left %s", p)
		}
	}
}
