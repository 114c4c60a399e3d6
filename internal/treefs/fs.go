package treefs

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// Options say which tree a file system shows and how it runs crtree.
type Options struct {
	Host *node.Host
	// Scope is the ID of the node the file system shows as its root; ""
	// shows the whole tree.
	Scope string
	// Exe is the crtree binary that dumps and restores run, with Env as
	// their environment (CRTREE_ROOT, CRTREE_CRIU, PATH; the scope is
	// added here).
	Exe string
	Env []string
	// Log gets what a caller cannot see through an errno: why a restore
	// or dump failed, why a change was refused.
	Log *log.Logger
}

// FS is one mounted view of the tree.
type FS struct {
	opts   Options
	snaps  *hier.Snapshots
	jobs   *jobs
	recent recent
}

// dirNode is a node's directory, or the root of the file system (id "" on
// the host: the root of the tree). It is known by the node's ID, so that
// it stays the same directory when the node is renamed.
type dirNode struct {
	fs.Inode
	fsys *FS
	id   string
}

var (
	_ fs.NodeLookuper  = (*dirNode)(nil)
	_ fs.NodeReaddirer = (*dirNode)(nil)
	_ fs.NodeGetattrer = (*dirNode)(nil)
	_ fs.NodeMkdirer   = (*dirNode)(nil)
	_ fs.NodeRmdirer   = (*dirNode)(nil)
	_ fs.NodeUnlinker  = (*dirNode)(nil)
	_ fs.NodeRenamer   = (*dirNode)(nil)
	_ fs.NodeCreater   = (*dirNode)(nil)
	_ fs.NodeSetattrer = (*dirNode)(nil)
)

// checkpointName is the file whose content is a dump of the node's subtree.
const checkpointName = ".checkpoint"

// ino gives every node, and every file of a node, an inode number of its
// own that stays the same while the node lives.
func ino(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	// 1 is the root's.
	return h.Sum64() | 2
}

// resolve returns the tree now and the node d is (nil for the root of the
// whole tree); ENOENT once the node is gone.
func (d *dirNode) resolve() (*hier.Tree, *hier.Node, syscall.Errno) {
	t, err := d.fsys.snaps.Get()
	if err != nil {
		d.fsys.logf("read tree: %v", err)
		return nil, nil, syscall.EIO
	}
	if d.id == "" {
		return t, nil, 0
	}
	n := t.Nodes[d.id]
	if n == nil {
		return nil, nil, syscall.ENOENT
	}
	return t, n, 0
}

// isNode says whether d is a node (the root of a scoped file system is;
// the root of the whole tree is not).
func (d *dirNode) isNode() bool { return d.id != "" }

// isScopeRoot says whether d is the node a scoped file system shows as its
// root: a file system scoped to a node cannot dump or remove that node,
// as its own crtree commands cannot.
func (d *dirNode) isScopeRoot() bool { return d.fsys.opts.Scope != "" && d.id == d.fsys.opts.Scope }

// path returns n's path as the crtree commands this file system runs name
// it: its full path on the host, below the scope's node inside one (/
// once the scope's node is gone: its commands then fail, finding no
// node, rather than name a path outside it).
func (f *FS) path(t *hier.Tree, n *hier.Node) hier.Path {
	p := t.PathOf(n)
	if f.opts.Scope == "" {
		return p
	}
	if s := t.Nodes[f.opts.Scope]; s != nil {
		return p[len(t.PathOf(s)):]
	}
	return hier.Path{}
}

func (d *dirNode) child(ctx context.Context, n *hier.Node) *fs.Inode {
	return d.NewInode(ctx, &dirNode{fsys: d.fsys, id: n.ID}, fs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino(n.ID)})
}

// Lookup finds a child node, one of the node's files, or an archive being
// written here.
func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	t, _, errno := d.resolve()
	if errno != 0 {
		return nil, errno
	}
	if f := d.file(name); f != nil {
		f.fill(&out.Attr, nil)
		return d.NewInode(ctx, f, fs.StableAttr{Mode: fuse.S_IFREG, Ino: ino(d.id, name)}), 0
	}
	if u := d.fsys.jobs.upload(d.id, name); u != nil {
		u.fill(&out.Attr)
		return d.NewInode(ctx, u, fs.StableAttr{Mode: fuse.S_IFREG, Ino: u.ino}), 0
	}
	c := visibleChild(t, d.id, name)
	if c == nil {
		return nil, syscall.ENOENT
	}
	fillDir(&out.Attr, c)
	return d.child(ctx, c), 0
}

// visible says whether n is shown: not while the command that creates it
// (run, restore) may still abort, so that no half-made node is seen. An
// incomplete node (its command died) is shown, for rm -rf to remove.
func visible(n *hier.Node) bool {
	return n.OwnerPid == 0 || !node.Alive(n.OwnerPid, n.OwnerStart)
}

