package node

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/api"
	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/hier"
)

// StartExec starts c, a command from ExecCommand for the node at p,
// once more checking under the tree's lock that no dump or restore holds
// the node: a dump that took hold between ExecCommand and now would
// freeze the command and kill it with the node (if it took hold after,
// it sees the command and refuses, see AttachedExec).
func (h *Host) StartExec(p hier.Path, c *exec.Cmd) error {
	return h.Store.View(func(t *hier.Tree) error {
		n, err := lookupNode(t, p)
		if err != nil {
			return err
		}
		if err := CheckFree(t, n, false); err != nil {
			return fmt.Errorf("exec %s: %w", p, err)
		}
		// Only c's stdio and ExtraFiles go into the node, not what the
		// caller's shell left open without close-on-exec.
		if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
			return fmt.Errorf("exec %s: close-on-exec: %w", p, err)
		}
		return c.Start()
	})
}

// ExecCommand returns a command that runs argv inside the running node at
// p: in all its namespaces, its root and its cgroup, with the node's
// environment, as the leader of a new session of the node (with tty, its
// stdin becomes the session's controlling terminal). The caller sets up
// stdio and starts it with StartExec; the cgroup handle in the returned
// cleanup must be closed after that.
//
// Entering a mount namespace needs a single-threaded process, which a Go
// program is not, so the entering is done by nsenter(1) from util-linux.
// nsenter stays outside the node, as the parent of the command, until the
// command ends: it is in its own process group, so that a terminal's
// signals reach crtree only, which passes them on (SignalExec).
func (h *Host) ExecCommand(p hier.Path, argv []string, o ExecOptions) (*exec.Cmd, func(), error) {
	extraEnv, cwd, tty := o.Env, o.Cwd, o.TTY
	n, leaf, nsenter, err := h.enterTarget(func(t *hier.Tree) (*hier.Node, error) { return lookupNode(t, p) })
	if errors.Is(err, hier.ErrNotFound) {
		return nil, nil, err // it names the path already
	}
	if err != nil {
		return nil, nil, fmt.Errorf("exec %s: %w", p, err)
	}
	if cwd == "" {
		cwd = n.Spec.Cwd
	}
	if cwd == "" {
		cwd = "/"
	}
	args := enterArgs(n)
	// The command's session must be one of the node's (CRIU dumps no
	// process whose session leader is outside the node's PID namespace),
	// so the crtree binary bound in the node starts it (SetsidMain). It
	// also sets the working directory: nsenter's --wd opens the directory
	// before entering the node's root.
	args = append(args, "--", api.MountPoint+"/"+api.BinaryName, SetsidArg, "--cwd="+cwd)
	if tty {
		args = append(args, "--tty")
	}
	user := o.User
	if user == "" {
		user = n.Spec.User
	}
	if user != "" {
		args = append(args, "--user="+user)
	}
	args = append(args, "--")
	args = append(args, argv...)
	cg, err := leaf.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("exec %s: open cgroup: %w", p, err)
	}
	cmd := exec.Command(nsenter, args...)
	cmd.Env = MergeEnv(nodeEnv(n.Spec, user), extraEnv)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Setpgid: true}
	return cmd, func() { cg.Close() }, nil
}

// ExecOptions say how ExecCommand runs a command in a node.
type ExecOptions struct {
	// Env is added to the node's environment.
	Env []string
	// Cwd is the working directory, "" for the node's.
	Cwd string
	// TTY gives the command its stdin as controlling terminal.
	TTY bool
	// User is who the command runs as, "user[:group]"; "" for the node's
	// user (hier.Spec.User: root unless run --user or its image says).
	User string
}

// SetsidArg is the hidden command of the crtree binary that starts an
// exec'd command inside a node (SetsidMain).
const SetsidArg = "__setsid"

// SetsidMain runs inside a node, as the child nsenter forks there for
// crtree exec, with args "--cwd=DIR [--tty] -- CMD...": it makes itself the
// leader of a new session of the node (with --tty, its stdin the
// session's controlling terminal, so that a shell has job control),
// closes every inherited descriptor but stdin, stdout and stderr, changes
// to DIR and execs CMD, whose exit status thus reaches crtree exec
// unchanged. It does not return: failures exit 126 (127: CMD not found).
func SetsidMain(args, env []string) {
	fail := func(code int, err error) {
		fmt.Fprintln(os.Stderr, "crtree:", err)
		os.Exit(code)
	}
	cwd, tty, user, argv, err := parseSetsid(args)
	if err != nil {
		fail(126, err)
	}
	if _, err := unix.Setsid(); err != nil {
		fail(126, fmt.Errorf("exec %s: new session: %w", argv[0], err))
	}
	if tty {
		if err := unix.IoctlSetInt(0, unix.TIOCSCTTY, 0); err != nil {
			fail(126, fmt.Errorf("exec %s: controlling terminal: %w", argv[0], err))
		}
	}
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fail(126, fmt.Errorf("exec %s: close inherited descriptors: %w", argv[0], err))
	}
	if err := unix.Chdir(cwd); err != nil {
		fail(126, fmt.Errorf("exec %s: working directory %s: %w", argv[0], cwd, err))
	}
	if user != "" {
		if err := switchUser(user, &env); err != nil {
			fail(126, fmt.Errorf("exec %s: %w", argv[0], err))
		}
	}
	path, err := lookPath(argv[0], env)
	if err != nil {
		fail(127, err)
	}
	err = unix.Exec(path, argv, env)
	if errors.Is(err, unix.ENOENT) {
		fail(127, fmt.Errorf("exec %s: %w", argv[0], err))
	}
	fail(126, fmt.Errorf("exec %s: %w", argv[0], err))
}

