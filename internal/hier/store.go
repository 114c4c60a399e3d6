package hier

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultRoot is the state root used when none is given.
const DefaultRoot = "/var/lib/crtree"

// Store is the state of one state root: the tree file, the lock, and the
// nodes' storage directories.
type Store struct {
	// Root is the absolute path of the state root.
	Root string
}

// Open returns the store at root. Nothing is created until the tree is
// first changed: a state root that does not exist is an empty tree.
func Open(root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("state root %s: %w", root, err)
	}
	return &Store{Root: abs}, nil
}

// create makes the state root's directories if they are not there yet.
func (s *Store) create() error {
	if err := os.MkdirAll(filepath.Join(s.Root, "nodes"), 0o700); err != nil {
		return fmt.Errorf("state root: %w", err)
	}
	return nil
}

func (s *Store) treeFile() string { return filepath.Join(s.Root, "tree.json") }

// NodeDir returns the storage directory of the node with the given ID.
func (s *Store) NodeDir(id string) string { return filepath.Join(s.Root, "nodes", id) }

// ErrBusy is returned by TryUpdate when the tree stayed locked.
var ErrBusy = errors.New("the tree is busy")

// lockWithin takes the state root's flock, shared or exclusive, and
// returns the function that releases it; with a timeout >= 0 it gives up
// with ErrBusy after that long. The exclusive lock creates the state root;
// the shared lock of a state root that does not exist is no lock at all
// (there is nothing to read).
func (s *Store) lockWithin(how int, timeout time.Duration) (func(), error) {
	if how == unix.LOCK_EX {
		if err := s.create(); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(filepath.Join(s.Root, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if how == unix.LOCK_SH && errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(s.Root); errors.Is(serr, fs.ErrNotExist) {
			return func() {}, nil
		}
	}
	if errors.Is(err, unix.EROFS) {
		// A read-only state root can still be read; changes will fail.
		f, err = os.Open(filepath.Join(s.Root, "lock"))
	}
	if err != nil {
		return nil, fmt.Errorf("lock state root: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		if timeout < 0 {
			err = unix.Flock(int(f.Fd()), how)
		} else {
			err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
			if err == unix.EWOULDBLOCK {
				if time.Now().After(deadline) {
					f.Close()
					return nil, ErrBusy
				}
				time.Sleep(time.Millisecond)
				continue
			}
		}
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock state root: %w", err)
	}
	return func() { f.Close() }, nil
}

func (s *Store) load() (*Tree, error) {
	data, err := os.ReadFile(s.treeFile())
	if errors.Is(err, fs.ErrNotExist) {
		return newTree(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read tree: %w", err)
	}
	return s.parse(data)
}

// parse reads the content of the tree file.
func (s *Store) parse(data []byte) (*Tree, error) {
	t := newTree()
	if err := json.Unmarshal(data, t); err != nil {
		return nil, fmt.Errorf("read tree %s: %w", s.treeFile(), err)
	}
	if t.Nodes == nil {
		t.Nodes = map[string]*Node{}
	}
	return t, nil
}

func (s *Store) save(t *Tree) error {
	data, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(s.treeFile(), data, 0o600); err != nil {
		return fmt.Errorf("save tree: %w", err)
	}
	return nil
}

// View calls fn with a consistent snapshot of the tree, under a shared
// lock. fn must not keep the tree.
func (s *Store) View(fn func(t *Tree) error) error {
	return s.withTree(unix.LOCK_SH, fn)
}

// withTree loads the tree under the lock of the given kind and calls fn.
func (s *Store) withTree(how int, fn func(t *Tree) error) error {
	return s.withTreeWithin(how, -1, fn)
}

func (s *Store) withTreeWithin(how int, timeout time.Duration, fn func(t *Tree) error) error {
	unlock, err := s.lockWithin(how, timeout)
	if err != nil {
		return err
	}
	defer unlock()
	t, err := s.load()
	if err != nil {
		return err
	}
	return fn(t)
}

// ErrUnchanged may be returned by an Update function that changed
// nothing: Update then saves nothing and returns nil.
var ErrUnchanged = errors.New("tree unchanged")

// Update calls fn with the tree under the exclusive lock and saves what
// fn left if it returns nil. Nothing is saved when fn fails.
func (s *Store) Update(fn func(t *Tree) error) error { return s.update(-1, fn) }

// TryUpdate is Update for changes that may be skipped: if the tree stays
// locked by others for timeout, it changes nothing and returns ErrBusy.
func (s *Store) TryUpdate(timeout time.Duration, fn func(t *Tree) error) error {
	return s.update(timeout, fn)
}

func (s *Store) update(timeout time.Duration, fn func(t *Tree) error) error {
	return s.withTreeWithin(unix.LOCK_EX, timeout, func(t *Tree) error {
		if err := fn(t); err != nil {
			if errors.Is(err, ErrUnchanged) {
				return nil
			}
			return err
		}
		return s.save(t)
	})
}

// WriteFileAtomic writes data to a temporary file beside name, syncs it,
// and renames it over name, so that readers see the old or the new
// content, never a mix.
func WriteFileAtomic(name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	ok = true
	return nil
}
