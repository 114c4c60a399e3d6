package hier

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Snapshots hands out read-only snapshots of a store's tree to a
// long-running reader (the tree's file system), parsing the tree file again
// only when it has been replaced: every change of the tree writes a new
// file and renames it over the old one (WriteFileAtomic), never changing
// a file in place. Snapshots keeps the file it parsed open, so that its
// inode number cannot be given to a newer file: a tree file with the same
// inode number is the same version, and one stat tells. The state root's
// lock is not taken: a reader sees one whole version.
type Snapshots struct {
	store *Store
	mu    sync.Mutex
	file  *os.File // the version parsed, kept open; nil for none
	ino   uint64
	dev   uint64
	tree  *Tree
}

// NewSnapshots returns the snapshot source of s.
func NewSnapshots(s *Store) *Snapshots { return &Snapshots{store: s} }

// Get returns the tree as it is now. The caller may keep it but must not
// change it: later calls may return the same tree.
func (sn *Snapshots) Get() (*Tree, error) {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	var st unix.Stat_t
	err := unix.Stat(sn.store.treeFile(), &st)
	switch {
	case errors.Is(err, unix.ENOENT):
		if sn.tree == nil || sn.file != nil {
			sn.replace(nil, 0, 0, newTree())
		}
		return sn.tree, nil
	case err != nil:
		return nil, &fs.PathError{Op: "stat", Path: sn.store.treeFile(), Err: err}
	case sn.file != nil && st.Ino == sn.ino && st.Dev == sn.dev:
		return sn.tree, nil
	}
	f, err := os.Open(sn.store.treeFile())
	if errors.Is(err, fs.ErrNotExist) {
		// Replaced between the stat and the open: read the newer one.
		f, err = os.Open(sn.store.treeFile())
	}
	if err != nil {
		return nil, err
	}
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	t, err := sn.store.parse(data)
	if err != nil {
		f.Close()
		return nil, err
	}
	sn.replace(f, st.Ino, st.Dev, t)
	return t, nil
}

// replace makes f (parsed as t) the version kept.
func (sn *Snapshots) replace(f *os.File, ino, dev uint64, t *Tree) {
	if sn.file != nil {
		sn.file.Close()
	}
	sn.file, sn.ino, sn.dev, sn.tree = f, ino, dev, t
}
