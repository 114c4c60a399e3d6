package node

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/network"
)

// SelfExe is the crtree binary, re-executed for the supervisor and the
// init stage.
const SelfExe = "/proc/self/exe"

// readyMsg is what a supervisor tells the command that started it.
type readyMsg struct {
	Pid   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
	// Warning is what the node's user should know: a restored node that
	// got a new address has sockets bound to its old one.
	Warning string `json:"warning,omitempty"`
}

// Start starts a supervisor for the node with the given ID, which must be
// recorded in the tree as Creating, and waits until the node's command
// runs. It returns the host PID of the node's init.
func (h *Host) Start(id string) (int, error) {
	pid, _, err := h.startSupervisor(id, nil)
	return pid, err
}

// FromImages says where a supervisor restores its node from instead of
// starting the node's command: a directory with the CRIU images in criu/
// and room for CRIU's log in work/, and the criu binary.
type FromImages struct {
	Dir     string
	CriuBin string
	// CriuLogLevel is CRIU's log level, "0" to "4"; "" is the default.
	CriuLogLevel string
	// TCPEstablished restores established TCP connections.
	TCPEstablished bool
	// Stream: CRIU reads its images from a criu.ImageServer in the images
	// directory, run by the caller, instead of from files.
	Stream bool
	// Gate, if set, holds the restored processes before they run until
	// GateOpen can be read from it; anything else (its end) fails the
	// restore. The caller passes the read end of a pipe, or a socket,
	// on which the supervisor first writes GateReady once the processes
	// are ready to run.
	Gate *os.File
	// LazyPages, if set, is a connection to the page server of the dump
	// (post-copy): the processes are restored without their memory and
	// run while a lazy-pages daemon of the supervisor fetches it. If that
	// transfer fails, the supervisor kills the node's processes, which
	// never see a page that did not arrive. Not with Stream.
	LazyPages *os.File
	// LazyDone, with LazyPages, is the write end of a pipe on which the
	// supervisor reports, as one JSON object (LazyResult), how the
	// transfer ended.
	LazyDone *os.File
	// Archive, if set, is the archive file the images came from (restore
	// --lazy): the supervisor serves the node's memory from it itself,
	// post-copy, each piece verified before any page of it is served
	// (the pieces are those Dir/PiecesFile lists, the pages those the
	// images flag lazy). The restoring command's commit makes the
	// supervisor hold the node (CommitHeldBySupervisors) until its memory
	// has all arrived; the supervisor then removes Dir, which must be the
	// node's own. Not with LazyPages.
	Archive *os.File
}

// PiecesFile is where, in FromImages.Dir, a restore --lazy lists the
// pieces of the node's page images (archive.PageParts, as JSON).
const PiecesFile = "pieces.json"

// LazyResult is how a supervisor's post-copy transfer ended: Error is ""
// once every page has arrived; else the node's processes were killed.
type LazyResult struct {
	Error string `json:"error,omitempty"`
}

// Where a supervisor finds FromImages.Gate, LazyPages and LazyDone.
const (
	gateFD     = 4
	lazyFD     = 5
	lazyDoneFD = 6
	archiveFD  = 7
)

// OpenLazy returns the page server connection and the pipe for the
// result that a lazily restoring supervisor inherited.
func OpenLazy() (conn, done *os.File) {
	unix.CloseOnExec(lazyFD)
	unix.CloseOnExec(lazyDoneFD)
	// Non-blocking, so that the connection takes deadlines (criu's
	// pageProxy).
	unix.SetNonblock(lazyFD, true)
	return os.NewFile(lazyFD, "lazy-pages"), os.NewFile(lazyDoneFD, "lazy-done")
}

// OpenArchive returns the archive a supervisor serving its node's memory
// from it (FromImages.Archive) inherited.
func OpenArchive() *os.File {
	unix.CloseOnExec(archiveFD)
	return os.NewFile(archiveFD, "archive")
}

// OpenGate returns the gate a restoring supervisor inherited.
func OpenGate() *os.File {
	unix.CloseOnExec(gateFD)
	return os.NewFile(gateFD, "gate")
}

