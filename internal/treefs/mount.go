package treefs

import (
	"fmt"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// FSType is the type the kernel shows for crtree's mounts (mountinfo,
// df -T): "fuse." followed by the subtype (Name below).
const FSType = node.TreeFSType

// Server is a mounted tree.
type Server struct {
	fuse *fuse.Server
	fsys *FS
}

// Mount mounts the tree on dir and serves it in the background.
func Mount(dir string, opts Options) (*Server, error) {
	f := &FS{opts: opts, snaps: hier.NewSnapshots(opts.Host.Store), jobs: newJobs()}
	root := &dirNode{fsys: f, id: opts.Scope}
	// Nothing is cached by the kernel: other crtree commands change the
	// tree at any time, and a lookup costs a read of the tree file only
	// when it changed (hier.Snapshots).
	var zero time.Duration
	fo := &fs.Options{
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{
			FsName:             "crtree",
			Name:               "crtree",
			AllowOther:         true,
			DirectMount:        true,
			DisableXAttrs:      true,
			DisableReadDirPlus: true,
			MaxWrite:           1 << 20,
			Options:            []string{"default_permissions"},
		},
	}
	srv, err := fs.Mount(dir, root, fo)
	if err != nil {
		return nil, err
	}
	// No descriptor of the server reaches what it runs (its crtree
	// commands, a node's helper) but what it passes on purpose: not the
	// FUSE device (whoever holds it can answer the kernel's requests in
	// the server's place), nor what the server inherited.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		srv.Unmount()
		return nil, fmt.Errorf("close-on-exec: %w", err)
	}
	return &Server{fuse: srv, fsys: f}, nil
}

// Wait waits until the file system is unmounted (and every file on it
// closed), then stops the dumps and restores its files had started.
func (s *Server) Wait() {
	s.fuse.Wait()
	s.fsys.jobs.stopAll()
}

// Unmount unmounts the file system; Wait then returns.
func (s *Server) Unmount() error { return s.fuse.Unmount() }

// Stop stops the dumps and restores the file system's files started,
// before the server ends without unmounting (a node's view).
func (s *Server) Stop() { s.fsys.jobs.stopAll() }
