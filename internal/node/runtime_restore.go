package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"

	"golang.org/x/sys/unix"
)

// specExternalMounts are the external mounts of a node's spec as CRIU
// takes them: each is recorded under its mount point as key, and provided
// on restore by the host path the spec names (the host's /usr and /etc, a
// bind's source).
func specExternalMounts(spec hier.Spec) []criu.ExternalMount {
	var out []criu.ExternalMount
	for _, b := range ExternalMounts(spec.Binds, spec.Image != "") {
		out = append(out, criu.ExternalMount{Mountpoint: b.Target, Key: b.Target, HostPath: b.Source})
	}
	return out
}

// restoreInit restores the node's process tree from images, as a child
// of this process and inside the node's cgroup, and returns its init's
// host PID, and with from.LazyPages the daemon that fetches its memory.
func (h *Host) restoreInit(id string, from *FromImages) (int, *criu.LazyPages, error) {
	n, leaf, err := h.nodeAndLeaf(id)
	if err != nil {
		return 0, nil, err
	}
	unmount, err := h.mountOverlay(&n)
	if err != nil {
		return 0, nil, err
	}
	defer unmount()
	mounts, err := h.ExternalMountsFor(&n)
	if err != nil {
		return 0, nil, err
	}
	for _, m := range mounts {
		if _, err := os.Stat(m.HostPath); err != nil {
			return 0, nil, fmt.Errorf("this host lacks %s, which the node has bound at %s", m.HostPath, m.Mountpoint)
		}
	}
	cg, err := leaf.Open()
	if err != nil {
		return 0, nil, fmt.Errorf("open cgroup: %w", err)
	}
	defer cg.Close()
	var netns *os.File
	if n.Spec.Net == hier.NetBridge {
		if netns, err = os.Open(h.NetnsPath(id)); err != nil {
			return 0, nil, fmt.Errorf("network namespace: %w", err)
		}
		defer netns.Close()
	}
	o := criu.RestoreOptions{
		ImagesDir:      filepath.Join(from.Dir, "criu"),
		WorkDir:        filepath.Join(from.Dir, "work"),
		Root:           h.RootDir(id),
		ExternalMounts: mounts,
		CgroupFD:       int(cg.Fd()),
		KeepLogs:       h.LogDir(),
		LogLevel:       from.CriuLogLevel,
		TCPEstablished: from.TCPEstablished,
		OwnNetwork:     n.Spec.OwnNet(),
		Netns:          netns,
		Stream:         from.Stream,
		BeforeResume: func(criuPid int) error {
			// Checked before the gate says ready: a node found wrong
			// is not waited for by the others.
			if err := isolated(leaf, criuPid, n.Spec.OwnNet()); err != nil {
				return err
			}
			return from.waitGate()
		},
		LazyPages: from.LazyPages,
	}
	if from.LazyPages != nil {
		if o.LazyKeeper, err = h.startKeeper(id, leaf); err != nil {
			return 0, nil, err
		}
		return criu.RestoreLazy(from.CriuBin, o)
	}
	pid, err := criu.Restore(from.CriuBin, o)
	return pid, nil, err
}

// endLazy waits for the post-copy transfer of node id's memory (failed
// already if failed is set) and reports how it ended on done. If it
// failed, the node's processes are killed before the daemon's
// userfaultfds are let go: none of them runs on a page that never came.
func (h *Host) endLazy(id string, lazy *criu.LazyPages, done *os.File, failed error) {
	err := failed
	if err == nil {
		err = lazy.Wait()
	} else {
		lazy.Kill()
	}
	// Released only once no process is left that could read a page
	// that did not come.
	release := true
	if err != nil {
		if kerr := h.killNode(id); kerr != nil {
			err = fmt.Errorf("%w; killing the node failed too (%v): its processes stay blocked", err, kerr)
			release = false
		}
	}
	if release {
		lazy.Release()
	}
	var res LazyResult
	if err != nil {
		res.Error = err.Error()
		fmt.Fprintln(os.Stderr, "crtree supervisor: post-copy:", err)
	}
	if done != nil {
		json.NewEncoder(done).Encode(res)
		done.Close()
	}
}

// killNode kills every process of node id's cgroup and waits until they
// are gone.
func (h *Host) killNode(id string) error {
	_, leaf, err := h.nodeAndLeaf(id)
	if err != nil {
		return err
	}
	return leaf.KillWait(10 * time.Second)
}

// isolated refuses restored processes (held before they run) that share
// one of this host's namespaces a node always has of its own (mount, PID,
// UTS, IPC), or its network if the node had its own (ownNet): CRIU's
// images, not the manifest, decide where the processes go, and an
// archive is hostile. CRIU (criuPid) and what it runs, in the same
// cgroup, are not the node's processes.
func isolated(leaf cgroup.Group, criuPid int, ownNet bool) error {
	kinds := []string{"mnt", "pid", "uts", "ipc"}
	if ownNet {
		kinds = append(kinds, "net")
	}
	host := map[string]string{}
	for _, k := range kinds {
		// This thread's, not the process's: the main thread may have
		// been left in a node's network namespace (network.NewNS).
		ns, err := os.Readlink("/proc/thread-self/ns/" + k)
		if err != nil {
			return err
		}
		host[k] = ns
	}
	pids, err := leaf.Procs()
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if descendsFrom(pid, criuPid) {
			continue
		}
		for _, k := range kinds {
			if ns, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/" + k); err == nil && ns == host[k] {
				cmd := ""
				if info, err := ReadProc(pid); err == nil {
					cmd = " (" + info.Cmd + ")"
				}
				return fmt.Errorf("corrupt archive: its images put process %d%s in this host's %s namespace, which the node had of its own", pid, cmd, k)
			}
		}
	}
	return nil
}

