package treefs

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// jobs are the dumps and restores the file system's open files started:
// each is a crtree command, stopped when its file is closed early or the
// file system ends.
type jobs struct {
	mu      sync.Mutex
	next    uint64
	dumps   map[*dumpFile]bool
	uploads map[string]*upload // by directory ID + "/" + name
	closed  bool
}

func newJobs() *jobs {
	return &jobs{dumps: map[*dumpFile]bool{}, uploads: map[string]*upload{}}
}

// upload returns the archive being written as name in directory dirID.
func (j *jobs) upload(dirID, name string) *upload {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.uploads[dirID+"/"+name]
}

// stopAll stops every job and refuses new ones: the file system has ended
// and nobody will read or close their files.
func (j *jobs) stopAll() {
	j.mu.Lock()
	j.closed = true
	var ds []*dumpFile
	for d := range j.dumps {
		ds = append(ds, d)
	}
	var us []*upload
	for _, u := range j.uploads {
		us = append(us, u)
	}
	j.mu.Unlock()
	for _, d := range ds {
		d.stop()
	}
	for _, u := range us {
		u.cancel("the file system was unmounted")
	}
}

// command returns the crtree command args, in the file system's scope.
func (f *FS) command(args ...string) *exec.Cmd {
	cmd := exec.Command(f.opts.Exe, args...)
	cmd.Args[0] = "crtree"
	cmd.Env = append([]string{}, f.opts.Env...)
	if f.opts.Scope != "" {
		cmd.Env = append(cmd.Env, node.EnvScope+"="+f.opts.Scope, node.EnvScopeCwd+"=/")
	}
	// Its own process group: a Ctrl-C at the terminal that mounted the
	// file system does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// tail keeps the last 4 KiB written to it: a command's stderr, for the log.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 4096 {
		t.buf = t.buf[len(t.buf)-4096:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// dumpFile is an open .checkpoint: a crtree dump --leave-running of the
// node's subtree writing into an unnamed spool file, which reads follow as
// it grows.
type dumpFile struct {
	fsys    *FS
	what    string
	cmd     *exec.Cmd
	spool   *os.File
	stderr  tail
	mu      sync.Mutex
	cond    *sync.Cond
	written int64
	done    bool
	err     error
}

// startDump starts the dump of n's subtree; it returns once the archive
// has begun, or with the dump's failure.
func (f *FS) startDump(t *hier.Tree, n *hier.Node) (*dumpFile, syscall.Errno) {
	p := t.PathOf(n)
	if err := node.CheckFree(t, n, true); err != nil {
		return nil, f.errno("read "+p.String()+"/"+checkpointName, err)
	}
	spool, err := os.CreateTemp(f.opts.Host.TmpDir(), "tree-dump-*")
	if err != nil {
		return nil, f.errno("dump "+p.String(), err)
	}
	os.Remove(spool.Name())
	r, w, err := os.Pipe()
	if err != nil {
		spool.Close()
		return nil, f.errno("dump "+p.String(), err)
	}
	d := &dumpFile{fsys: f, what: p.String(), spool: spool}
	d.cond = sync.NewCond(&d.mu)
	d.cmd = f.command("dump", "--leave-running", "--quiet", f.path(t, n).String(), "-o", "-")
	d.cmd.Stdout, d.cmd.Stderr = w, &d.stderr
	if !f.jobs.addDump(d) {
		r.Close()
		w.Close()
		spool.Close()
		return nil, syscall.ENODEV
	}
	err = d.cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		f.jobs.removeDump(d)
		spool.Close()
		return nil, f.errno("dump "+p.String(), err)
	}
	f.logf("read %s/%s: dump started", p, checkpointName)
	go d.collect(r)
	d.mu.Lock()
	for d.written == 0 && !d.done {
		d.cond.Wait()
	}
	failed := d.done && d.err != nil
	d.mu.Unlock()
	if failed {
		d.release()
		f.logf("dump %s: %v", d.what, d.err)
		return nil, syscall.EIO
	}
	return d, 0
}

// collect copies the dump's archive into the spool as it comes, then
// records how the dump ended.
func (d *dumpFile) collect(r *os.File) {
	_, err := io.Copy(writerFunc(func(p []byte) (int, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		n, err := d.spool.WriteAt(p, d.written)
		d.written += int64(n)
		d.cond.Broadcast()
		return n, err
	}), r)
	r.Close()
	werr := d.cmd.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case werr != nil:
		d.err = fmt.Errorf("%v: %s", werr, d.stderr.String())
	case err != nil:
		d.err = fmt.Errorf("spool the archive: %w", err)
	}
	d.done = true
	d.cond.Broadcast()
}

