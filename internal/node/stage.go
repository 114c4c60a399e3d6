package node

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// EnvStageDir overrides where dumps and restores stage CRIU images.
const EnvStageDir = "CRTREE_STAGE_DIR"

// shmDir is the tmpfs most Linux systems mount.
const shmDir = "/dev/shm"

// StageDir makes a directory for staging about need bytes of CRIU images.
// Images go to memory (tmpfs at /dev/shm) when it has room for them with
// a margin, so that CRIU writes and reads them at memory speed and the
// disk is left to the archive; otherwise to the state root's tmp/ on disk.
// CRTREE_STAGE_DIR forces a directory.
func (h *Host) StageDir(kind string, need int64) (string, error) {
	base := os.Getenv(EnvStageDir)
	if base == "" {
		base = h.TmpDir()
		if tmpfsFree(shmDir) > need+need/4+(64<<20) {
			base = shmDir
		}
	}
	return os.MkdirTemp(base, filepath.Base(h.CgroupBase.Path())+"-"+kind+"-")
}

// tmpfsFree returns the free bytes of dir if it is a tmpfs, else 0.
func tmpfsFree(dir string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil || st.Type != unix.TMPFS_MAGIC {
		return 0
	}
	return int64(st.Bavail) * st.Bsize
}
