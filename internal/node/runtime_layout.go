package node

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/crtree/crtree/internal/api"
	"github.com/crtree/crtree/internal/hier"

	"golang.org/x/sys/unix"
)

// HostReadOnly are the host directories every node sees read-only. They
// are external mounts for CRIU: the restoring host provides its own.
var HostReadOnly = []string{"/usr", "/etc"}

// mergedUsrLinks are top-level directories that Debian (merged /usr) makes
// symlinks into /usr; a node gets the same symlinks, or a read-only bind
// where the host has a real directory.
var mergedUsrLinks = []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}

// LogPath is where, inside a node, its init's stdout and stderr go.
const LogPath = "/.crtree/log"

// devices are the character devices created in a node's /dev.
var devices = []struct {
	name         string
	major, minor uint32
}{
	{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
	{"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
}

// ExternalMounts returns the external mounts (mounts inside a node that
// come from the host, which CRIU leaves out of its images) of a node with
// these binds, each as a bind of its host path at its mount point: the
// read-only host directories (unless ownRoot: the node runs on an image,
// which has its own) and the binds. The node's crtree API directory and
// binary are external mounts too (Host.ExternalMountsFor).
func ExternalMounts(binds []hier.Bind, ownRoot bool) []hier.Bind {
	if ownRoot {
		return binds
	}
	var out []hier.Bind
	for _, d := range HostReadOnly {
		out = append(out, hier.Bind{Source: d, Target: d, ReadOnly: true})
	}
	for _, l := range mergedUsrLinks {
		if fi, err := os.Lstat(l); err == nil && fi.IsDir() {
			out = append(out, hier.Bind{Source: l, Target: l, ReadOnly: true})
		}
	}
	return append(out, binds...)
}

// buildRoot lays out the node's mounts under root, in the new mount
// namespace, before pivot_root.
func buildRoot(cfg *InitConfig) error {
	root := cfg.RootDir
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if cfg.Lower != "" {
		opts, err := overlayOptions(cfg.Lower, cfg.Upper, cfg.Work)
		if err != nil {
			return err
		}
		if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
			return fmt.Errorf("mount overlay root on %s: %w", cfg.Lower, err)
		}
	} else if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind root: %w", err)
	}
	for _, l := range mergedUsrLinks {
		if cfg.OwnRoot {
			break
		}
		target, err := os.Readlink(l)
		if err != nil {
			continue
		}
		dst := filepath.Join(root, l)
		if _, err := os.Lstat(dst); os.IsNotExist(err) {
			if err := os.Symlink(target, dst); err != nil {
				return fmt.Errorf("link %s: %w", l, err)
			}
		}
	}
	for _, m := range ExternalMounts(cfg.Binds, cfg.OwnRoot) {
		if err := bindInto(root, m); err != nil {
			return err
		}
	}
	if cfg.APIDir != "" {
		if err := bindInto(root, hier.Bind{Source: cfg.APIDir, Target: api.MountPoint}); err != nil {
			return err
		}
		if err := bindInto(root, hier.Bind{Source: cfg.Binary, Target: api.MountPoint + "/" + api.BinaryName, ReadOnly: true}); err != nil {
			return err
		}
	}
	if err := buildDev(filepath.Join(root, "dev")); err != nil {
		return err
	}
	if err := mkdirIn(root, "/proc", 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := mkdirIn(root, "/tmp", 0o777); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return err
	}
	return mkdirIn(root, filepath.Dir(LogPath), 0o700)
}

// mkdirIn creates dir (an absolute path inside the node) below root. The
// node's root is its own storage, so a path in it must not be followed
// through a symlink out of it; os.Root keeps it inside.
func mkdirIn(root, dir string, perm os.FileMode) error {
	rel := strings.Trim(filepath.Clean(dir), "/")
	if rel == "" {
		return nil
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.MkdirAll(rel, perm); err != nil {
		return fmt.Errorf("create %s in node root: %w", dir, err)
	}
	return nil
}

// bindInto binds m.Source at m.Target inside root, read-only if asked.
func bindInto(root string, m hier.Bind) error {
	fi, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("bind %s: %w", m.Source, err)
	}
	dst := filepath.Join(root, m.Target)
	if fi.IsDir() {
		err = mkdirIn(root, m.Target, 0o755)
	} else {
		if err = mkdirIn(root, filepath.Dir(m.Target), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("bind %s: %w", m.Target, err)
	}
	// Resolve the target again after creating it: it must still be inside
	// the root (a symlink in node storage could point elsewhere).
	real, err := filepath.EvalSymlinks(dst)
	if err != nil || (real != root && !hasDirPrefix(real, root)) {
		return fmt.Errorf("bind target %s leaves the node's root", m.Target)
	}
	if err := unix.Mount(m.Source, real, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
		var st unix.Statfs_t
		if unix.Statfs(real, &st) == nil {
			// Keep the flags the source mount has, or remount fails.
			flags |= uintptr(st.Flags) & (unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOATIME | unix.MS_RELATIME | unix.MS_NODIRATIME)
		}
		if err := unix.Mount("", real, "", flags, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", m.Target, err)
		}
	}
	return nil
}

func hasDirPrefix(p, dir string) bool {
	return len(p) > len(dir) && p[:len(dir)] == dir && p[len(dir)] == '/'
}

// buildDev mounts a small tmpfs on dir with the usual character devices,
// a private devpts instance and /dev/shm.
func buildDev(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=65536k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	old := unix.Umask(0)
	defer unix.Umask(old)
	for _, d := range devices {
		if err := unix.Mknod(filepath.Join(dir, d.name), unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("create /dev/%s: %w", d.name, err)
		}
	}
	for _, sub := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("devpts", filepath.Join(dir, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("mount /dev/pts: %w", err)
	}
	if err := unix.Mount("shm", filepath.Join(dir, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=65536k"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	for name, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// pivot makes root the node's / and detaches the host's tree.
func pivot(root string) error {
	old := filepath.Join(root, ".oldroot")
	if err := os.MkdirAll(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.oldroot", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach host root: %w", err)
	}
	return os.Remove("/.oldroot")
}

// overlayOptions are the mount options of an overlay root: lower (layers
// joined by ':', top first) below upper. overlayfs takes them as one
// string of at most a page, which separates paths by ':' and ','.
func overlayOptions(lower, upper, work string) (string, error) {
	for _, p := range append(strings.Split(lower, ":"), upper, work) {
		if strings.ContainsAny(p, ":,") {
			return "", fmt.Errorf("overlayfs cannot take the path %q (it holds ':' or ','): choose a state root or --rootfs without them", p)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if len(opts) >= 4096 {
		return "", fmt.Errorf("the node's base has too many layers (%d) for overlayfs's mount options (a page): flatten the image", strings.Count(lower, ":")+1)
	}
	return opts, nil
}
