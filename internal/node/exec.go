package node

import (
	"fmt"
	"os/exec"
	"syscall"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/hier"
)

// ExecCommand returns a command that runs argv inside the running node at
// p: in all its namespaces, its root and its cgroup, with the node's
// environment. The caller sets up stdio and runs it; the cgroup handle in
// the returned cleanup must be closed after Start.
//
// Entering a mount namespace needs a single-threaded process, which a Go
// program is not, so the entering is done by nsenter(1) from util-linux.
func (h *Host) ExecCommand(p hier.Path, argv []string, extraEnv []string, cwd string) (*exec.Cmd, func(), error) {
	var n *hier.Node
	var leaf cgroup.Group
	err := h.Store.View(func(t *hier.Tree) error {
		m, err := lookupNode(t, p)
		if err != nil {
			return err
		}
		if StatusOf(m).State != hier.Running {
			return fmt.Errorf("exec %s: %w", p, ErrNotRunning)
		}
		if err := CheckFree(t, m, false); err != nil {
			return fmt.Errorf("exec %s: %w", p, err)
		}
		c := *m
		n = &c
		leaf = h.Group(t, m).Leaf()
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return nil, nil, fmt.Errorf("exec: nsenter (util-linux) is needed to enter a node: %w", err)
	}
	if cwd == "" {
		cwd = n.Spec.Cwd
	}
	if cwd == "" {
		cwd = "/"
	}
	args := []string{"--target", fmt.Sprint(n.Pid), "--mount", "--uts", "--ipc", "--pid", "--root"}
	if n.Spec.Net == hier.NetNone {
		args = append(args, "--net")
	}
	args = append(args, "--")
	if cwd != "/" {
		// nsenter's --wd opens the directory before entering the node's
		// root, so the working directory is set by env(1) inside instead.
		args = append(args, "/usr/bin/env", "--chdir="+cwd, "--")
	}
	args = append(args, argv...)
	cg, err := leaf.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("exec %s: open cgroup: %w", p, err)
	}
	cmd := exec.Command(nsenter, args...)
	cmd.Env = MergeEnv(MergeEnv(DefaultEnv, n.Spec.Env), extraEnv)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	return cmd, func() { cg.Close() }, nil
}
