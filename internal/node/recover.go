package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/network"
)

// An Op is a marker of a crtree command that freezes nodes or stages
// files: if the command dies (SIGKILL, a crash), whoever finds the marker
// with its owner gone undoes what it left: thaws the groups, removes the
// staging directory and the partial archive.
type Op struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
	Kind  string `json:"kind"`
	// Frozen are the cgroups the command may have frozen.
	Frozen []string `json:"frozen,omitempty"`
	// Remove are files and directories to delete if the command died.
	Remove []string `json:"remove,omitempty"`
	// Helpers are processes the command started (CRIU) that may outlive
	// it: the operation counts as running while any of them runs, so that
	// nothing is thawed or removed under CRIU's feet.
	Helpers []Proc `json:"helpers,omitempty"`
}

// Proc identifies a process across PID reuse.
type Proc struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// running reports whether the command or any of its helpers still runs.
func (op *Op) running() bool {
	if Alive(op.Pid, op.Start) {
		return true
	}
	for _, p := range op.Helpers {
		if Alive(p.Pid, p.Start) {
			return true
		}
	}
	return false
}

// AddHelper records a process the operation started.
func (h *Host) AddHelper(op *Op, pid int) error {
	start, _ := StartTime(pid)
	h.opMu.Lock()
	defer h.opMu.Unlock()
	op.Helpers = append(op.Helpers, Proc{pid, start})
	return h.saveOpLocked(op)
}

func (h *Host) opsDir() string { return filepath.Join(h.Store.Root, "ops") }

func (h *Host) opFile(pid int) string {
	return filepath.Join(h.opsDir(), strconv.Itoa(pid)+".json")
}

// BeginOp records a marker for this process; update it with SaveOp as the
// operation learns more, and remove it with EndOp.
func (h *Host) BeginOp(kind string) (*Op, error) {
	pid, start := Self()
	op := &Op{Pid: pid, Start: start, Kind: kind}
	if err := os.MkdirAll(h.opsDir(), 0o700); err != nil {
		return nil, fmt.Errorf("record %s: %w", kind, err)
	}
	return op, h.SaveOp(op)
}

// SaveOp rewrites op's marker.
func (h *Host) SaveOp(op *Op) error {
	h.opMu.Lock()
	defer h.opMu.Unlock()
	return h.saveOpLocked(op)
}

func (h *Host) saveOpLocked(op *Op) error {
	data, _ := json.Marshal(op)
	if err := hier.WriteFileAtomic(h.opFile(op.Pid), data, 0o600); err != nil {
		return fmt.Errorf("record %s: %w", op.Kind, err)
	}
	return nil
}

// EndOp removes op's marker: the operation finished (well or not) and
// cleaned up after itself.
func (h *Host) EndOp(op *Op) { os.Remove(h.opFile(op.Pid)) }

// sweepOps returns the markers whose command still runs, and undoes and
// removes the others, which it returns too.
func (h *Host) sweepOps() (live, undone []*Op) {
	des, _ := os.ReadDir(h.opsDir())
	for _, d := range des {
		if !strings.HasSuffix(d.Name(), ".json") {
			continue
		}
		file := filepath.Join(h.opsDir(), d.Name())
		data, err := os.ReadFile(file)
		var op Op
		if err != nil || json.Unmarshal(data, &op) != nil {
			continue
		}
		if op.running() {
			live = append(live, &op)
			continue
		}
		h.undo(&op)
		os.Remove(file)
		undone = append(undone, &op)
	}
	return live, undone
}

// undo reverts what a dead command left behind.
func (h *Host) undo(op *Op) {
	for _, g := range op.Frozen {
		if strings.HasPrefix(g, h.CgroupBase.Path()+"/") {
			cgroup.Group(g).Thaw()
		}
	}
	for _, p := range op.Remove {
		os.RemoveAll(p)
	}
}

// PendingOps returns how many operations of crtree commands are still
// recorded (running, or not yet undone).
func (h *Host) PendingOps() int {
	des, _ := os.ReadDir(h.opsDir())
	return len(des)
}