// StartRestore starts a supervisor that restores the node with the given
// ID from CRIU images, and waits until the restored processes run.
// The warning, if not "", says what the user should know of the
// restored node (sockets bound to an address it no longer has).
func (h *Host) StartRestore(id string, from FromImages) (pid int, warning string, err error) {
	return h.startSupervisor(id, &from)
}

func (h *Host) startSupervisor(id string, from *FromImages) (int, string, error) {
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return 0, "", err
	}
	defer readyR.Close()
	logf, err := h.supervisorLog(id)
	if err != nil {
		readyW.Close()
		return 0, "", err
	}
	defer logf.Close()
	args := []string{"--root", h.Store.Root, "__supervise", id}
	if from != nil {
		args = append(args, "--criu", from.CriuBin, "--from-images", from.Dir)
		if from.CriuLogLevel != "" {
			args = append(args, "--criu-log-level", from.CriuLogLevel)
		}
		if from.TCPEstablished {
			args = append(args, "--tcp-established")
		}
		if from.Stream {
			args = append(args, "--stream")
		}
	}
	cmd := exec.Command(SelfExe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{readyW}
	if from != nil && from.Gate != nil {
		cmd.Args = append(cmd.Args, "--gate")
		cmd.ExtraFiles = append(cmd.ExtraFiles, from.Gate) // gateFD
	}
	if from != nil && from.LazyPages != nil {
		cmd.Args = append(cmd.Args, "--lazy-pages")
		if len(cmd.ExtraFiles) < 2 {
			cmd.ExtraFiles = append(cmd.ExtraFiles, nil)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, from.LazyPages, from.LazyDone) // lazyFD, lazyDoneFD
	}
	if from != nil && from.Archive != nil {
		cmd.Args = append(cmd.Args, "--lazy-archive")
		for len(cmd.ExtraFiles) < archiveFD-3 {
			cmd.ExtraFiles = append(cmd.ExtraFiles, nil)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, from.Archive) // archiveFD
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = h.hostEnv()
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return 0, "", fmt.Errorf("start supervisor: %w", err)
	}
	var msg readyMsg
	if err := json.NewDecoder(readyR).Decode(&msg); err != nil {
		cmd.Wait()
		return 0, "", fmt.Errorf("supervisor failed: %s", lastLine(logf.Name()))
	}
	// The supervisor lives on; it is not waited for here.
	cmd.Process.Release()
	if msg.Error != "" {
		return 0, "", errors.New(msg.Error)
	}
	return msg.Pid, msg.Warning, nil
}

