package node

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/crtree/crtree/internal/hier"
)

// This file is where nodes come into the tree and leave it: every command
// that creates nodes (run, restore) reserves them here, and hands them
// over (Commit) or takes them back (Abort) here; rm, mv and the dump
// change existing nodes through Host methods that check the same holds
// (CheckFree, tree_busy.go).
//
// A node's life:
//
//	Reserve   in the tree, with storage and cgroup, owned by the command
//	          (OwnerPid): ls shows it "creating", and "incomplete" if the
//	          command died, until rm -r -f removes it
//	start     a supervisor runs its init (Host.Start), or restores it
//	          (Host.StartRestore)
//	Commit    the command lets go: the node is the tree's (handOver)
//	Abort     the command failed: the reserved nodes are killed and removed

// NewNode is one node to reserve.
type NewNode struct {
	// Name is the node's name; "" for the first node makes it the next
	// free unnamedN of the parent.
	Name string
	// Parent is the index of an earlier NewNode of the same reservation,
	// or -1 for the reservation's parent.
	Parent int
	Spec   hier.Spec
	// Created is when the node was first created (an archived node keeps
	// its date); zero means now.
	Created time.Time
	// Hostname is the hostname a spec without one gets; "" means the
	// node's name. The hostname is fixed at creation: mv does not change
	// it.
	Hostname string
	// Archived says the spec comes from an archive, which says what
	// network the node had (see hier.Tree.Isolate).
	Archived bool
	// Addr is the address a NetBridge node had (a restore): it gets it
	// again if it is free.
	Addr *hier.Addr
}

// Reservation is a set of nodes a command created and has not yet
// handed over.
type Reservation struct {
	h *Host
	// IDs and Paths of the reserved nodes, in the order of Reserve's nodes.
	IDs   []string
	Paths []hier.Path
	done  bool
}

// Reserve creates nodes under parent in one change of the tree, each with
// its storage and cgroup, owned by this process until Commit or Abort.
// With hold (BusyRestore, say), the first node's subtree is held too:
// nothing else may change it meanwhile. A name already taken, a parent
// that is missing or held, or a network the parent forbids refuses the
// whole reservation before anything is created.
func (h *Host) Reserve(parent hier.Path, nodes []NewNode, hold string) (*Reservation, error) {
	r := &Reservation{h: h, IDs: make([]string, len(nodes)), Paths: make([]hier.Path, len(nodes))}
	err := h.Store.Update(func(t *hier.Tree) error {
		p, err := t.Lookup(parent)
		if err != nil {
			return fmt.Errorf("parent %s: %w", parent, hier.ErrNotFound)
		}
		parentID := ""
		if p != nil {
			parentID = p.ID
		}
		if err := CheckFree(t, p, false); err != nil {
			return err
		}
		var created []*hier.Node
		for i, nn := range nodes {
			n, err := r.add(t, parentID, i, nn)
			if err != nil {
				return err
			}
			if i == 0 && hold != "" {
				Hold(n, hold)
			}
			created = append(created, n)
		}
		for _, n := range created {
			if err := h.PrepareStorage(n); err != nil {
				return err
			}
			if err := h.Group(t, n).Create(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// The tree is unchanged; storage made before the failure goes.
		for _, id := range r.IDs {
			if id != "" {
				os.RemoveAll(h.Store.NodeDir(id))
			}
		}
		return nil, err
	}
	return r, nil
}

// add adds node i of a reservation to the tree, as this process's.
func (r *Reservation) add(t *hier.Tree, parentID string, i int, nn NewNode) (*hier.Node, error) {
	pid := parentID
	if nn.Parent >= 0 {
		pid = r.IDs[nn.Parent]
	}
	name := nn.Name
	if name == "" && i == 0 {
		name = t.FreeUnnamed(pid)
	}
	spec := nn.Spec
	if err := t.Isolate(pid, &spec, nn.Archived); err != nil {
		return nil, &NodeError{Index: i, Path: t.PathOf(t.Nodes[pid]).Join(name), Err: err}
	}
	n, err := t.Add(pid, name)
	if err != nil {
		return nil, err
	}
	n.Spec, n.Created, n.Addr = spec, nn.Created, nn.Addr
	if n.Created.IsZero() {
		n.Created = time.Now().UTC()
	}
	if n.Spec.Hostname == "" {
		n.Spec.Hostname = nn.Hostname
		if n.Spec.Hostname == "" {
			n.Spec.Hostname = name
		}
	}
	n.OwnerPid, n.OwnerStart = Self()
	r.IDs[i], r.Paths[i] = n.ID, t.PathOf(n)
	return n, nil
}

// NodeError is a refusal of Reserve that concerns one of its nodes: the
// caller names the node as its user knows it (Path is where it would have
// been in the tree).
type NodeError struct {
	Index int
	Path  hier.Path
	Err   error
}

func (e *NodeError) Error() string { return fmt.Sprintf("%s: %v", e.Path, e.Err) }
func (e *NodeError) Unwrap() error { return e.Err }

// Commit hands the reserved nodes over to the tree: they no longer depend
// on this command, and its hold ends.
func (r *Reservation) Commit() error { return r.CommitHeld("") }

// CommitHeld is Commit, the top node then held by this process for op
// (BusyMigrate, say; "" holds nothing) until Release: the nodes are
// complete, but no other command may act on them yet.
func (r *Reservation) CommitHeld(op string) error {
	return r.commit(func(t *hier.Tree) {
		if n := t.Nodes[r.IDs[0]]; n != nil && op != "" {
			Hold(n, op)
		}
	})
}

// CommitHeldBySupervisors is Commit, each running node then held for op
// by its own supervisor until the supervisor calls Release (restore
// --lazy: until the node's memory has arrived).
func (r *Reservation) CommitHeldBySupervisors(op string) error {
	return r.commit(func(t *hier.Tree) {
		for _, id := range r.IDs {
			if n := t.Nodes[id]; n != nil && n.SupervisorPid != 0 {
				n.Busy = &hier.Busy{Op: op, Pid: n.SupervisorPid, Start: n.SupervisorStart}
			}
		}
	})
}

// commit hands the nodes over (handOver), then sets the holds hold says,
// in one change of the tree.
func (r *Reservation) commit(hold func(t *hier.Tree)) error {
	if r.done {
		return errors.New("reservation already ended")
	}
	err := r.h.Store.Update(func(t *hier.Tree) error {
		for _, id := range r.IDs {
			if n := t.Nodes[id]; n != nil {
				handOver(n)
			}
		}
		hold(t)
		return nil
	})
	// A failed hand-over leaves the nodes to Abort.
	r.done = err == nil
	return err
}

// Abort kills and removes the reserved nodes (and whatever runs in them).
// After Commit it does nothing.
func (r *Reservation) Abort() error {
	if r.done {
		return nil
	}
	r.done = true
	return r.h.Destroy(r.IDs[0])
}

// handOver ends the creation of n: no command owns or holds it any more.
// The caller holds the tree's lock.
func handOver(n *hier.Node) {
	n.OwnerPid, n.OwnerStart = 0, 0
	n.Busy = nil
}
