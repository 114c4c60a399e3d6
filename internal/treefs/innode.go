package treefs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/node"
)

// A node's own view of the tree (crtree mount inside a node) is served on
// the host, by a server scoped to the node, like everything the node's
// crtree does. The server mounts it on a directory of its own, takes a
// detached copy of that mount (open_tree) and lets go of the directory;
// a helper that is one of the node's processes (node.Host.HelperCommand:
// the crtree binary bound in the node, run as AttachArg in the node's
// namespaces and cgroup) then attaches the copy on the directory the node
// named. The helper is the node's: it can do nothing the node could not.
// The mount lives as long as the node's mount namespace, or until
// unmounted; its server ends with it.

// AttachArg is the hidden command of the crtree binary bound in a node that
// attaches a tree mount (fd 3) on a directory of the node, or with
// --umount unmounts one (AttachMain).
const AttachArg = "__attach-tree"

// MountDetached mounts the tree as Mount does, on a directory of its own
// under tmpDir, and returns the server and a detached copy of the mount to
// attach elsewhere (AttachMain); the directory is gone when it returns. The
// server ends once every copy of the mount is gone.
func MountDetached(tmpDir string, opts Options) (*Server, *os.File, error) {
	dir, err := os.MkdirTemp(tmpDir, "tree-mount-")
	if err != nil {
		return nil, nil, err
	}
	defer os.Remove(dir)
	srv, err := Mount(dir, opts)
	if err != nil {
		return nil, nil, err
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err == nil {
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		unix.Unmount(dir, unix.MNT_DETACH)
		return nil, nil, fmt.Errorf("detach the tree's mount: %w", err)
	}
	return srv, os.NewFile(uintptr(fd), "tree"), nil
}

// RunHelper runs helper (AttachMain entering the node), with files from
// fd 3 on (the detached mount to attach), and returns its error.
func RunHelper(helper *exec.Cmd, files ...*os.File) error {
	helper.ExtraFiles = files
	var stderr strings.Builder
	helper.Stdout, helper.Stderr = io.Discard, &stderr
	if err := helper.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return errors.New(strings.TrimPrefix(msg, "crtree: "))
		}
		return fmt.Errorf("%s: %w", AttachArg, err)
	}
	return nil
}

// AttachMain is the helper inside a node (its mount namespace and root,
// not its other namespaces): args are --cwd=DIR, then --umount or not,
// then the mount point. It attaches the mount on fd 3 on an empty
// directory (a tree hides nothing), or unmounts a tree. It returns the
// exit status.
func AttachMain(args []string) int {
	if err := attach(args); err != nil {
		fmt.Fprintln(os.Stderr, "crtree:", err)
		return 1
	}
	return 0
}

func attach(args []string) error {
	cwd, umount := "/", false
	for len(args) > 1 && strings.HasPrefix(args[0], "--") {
		switch {
		case strings.HasPrefix(args[0], "--cwd="):
			cwd = strings.TrimPrefix(args[0], "--cwd=")
		case args[0] == "--umount":
			umount = true
		default:
			return fmt.Errorf("%s: unknown flag %s", AttachArg, args[0])
		}
		args = args[1:]
	}
	if len(args) != 1 {
		return fmt.Errorf("%s: one mount point expected", AttachArg)
	}
	if err := os.Chdir(cwd); err != nil {
		os.Chdir("/")
	}
	dir := args[0]
	if umount {
		return unmountHere(dir)
	}
	return attachHere(dir)
}

// attachHere attaches the mount on fd 3 on dir, which must be an empty
// directory; it is opened once, so that what is checked is what is
// mounted on.
func attachHere(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("mount on %s: %w", dir, err)
	}
	d := os.NewFile(uintptr(fd), dir)
	defer d.Close()
	names, err := d.Readdirnames(1)
	if err != nil && err != io.EOF {
		return fmt.Errorf("mount on %s: %w", dir, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("mount on %s: not an empty directory (the tree is mounted on an empty one, so that it hides nothing)", dir)
	}
	if err := unix.MoveMount(3, "", fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount on %s: %w", dir, err)
	}
	return nil
}

// unmountHere unmounts the tree on dir, nothing else: dir must be the
// root of a FUSE mount (the caller checked the node's mountinfo for a
// crtree tree there).
func unmountHere(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("umount %s: %w", dir, err)
	}
	if st.Type != unix.FUSE_SUPER_MAGIC {
		return fmt.Errorf("umount %s: no crtree tree is mounted there", dir)
	}
	err := unix.Unmount(dir, unix.UMOUNT_NOFOLLOW)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("umount %s: busy: a file or directory in it is open (a copy or a shell's working directory)", dir)
	}
	if err != nil {
		return fmt.Errorf("umount %s: %w", dir, err)
	}
	return nil
}

// InNodePath is the absolute path, inside a node, of dir as a process
// there whose working directory is cwd names it (not resolving symlinks).
func InNodePath(cwd, dir string) string {
	if !path.IsAbs(dir) {
		dir = path.Join(cwd, dir)
	}
	return path.Clean(dir)
}

// MountedIn says whether a crtree tree is mounted on dir (InNodePath) in
// the mount namespace of process pid.
func MountedIn(pid int, dir string) (bool, error) {
	ms, err := node.TreeMountsIn(pid)
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if filepath.Clean(m) == dir {
			return true, nil
		}
	}
	return false, nil
}
