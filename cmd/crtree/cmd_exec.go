package main

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/node"
)

func newExecCmd(g *globalOptions) *cobra.Command {
	o := &node.ExecOptions{}
	cmd := &cobra.Command{
		Use:   "exec PATH [flags] -- CMD [ARGS...]",
		Short: "Run a command inside a running node",
		Long: `Run CMD inside the running node PATH: in all its namespaces, its root and
its cgroup, with the node's environment, and stdin, stdout and stderr
attached. CMD leads a new session of the node (with -t, on a new terminal
of the node), so that whatever it leaves running in the background is a
process of the node like any other, which a dump carries. While crtree exec
is attached, the node cannot be dumped. SIGINT, SIGTERM, SIGHUP and SIGQUIT
are passed on to CMD's process group. crtree exec exits with CMD's exit
status (126 when CMD cannot be run, 127 when it is not found).`,
		Example: "  crtree exec /vserver1 -- hostname\n  crtree exec -t /vserver1 -- sh",
		Args: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 || len(args) < 2 {
				return usageError{errors.New("usage: crtree exec PATH [flags] -- CMD [ARGS...]")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			p, h, err := g.nodeAndHost(args[0])
			if err != nil {
				return err
			}
			c, done, err := h.ExecCommand(p, args[1:], *o)
			if err != nil {
				return err
			}
			defer done()
			if o.TTY {
				n, _, err := h.Get(p)
				if err != nil {
					return err
				}
				return runWithPTY(c, n.Pid, func() error { return h.StartExec(p, c) })
			}
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
			if err := h.StartExec(p, c); err != nil {
				return err
			}
			defer forwardSignals(c.Process.Pid)()
			return exitFromRun(c.Wait())
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.TTY, "tty", "t", false, "allocate a terminal for CMD")
	f.StringArrayVarP(&o.Env, "env", "e", nil, "set an environment variable K=V (repeatable)")
	f.StringVarP(&o.Cwd, "cwd", "w", "", "working directory inside the node")
	f.StringVarP(&o.User, "user", "u", "", "run CMD as USER[:GROUP] (default: the node's user, as run --user or its image set it)")
	return cmd
}

// exitFromRun turns the error of a finished command into its exit status.
func exitFromRun(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		// Killed by a signal (nsenter dies of the signal that killed
		// the command): 128+N, as shells report it.
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return exitStatus{code}
	}
	return err
}

// forwardSignals passes the signals a user sends crtree exec on to the
// command started through nsenterPid, until the returned stop is called.
func forwardSignals(nsenterPid int) (stop func()) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				node.SignalExec(nsenterPid, s.(syscall.Signal))
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(sigs); close(done) }
}
