package node

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
)

type criuMount = criu.Mount

// CriuMounts turns a node's external mounts into CRIU's: each is recorded
// under its mount point as key, and provided on restore by the same host
// path it had (the host's /usr and /etc, a bind's source).
func CriuMounts(spec hier.Spec) []criuMount {
	var out []criuMount
	for _, b := range Externals(spec.Binds) {
		out = append(out, criuMount{Mountpoint: b.Target, Key: b.Target, HostPath: b.Source})
	}
	return out
}

// restoreInit restores the node's process tree from images, as a child
// of this process and inside the node's cgroup, and returns its init's
// host PID.
func (h *Host) restoreInit(id string, from *FromImages) (int, error) {
	var n hier.Node
	var leaf cgroup.Group
	err := h.Store.View(func(t *hier.Tree) error {
		m := t.Nodes[id]
		if m == nil {
			return fmt.Errorf("node %s: %w", id, hier.ErrNotFound)
		}
		n = *m
		leaf = h.Group(t, m).Leaf()
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n.Spec.Rootfs != "" {
		return 0, fmt.Errorf("restoring a node with --rootfs is not supported yet")
	}
	mounts, err := h.CriuMountsFor(&n)
	if err != nil {
		return 0, err
	}
	for _, m := range mounts {
		if _, err := os.Stat(m.HostPath); err != nil {
			return 0, fmt.Errorf("this host lacks %s, which the node has bound at %s", m.HostPath, m.Mountpoint)
		}
	}
	cg, err := leaf.Open()
	if err != nil {
		return 0, fmt.Errorf("open cgroup: %w", err)
	}
	defer cg.Close()
	return criu.Restore(from.CriuBin, criu.RestoreOptions{
		ImagesDir:      filepath.Join(from.Dir, "criu"),
		WorkDir:        filepath.Join(from.Dir, "work"),
		Root:           h.RootDir(id),
		Externals:      mounts,
		CgroupFD:       int(cg.Fd()),
		KeepLogs:       h.LogDir(),
		TCPEstablished: from.TCPEstablished,
		OwnNetwork:     n.Spec.Net == hier.NetNone,
		Stream:         from.Stream,
		BeforeResume: func(criuPid int) error {
			if err := from.waitGate(); err != nil {
				return err
			}
			if n.Spec.Net == hier.NetNone {
				return offHostNetwork(leaf, criuPid)
			}
			return nil
		},
	})
}

// offHostNetwork refuses restored processes (held before they run) that
// are in this host's network namespace although their node had its own:
// CRIU's images, not the manifest, decide where they go, and an archive
// is hostile. CRIU itself (criuPid) and its action script, in the same
// cgroup, are not the node's processes.
func offHostNetwork(leaf cgroup.Group, criuPid int) error {
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return err
	}
	pids, err := leaf.Procs()
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if ppid, _ := parentPid(pid); pid == criuPid || ppid == criuPid {
			continue
		}
		if ns, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net"); err == nil && ns == host {
			return fmt.Errorf("corrupt archive: the node had a network of its own, but its images put process %d on this host's network", pid)
		}
	}
	return nil
}

// waitGate holds the restored processes until the gate opens (nil when
// there is no gate).
func (from *FromImages) waitGate() error {
	if from.Gate == nil {
		return nil
	}
	defer from.Gate.Close()
	var b [1]byte
	if n, _ := from.Gate.Read(b[:]); n != 1 || b[0] != 'y' {
		return fmt.Errorf("the restoring command withdrew the images")
	}
	return nil
}