type writerFunc func(p []byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// wait waits, with d.mu held, until cond says the reader may go on or ctx
// (the caller's interrupt) ends.
func (d *dumpFile) wait(ctx context.Context, ready func() bool) error {
	stop := context.AfterFunc(ctx, func() {
		d.mu.Lock()
		d.cond.Broadcast()
		d.mu.Unlock()
	})
	defer stop()
	for !ready() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.cond.Wait()
	}
	return nil
}

func (d *dumpFile) read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	d.mu.Lock()
	err := d.wait(ctx, func() bool { return d.done || d.written >= off+int64(len(dest)) })
	written, done, derr := d.written, d.done, d.err
	d.mu.Unlock()
	if err != nil {
		return nil, syscall.EINTR
	}
	if done && derr != nil {
		d.fsys.logf("dump %s: %v", d.what, derr)
		return nil, syscall.EIO
	}
	if off >= written {
		return fuse.ReadResultData(nil), 0
	}
	n, rerr := d.spool.ReadAt(dest[:min(int64(len(dest)), written-off)], off)
	if rerr != nil && rerr != io.EOF {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// size waits for the dump to complete and returns the archive's size.
func (d *dumpFile) size() (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.wait(context.Background(), func() bool { return d.done })
	return d.written, d.err
}

// stop ends a dump still running (crtree dump undoes it on SIGTERM: the
// subtree runs on, held by nothing) and waits for it.
func (d *dumpFile) stop() {
	d.mu.Lock()
	if !d.done {
		d.cmd.Process.Signal(syscall.SIGTERM)
	}
	d.wait(context.Background(), func() bool { return d.done })
	d.mu.Unlock()
}

// release stops the dump if it still runs and drops its spool.
func (d *dumpFile) release() {
	d.stop()
	d.spool.Close()
	d.fsys.jobs.removeDump(d)
}

// Release is the last close of the file.
func (d *dumpFile) Release(ctx context.Context) syscall.Errno {
	d.release()
	return 0
}

func (j *jobs) addDump(d *dumpFile) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return false
	}
	j.dumps[d] = true
	return true
}

func (j *jobs) removeDump(d *dumpFile) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.dumps, d)
}

// upload is an archive being written into a node's directory: what is
// written goes to a crtree restore reading its stdin. The archive ends
// when the process that created the file closes a descriptor of it after
// something was written (a shell's redirection closes one before; a child
// that inherited one is another process), or when its last descriptor is
// closed: close then waits for the restore, and fails with EIO if it
// failed. The file disappears then.
type upload struct {
	fs.Inode
	fsys    *FS
	key     string
	ino     uint64
	what    string
	creator int // the process (thread group) that created the file, 0 if unknown
	cmd     *exec.Cmd
	stdin   *os.File
	stderr  tail
	ended   chan struct{}
	err     error // how the restore ended, once ended is closed

	mu       sync.Mutex
	offset   int64
	finished bool
	result   syscall.Errno
}

var (
	_ fs.NodeWriter    = (*upload)(nil)
	_ fs.NodeFlusher   = (*upload)(nil)
	_ fs.NodeReleaser  = (*upload)(nil)
	_ fs.NodeGetattrer = (*upload)(nil)
	_ fs.NodeSetattrer = (*upload)(nil)
	_ fs.NodeOpener    = (*upload)(nil)
)