// descendsFrom reports whether pid is ancestor or one of its descendants.
func descendsFrom(pid, ancestor int) bool {
	for i := 0; i < 64 && pid > 1; i++ {
		if pid == ancestor {
			return true
		}
		ppid, err := parentPid(pid)
		if err != nil {
			return false
		}
		pid = ppid
	}
	return false
}

// What passes on a gate (FromImages.Gate): GateReady from a supervisor
// whose restored processes are ready to run, if the gate is a socket (a
// pipe's read end takes no write), and GateOpen to let them run.
const (
	GateReady = 'r'
	GateOpen  = 'y'
)

// GateWithdrawn is how a restore held at its gate fails when the gate
// ends unopened: because of a failure elsewhere, which says more.
const GateWithdrawn = "the restoring command withdrew the images"

// waitGate holds the restored processes until the gate opens (nil when
// there is no gate).
func (from *FromImages) waitGate() error {
	if from.Gate == nil {
		return nil
	}
	defer from.Gate.Close()
	from.Gate.Write([]byte{GateReady})
	var b [1]byte
	if n, _ := from.Gate.Read(b[:]); n != 1 || b[0] != GateOpen {
		return errors.New(GateWithdrawn)
	}
	return nil
}

// mountOverlay mounts the overlay root of a node that runs on an image or
// a --rootfs base (its base below its restored upper layer) at its root
// directory, where CRIU takes the node's / from (--root). The node's
// mount namespace keeps its own copy: unmount detaches the host's once
// CRIU is done.
func (h *Host) mountOverlay(n *hier.Node) (unmount func(), err error) {
	lower, err := h.lowerDir(n)
	if err != nil || lower == "" {
		return func() {}, err
	}
	root := h.RootDir(n.ID)
	opts, err := overlayOptions(lower, h.UpperDir(n), filepath.Join(h.Store.NodeDir(n.ID), "work"))
	if err != nil {
		return nil, err
	}
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("mount the node's root (%s): %w", lower, err)
	}
	return func() { unix.Unmount(root, unix.MNT_DETACH) }, nil
}

// servePages starts serving the node's memory from from.Archive (restore
// --lazy): the lazy pages its images flag, each piece of the archive
// verified before any page of it goes out. from.LazyPages becomes the
// daemon's end of the connection; a page that cannot be served (a
// damaged piece) ends the connection, which fails the daemon, and the
// node is killed (endLazy) before any process of it sees that page.
func servePages(from *FromImages) error {
	data, err := os.ReadFile(filepath.Join(from.Dir, PiecesFile))
	if err != nil {
		return fmt.Errorf("lazy restore: %w", err)
	}
	var pieces map[string][]archive.PieceRef
	if err := json.Unmarshal(data, &pieces); err != nil {
		return fmt.Errorf("lazy restore: %s: %w", PiecesFile, err)
	}
	x, err := criu.IndexLazy(filepath.Join(from.Dir, "criu"))
	if err != nil {
		return fmt.Errorf("lazy restore: %w", err)
	}
	fi, err := from.Archive.Stat()
	if err != nil {
		return fmt.Errorf("lazy restore: %w", err)
	}
	src := archive.NewPagePieces(from.Archive, fi.Size(), pieces)
	theirs, ours, err := criu.SocketPair()
	if err != nil {
		return fmt.Errorf("lazy restore: %w", err)
	}
	go func() {
		defer theirs.Close()
		// A panic here would end the supervisor, and with it the copies
		// of the userfaultfds that keep the processes from reading zeros:
		// it ends the connection instead, and the node is killed.
		defer func() {
			if r := recover(); r != nil {
				fmt.Fprintf(os.Stderr, "crtree supervisor: serving the node's memory from the archive: panic: %v\n", r)
			}
		}()
		if err := criu.ServeLazyPages(theirs, x, src); err != nil {
			fmt.Fprintln(os.Stderr, "crtree supervisor: serving the node's memory from the archive:", err)
		}
	}()
	from.LazyPages = ours
	return nil
}

// keepFromOOM makes the OOM killer pass this process over, and returns
// what puts its score back.
func keepFromOOM() (restore func()) {
	const adj = "/proc/self/oom_score_adj"
	old, err := os.ReadFile(adj)
	if err != nil || os.WriteFile(adj, []byte("-1000"), 0) != nil {
		return func() {}
	}
	return func() { os.WriteFile(adj, old, 0) }
}

// startKeeper starts the keeper of a post-copy restore's userfaultfds
// (criu.Keep): a process of its own session, which outlives this one if
// it is killed, and then kills the node's processes (those of leaf)
// before their memory's guard goes. It returns the end the restore
// hands the copies to; closing it without a release is what kills them.
func (h *Host) startKeeper(id string, leaf cgroup.Group) (*os.File, error) {
	holder, keeper, err := criu.KeeperPair()
	if err != nil {
		return nil, err
	}
	defer keeper.Close()
	logf, err := h.supervisorLog(id)
	if err != nil {
		holder.Close()
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(SelfExe, "__keep-uffds", leaf.Path())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{keeper}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		holder.Close()
		return nil, fmt.Errorf("start the keeper of the userfaultfds: %w", err)
	}
	go cmd.Wait()
	return holder, nil
}
