package e2e

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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
