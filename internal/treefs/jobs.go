package treefs

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

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
	id      string // the node whose subtree is dumped
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
// has begun, or with the dump's failure; interrupted (ctx), it stops it.
func (f *FS) startDump(ctx context.Context, t *hier.Tree, n *hier.Node) (*dumpFile, syscall.Errno) {
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
	d := &dumpFile{fsys: f, what: p.String(), id: n.ID, spool: spool}
	d.cond = sync.NewCond(&d.mu)
	d.cmd = f.command("dump", "--leave-running", "--quiet", f.path(t, n).String(), "-o", "-")
	d.cmd.Stdout, d.cmd.Stderr = w, &d.stderr
	if other, errno := f.jobs.addDump(t, d); errno != 0 {
		r.Close()
		w.Close()
		spool.Close()
		if errno == syscall.EBUSY {
			// Another reader's dump holds the subtree, or will in a moment.
			f.logf("read %s/%s: %s is being dumped (a reader of its %s); try again once it has ended", p, checkpointName, other, checkpointName)
		}
		return nil, errno
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
	interrupted := d.wait(ctx, func() bool { return d.written > 0 || d.done }) != nil
	failed := d.done && d.err != nil
	d.mu.Unlock()
	if interrupted {
		d.release()
		return nil, syscall.EINTR
	}
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
	if d.err == nil && d.fsys.opts.Log != nil {
		d.fsys.opts.Log.Printf("read %s/%s: dump done, %d bytes", d.fsys.scrub(d.what), checkpointName, d.written)
	}
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

// ended says whether the dump has ended.
func (d *dumpFile) ended() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.done
}

// size returns the size of the archive so far (all of it once the dump
// is done); it does not wait: stat must not hang on a dump.
func (d *dumpFile) size() (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
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

// addDump records d, unless a dump this file system runs overlaps it: it
// then returns EBUSY and the path of that dump's node.
func (j *jobs) addDump(t *hier.Tree, d *dumpFile) (string, syscall.Errno) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return "", syscall.ENODEV
	}
	if m := j.overlapping(t, t.Nodes[d.id]); m != nil {
		return t.PathOf(m).String(), syscall.EBUSY
	}
	j.dumps[d] = true
	return "", 0
}

// overlapping returns the node of a dump of this file system that
// overlaps a dump of n's subtree (n, an ancestor or a descendant), nil if
// none; j.mu is held. A dump that has ended (its archive still read from
// the spool) overlaps nothing.
func (j *jobs) overlapping(t *hier.Tree, n *hier.Node) *hier.Node {
	for d := range j.dumps {
		m := t.Nodes[d.id]
		if m == nil || d.ended() {
			continue
		}
		if m.ID == n.ID || isAncestor(t, m, n) || isAncestor(t, n, m) {
			return m
		}
	}
	return nil
}

// isAncestor says whether a is an ancestor of n.
func isAncestor(t *hier.Tree, a, n *hier.Node) bool {
	for _, id := range t.Ancestors(n) {
		if id == a.ID {
			return true
		}
	}
	return false
}

func (j *jobs) removeDump(d *dumpFile) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.dumps, d)
}