// Recover undoes what crtree commands that died left behind (frozen
// nodes, staging directories, partial archives). Every command calls it.
func (h *Host) Recover() { h.sweepOps() }

// watchFreeze is the supervisor's guard: a node left frozen by a crtree
// command that died is thawed within a second or two, even if no other
// crtree command runs. A node's cgroup never moves (mv keeps the parent),
// so it is looked up once; each tick reads two small files.
func (h *Host) watchFreeze(id string) {
	var groups []cgroup.Group
	h.Store.View(func(t *hier.Tree) error {
		if n := t.Nodes[id]; n != nil {
			g := h.Group(t, n)
			groups = []cgroup.Group{g, g.Leaf()}
		}
		return nil
	})
	for {
		time.Sleep(time.Second)
		frozen := false
		for _, g := range groups {
			frozen = frozen || g.Frozen()
		}
		if !frozen {
			continue
		}
		if live, _ := h.sweepOps(); len(live) == 0 {
			for _, g := range groups {
				g.Thaw()
			}
		}
	}
}

// GC removes what no node and no running command owns: markers and
// staging of dead commands, storage and cgroups of nodes that are not in
// the tree, images replaced by a newer import that no node runs on,
// layers no image lists and unfinished imports. It returns what it
// removed.
func (h *Host) GC() ([]string, error) {
	var removed []string
	live, undone := h.sweepOps()
	for _, op := range undone {
		removed = append(removed, fmt.Sprintf("leftovers of a killed crtree %s (pid %d)", op.Kind, op.Pid))
	}
	err := h.Store.Update(func(t *hier.Tree) error {
		// Staging directories, while no crtree command may be using one.
		if len(live) == 0 {
			for _, p := range h.stageDirs() {
				if os.RemoveAll(p) == nil {
					removed = append(removed, p)
				}
			}
		}
		// Addresses held for nodes the tree does not know (a crtree
		// killed between taking one and recording its node).
		removed = append(removed, h.gcNetwork(t)...)
		// Storage of nodes the tree does not know.
		des, _ := os.ReadDir(filepath.Join(h.Store.Root, "nodes"))
		for _, d := range des {
			if t.Nodes[d.Name()] == nil {
				p := h.Store.NodeDir(d.Name())
				network.RemoveNS(h.NetnsPath(d.Name()))
				if err := os.RemoveAll(p); err == nil {
					removed = append(removed, p)
				}
			}
		}
		// Cgroups of nodes the tree does not know; the state root's own
		// group too, once it holds no node.
		removed = append(removed, h.gcGroups(t, h.CgroupBase)...)
		if len(t.Nodes) == 0 && h.CgroupBase.Exists() && h.CgroupBase.Remove() == nil {
			removed = append(removed, h.CgroupBase.Path())
		}
		if len(t.Nodes) == 0 {
			bridge, err := h.Net.RemoveBridge()
			if err != nil {
				return err
			}
			if bridge != "" {
				removed = append(removed, "bridge "+bridge)
			}
		}
		return nil
	})
	// Images: untagged ones no node uses, stray layers, killed imports.
	images, ierr := h.Images.Prune(h.NodesOnImage)
	removed = append(removed, images...)
	return removed, errors.Join(err, ierr)
}

func (h *Host) gcGroups(t *hier.Tree, g cgroup.Group) []string {
	var removed []string
	des, _ := os.ReadDir(g.Path())
	for _, d := range des {
		if !d.IsDir() || d.Name() == cgroup.ProcsLeaf {
			continue
		}
		sub := cgroup.Group(filepath.Join(g.Path(), d.Name()))
		if t.Nodes[d.Name()] == nil {
			if err := sub.KillWait(5 * time.Second); err == nil && sub.Remove() == nil {
				removed = append(removed, sub.Path())
			}
			continue
		}
		removed = append(removed, h.gcGroups(t, sub)...)
	}
	return removed
}
