package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Output is where an archive is written: committed only when complete.
type Output interface {
	io.Writer
	// Commit makes the archive visible under its final name.
	Commit() error
	// Abort removes whatever was written.
	Abort()
}

// FileOutput writes an archive to a temporary file beside name and
// renames it to name on Commit, after an fsync: no partial archive ever
// stands under the final name.
type FileOutput struct {
	root *os.Root
	name string
	tmp  string
	f    *os.File
	done bool
	// written and flushed count bytes written and handed to writeback.
	written, flushed int64
}

// CreateFile starts an archive that will be called name.
func CreateFile(name string) (*FileOutput, error) {
	r, err := os.OpenRoot(filepath.Dir(name))
	if err != nil {
		return nil, fmt.Errorf("create archive: %w", err)
	}
	return CreateFileIn(r, filepath.Base(name))
}

// CreateFileIn starts an archive that will be called name inside root
// (which it closes when done); name cannot leave root.
func CreateFileIn(root *os.Root, name string) (*FileOutput, error) {
	dir, base := filepath.Split(name)
	for i := 0; ; i++ {
		tmp := filepath.Join(dir, fmt.Sprintf(".%s.partial-%d-%d", base, os.Getpid(), i))
		f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) && i < 100 {
			continue
		}
		if err != nil {
			root.Close()
			return nil, fmt.Errorf("create archive: %w", err)
		}
		return &FileOutput{root: root, name: name, tmp: tmp, f: f}, nil
	}
}

// flushEvery is how often FileOutput starts writeback of what it wrote,
// so that the final fsync has little left to wait for.
const flushEvery = 16 << 20

func (o *FileOutput) Write(p []byte) (int, error) {
	n, err := o.f.Write(p)
	o.written += int64(n)
	if o.written-o.flushed >= flushEvery {
		// Start writing this range to disk now, without waiting for it.
		unix.SyncFileRange(int(o.f.Fd()), o.flushed, o.written-o.flushed, unix.SYNC_FILE_RANGE_WRITE)
		o.flushed = o.written
	}
	return n, err
}

// Commit syncs the file and renames it to its final name.
func (o *FileOutput) Commit() error {
	if o.done {
		return fmt.Errorf("write archive: already finished")
	}
	if err := o.f.Sync(); err != nil {
		o.Abort()
		return fmt.Errorf("write archive: %w", err)
	}
	if err := o.f.Close(); err != nil {
		o.Abort()
		return fmt.Errorf("write archive: %w", err)
	}
	o.done = true
	defer o.root.Close()
	if err := o.root.Rename(o.tmp, o.name); err != nil {
		o.root.Remove(o.tmp)
		return fmt.Errorf("write archive: %w", err)
	}
	if d, err := o.root.Open(filepath.Dir(o.name)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// PartialPath is where the unfinished archive lies, for recovery after a
// crash.
func (o *FileOutput) PartialPath() string { return filepath.Join(o.root.Name(), o.tmp) }

// Abort removes the temporary file. It may be called more than once, and
// after a failed Commit.
func (o *FileOutput) Abort() {
	if o.done {
		return
	}
	o.done = true
	o.f.Close()
	o.root.Remove(o.tmp)
	o.root.Close()
}

// StreamOutput writes an archive to a stream such as stdout. A reader of
// an aborted stream sees it end without its trailer and refuses it.
type StreamOutput struct{ W io.Writer }

func (o StreamOutput) Write(p []byte) (int, error) { return o.W.Write(p) }

// Commit does nothing: what was written is written.
func (o StreamOutput) Commit() error { return nil }

// Abort does nothing: the reader finds no trailer.
func (o StreamOutput) Abort() {}
