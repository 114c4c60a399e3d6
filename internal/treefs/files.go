package treefs

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// infoFiles are a node's read-only files: what each holds, made from the
// node's state when the file is opened.
var infoFiles = map[string]func(t *hier.Tree, n *hier.Node, e node.Entry, pids []int) string{
	".state": func(t *hier.Tree, n *hier.Node, e node.Entry, pids []int) string { return e.Display },
	".pid": func(t *hier.Tree, n *hier.Node, e node.Entry, pids []int) string {
		if e.Pid == 0 {
			return ""
		}
		return strconv.Itoa(e.Pid)
	},
	".procs": func(t *hier.Tree, n *hier.Node, e node.Entry, pids []int) string {
		var b strings.Builder
		for _, p := range pids {
			fmt.Fprintf(&b, "%d\n", p)
		}
		return strings.TrimSuffix(b.String(), "\n")
	},
	".hostname": func(t *hier.Tree, n *hier.Node, e node.Entry, pids []int) string {
		if n.Spec.Hostname != "" {
			return n.Spec.Hostname
		}
		return n.Name
	},
	".memory": func(t *hier.Tree, n *hier.Node, e node.Entry, pids []int) string {
		return strconv.FormatInt(e.Memory, 10)
	},
}

// errorsName is the root's file of the last refusals and failures, each
// with why (an errno says little): a process in a node cannot read the
// host's log.
const errorsName = ".errors"

// recent keeps the last lines logged, for .errors.
type recent struct {
	mu    sync.Mutex
	lines []string
}

// recentMax bounds what .errors holds.
const recentMax = 100

func (r *recent) add(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, line)
	if len(r.lines) > recentMax {
		r.lines = append([]string(nil), r.lines[len(r.lines)-recentMax:]...)
	}
}

func (r *recent) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) == 0 {
		return ""
	}
	return strings.Join(r.lines, "\n") + "\n"
}

// infoFileNames lists infoFiles in the order directories show them.
var infoFileNames = []string{".hostname", ".memory", ".pid", ".procs", ".state"}

// infoFile is one of a node's read-only files, or its .checkpoint, or the
// root's .errors. Their size is 0 until opened: stat, ls -l and find make
// nothing. While the file is open, stat reports its content's size (for
// .checkpoint, what the dump has written so far).
type infoFile struct {
	fs.Inode
	fsys *FS
	id   string
	name string
}

var (
	_ fs.NodeOpener    = (*infoFile)(nil)
	_ fs.NodeGetattrer = (*infoFile)(nil)
	_ fs.NodeSetattrer = (*infoFile)(nil)
	_ fs.NodeReader    = (*infoFile)(nil)
)

func (f *infoFile) fill(a *fuse.Attr, h fs.FileHandle) syscall.Errno {
	// World-readable in its mode, whatever Open allows: tar opens an
	// empty file it cannot be sure to read, and an open .checkpoint
	// dumps.
	a.Mode = fuse.S_IFREG | 0o444
	a.Nlink = 1
	t, err := f.fsys.snaps.Get()
	if err != nil {
		return syscall.EIO
	}
	if n := t.Nodes[f.id]; n != nil {
		setTimes(a, n.Created)
	}
	switch h := h.(type) {
	case *content:
		a.Size = uint64(len(h.data))
	case *dumpFile:
		size, err := h.size()
		if err != nil {
			return syscall.EIO
		}
		a.Size = uint64(size)
	}
	return 0
}

// Getattr reports size 0, or with an open handle its content's size.
func (f *infoFile) Getattr(ctx context.Context, h fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return f.fill(&out.Attr, h)
}

// Setattr is refused: the files are read-only.
func (f *infoFile) Setattr(ctx context.Context, h fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

// Open makes the file's content, or for .checkpoint starts the dump.
func (f *infoFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EPERM
	}
	if (f.name == checkpointName || f.name == errorsName) && !byRoot(ctx) {
		// A node's memory, and why others' operations failed, are
		// root's only.
		return nil, 0, syscall.EACCES
	}
	if f.name == errorsName {
		return &content{data: []byte(f.fsys.recent.text())}, fuse.FOPEN_DIRECT_IO, 0
	}
	t, err := f.fsys.snaps.Get()
	if err != nil {
		return nil, 0, syscall.EIO
	}
	n := t.Nodes[f.id]
	if n == nil {
		return nil, 0, syscall.ENOENT
	}
	if f.name == checkpointName {
		d, errno := f.fsys.startDump(ctx, t, n)
		if errno != 0 {
			return nil, 0, errno
		}
		return d, fuse.FOPEN_DIRECT_IO, 0
	}
	e := f.fsys.opts.Host.Describe(t, n)
	var pids []int
	if f.name == ".procs" && e.State == string(hier.Running) {
		pids, _ = f.fsys.opts.Host.Group(t, n).Leaf().Procs()
	}
	text := infoFiles[f.name](t, n, e, pids)
	if text != "" {
		text += "\n"
	}
	return &content{data: []byte(text)}, fuse.FOPEN_DIRECT_IO, 0
}

// Read reads from the handle Open returned.
func (f *infoFile) Read(ctx context.Context, h fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	switch h := h.(type) {
	case *content:
		return h.read(dest, off)
	case *dumpFile:
		return h.read(ctx, dest, off)
	}
	return nil, syscall.EBADF
}

// content is an open read-only file: its bytes, made once at open.
type content struct{ data []byte }

func (c *content) read(dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(c.data)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), int64(len(c.data)))
	return fuse.ReadResultData(c.data[off:end]), 0
}

// byRoot says whether the request ctx is is root's.
func byRoot(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	return ok && c.Uid == 0
}
