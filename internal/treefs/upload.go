package treefs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/crtree/crtree/internal/hier"
)

// upload is an archive being written into a node's directory: what is
// written goes to a crtree restore reading its stdin. The archive ends
// when the process that created the file closes a descriptor of it after
// something was written (a shell's redirection closes one before; a child
// that inherited one is another process), or when its last descriptor is
// closed: close then waits for the restore, and fails with EIO if it
// failed. The file disappears then.
//
// Nothing waits holding mu: a write blocked on the restore's pipe holds
// only writing, and ending the archive closes the pipe, which unblocks it.
type upload struct {
	fs.Inode
	fsys    *FS
	key     string // directory ID + "/" + name
	name    string
	ino     uint64
	what    string
	creator int // the process (thread group) that created the file, 0 if unknown
	cmd     *exec.Cmd
	stdin   *os.File
	stderr  tail
	ended   chan struct{}
	err     error // how the restore ended, once ended is closed

	offset  atomic.Int64 // bytes written
	writing sync.Mutex   // one write at a time, in order

	mu       sync.Mutex
	finished bool          // the archive has ended (or was stopped)
	result   syscall.Errno // what close reports once finished
	reported chan struct{} // closed once result is final
}

var (
	_ fs.NodeWriter    = (*upload)(nil)
	_ fs.NodeFlusher   = (*upload)(nil)
	_ fs.NodeReleaser  = (*upload)(nil)
	_ fs.NodeGetattrer = (*upload)(nil)
	_ fs.NodeSetattrer = (*upload)(nil)
	_ fs.NodeOpener    = (*upload)(nil)
)

// startRestore starts crtree restore - --parent parent (with --name top
// unless "") for the archive about to be written as name in directory
// dirID by the process creator.
func (f *FS) startRestore(dirID, name string, parent hier.Path, top string, creator int) (*upload, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	u := &upload{fsys: f, key: dirID + "/" + name, name: name, what: name + " under " + parent.String(), creator: creator,
		stdin: w, ended: make(chan struct{}), reported: make(chan struct{})}
	args := []string{"restore", "--quiet", "--parent", parent.String()}
	if top != "" {
		args = append(args, "--name", top)
	}
	u.cmd = f.command(append(args, "-")...)
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

// uploadsIn returns the archives being written in directory dirID, by
// name.
func (j *jobs) uploadsIn(dirID string) []*upload {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []*upload
	for _, u := range j.uploads {
		if u.key == dirID+"/"+u.name {
			out = append(out, u)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].name < out[b].name })
	return out
}

func (j *jobs) removeUpload(u *upload) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.uploads[u.key] == u {
		delete(j.uploads, u.key)
	}
}

func (u *upload) fill(a *fuse.Attr) {
	a.Mode = fuse.S_IFREG | 0o600
	a.Nlink = 1
	a.Size = uint64(u.offset.Load())
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
	if size, ok := in.GetSize(); ok && int64(size) != u.offset.Load() {
		return syscall.EPERM
	}
	u.fill(&out.Attr)
	return 0
}

// Write passes the archive on to the restore, in order: an archive is
// read as a stream.
func (u *upload) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	u.writing.Lock()
	defer u.writing.Unlock()
	if u.isFinished() {
		return 0, syscall.EBADF
	}
	if off != u.offset.Load() {
		u.fsys.logf("restore %s: written out of order (at %d, expected %d): an archive is written from start to end", u.what, off, u.offset.Load())
		return 0, syscall.EINVAL
	}
	n, err := u.stdin.Write(data)
	u.offset.Add(int64(n))
	if err != nil {
		// The restore has ended early, or the archive was ended: close
		// reports why.
		return uint32(n), syscall.EIO
	}
	return uint32(n), 0
}

func (u *upload) isFinished() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.finished
}

// Flush is close(2) of one descriptor of the file. The creator's, once
// something was written, ends the archive and waits for the restore: a
// restore that failed makes close fail with EIO (the log and .errors say
// why); it has left nothing. Interrupted (Ctrl-C), it stops the restore.
func (u *upload) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno {
	if u.offset.Load() == 0 || (u.creator != 0 && callerProcess(ctx) != u.creator) {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.result
	}
	return u.finish(ctx)
}

// finish ends the archive (once), waits for the restore and returns its
// result; if ctx ends first, the restore is stopped.
func (u *upload) finish(ctx context.Context) syscall.Errno {
	u.mu.Lock()
	first := !u.finished
	u.finished = true
	u.mu.Unlock()
	if first {
		u.stdin.Close()
		go u.report()
	}
	select {
	case <-u.reported:
	case <-ctx.Done():
		u.stop("interrupted while the restore ran")
		<-u.reported
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.result
}

// report waits for the restore to end and records its result.
func (u *upload) report() {
	<-u.ended
	u.fsys.jobs.removeUpload(u)
	u.mu.Lock()
	if u.err != nil {
		u.result = syscall.EIO
	}
	u.mu.Unlock()
	if u.err != nil {
		u.fsys.logf("restore %s: %v", u.what, u.err)
	} else if u.fsys.opts.Log != nil {
		u.fsys.opts.Log.Printf("restore %s: done", u.fsys.scrub(u.what))
	}
	close(u.reported)
}

// Release is the file's last close: it ends the archive if its creator
// did not (it gave its descriptor away), which nobody can be told about
// but the log.
func (u *upload) Release(ctx context.Context, f fs.FileHandle) syscall.Errno {
	u.finish(context.Background())
	return 0
}

// stop stops the restore if it still runs (crtree restore removes what it
// made on SIGTERM) and ends the archive; finish or cancel then wait.
func (u *upload) stop(why string) {
	select {
	case <-u.ended:
		return
	default:
	}
	u.fsys.logf("restore %s: stopped: %s", u.what, why)
	u.cmd.Process.Signal(syscall.SIGTERM)
	u.stdin.Close()
}

// cancel stops the restore and waits for it: its file was removed, or the
// file system ended.
func (u *upload) cancel(why string) {
	u.stop(why)
	u.finish(context.Background())
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
