package hier

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"sync"
)

// Snapshots hands out read-only snapshots of a store's tree to a
// long-running reader (the tree's file system), parsing the tree file again
// only when its content has changed. No lock is taken: every change
// replaces the file by a rename, so a read sees one whole version.
type Snapshots struct {
	store *Store
	mu    sync.Mutex
	data  []byte
	tree  *Tree
}

// NewSnapshots returns the snapshot source of s.
func NewSnapshots(s *Store) *Snapshots { return &Snapshots{store: s} }

// Get returns the tree as it is now. The caller may keep it but must not
// change it: later calls may return the same tree.
func (sn *Snapshots) Get() (*Tree, error) {
	data, err := os.ReadFile(sn.store.treeFile())
	if errors.Is(err, fs.ErrNotExist) {
		data, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if sn.tree != nil && bytes.Equal(sn.data, data) {
		return sn.tree, nil
	}
	t, err := sn.store.parse(data)
	if err != nil {
		return nil, err
	}
	sn.data, sn.tree = data, t
	return t, nil
}