// startRestore starts crtree restore - --parent parent for the archive
// about to be written as name in directory dirID by the process creator.
func (f *FS) startRestore(dirID, name string, parent hier.Path, creator int) (*upload, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	u := &upload{fsys: f, key: dirID + "/" + name, what: name + " under " + parent.String(), creator: creator, stdin: w, ended: make(chan struct{})}
	u.cmd = f.command("restore", "--quiet", "--parent", parent.String(), "-")
	u.cmd.Stdin, u.cmd.Stderr = r, &u.stderr
	if err := f.jobs.addUpload(u); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	err = u.cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		f.jobs.removeUpload(u)
		return nil, err
	}
	go func() {
		werr := u.cmd.Wait()
		if werr != nil {
			u.err = fmt.Errorf("%v: %s", werr, u.stderr.String())
		}
		close(u.ended)
	}()
	return u, nil
}

func (j *jobs) addUpload(u *upload) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return syscall.ENODEV
	}
	if j.uploads[u.key] != nil {
		return syscall.EEXIST
	}
	j.next++
	u.ino = ino("upload", fmt.Sprint(j.next))
	j.uploads[u.key] = u
	return nil
}

func (j *jobs) removeUpload(u *upload) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.uploads[u.key] == u {
		delete(j.uploads, u.key)
	}
}

func (u *upload) fill(a *fuse.Attr) {
	u.mu.Lock()
	defer u.mu.Unlock()
	a.Mode = fuse.S_IFREG | 0o644
	a.Nlink = 1
	a.Size = uint64(u.offset)
}

// Open is refused: the file is being written by the one who created it.
func (u *upload) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, syscall.EBUSY
}

func (u *upload) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	u.fill(&out.Attr)
	return 0
}

// Setattr allows what cp and tar do to a new file (a size it already has,
// modes, times) and changes nothing.
func (u *upload) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		u.mu.Lock()
		same := int64(size) == u.offset
		u.mu.Unlock()
		if !same {
			return syscall.EPERM
		}
	}
	u.fill(&out.Attr)
	return 0
}

// Write passes the archive on to the restore, in order: an archive is
// read as a stream.
func (u *upload) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.finished {
		return 0, syscall.EBADF
	}
	if off != u.offset {
		u.fsys.logf("restore %s: written out of order (at %d, expected %d): an archive is written from start to end", u.what, off, u.offset)
		return 0, syscall.EINVAL
	}
	n, err := u.stdin.Write(data)
	u.offset += int64(n)
	if err != nil {
		// The restore has ended early: close reports why.
		return uint32(n), syscall.EIO
	}
	return uint32(n), 0
}

// Flush is close(2) of one descriptor of the file. The creator's ends the
// archive and waits for the restore: a restore that failed makes close
// fail with EIO (the log says why); it has left nothing.
func (u *upload) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno {
	u.mu.Lock()
	ends := u.offset > 0 && (u.creator == 0 || callerProcess(ctx) == u.creator)
	result := u.result
	u.mu.Unlock()
	if !ends {
		return result
	}
	return u.finish()
}

// finish ends the archive, waits for the restore and returns its result.
func (u *upload) finish() syscall.Errno {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.finished {
		return u.result
	}
	u.finished = true
	u.stdin.Close()
	<-u.ended
	u.fsys.jobs.removeUpload(u)
	if u.err != nil {
		u.fsys.logf("restore %s: %v", u.what, u.err)
		u.result = syscall.EIO
	}
	return u.result
}

// Release is the file's last close: it ends the archive if its creator
// did not (it gave its descriptor away), which nobody can be told about
// but the log.
func (u *upload) Release(ctx context.Context, f fs.FileHandle) syscall.Errno {
	u.finish()
	return 0
}

// callerProcess returns the process (thread group) of the thread whose
// request ctx is: FUSE names threads.
func callerProcess(ctx context.Context) int {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return 0
	}
	return processOf(int(c.Pid))
}

// processOf returns the thread group of thread tid, tid itself if /proc
// does not say.
func processOf(tid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		return tid
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "Tgid:"); ok {
			if pid, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return pid
			}
		}
	}
	return tid
}

// cancel stops the restore if it still runs (crtree restore removes what
// it made on SIGTERM) and waits for it.
func (u *upload) cancel(why string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.finished {
		return
	}
	u.finished = true
	u.result = syscall.EIO
	select {
	case <-u.ended:
	default:
		u.fsys.logf("restore %s: stopped: %s", u.what, why)
		u.cmd.Process.Signal(syscall.SIGTERM)
	}
	u.stdin.Close()
	<-u.ended
	u.fsys.jobs.removeUpload(u)
}