// visibleChild returns the child name of node id if it is shown.
func visibleChild(t *hier.Tree, id, name string) *hier.Node {
	if c := t.Child(id, name); c != nil && visible(c) {
		return c
	}
	return nil
}

// file returns the read-only file name of directory d, nil if it has
// none: a node's facts and .checkpoint, and the root's .errors.
func (d *dirNode) file(name string) *infoFile {
	if name == errorsName {
		if d.id != d.fsys.opts.Scope {
			return nil
		}
		return &infoFile{fsys: d.fsys, id: d.id, name: name}
	}
	if !d.isNode() {
		return nil
	}
	if name == checkpointName {
		if d.isScopeRoot() {
			return nil
		}
		return &infoFile{fsys: d.fsys, id: d.id, name: name}
	}
	if _, ok := infoFiles[name]; ok {
		return &infoFile{fsys: d.fsys, id: d.id, name: name}
	}
	return nil
}

// Readdir lists the node's files, the archives being written into it, then
// its children by name.
func (d *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	t, _, errno := d.resolve()
	if errno != 0 {
		return nil, errno
	}
	list := []fuse.DirEntry{{Name: ".", Mode: fuse.S_IFDIR}, {Name: "..", Mode: fuse.S_IFDIR}}
	if d.id == d.fsys.opts.Scope {
		list = append(list, fuse.DirEntry{Name: errorsName, Mode: fuse.S_IFREG, Ino: ino(d.id, errorsName)})
	}
	if d.isNode() {
		for _, name := range infoFileNames {
			list = append(list, fuse.DirEntry{Name: name, Mode: fuse.S_IFREG, Ino: ino(d.id, name)})
		}
		if !d.isScopeRoot() {
			list = append(list, fuse.DirEntry{Name: checkpointName, Mode: fuse.S_IFREG, Ino: ino(d.id, checkpointName)})
		}
	}
	for _, u := range d.fsys.jobs.uploadsIn(d.id) {
		list = append(list, fuse.DirEntry{Name: u.name, Mode: fuse.S_IFREG, Ino: u.ino})
	}
	for _, c := range t.Children(d.id) {
		if !visible(c) {
			continue
		}
		list = append(list, fuse.DirEntry{Name: c.Name, Mode: fuse.S_IFDIR, Ino: ino(c.ID)})
	}
	return fs.NewListDirStream(list), 0
}

// Getattr reports a directory owned by root, dated when the node was
// created.
func (d *dirNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	_, n, errno := d.resolve()
	if errno != 0 {
		return errno
	}
	fillDir(&out.Attr, n)
	return 0
}

