package treefs

import (
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

func TestRestoredName(t *testing.T) {
	for name, want := range map[string]string{
		"v1.crtree": "", "clone": "clone", "a.b": "a.b", "x y": "", "..": "", "": "",
	} {
		if got := restoredName(name); got != want {
			t.Errorf("restoredName(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestErrno(t *testing.T) {
	f := &FS{}
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{fmt.Errorf("x: %w", hier.ErrNotFound), syscall.ENOENT},
		{fmt.Errorf("mv: %w", hier.ErrExists), syscall.EEXIST},
		{fmt.Errorf("rm: %w", &node.BusyError{Op: node.BusyDump}), syscall.EBUSY},
		{fmt.Errorf("rm: %w", node.ErrRunning), syscall.EBUSY},
		{fmt.Errorf("open: %w", syscall.ENOSPC), syscall.ENOSPC},
		{fmt.Errorf("anything else"), syscall.EIO},
	} {
		if got := f.errno("op", c.err); got != c.want {
			t.Errorf("errno(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// .errors keeps the last recentMax lines, and every line logged lands
// there with the scope's full path written as /.
func TestRecentAndScrub(t *testing.T) {
	s, err := hier.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var scope string
	err = s.Update(func(tr *hier.Tree) error {
		a, err := tr.Add("", "outer")
		if err != nil {
			return err
		}
		v, err := tr.Add(a.ID, "v")
		scope = v.ID
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &FS{opts: Options{Scope: scope}, snaps: hier.NewSnapshots(s)}
	for i := 0; i < recentMax+5; i++ {
		f.logf("rm /outer/v/a%d: refused; /outer/vx stays", i)
	}
	lines := strings.Split(strings.TrimSpace(f.recent.text()), "\n")
	if len(lines) != recentMax {
		t.Fatalf("%d lines kept, want %d", len(lines), recentMax)
	}
	if !strings.HasSuffix(lines[len(lines)-1], fmt.Sprintf("rm /a%d: refused; /outer/vx stays", recentMax+4)) {
		t.Fatalf("last line %q", lines[len(lines)-1])
	}
}

// Dumps overlap when one's node is the other's, or an ancestor of it.
func TestOverlapping(t *testing.T) {
	tr := &hier.Tree{Nodes: map[string]*hier.Node{}}
	add := func(id, parent string) *hier.Node {
		n := &hier.Node{ID: id, Name: id, Parent: parent}
		tr.Nodes[id] = n
		return n
	}
	a, b, c, other := add("a", ""), add("b", "a"), add("c", "b"), add("o", "")
	j := newJobs()
	d := &dumpFile{id: "b"}
	j.dumps[d] = true
	for n, want := range map[*hier.Node]bool{a: true, b: true, c: true, other: false} {
		if got := j.overlapping(tr, n) != nil; got != want {
			t.Errorf("dump of %s overlaps a running dump of b: %v, want %v", n.ID, got, want)
		}
	}
	d.done = true
	if j.overlapping(tr, c) != nil {
		t.Error("an ended dump still overlaps")
	}
}
