package network

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// NewNS makes a new network namespace, with only a loopback interface
// (up), and keeps it as the file path (a bind mount of the namespace),
// which must not exist.
func NewNS(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o600)
	if err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	f.Close()
	err = inThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return err
		}
		if err := loopbackUp(); err != nil {
			return err
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		return unix.Mount(self, path, "", unix.MS_BIND, "")
	})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("network namespace: %w", err)
	}
	return nil
}

// RemoveNS lets go of the namespace kept as path (it ends once no
// process is in it) and removes the file. A path that is not there is
// no error.
func RemoveNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("network namespace: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("network namespace: %w", err)
	}
	return nil
}

// IsNS reports whether path holds a network namespace (NewNS's mount).
func IsNS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// StartIn runs start (which starts a process: exec.Cmd.Start) in the
// network namespace kept as path: the process is created by a thread
// that has entered the namespace, and so is in it. The thread is not
// used again.
func StartIn(path string, start func() error) error {
	return inThread(func() error {
		if err := enter(path); err != nil {
			return err
		}
		return start()
	})
}

// AllowNonlocalBind lets the sockets of the network namespace kept as
// path bind to addresses it does not have (net.ipv4.ip_nonlocal_bind):
// what a restored socket bound to the node's old address needs.
func AllowNonlocalBind(path string) error {
	return inThread(func() error {
		if err := enter(path); err != nil {
			return err
		}
		// /proc/sys/net is the opening thread's namespace's.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_nonlocal_bind", []byte("1"), 0); err != nil {
			return fmt.Errorf("allow non-local binds in %s: %w", path, err)
		}
		return nil
	})
}

// enter moves the calling thread (locked, not used again: inThread) into
// the network namespace kept as path.
func enter(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	return nil
}

// inThread runs fn on an OS thread of its own, which ends with it: what
// fn changes of its thread (its network namespace) touches nothing else.
func inThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: Go ends the thread when the goroutine returns.
		runtime.LockOSThread()
		errc <- fn()
	}()
	return <-errc
}

// loopbackUp sets the loopback interface of the calling thread's network
// namespace up.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
