package checkpoint

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCached(t *testing.T) {
	name := filepath.Join(t.TempDir(), "a.crtree")
	if err := os.WriteFile(name, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Just written: in the page cache.
	if !cached(f, 8<<20) {
		t.Fatal("a file just written is not seen as cached")
	}
	// Written back and dropped from the cache: read from the disk.
	f.Sync()
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	if fs, err := os.Stat(name); err == nil && cached(f, fs.Size()) {
		// tmpfs keeps its pages whatever the advice.
		var st unix.Statfs_t
		if unix.Fstatfs(int(f.Fd()), &st) == nil && st.Type == unix.TMPFS_MAGIC {
			t.Skip("the test directory is on tmpfs")
		}
		t.Fatal("a file dropped from the cache is seen as cached")
	}
}
