package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/image"
	"github.com/crtree/crtree/internal/network"
)

// Host is one state root seen from the host: the tree, the nodes' storage
// and their cgroups.
type Host struct {
	opMu  sync.Mutex
	Store *hier.Store
	// CgroupBase is the cgroup2 group holding this state root's nodes.
	CgroupBase cgroup.Group
	// Images holds the images nodes run on.
	Images *image.Store
	// Net is the state root's network, for NetBridge nodes.
	Net *network.Network
	// StageBase, if not "", is where StageDir makes staging directories,
	// whatever the room in memory.
	StageBase string
	// Env is the environment of the crtree commands the host starts on
	// its side (supervisors, and the commands a node asks for, which get
	// its PATH and CRTREE_CRIU only); the command line's, as a rule.
	Env []string

	binMu  sync.Mutex
	binary string // StableBinary's answer, once known
}

// NewHost opens the state root at root.
func NewHost(root string) (*Host, error) {
	st, err := hier.Open(root)
	if err != nil {
		return nil, err
	}
	mnt, err := cgroup.Mountpoint()
	if err != nil {
		return nil, err
	}
	return &Host{Store: st, CgroupBase: cgroup.Group(cgroup.BaseFor(mnt, st.Root)), Images: image.Open(st.Root), Net: network.New(st.Root, nil)}, nil
}

// Group returns the cgroup of n; its processes are in Group(..).Leaf().
func (h *Host) Group(t *hier.Tree, n *hier.Node) cgroup.Group {
	return cgroup.Group(filepath.Join(append([]string{h.CgroupBase.Path()}, t.Ancestors(n)...)...))
}

// RootDir returns the host directory that is n's / while it runs.
func (h *Host) RootDir(id string) string { return filepath.Join(h.Store.NodeDir(id), "rootfs") }

// UpperDir returns the directory that holds the files n wrote itself: its
// root, or the overlay upper layer when it runs on an image or a
// --rootfs base.
func (h *Host) UpperDir(n *hier.Node) string {
	if n.Spec.Rootfs != "" || n.Spec.Image != "" {
		return filepath.Join(h.Store.NodeDir(n.ID), "upper")
	}
	return h.RootDir(n.ID)
}

// OpenLog opens n's output log. The log lives in storage the node
// controls, so it is opened inside that storage (os.Root): a node that
// replaced it with a symlink cannot make crtree read a host file.
func (h *Host) OpenLog(n *hier.Node) (*os.File, error) {
	r, err := os.OpenRoot(h.UpperDir(n))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Open(LogPath[1:])
}

// Status is what a node's state really is now, as opposed to what was
// last recorded: a supervised node recorded as running whose init is
// exiting is reported exited with the status it exits with (which its
// supervisor will record), one whose init is gone exited with an unknown
// code.
type Status struct {
	State hier.State
	// ExitCode is the recorded exit code, or -1 when unknown.
	ExitCode int
	// Supervised is false when the node's supervisor is gone.
	Supervised bool
}

// StatusOf checks n against /proc.
func StatusOf(n *hier.Node) Status {
	st := Status{State: n.State, ExitCode: n.ExitCode, Supervised: Alive(n.SupervisorPid, n.SupervisorStart)}
	if n.OwnerPid != 0 && !Alive(n.OwnerPid, n.OwnerStart) {
		st.State = hier.Incomplete
		return st
	}
	if n.State != hier.Running {
		return st
	}
	// The supervisor will record the status the init exits with; without
	// a supervisor, whoever reaps it takes the status away.
	if code, ok := exiting(n.Pid, n.PidStart); ok && st.Supervised {
		st.State, st.ExitCode = hier.Exited, code
	} else if !Alive(n.Pid, n.PidStart) {
		st.State, st.ExitCode = hier.Exited, -1
	}
	return st
}

// String formats s for tables: running, exited(N), exited(?), creating.
func (s Status) String() string {
	switch s.State {
	case hier.Exited:
		if s.ExitCode < 0 {
			return "exited(?)"
		}
		return fmt.Sprintf("exited(%d)", s.ExitCode)
	case hier.Running:
		if !s.Supervised {
			return "running(unsupervised)"
		}
	case hier.Incomplete:
		return "incomplete(rm -r -f it)"
	}
	return string(s.State)
}

// Destroy kills whatever runs in the node with the given ID and its
// descendants, and removes their cgroups, storage and tree entries.
func (h *Host) Destroy(id string) error {
	return h.Store.Update(func(t *hier.Tree) error {
		n := t.Nodes[id]
		if n == nil {
			return nil
		}
		return h.destroyLocked(t, n)
	})
}

// destroyLocked is Destroy for a caller that holds the tree.
func (h *Host) destroyLocked(t *hier.Tree, n *hier.Node) error {
	g := h.Group(t, n)
	if err := g.KillWait(10 * time.Second); err != nil {
		return err
	}
	sub := t.Subtree(n)
	var errs []error
	for i := len(sub) - 1; i >= 0; i-- {
		m := sub[i]
		if err := h.leaveNetwork(m); err != nil {
			// The node goes anyway (a removal the plugins refuse must
			// not leave it for ever); gc releases its address later.
			fmt.Fprintf(os.Stderr, "crtree: warning: %s: %v (crtree gc releases what is left)\n", t.PathOf(m), err)
		}
		if err := os.RemoveAll(h.Store.NodeDir(m.ID)); err != nil {
			errs = append(errs, fmt.Errorf("remove storage of %s: %w", t.PathOf(m), err))
		}
		t.Remove(m.ID)
	}
	if err := g.Remove(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// TmpDir returns the state root's directory for staging dumps and
// restores, creating it if needed. It is on the same file system as the
// nodes' storage.
func (h *Host) TmpDir() string {
	dir := filepath.Join(h.Store.Root, "tmp")
	os.MkdirAll(dir, 0o700)
	return dir
}

// LogDir returns where the CRIU logs of failed dumps and restores are kept.
func (h *Host) LogDir() string { return filepath.Join(h.Store.Root, "logs") }

// Self returns this process's PID and start time, to record as the owner
// of what it creates.
func Self() (int, uint64) {
	pid := os.Getpid()
	start, _ := StartTime(pid)
	return pid, start
}
