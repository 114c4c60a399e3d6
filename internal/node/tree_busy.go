package node

import (
	"fmt"
	"os"
	"time"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/hier"
)

// What a hold on a subtree is for, as it reads in "/x is being dumped".
const (
	BusyDump    = "dumped"
	BusyRestore = "restored"
	// BusyMigrate holds a subtree that a post-copy migration restored
	// until all its memory has arrived: a dump of it, or a node made in
	// it, would see memory that is not there yet.
	BusyMigrate = "migrated"
	// BusyMemory holds a node that restore --lazy restored, by its
	// supervisor, until its memory has arrived from the archive: a dump
	// would miss what has not come. It does not keep the node from being
	// killed or removed (CheckFreeToEnd).
	BusyMemory = "restored (its memory is still arriving)"
)

// BusyError is returned when a command would change a subtree that
// another crtree command holds (see [hier.Busy]).
type BusyError struct {
	// Path is the held node; Op what is being done to it, and Pid by
	// which crtree process.
	Path hier.Path
	Op   string
	Pid  int
}

func (e *BusyError) Error() string {
	if e.Op == BusyMemory {
		return fmt.Sprintf("%s is being restored: its memory is still arriving from the archive (restore --lazy; its supervisor, process %d, feeds it); try again once it has arrived (crtree ls shows it)", e.Path, e.Pid)
	}
	return fmt.Sprintf("%s is being %s (by crtree process %d); try again once it has ended", e.Path, e.Op, e.Pid)
}

// heldBy returns what holds n itself, if anything: a live hold, or the
// live command that is still creating it.
func heldBy(n *hier.Node) (op string, pid int, held bool) {
	if b := n.Busy; b != nil && Alive(b.Pid, b.Start) {
		return b.Op, b.Pid, true
	}
	if n.OwnerPid != 0 && Alive(n.OwnerPid, n.OwnerStart) {
		return "created", n.OwnerPid, true
	}
	return "", 0, false
}

// CheckFree returns a *BusyError if n or one of its ancestors is held by
// another command, or, with subtree, one of its descendants. A nil n (the
// root of the tree) is held by nothing; with subtree, its nodes are
// checked. Commands that would create, rename, remove, signal or enter
// nodes call it, under the tree's lock, before they do.
func CheckFree(t *hier.Tree, n *hier.Node, subtree bool) error {
	return checkFree(t, n, subtree, "")
}

// CheckFreeToEnd is CheckFree for commands that end nodes (kill, rm):
// a node whose memory is still arriving (BusyMemory) may be ended.
func CheckFreeToEnd(t *hier.Tree, n *hier.Node, subtree bool) error {
	return checkFree(t, n, subtree, BusyMemory)
}

// checkFree is CheckFree, holds for the op allowed aside.
func checkFree(t *hier.Tree, n *hier.Node, subtree bool, allowed string) error {
	for m := n; m != nil; m = t.Nodes[m.Parent] {
		if op, pid, held := heldBy(m); held && op != allowed {
			return &BusyError{Path: t.PathOf(m), Op: op, Pid: pid}
		}
	}
	if !subtree {
		return nil
	}
	for _, m := range t.Subtree(n) {
		if op, pid, held := heldBy(m); held && op != allowed {
			return &BusyError{Path: t.PathOf(m), Op: op, Pid: pid}
		}
	}
	return nil
}

// Hold marks n's subtree as held by this process for op; Release ends
// the hold. The caller holds the tree's lock (Store.Update).
func Hold(n *hier.Node, op string) {
	pid, start := Self()
	n.Busy = &hier.Busy{Op: op, Pid: pid, Start: start}
}

// HeldNode is one node of a subtree HoldSubtree took, as it was then.
type HeldNode struct {
	Node hier.Node
	Path hier.Path
	// Parent is the index of the node's parent in the list, -1 for the
	// top of the subtree.
	Parent int
	Status Status
	Group  cgroup.Group
}

// HoldSubtree holds the subtree at p for op (BusyDump) and returns its
// nodes, parents first, in one change of the tree: refused if another
// command holds part of it, or if a node of it is still being created
// or was left incomplete. Release(nodes[0].Node.ID) ends the hold.
func (h *Host) HoldSubtree(p hier.Path, op string) ([]HeldNode, error) {
	var out []HeldNode
	err := h.Store.Update(func(t *hier.Tree) error {
		out = nil
		n, err := lookupNode(t, p)
		if err != nil {
			return err
		}
		if err := CheckFree(t, n, true); err != nil {
			return err
		}
		index := map[string]int{}
		for i, m := range t.Subtree(n) {
			st := StatusOf(m)
			switch st.State {
			case hier.Creating:
				return fmt.Errorf("node %s is still being created", t.PathOf(m))
			case hier.Incomplete:
				return fmt.Errorf("node %s is incomplete (its creation was interrupted; remove it with rm -r -f)", t.PathOf(m))
			}
			parent := -1
			if i > 0 {
				parent = index[m.Parent]
			}
			index[m.ID] = i
			out = append(out, HeldNode{Node: *m, Path: t.PathOf(m), Parent: parent, Status: st, Group: h.Group(t, m)})
		}
		Hold(n, op)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Release ends this process's hold on the node with the given ID, if
// the node still exists.
func (h *Host) Release(id string) error {
	pid, _ := Self()
	return h.Store.Update(func(t *hier.Tree) error {
		n := t.Nodes[id]
		if n == nil || n.Busy == nil || n.Busy.Pid != pid {
			return hier.ErrUnchanged
		}
		n.Busy = nil
		return nil
	})
}

// releaseCommitted is Release for a supervisor that the restoring
// command's commit makes the holder (CommitHeldBySupervisors): it waits
// for that commit first, for as long as the command that owns the node
// lives, so that the hold is not set after it was to end; a failure to
// change the tree is retried (a hold left would keep the node from being
// dumped for as long as it runs).
func (h *Host) releaseCommitted(id string) {
	self, start := Self()
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		var owned bool
		err := h.Store.Update(func(t *hier.Tree) error {
			n := t.Nodes[id]
			owned = n != nil && n.OwnerPid != 0 && Alive(n.OwnerPid, n.OwnerStart)
			if owned || n == nil || n.Busy == nil || n.Busy.Pid != self || n.Busy.Start != start {
				return hier.ErrUnchanged
			}
			n.Busy = nil
			return nil
		})
		if err == nil && !owned {
			return
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "crtree supervisor: ending the hold on the node:", err)
		}
		time.Sleep(wait)
	}
}

// Watch returns the status of the node with the given ID, wherever it
// now is in the tree, and what holds it or an ancestor ("" if nothing):
// what a follower of its log needs. A node that is gone is
// hier.ErrNotFound.
func (h *Host) Watch(id string) (Status, string, error) {
	var st Status
	var op string
	err := h.Store.View(func(t *hier.Tree) error {
		n := t.Nodes[id]
		if n == nil {
			return fmt.Errorf("node %s: %w", id, hier.ErrNotFound)
		}
		st = StatusOf(n)
		if err := CheckFree(t, n, false); err != nil {
			op = err.(*BusyError).Op
		}
		return nil
	})
	return st, op, err
}
