package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/api"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/image"
)

// ErrRunning is returned when an operation needs a node that is not
// running and it is.
var ErrRunning = errors.New("node is running")

// ErrNotRunning is returned when an operation needs a running node.
var ErrNotRunning = errors.New("node is not running")

// Run creates the node at p (or, when unnamed is true, a new unnamedN child
// of p), starts spec.Cmd in it and returns the new node's path. If the
// node cannot be started, nothing of it is left behind.
func (h *Host) Run(p hier.Path, unnamed bool, spec hier.Spec) (hier.Path, error) {
	if spec.ImageName != "" {
		unlock, err := h.Images.Shared()
		if err != nil {
			return nil, err
		}
		im, err := h.Images.Get(spec.ImageName)
		if err != nil {
			unlock()
			return nil, fmt.Errorf("run %s: %w", p, err)
		}
		// image rm waits until the node is in the tree (or is not).
		defer unlock()
		spec = withImage(spec, im)
	}
	if len(spec.Cmd) == 0 {
		return nil, errors.New("no command given")
	}
	if spec.Rootfs != "" {
		if fi, err := os.Stat(spec.Rootfs); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--rootfs %s: not a directory", spec.Rootfs)
		}
	}
	for _, b := range spec.Binds {
		if _, err := os.Stat(b.Source); err != nil {
			return nil, fmt.Errorf("--bind %s: %w", b.Source, err)
		}
	}
	parent, name := p.Parent(), p.Base()
	if unnamed {
		parent, name = p, ""
	} else if len(p) == 0 {
		return nil, fmt.Errorf("%w: / is the root of the tree, not a node name", hier.ErrInvalidName)
	}
	r, err := h.Reserve(parent, []NewNode{{Name: name, Parent: -1, Spec: spec}}, "")
	var ne *NodeError
	var be *BusyError
	switch {
	case errors.As(err, &ne):
		return nil, fmt.Errorf("run %w", ne)
	case errors.As(err, &be):
		return nil, fmt.Errorf("run %s: %w", p, be)
	case errors.Is(err, hier.ErrExists):
		return nil, fmt.Errorf("run %w; choose another name (crtree ls %s lists what is there)", err, p.Parent())
	case err != nil:
		return nil, err
	}
	// The supervisor hands the node over once its init runs.
	if _, err := h.Start(r.IDs[0]); err != nil {
		if aerr := r.Abort(); aerr != nil {
			err = errors.Join(err, aerr)
		}
		return nil, fmt.Errorf("run %s: %w", r.Paths[0], err)
	}
	return r.Paths[0], nil
}

// PrepareStorage creates the node's storage directory and root.
func (h *Host) PrepareStorage(n *hier.Node) error {
	dir := h.Store.NodeDir(n.ID)
	for _, d := range []string{h.RootDir(n.ID), h.APIDir(n.ID)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create node storage: %w", err)
		}
	}
	// The mount point of the crtree binary inside /run/crtree.
	if err := os.WriteFile(filepath.Join(h.APIDir(n.ID), api.BinaryName), nil, 0o755); err != nil {
		return fmt.Errorf("create node storage: %w", err)
	}
	if n.Spec.Rootfs != "" || n.Spec.Image != "" {
		for _, d := range []string{"upper", "work"} {
			if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
				return fmt.Errorf("create node storage: %w", err)
			}
		}
	}
	return nil
}

// Signal sends sig to the processes of the node at p, and with recursive
// to those of its whole subtree. SIGKILL goes through cgroup.kill, which
// reaches every process however it forked, and waits until they are gone.
func (h *Host) Signal(p hier.Path, sig unix.Signal, recursive bool) error {
	var killed []string
	err := h.Store.View(func(t *hier.Tree) error {
		n, err := lookupNode(t, p)
		if err != nil {
			return err
		}
		if err := CheckFreeToEnd(t, n, recursive); err != nil {
			return fmt.Errorf("kill %s: %w", p, err)
		}
		nodes := []*hier.Node{n}
		if recursive {
			nodes = t.Subtree(n)
		}
		if sig == unix.SIGKILL {
			for _, m := range nodes {
				if st := StatusOf(m); st.State == hier.Running && st.Supervised {
					killed = append(killed, m.ID)
				}
			}
			g := h.Group(t, n)
			if !recursive {
				g = g.Leaf()
			}
			return g.KillWait(10 * time.Second)
		}
		for _, m := range nodes {
			pids, err := h.Group(t, m).Leaf().Procs()
			if err != nil {
				return fmt.Errorf("signal %s: %w", t.PathOf(m), err)
			}
			for _, pid := range pids {
				unix.Kill(pid, sig)
			}
		}
		return nil
	})
	if err == nil && len(killed) > 0 {
		h.recordKilled(killed)
	}
	return err
}

