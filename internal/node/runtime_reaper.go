package node

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReaperName is argv[0] of the minimal init that `crtree run --init` puts
// at a node's PID 1: the crtree binary bound in the node, so that ps shows
// "crtree-init CMD...".
const ReaperName = "crtree-init"

// ReaperMain is that minimal init. It starts argv as its child, passes on
// to it every signal it receives, waits for every process that ends in
// the node (orphans are reparented to PID 1, and a command that never
// waits would leave them zombies), and exits with the child's status as
// soon as the child ends (128+N when killed by signal N). A failure to
// start the command is written to fd 4, as InitMain does; fd 4 is closed
// once the command runs.
func ReaperMain(argv, env []string) {
	fail := func(err error) {
		unix.Write(4, []byte(err.Error()))
		os.Exit(1)
	}
	// The command must not inherit it.
	unix.CloseOnExec(4)
	if len(argv) == 0 {
		fail(errors.New("start node: no command"))
	}
	path, err := lookPath(argv[0], env)
	if err != nil {
		fail(err)
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs)
	// syscall.ForkExec rather than os.StartProcess: the latter keeps a
	// pidfd, a descriptor CRIU would have to dump.
	child, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{Env: env, Files: []uintptr{0, 1, 2}})
	if err != nil {
		fail(fmt.Errorf("exec %s: %w", argv[0], err))
	}
	unix.Close(4)
	go func() {
		for s := range sigs {
			switch s {
			case unix.SIGCHLD, unix.SIGURG, unix.SIGPIPE:
				// Ours: the end of a child, the Go runtime's preemption.
			default:
				unix.Kill(child, s.(syscall.Signal))
			}
		}
	}()
	os.Exit(reapUntil(child))
}

// reapUntil waits for any child until child ends and returns its status.
func reapUntil(child int) int {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 1
		}
		if pid != child {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
}