func parseSetsid(args []string) (cwd string, tty bool, user string, argv []string, err error) {
	cwd = "/"
	for i, a := range args {
		switch {
		case a == "--":
			if i+1 == len(args) {
				return "", false, "", nil, errors.New("exec: no command")
			}
			return cwd, tty, user, args[i+1:], nil
		case a == "--tty":
			tty = true
		case strings.HasPrefix(a, "--cwd="):
			cwd = strings.TrimPrefix(a, "--cwd=")
		case strings.HasPrefix(a, "--user="):
			user = strings.TrimPrefix(a, "--user=")
		default:
			return "", false, "", nil, fmt.Errorf("exec: unknown option %q", a)
		}
	}
	return "", false, "", nil, errors.New("exec: no command")
}

// SignalExec passes sig on to what crtree exec started through the
// nsenter process nsenterPid: the process group of the command in the
// node (the command itself while it has not made its session yet).
func SignalExec(nsenterPid int, sig unix.Signal) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nsenterPid, nsenterPid))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if unix.Kill(-pid, sig) != nil {
			unix.Kill(pid, sig)
		}
	}
}

// AttachedExec returns a process of a running node, whose processes are in
// the cgroup leaf and whose init is initPid, that a crtree exec still
// holds from outside the node: a command whose parent (nsenter) is outside
// the node's PID namespace, or nsenter itself before it has forked. CRIU
// dumps only the processes below the node's init, so a dump would lose
// such a process. The command is named as the user gave it to exec.
func AttachedExec(leaf cgroup.Group, initPid int) (ProcInfo, bool) {
	nodeNS, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", initPid))
	if err != nil {
		return ProcInfo{}, false
	}
	// A process that ends meanwhile has no namespace to read: it is left
	// out, neither in the node nor outside.
	outsideNode := func(pid int) (outside, ok bool) {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
		return ns != nodeNS, err == nil
	}
	pids, _ := leaf.Procs()
	outside := 0
	for _, pid := range pids {
		if pid == initPid {
			continue
		}
		out, ok := outsideNode(pid)
		if !ok {
			continue
		}
		if out {
			if outside == 0 {
				outside = pid
			}
			continue
		}
		ppid, err := parentPid(pid)
		if err != nil {
			continue
		}
		if out, ok := outsideNode(ppid); ok && out {
			if info, err := ReadProc(pid); err == nil {
				info.Cmd = execCommandLine(info.Cmd)
				return info, true
			}
		}
	}
	if outside != 0 {
		if info, err := ReadProc(outside); err == nil {
			info.Cmd = execCommandLine(info.Cmd)
			return info, true
		}
	}
	return ProcInfo{}, false
}

// parentPid returns the PPid of pid, as the host sees it.
func parentPid(pid int) (int, error) {
	info, err := readStatus(pid)
	return info.PPid, err
}

// execCommandLine keeps, of the command line of nsenter or of SetsidMain,
// the command given to crtree exec, at most 60 characters of it.
func execCommandLine(cmd string) string {
	if i := strings.Index(cmd, SetsidArg); i >= 0 {
		if j := strings.Index(cmd[i:], " -- "); j >= 0 {
			cmd = cmd[i+j+len(" -- "):]
		}
	}
	if len(cmd) > 60 {
		cmd = cmd[:57] + "..."
	}
	return cmd
}

// HelperCommand returns the command that runs the crtree binary bound in
// the running node id with args, as one of the node's processes: in all its
// namespaces and its root (through nsenter, as ExecCommand) and its
// cgroup. It is a helper that changes the node's mounts (attaching its
// view of the tree): whatever runs there is the node's, confined as the
// node is, since the binary bound in the node is the node's to replace.
// The caller runs cmd, then calls the returned cleanup.
func (h *Host) HelperCommand(id string, args ...string) (*exec.Cmd, func(), error) {
	// Not under a dump either (enterTarget): it would meet a mount it did
	// not plan for.
	n, leaf, nsenter, err := h.enterTarget(func(t *hier.Tree) (*hier.Node, error) {
		if m := t.Nodes[id]; m != nil {
			return m, nil
		}
		return nil, hier.ErrNotFound
	})
	if err != nil {
		return nil, nil, err
	}
	argv := append(enterArgs(n), "--", api.MountPoint+"/"+api.BinaryName)
	cg, err := leaf.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open cgroup: %w", err)
	}
	cmd := exec.Command(nsenter, append(argv, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	return cmd, func() { cg.Close() }, nil
}

// enterTarget returns a copy of the node find finds, its processes'
// cgroup and nsenter's path, refusing a node that does not run or that
// another command holds (being dumped, say).
func (h *Host) enterTarget(find func(t *hier.Tree) (*hier.Node, error)) (*hier.Node, cgroup.Group, string, error) {
	var n hier.Node
	var leaf cgroup.Group
	err := h.Store.View(func(t *hier.Tree) error {
		m, err := find(t)
		if err != nil {
			return err
		}
		if StatusOf(m).State != hier.Running {
			return ErrNotRunning
		}
		if err := CheckFree(t, m, false); err != nil {
			return err
		}
		n, leaf = *m, h.Group(t, m).Leaf()
		return nil
	})
	if err != nil {
		return nil, "", "", err
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return nil, "", "", fmt.Errorf("nsenter (util-linux) is needed to enter a node: %w", err)
	}
	return &n, leaf, nsenter, nil
}

// enterArgs are nsenter's arguments that enter every namespace of node n
// and its root.
func enterArgs(n *hier.Node) []string {
	args := []string{"--target", fmt.Sprint(n.Pid), "--mount", "--uts", "--ipc", "--pid", "--root"}
	if n.Spec.OwnNet() {
		args = append(args, "--net")
	}
	return args
}