// recordKilled records the nodes whose init a kill -s KILL ended as
// exited(137) at once, in one change of the tree, so that what follows
// the kill sees it: their supervisors, which each need the tree to record
// the status they reap, may not have yet. The init's PID stays, so that
// its supervisor still records the status it reaps (the same, unless the
// init had ended by itself just before). When hundreds of supervisors
// hold the tree in turn, this is skipped after 100 ms: they record it.
func (h *Host) recordKilled(ids []string) {
	h.Store.TryUpdate(100*time.Millisecond, func(t *hier.Tree) error {
		changed := false
		for _, id := range ids {
			if n := t.Nodes[id]; n != nil && n.State == hier.Running && !Alive(n.Pid, n.PidStart) {
				n.State, n.ExitCode = hier.Exited, 128+int(unix.SIGKILL)
				changed = true
			}
		}
		if !changed {
			return hier.ErrUnchanged
		}
		return nil
	})
}

// lookupNode resolves p and refuses the root of the tree.
func lookupNode(t *hier.Tree, p hier.Path) (*hier.Node, error) {
	if len(p) == 0 {
		return nil, fmt.Errorf("/ is the root of the tree, not a node")
	}
	return t.Lookup(p)
}

// Remove removes the node at p: refused while it runs unless force (which
// kills it first), and refused while it has children unless recursive.
func (h *Host) Remove(p hier.Path, recursive, force bool) error {
	return h.Store.Update(func(t *hier.Tree) error {
		n, err := lookupNode(t, p)
		if err != nil {
			return err
		}
		return h.removeLocked(t, n, recursive, force)
	})
}

// RemoveID is Remove of the node with ID id, wherever it is by then (the
// tree's file system looked it up by ID: a node renamed meanwhile is
// still the one removed, and a node that took its name is not).
func (h *Host) RemoveID(id string, recursive, force bool) error {
	return h.Store.Update(func(t *hier.Tree) error {
		n := t.Nodes[id]
		if n == nil {
			return hier.ErrNotFound
		}
		return h.removeLocked(t, n, recursive, force)
	})
}

func (h *Host) removeLocked(t *hier.Tree, n *hier.Node, recursive, force bool) error {
	p := t.PathOf(n)
	if err := CheckFreeToEnd(t, n, true); err != nil {
		return fmt.Errorf("rm %s: %w", p, err)
	}
	if !recursive && len(t.Children(n.ID)) > 0 {
		return fmt.Errorf("rm %s: node has children (use -r)", p)
	}
	if !force {
		for _, m := range t.Subtree(n) {
			if StatusOf(m).State == hier.Running {
				return fmt.Errorf("rm %s: %w (stop it first or use -f)", t.PathOf(m), ErrRunning)
			}
		}
	}
	return h.destroyLocked(t, n)
}

// Rename renames the node at from to to, which must be in the same parent.
// It is one change of the tree, safe while the node runs.
func (h *Host) Rename(from, to hier.Path) error {
	return h.Store.Update(func(t *hier.Tree) error {
		n, err := lookupNode(t, from)
		if err != nil {
			return err
		}
		if len(to) == 0 {
			return fmt.Errorf("mv: / cannot be a node's new name")
		}
		if to.Parent().String() != from.Parent().String() {
			return fmt.Errorf("mv %s %s: moving to another parent is not supported yet (rename within %s)", from, to, from.Parent())
		}
		return renameLocked(t, n, to.Base())
	})
}

// RenameID renames the node with ID id to name, within its parent: Rename
// for the tree's file system, which knows nodes by ID (see RemoveID).
func (h *Host) RenameID(id, name string) error {
	return h.Store.Update(func(t *hier.Tree) error {
		n := t.Nodes[id]
		if n == nil {
			return hier.ErrNotFound
		}
		return renameLocked(t, n, name)
	})
}

func renameLocked(t *hier.Tree, n *hier.Node, name string) error {
	from := t.PathOf(n)
	if err := CheckFree(t, n, true); err != nil {
		return fmt.Errorf("mv %s: %w", from, err)
	}
	if t.Child(n.Parent, name) != nil {
		return fmt.Errorf("mv: %s: %w", from.Parent().Join(name), hier.ErrExists)
	}
	n.Name = name
	return nil
}

// Entry is one node as listed by ls.
type Entry struct {
	// ID is the node's storage name under the state root (nodes/ID).
	ID       string `json:"id"`
	Path     string `json:"path"`
	Name     string `json:"name"`
	State    string `json:"state"`
	ExitCode *int   `json:"exitCode,omitempty"`
	Pid      int    `json:"pid"`
	// SupervisorPid is the host PID of the node's supervisor, 0 if none.
	SupervisorPid int       `json:"supervisorPid"`
	Procs         int       `json:"procs"`
	Memory        int64     `json:"memory"`
	Created       time.Time `json:"created"`
	// Busy says what another crtree command is doing to the node's
	// subtree ("being dumped"), if anything.
	Busy string `json:"busy,omitempty"`
	// Image is the image the node runs on, as it was called when the
	// node was created ("" for none).
	Image string `json:"image,omitempty"`
	// Net is the node's network: "host", "none" or "bridge"; IP and MAC
	// its address on the bridge, Ports what it publishes.
	Net     string      `json:"net"`
	IP      string      `json:"ip,omitempty"`
	MAC     string      `json:"mac,omitempty"`
	Ports   []hier.Port `json:"ports,omitempty"`
	Display string      `json:"-"`
	Depth   int         `json:"-"`
}

