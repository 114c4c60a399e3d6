package checkpoint

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	name string
	f    *os.File
}

// CreateFile starts an archive that will be called name.
func CreateFile(name string) (*FileOutput, error) {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".partial-*")
	if err != nil {
		return nil, fmt.Errorf("create archive: %w", err)
	}
	return &FileOutput{name: name, f: f}, nil
}

func (o *FileOutput) Write(p []byte) (int, error) { return o.f.Write(p) }

// Commit syncs the file and renames it to its final name.
func (o *FileOutput) Commit() error {
	if err := o.f.Sync(); err != nil {
		o.Abort()
		return fmt.Errorf("write archive: %w", err)
	}
	if err := o.f.Close(); err != nil {
		o.Abort()
		return fmt.Errorf("write archive: %w", err)
	}
	if err := os.Rename(o.f.Name(), o.name); err != nil {
		os.Remove(o.f.Name())
		return fmt.Errorf("write archive: %w", err)
	}
	if d, err := os.Open(filepath.Dir(o.name)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Abort removes the temporary file.
func (o *FileOutput) Abort() {
	o.f.Close()
	os.Remove(o.f.Name())
}

// StreamOutput writes an archive to a stream such as stdout. A reader of
// an aborted stream sees it end without its trailer and refuses it.
type StreamOutput struct{ W io.Writer }

func (o StreamOutput) Write(p []byte) (int, error) { return o.W.Write(p) }

// Commit does nothing: what was written is written.
func (o StreamOutput) Commit() error { return nil }

// Abort does nothing: the reader finds no trailer.
func (o StreamOutput) Abort() {}
