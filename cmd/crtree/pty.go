package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// openNodePTY opens a new pseudo-terminal pair in the node's own devpts
// instance (through /proc/PID/root of its init), so that the terminal is
// a real /dev/pts/N inside the node.
func openNodePTY(initPid int) (master, slave *os.File, err error) {
	m, err := os.OpenFile(fmt.Sprintf("/proc/%d/root/dev/pts/ptmx", initPid), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open terminal in node: %w", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("unlock terminal: %w", err)
	}
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, m.Fd(), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if errno != 0 {
		err = errno
		m.Close()
		return nil, nil, fmt.Errorf("open terminal peer: %w", err)
	}
	return m, os.NewFile(uintptr(fd), "pty-slave"), nil
}

// runWithPTY runs c on a new pseudo-terminal of the node, copying between
// it and our stdin/stdout, with our terminal (if any) in raw mode meanwhile;
// start starts c.
func runWithPTY(c *exec.Cmd, initPid int, start func() error) error {
	ptmx, tty, err := openNodePTY(initPid)
	if err != nil {
		return err
	}
	defer ptmx.Close()
	// The command makes the terminal its controlling terminal itself, in
	// its own session inside the node (node.SetsidMain).
	c.Stdin, c.Stdout, c.Stderr = tty, tty, tty
	if term.IsTerminal(int(os.Stdin.Fd())) {
		pty.InheritSize(os.Stdin, ptmx)
	}
	err = start()
	tty.Close()
	if err != nil {
		return err
	}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		if st, err := term.MakeRaw(int(os.Stdin.Fd())); err == nil {
			defer term.Restore(int(os.Stdin.Fd()), st)
		}
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				pty.InheritSize(os.Stdin, ptmx)
			}
		}()
	}
	defer forwardSignals(c.Process.Pid)()
	go io.Copy(ptmx, os.Stdin)
	io.Copy(os.Stdout, ptmx)
	return exitFromRun(c.Wait())
}
