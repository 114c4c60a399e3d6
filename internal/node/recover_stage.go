package node

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/crtree/crtree/internal/cgroup"

	"golang.org/x/sys/unix"
)

// shmDir is the tmpfs most Linux systems mount.
const shmDir = "/dev/shm"

// StageDir makes a directory for staging about need bytes of CRIU images.
// Images go to memory (tmpfs at /dev/shm) when it has room for them with
// a margin, so that CRIU writes and reads them at memory speed and the
// disk is left to the archive; otherwise to the state root's tmp/ on disk.
// Host.StageBase, if set, forces a directory.
func (h *Host) StageDir(kind string, need int64) (string, error) {
	base := h.StageBase
	if base == "" {
		base = h.TmpDir()
		if tmpfsFree(shmDir) > need+need/4+(64<<20) {
			base = shmDir
		}
	}
	return os.MkdirTemp(base, h.stagePrefix()+kind+"-")
}

// tmpfsFree returns the free bytes of dir if it is a tmpfs, else 0.
func tmpfsFree(dir string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil || st.Type != unix.TMPFS_MAGIC {
		return 0
	}
	return int64(st.Bavail) * st.Bsize
}

// stagePrefix is how the staging directories of this state root begin.
func (h *Host) stagePrefix() string { return stagePrefixFor(h.Store.Root) }

// stagePrefixFor is stagePrefix for a state root given by its absolute
// path: the name of its cgroup, which is unique to it.
func stagePrefixFor(root string) string {
	return filepath.Base(cgroup.BaseFor("/", root)) + "-"
}

// stageDirs lists this state root's staging directories, wherever they are.
func (h *Host) stageDirs() []string {
	var out []string
	for _, base := range []string{h.TmpDir(), shmDir, h.StageBase} {
		if base == "" {
			continue
		}
		des, _ := os.ReadDir(base)
		for _, d := range des {
			if d.IsDir() && strings.HasPrefix(d.Name(), h.stagePrefix()) {
				out = append(out, filepath.Join(base, d.Name()))
			}
		}
	}
	return out
}

// RemoveLater removes a staging directory in a detached process, so that
// freeing a gigabyte of staged images does not delay the command's answer.
// If that fails, the directory is removed now.
func (h *Host) RemoveLater(dir string) {
	cmd := exec.Command(SelfExe, "--root", h.Store.Root, "__rmstage", "--stage-base", h.StageBase, dir)
	cmd.Env = h.hostEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cmd.Start() != nil {
		os.RemoveAll(dir)
		return
	}
	cmd.Process.Release()
}

// RemoveStage removes dir if it is a staging directory of the state root
// at root whose Host.StageBase is stageBase (the hidden __rmstage command;
// it removes nothing else, and creates nothing, not even the state root).
func RemoveStage(root, stageBase, dir string) error {
	abs, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	dir = filepath.Clean(dir)
	parent, name := filepath.Dir(dir), filepath.Base(dir)
	okParent := parent == filepath.Join(abs, "tmp") || parent == shmDir || (stageBase != "" && parent == filepath.Clean(stageBase))
	if !okParent || !strings.HasPrefix(name, stagePrefixFor(abs)) {
		return fmt.Errorf("%s is not a staging directory of this state root", dir)
	}
	return os.RemoveAll(dir)
}