// Setattr of a directory changes nothing and is refused.
func (d *dirNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

func fillDir(a *fuse.Attr, n *hier.Node) {
	a.Mode = fuse.S_IFDIR | 0o755
	a.Nlink = 2
	if n != nil {
		setTimes(a, n.Created)
	}
}

func setTimes(a *fuse.Attr, t time.Time) {
	a.SetTimes(&t, &t, &t)
}

// Mkdir is refused: a node needs a command.
func (d *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if t, n, errno := d.resolve(); errno == 0 {
		d.fsys.logf("mkdir %s: refused: a node needs a command to run (crtree run PATH -- COMMAND)", d.fsys.show(t, n, name))
	}
	return nil, syscall.EPERM
}

// Rmdir kills and removes the child node name with its whole subtree, as
// crtree rm -r -f does.
func (d *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	t, _, errno := d.resolve()
	if errno != 0 {
		return errno
	}
	if d.file(name) != nil {
		return syscall.ENOTDIR
	}
	c := visibleChild(t, d.id, name)
	if c == nil {
		return syscall.ENOENT
	}
	p := t.PathOf(c)
	if err := d.fsys.opts.Host.RemoveID(c.ID, true, true); err != nil {
		return d.fsys.errno("rmdir "+p.String(), err)
	}
	return 0
}

// Unlink of a node's own files succeeds and changes nothing (so that rm
// -rf goes on to the directory); of an archive being written, it stops
// that restore.
func (d *dirNode) Unlink(ctx context.Context, name string) syscall.Errno {
	t, _, errno := d.resolve()
	if errno != 0 {
		return errno
	}
	if d.file(name) != nil {
		return 0
	}
	if u := d.fsys.jobs.upload(d.id, name); u != nil {
		u.cancel("its file was removed")
		return 0
	}
	if t.Child(d.id, name) != nil {
		return syscall.EISDIR
	}
	return syscall.ENOENT
}

// Rename renames a child node within its parent (crtree mv); moving a node
// to another parent is refused, as crtree mv refuses it.
func (d *dirNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if flags&fs.RENAME_EXCHANGE != 0 {
		return syscall.EINVAL
	}
	t, _, errno := d.resolve()
	if errno != 0 {
		return errno
	}
	c := visibleChild(t, d.id, name)
	if c == nil {
		if d.file(name) != nil || d.fsys.jobs.upload(d.id, name) != nil {
			return syscall.EPERM
		}
		return syscall.ENOENT
	}
	to, ok := newParent.(*dirNode)
	if !ok {
		return syscall.ENOTDIR
	}
	from := t.PathOf(c)
	if to.id != d.id {
		d.fsys.logf("mv %s: refused: a node moves within its parent only (crtree mv)", d.fsys.show(t, c, ""))
		return syscall.EPERM
	}
	if err := hier.ValidateName(newName); err != nil {
		d.fsys.logf("mv %s: refused: %v", d.fsys.show(t, c, ""), err)
		return syscall.EINVAL
	}
	if err := d.fsys.opts.Host.RenameID(c.ID, newName); err != nil {
		return d.fsys.errno("mv "+from.String(), err)
	}
	return 0
}

// Create starts a restore under this node (or the root) of the archive
// about to be written to name.
func (d *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	t, n, errno := d.resolve()
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if strings.HasPrefix(name, ".") {
		return nil, nil, 0, syscall.EPERM
	}
	top := restoredName(name)
	if t.Child(d.id, name) != nil || (top != "" && t.Child(d.id, top) != nil) || d.fsys.jobs.upload(d.id, name) != nil {
		return nil, nil, 0, syscall.EEXIST
	}
	parent := hier.Path{}
	if n != nil {
		// Refused at once if the parent is held (being dumped, say):
		// the restore would refuse it.
		if err := node.CheckFree(t, n, false); err != nil {
			return nil, nil, 0, d.fsys.errno("restore "+name+" under "+t.PathOf(n).String(), err)
		}
		parent = d.fsys.path(t, n)
	}
	u, err := d.fsys.startRestore(d.id, name, parent, top, callerProcess(ctx))
	if err != nil {
		return nil, nil, 0, d.fsys.errno("restore under "+parent.String(), err)
	}
	u.fill(&out.Attr)
	return d.NewInode(ctx, u, fs.StableAttr{Mode: fuse.S_IFREG, Ino: u.ino}), u, fuse.FOPEN_DIRECT_IO, 0
}

// restoredName is the name an archive written as name gives its top node:
// name itself, unless it ends in .crtree (cp ARCHIVE DIR/ names it so),
// which keeps the archived name (""). A name that is no node name keeps
// the archived one too.
func restoredName(name string) string {
	if strings.HasSuffix(name, ".crtree") || hier.ValidateName(name) != nil {
		return ""
	}
	return name
}

// errno maps what a crtree operation returned to what coreutils print:
// ENOENT, EEXIST, EBUSY for a subtree another command holds or a node that
// runs, EINVAL for a bad name, EIO for the rest (logged, with the reason).
func (f *FS) errno(what string, err error) syscall.Errno {
	var busy *node.BusyError
	var e syscall.Errno
	switch {
	case errors.As(err, &e):
		f.logf("%s: %v", what, err)
		return e
	case errors.Is(err, hier.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, hier.ErrExists):
		return syscall.EEXIST
	case errors.As(err, &busy), errors.Is(err, node.ErrRunning):
		f.logf("%s: %v", what, err)
		return syscall.EBUSY
	}
	f.logf("%s: %v", what, err)
	return syscall.EIO
}

// logf records why something was refused or failed: in the server's log,
// and in the root's .errors, with the node's own paths in a scoped view.
func (f *FS) logf(format string, args ...any) {
	msg := f.scrub(fmt.Sprintf(format, args...))
	if f.opts.Log != nil {
		f.opts.Log.Print(msg)
	}
	f.recent.add(time.Now().Format("2006-01-02 15:04:05 ") + msg)
}

// show returns how the file system's user names n (the root: nil), or
// name in it.
func (f *FS) show(t *hier.Tree, n *hier.Node, name string) string {
	p := hier.Path{}
	if n != nil {
		p = f.path(t, n)
	}
	if name != "" {
		p = p.Join(name)
	}
	return p.String()
}

// scrub rewrites the scope's full path in msg as / (errors of node.Host
// name full paths), as the node's own crtree commands do.
func (f *FS) scrub(msg string) string {
	if f.opts.Scope == "" {
		return msg
	}
	t, err := f.snaps.Get()
	if err != nil || t.Nodes[f.opts.Scope] == nil {
		return msg
	}
	full := t.PathOf(t.Nodes[f.opts.Scope]).String()
	re := regexp.MustCompile(regexp.QuoteMeta(full) + `(/|\b)`)
	return re.ReplaceAllString(msg, "/")
}
