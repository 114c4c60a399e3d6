package treefs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// readyFd is the descriptor on which a tree server says it has mounted
// ("ok") or why it could not (anything else), then closes.
const readyFd = 3

// Start starts server, a command that serves the tree on a mount point
// (crtree's hidden __serve-tree), as a daemon in a session of its own, and
// returns once it has mounted, or with why it could not.
func Start(server *exec.Cmd) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	server.ExtraFiles = []*os.File{w}
	server.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = server.Start()
	w.Close()
	if err != nil {
		return fmt.Errorf("start the tree's server: %w", err)
	}
	msg, _ := io.ReadAll(io.LimitReader(r, 4096))
	if string(msg) == "ok" {
		server.Process.Release()
		return nil
	}
	server.Wait()
	if len(msg) == 0 {
		return errors.New("the tree's server ended before it had mounted (its log says why)")
	}
	return errors.New(strings.TrimSpace(string(msg)))
}

// Ready tells the command that started this server (Start) that the tree
// is mounted, or with a non-nil err why not.
func Ready(err error) {
	// Only the pipe Start gave: run by hand, fd 3 may be anything.
	var st unix.Stat_t
	if unix.Fstat(readyFd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return
	}
	f := os.NewFile(readyFd, "ready")
	if err != nil {
		fmt.Fprint(f, err.Error())
	} else {
		fmt.Fprint(f, "ok")
	}
	f.Close()
}

// MountPoint checks that dir can take the tree: an existing directory
// where no tree is mounted yet. It returns dir as an absolute path with
// its symlinks resolved, as the kernel will name it.
func MountPoint(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("mount on %s: %w", dir, unwrapPath(err))
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("mount on %s: %w", dir, unwrapPath(err))
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("mount on %s: %w", dir, syscall.ENOTDIR)
	}
	if mounted, err := IsMounted(real); err != nil {
		return "", err
	} else if mounted {
		return "", fmt.Errorf("mount on %s: the tree is already mounted there (crtree umount %s first)", dir, dir)
	}
	return real, nil
}

// IsMounted says whether a crtree tree is mounted on dir (an absolute
// path with its symlinks resolved).
func IsMounted(dir string) (bool, error) {
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != dir || m.FSType != FSType, false
	})
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	return len(ms) > 0, nil
}

// Unmount unmounts the tree mounted on dir. Its server then ends by
// itself. A tree with files or directories still open is refused, as
// umount(8) refuses it, with a hint.
func Unmount(dir string) error {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("umount %s: %w", dir, unwrapPath(err))
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return err
	}
	mounted, err := IsMounted(real)
	if err != nil {
		return err
	}
	if !mounted {
		return fmt.Errorf("umount %s: no crtree tree is mounted there", dir)
	}
	err = unix.Unmount(real, 0)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("umount %s: busy: a file or directory in it is open (a copy or a shell's working directory); umount -l %s detaches it now, and its server ends once the last is closed", dir, dir)
	}
	if err != nil {
		return fmt.Errorf("umount %s: %w", dir, err)
	}
	return nil
}

// unwrapPath drops the path an *os.PathError repeats.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Available says whether this machine can mount the tree: the kernel's
// FUSE device is there (the fuse module loaded).
func Available() error {
	var st unix.Stat_t
	if err := unix.Stat("/dev/fuse", &st); err != nil {
		return fmt.Errorf("/dev/fuse: %w (load the fuse module: modprobe fuse)", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return errors.New("/dev/fuse is not the FUSE device")
	}
	return nil
}