// List returns the children of p, or with recursive all its descendants,
// with their real state.
func (h *Host) List(p hier.Path, recursive bool) ([]Entry, error) {
	out := []Entry{}
	err := h.Store.View(func(t *hier.Tree) error {
		top, err := t.Lookup(p)
		if err != nil {
			return err
		}
		topID := ""
		if top != nil {
			topID = top.ID
		}
		var nodes []*hier.Node
		if recursive {
			nodes = t.Subtree(top)
			if top != nil {
				nodes = nodes[1:]
			}
		} else {
			nodes = t.Children(topID)
		}
		for _, n := range nodes {
			out = append(out, h.entry(t, n, len(t.Ancestors(n))-len(p)-1))
		}
		return nil
	})
	return out, err
}

// Describe returns node n of tree t as ls shows it: its real state, its
// processes' count and memory (Depth 0).
func (h *Host) Describe(t *hier.Tree, n *hier.Node) Entry { return h.entry(t, n, 0) }

func (h *Host) entry(t *hier.Tree, n *hier.Node, depth int) Entry {
	st := StatusOf(n)
	e := Entry{ID: n.ID, Path: t.PathOf(n).String(), Name: n.Name, State: string(st.State), Display: st.String(), Created: n.Created, Depth: depth, Image: n.Spec.ImageName,
		Net: n.Spec.Net, Ports: n.Spec.Ports}
	if e.Net == "" {
		e.Net = hier.NetHost
	}
	if n.Addr != nil {
		e.IP, e.MAC = n.Addr.IP, n.Addr.MAC
	}
	if op, _, held := heldBy(n); held && n.Busy != nil {
		e.Busy = "being " + op
		if op == BusyMemory {
			e.Display += " (memory arriving)"
		}
	}
	if st.State == hier.Exited {
		code := st.ExitCode
		e.ExitCode = &code
	}
	if st.State == hier.Running {
		e.Pid = n.Pid
		if st.Supervised {
			e.SupervisorPid = n.SupervisorPid
		}
		leaf := h.Group(t, n).Leaf()
		pids, _ := leaf.Procs()
		e.Procs = len(pids)
		if mem, ok := leaf.MemoryCurrent(); ok {
			e.Memory = mem
		} else {
			for _, pid := range pids {
				if info, err := ReadProc(pid); err == nil {
					e.Memory += info.RSS
				}
			}
		}
	}
	return e
}

// Procs returns the processes of the node at p.
func (h *Host) Procs(p hier.Path) ([]ProcInfo, error) {
	var pids []int
	err := h.Store.View(func(t *hier.Tree) error {
		n, err := lookupNode(t, p)
		if err != nil {
			return err
		}
		pids, err = h.Group(t, n).Leaf().Procs()
		return err
	})
	if err != nil {
		return nil, err
	}
	out := []ProcInfo{}
	for _, pid := range pids {
		if info, err := ReadProc(pid); err == nil {
			out = append(out, info)
		}
	}
	return out, nil
}

// Get returns a copy of the node at p with its path and status.
func (h *Host) Get(p hier.Path) (hier.Node, Status, error) {
	var n hier.Node
	var st Status
	err := h.Store.View(func(t *hier.Tree) error {
		m, err := lookupNode(t, p)
		if err != nil {
			return err
		}
		n, st = *m, StatusOf(m)
		return nil
	})
	return n, st, err
}

// MarkExited records a node that was created without being started (a
// restored node that was not running when it was dumped) as exited.
func (h *Host) MarkExited(id string, code int) error {
	return h.Store.Update(func(t *hier.Tree) error {
		n := t.Nodes[id]
		if n == nil {
			return fmt.Errorf("node %s: %w", id, hier.ErrNotFound)
		}
		n.State, n.ExitCode = hier.Exited, code
		return nil
	})
}

// withImage is spec on image im, as Docker and Podman run one: the
// image's environment under spec's, its working directory and user unless
// spec has its own, and its entrypoint before spec's command, or before
// the image's command when spec has none.
func withImage(spec hier.Spec, im *image.Image) hier.Spec {
	spec.Image, spec.ImageName = im.ID, im.Name
	spec.Env = MergeEnv(im.Config.Env, spec.Env)
	if spec.Cwd == "" {
		spec.Cwd = im.Config.WorkingDir
	}
	if spec.User == "" {
		spec.User = im.Config.User
	}
	cmd := spec.Cmd
	if len(cmd) == 0 {
		cmd = im.Config.Cmd
	}
	spec.Cmd = append(append([]string{}, im.Config.Entrypoint...), cmd...)
	return spec
}

// NodesOnImage returns the paths of the nodes that run on the image with
// the given ID.
func (h *Host) NodesOnImage(id string) []string {
	var out []string
	h.Store.View(func(t *hier.Tree) error {
		for _, n := range t.Nodes {
			if n.Spec.Image == id {
				out = append(out, t.PathOf(n).String())
			}
		}
		return nil
	})
	sort.Strings(out)
	return out
}
