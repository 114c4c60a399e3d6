package treefs

import (
	"context"
	"fmt"
	"strconv"
	"strings"
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

// infoFileNames lists infoFiles in the order directories show them.
var infoFileNames = []string{".hostname", ".memory", ".pid", ".procs", ".state"}

// infoFile is one of a node's read-only files, or its .checkpoint. Their
// size is 0 until opened: stat, ls -l and find make nothing. An open
// handle knows its content's size (fstat on it, as tar does, reports it;
// for .checkpoint once the dump is complete).
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
	a.Mode = fuse.S_IFREG | 0o444
	a.Nlink = 1
	t, err := f.fsys.snaps.Get()
	if err == nil {
		if n := t.Nodes[f.id]; n != nil {
			setTimes(a, n.Created)
		}
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
	if _, err := f.fsys.snaps.Get(); err != nil {
		return syscall.EIO
	}
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
	t, err := f.fsys.snaps.Get()
	if err != nil {
		return nil, 0, syscall.EIO
	}
	n := t.Nodes[f.id]
	if n == nil {
		return nil, 0, syscall.ENOENT
	}
	if f.name == checkpointName {
		d, errno := f.fsys.startDump(t, n)
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