// supervisorLog opens node id's supervisor.log for appending: where its
// supervisor, and the keeper of a post-copy restore, write.
func (h *Host) supervisorLog(id string) (*os.File, error) {
	return os.OpenFile(filepath.Join(h.Store.NodeDir(id), "supervisor.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
}

func lastLine(file string) string {
	data, _ := os.ReadFile(file)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if l := lines[len(lines)-1]; l != "" {
		return l
	}
	return "no message (see " + file + ")"
}

// Supervise is the supervisor: it starts the node's init (or restores it,
// when from is set), reports to the command that started it on fd 3, then
// stays the init's parent until it ends and records its exit status.
func Supervise(h *Host, id string, from *FromImages) error {
	ready := os.NewFile(3, "ready")
	report := func(m readyMsg) {
		json.NewEncoder(ready).Encode(m)
		ready.Close()
	}
	var pid int
	var lazy *criu.LazyPages
	moved, err := h.joinNetwork(id)
	switch {
	case err != nil:
	case from != nil && from.Archive != nil:
		if err = servePages(from); err == nil {
			pid, lazy, err = h.restoreInit(id, from)
		}
	case from != nil:
		pid, lazy, err = h.restoreInit(id, from)
	default:
		pid, err = h.startInit(id)
	}
	if err != nil {
		report(readyMsg{Error: err.Error()})
		return err
	}
	if err := h.recordRunning(id, pid, from == nil); err != nil {
		unix.Kill(pid, unix.SIGKILL)
		if lazy != nil {
			h.endLazy(id, lazy, from.LazyDone, err)
		}
		report(readyMsg{Error: err.Error()})
		return err
	}
	// An init that ends while its memory arrives does not end the
	// transfer (the daemon sees it go): its result is still reported.
	defer h.followLazy(id, lazy, from)()
	stop, err := h.serveAPI(id)
	if err != nil {
		// The node runs; only crtree inside it will not work.
		fmt.Fprintln(os.Stderr, "crtree supervisor:", err)
		stop = func() {}
	}
	defer stop()
	go h.watchFreeze(id)
	report(readyMsg{Pid: pid, Warning: boundToOld(pid, moved)})
	return h.reap(id, pid)
}

// followLazy, for a node restored post-copy (lazy not nil), waits in
// the background until its memory has arrived or failed to, and returns
// what waits for that end.
func (h *Host) followLazy(id string, lazy *criu.LazyPages, from *FromImages) (wait func()) {
	if lazy == nil {
		return func() {}
	}
	ended := make(chan struct{})
	// Its processes' memory goes with this process until it has all
	// arrived: the OOM killer must pick another meanwhile. (Set once
	// CRIU is done: what it starts would inherit the score.)
	oomBack := keepFromOOM()
	go func() {
		defer close(ended)
		h.endLazy(id, lazy, from.LazyDone, nil)
		oomBack()
		if from.Archive != nil {
			// Arrived, or the node was killed: either way no page is
			// served any more.
			from.Archive.Close()
			h.releaseCommitted(id)
			os.RemoveAll(from.Dir)
		}
	}()
	return func() { <-ended }
}

// startInit starts the init stage in new namespaces, inside the node's
// cgroup, and waits until it has exec'd the node's command.
func (h *Host) startInit(id string) (int, error) {
	n, leaf, err := h.nodeAndLeaf(id)
	if err != nil {
		return 0, err
	}
	cfg, err := h.initConfig(&n)
	if err != nil {
		return 0, err
	}
	if cfg.Binary, err = h.StableBinary(); err != nil {
		return 0, fmt.Errorf("copy the crtree binary: %w", err)
	}
	cg, err := leaf.Open()
	if err != nil {
		return 0, fmt.Errorf("open cgroup: %w", err)
	}
	defer cg.Close()
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	flags := unix.CLONE_NEWPID | unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC
	if cfg.OwnNet {
		flags |= unix.CLONE_NEWNET
	}
	cmd := exec.Command(SelfExe, "__init")
	cmd.ExtraFiles = []*os.File{cfgR, errW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  uintptr(flags),
		UseCgroupFD: true,
		CgroupFD:    int(cg.Fd()),
	}
	cmd.Env = []string{}
	if cfg.Netns != "" {
		err = network.StartIn(cfg.Netns, cmd.Start)
	} else {
		err = cmd.Start()
	}
	cfgR.Close()
	errW.Close()
	if err != nil {
		cfgW.Close()
		errR.Close()
		return 0, fmt.Errorf("start node init: %w", err)
	}
	json.NewEncoder(cfgW).Encode(cfg)
	cfgW.Close()
	msg, _ := io.ReadAll(bufio.NewReader(errR))
	errR.Close()
	if len(msg) > 0 {
		cmd.Wait()
		return 0, fmt.Errorf("start node: %s", msg)
	}
	return cmd.Process.Pid, nil
}

// nodeAndLeaf returns a copy of the node with the given ID, and the cgroup
// its processes live in (which never moves: mv keeps the parent).
func (h *Host) nodeAndLeaf(id string) (hier.Node, cgroup.Group, error) {
	var n hier.Node
	var leaf cgroup.Group
	err := h.Store.View(func(t *hier.Tree) error {
		m := t.Nodes[id]
		if m == nil {
			return fmt.Errorf("node %s: %w", id, hier.ErrNotFound)
		}
		n, leaf = *m, h.Group(t, m).Leaf()
		return nil
	})
	return n, leaf, err
}

// initConfig turns a node's spec into what the init stage needs.
func (h *Host) initConfig(n *hier.Node) (InitConfig, error) {
	cfg := InitConfig{
		RootDir:  h.RootDir(n.ID),
		Hostname: n.Spec.Hostname,
		Cmd:      n.Spec.Cmd,
		Env:      nodeEnv(n.Spec, n.Spec.User),
		Cwd:      n.Spec.Cwd,
		Binds:    n.Spec.Binds,
		OwnNet:   n.Spec.Net == hier.NetNone,
		Netns:    h.netnsOf(n),
		Init:     n.Spec.Init,
		User:     n.Spec.User,
		APIDir:   h.APIDir(n.ID),
	}
	if cfg.Hostname == "" {
		cfg.Hostname = n.Name
	}
	lower, err := h.lowerDir(n)
	if err != nil {
		return cfg, err
	}
	if lower != "" {
		cfg.Lower, cfg.OwnRoot = lower, n.Spec.Image != ""
		cfg.Upper = h.UpperDir(n)
		cfg.Work = filepath.Join(h.Store.NodeDir(n.ID), "work")
	}
	return cfg, nil
}

// lowerDir is the read-only base of n's root as overlayfs's lowerdir: its
// image's layers or its --rootfs directory; "" when its root is a
// directory of its own.
func (h *Host) lowerDir(n *hier.Node) (string, error) {
	if n.Spec.Image != "" {
		im, err := h.Images.GetID(n.Spec.Image)
		if err != nil {
			return "", err
		}
		return h.Images.Lower(im), nil
	}
	return n.Spec.Rootfs, nil
}

// recordRunning records the node's init; done says the node is complete
// with it (run), as opposed to one node of a restore still under way.
func (h *Host) recordRunning(id string, pid int, done bool) error {
	start, err := StartTime(pid)
	if err != nil {
		return fmt.Errorf("node init %d: %w", pid, err)
	}
	self := os.Getpid()
	selfStart, _ := StartTime(self)
	return h.Store.Update(func(t *hier.Tree) error {
		n := t.Nodes[id]
		if n == nil {
			return fmt.Errorf("node %s was removed while starting", id)
		}
		n.State = hier.Running
		n.Pid, n.PidStart = pid, start
		n.SupervisorPid, n.SupervisorStart = self, selfStart
		if done {
			handOver(n)
		}
		return nil
	})
}

// reap waits for the init and records how it ended. Only the init is
// waited for: the commands run for the node's API are waited for by
// their own handlers. The status is recorded before the init is reaped:
// until then it is a zombie, which StatusOf shows as exited with that
// status, so that no one ever sees the node exited(?) meanwhile.
func (h *Host) reap(id string, initPid int) error {
	if err := waitEnded(initPid); err != nil {
		return fmt.Errorf("wait for node init: %w", err)
	}
	start, _ := StartTime(initPid)
	code, ok := exiting(initPid, start)
	if ok {
		if err := h.recordExit(id, initPid, code); err != nil {
			return err
		}
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(initPid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for node init: %w", err)
		}
		if pid != initPid {
			continue
		}
		if ok {
			return nil
		}
		code := ws.ExitStatus()
		if ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return h.recordExit(id, initPid, code)
	}
}

// waitEnded waits until pid, a child, has ended, without reaping it.
func waitEnded(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return err
		}
	}
}

// recordExit records that the node's init initPid ended with code.
func (h *Host) recordExit(id string, initPid, code int) error {
	return h.Store.Update(func(t *hier.Tree) error {
		n := t.Nodes[id]
		if n == nil || n.Pid != initPid {
			return hier.ErrUnchanged
		}
		n.State = hier.Exited
		n.ExitCode = code
		n.Pid, n.PidStart = 0, 0
		n.SupervisorPid, n.SupervisorStart = 0, 0
		return nil
	})
}

// hostEnv is the environment for crtree processes that work on the host
// side (supervisors): the Host's, without the scope of a node.
func (h *Host) hostEnv() []string {
	env := []string{} // never nil, which exec takes for this process's

	for _, kv := range h.Env {
		if strings.HasPrefix(kv, EnvScope+"=") || strings.HasPrefix(kv, EnvScopeCwd+"=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}
