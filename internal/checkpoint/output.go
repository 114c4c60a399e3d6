package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"

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

// FileOutput writes an archive to an unnamed file in name's directory
// (O_TMPFILE) and gives it the name on Commit, after an fsync: no partial
// archive ever stands under the final name, and a crtree killed before
// Commit leaves nothing at all. Where the file system has no unnamed
// files, a hidden temporary name is used and renamed.
type FileOutput struct {
	root *os.Root
	name string
	// dir is name's directory, base its last element.
	dir  *os.File
	base string
	// tmp is the temporary name, "" while the file has none (O_TMPFILE).
	tmp  string
	f    *os.File
	done bool
	// written and flushed count bytes written and handed to writeback.
	written, flushed int64
	// direct is set when the file is open with O_DIRECT: writes go
	// straight to disk from buf (aligned), bypassing the page cache, so
	// the final sync has nothing left to do.
	direct bool
	buf    []byte
	n      int
	// spare buffers and the writer goroutine of direct mode: a full buffer
	// is written while the next one fills.
	spare   chan []byte
	pending chan []byte
	werr    chan error
	mapped  [][]byte
}

// directBuf is the size of O_DIRECT writes.
const directBuf = 4 << 20

// createFileIn starts an archive that will be called name inside root
// (which it closes when done); name cannot leave root. OpenOutputIn
// decides when this is the right way.
func createFileIn(root *os.Root, name string, noDirect bool) (*FileOutput, error) {
	dirName, base := path.Split(filepath.ToSlash(name))
	if dirName == "" {
		dirName = "."
	}
	dir, err := root.Open(dirName)
	if err != nil {
		root.Close()
		return nil, err
	}
	o := &FileOutput{root: root, name: name, dir: dir, base: base}
	fd, err := unix.Openat(int(dir.Fd()), ".", unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err == nil {
		o.f = os.NewFile(uintptr(fd), path.Join(dirName, base))
	} else if o.f, o.tmp, err = o.createNamed(); err != nil {
		dir.Close()
		root.Close()
		return nil, err
	}
	if !noDirect {
		o.tryDirect()
	}
	return o, nil
}

// createNamed creates a new hidden file beside the final name.
func (o *FileOutput) createNamed() (*os.File, string, error) {
	for i := 0; ; i++ {
		tmp := fmt.Sprintf(".%s.partial-%d-%d", o.base, os.Getpid(), i)
		fd, err := unix.Openat(int(o.dir.Fd()), tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == unix.EEXIST && i < 100 {
			continue
		}
		if err != nil {
			return nil, "", &os.PathError{Op: "create", Path: o.name, Err: err}
		}
		return os.NewFile(uintptr(fd), tmp), tmp, nil
	}
}

// tryDirect switches the file to O_DIRECT where the file system allows.
func (o *FileOutput) tryDirect() {
	fd := int(o.f.Fd())
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_DIRECT); err != nil {
		return
	}
	o.spare = make(chan []byte, 3)
	for i := 0; i < 3; i++ {
		buf, err := unix.Mmap(-1, 0, directBuf, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			o.unmap()
			unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl)
			return
		}
		o.mapped = append(o.mapped, buf)
		o.spare <- buf
	}
	o.buf = <-o.spare
	o.pending = make(chan []byte, 3)
	o.werr = make(chan error, 1)
	o.direct = true
	go func() {
		var err error
		for b := range o.pending {
			if err == nil {
				_, err = o.f.Write(b)
			}
			o.spare <- b[:cap(b)]
		}
		o.werr <- err
	}()
}

func (o *FileOutput) unmap() {
	for _, m := range o.mapped {
		unix.Munmap(m)
	}
	o.mapped = nil
}

// Buffered reports whether Write buffers by itself (in direct mode it
// collects writes into large aligned blocks).
func (o *FileOutput) Buffered() bool { return o.direct }

func (o *FileOutput) writeDirect(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		c := copy(o.buf[o.n:], p)
		o.n += c
		p = p[c:]
		if o.n == len(o.buf) {
			select {
			case err := <-o.werr:
				o.werr <- err
				return total - len(p), err
			default:
			}
			o.pending <- o.buf
			o.buf, o.n = <-o.spare, 0
		}
	}
	return total, nil
}

// finishDirect writes what is left in the buffer: whole blocks directly,
// the unaligned tail through the page cache.
func (o *FileOutput) finishDirect() error {
	if !o.direct {
		return nil
	}
	o.direct = false
	close(o.pending)
	err := <-o.werr
	defer o.unmap()
	if err != nil {
		return err
	}
	whole := o.n &^ 4095
	if whole > 0 {
		if _, err := o.f.Write(o.buf[:whole]); err != nil {
			return err
		}
	}
	if tail := o.buf[whole:o.n]; len(tail) > 0 {
		fd := uintptr(o.f.Fd())
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if err != nil {
			return err
		}
		if _, err := unix.FcntlInt(fd, unix.F_SETFL, fl&^unix.O_DIRECT); err != nil {
			return err
		}
		if _, err := o.f.Write(tail); err != nil {
			return err
		}
	}
	return nil
}

// flushEvery is how often FileOutput starts writeback of what it wrote,
// so that the final fsync has little left to wait for.
const flushEvery = 16 << 20

// Write appends to the archive: through the aligned buffer in direct
// mode, else to the file, starting writeback behind the write position.
func (o *FileOutput) Write(p []byte) (int, error) {
	if o.direct {
		return o.writeDirect(p)
	}
	n, err := o.f.Write(p)
	o.written += int64(n)
	// Start writing back whole pages well behind the write position, so
	// that no later write touches a page under writeback (and waits).
	if end := (o.written - flushEvery) &^ 4095; end-o.flushed >= flushEvery {
		unix.SyncFileRange(int(o.f.Fd()), o.flushed, end-o.flushed, unix.SYNC_FILE_RANGE_WRITE)
		o.flushed = end
	}
	return n, err
}

// Commit syncs the file and renames it to its final name.
func (o *FileOutput) Commit() error {
	if o.done {
		return fmt.Errorf("write archive: already finished")
	}
	if err := o.finishDirect(); err != nil {
		o.Abort()
		return fmt.Errorf("write archive: %w", err)
	}
	if err := o.f.Sync(); err != nil {
		o.Abort()
		return fmt.Errorf("write archive: %w", err)
	}
	o.done = true
	defer o.closeAll()
	if err := o.publish(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	o.dir.Sync()
	return nil
}

// publish gives the written file its final name: an unnamed file is linked
// in (straight under the name if it is free, else under a temporary name
// that is renamed over it); a named one is renamed.
func (o *FileOutput) publish() error {
	dfd := int(o.dir.Fd())
	if o.tmp == "" {
		err := o.link(o.base)
		if err != unix.EEXIST {
			return err
		}
		for i := 0; ; i++ {
			o.tmp = fmt.Sprintf(".%s.partial-%d-%d", o.base, os.Getpid(), i)
			err = o.link(o.tmp)
			if err != unix.EEXIST || i >= 100 {
				break
			}
		}
		if err != nil {
			return err
		}
	}
	if err := unix.Renameat(dfd, o.tmp, dfd, o.base); err != nil {
		unix.Unlinkat(dfd, o.tmp, 0)
		return &os.PathError{Op: "rename", Path: o.name, Err: err}
	}
	return nil
}

// link gives the unnamed file the name as in its directory: through
// /proc/self/fd, or with AT_EMPTY_PATH where /proc is not mounted.
func (o *FileOutput) link(as string) error {
	fd, dfd := int(o.f.Fd()), int(o.dir.Fd())
	err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), dfd, as, unix.AT_SYMLINK_FOLLOW)
	if err == unix.ENOENT {
		err = unix.Linkat(fd, "", dfd, as, unix.AT_EMPTY_PATH)
	}
	if err != nil && err != unix.EEXIST {
		return &os.PathError{Op: "link", Path: o.name, Err: err}
	}
	return err
}

// closeAll closes the file, its directory and the root.
func (o *FileOutput) closeAll() {
	o.f.Close()
	o.dir.Close()
	o.root.Close()
}

// PartialPath is where the unfinished archive lies, for recovery after a
// crash: "" for an unnamed file, which disappears with its writer.
func (o *FileOutput) PartialPath() string {
	if o.tmp == "" {
		return ""
	}
	return filepath.Join(o.root.Name(), filepath.Dir(o.name), o.tmp)
}

// Abort removes the temporary file. It may be called more than once, and
// after a failed Commit.
func (o *FileOutput) Abort() {
	if o.done {
		return
	}
	o.done = true
	if o.direct {
		o.direct = false
		close(o.pending)
		<-o.werr
		o.unmap()
	}
	if o.tmp != "" {
		unix.Unlinkat(int(o.dir.Fd()), o.tmp, 0)
	}
	o.closeAll()
}

// StreamOutput writes an archive to a stream such as stdout. A reader of
// an aborted stream sees it end without its trailer and refuses it.
type StreamOutput struct{ W io.Writer }

// Write writes to the stream.
func (o StreamOutput) Write(p []byte) (int, error) { return o.W.Write(p) }

// Commit does nothing: what was written is written.
func (o StreamOutput) Commit() error { return nil }

// Abort does nothing: the reader finds no trailer.
func (o StreamOutput) Abort() {}

// OutputOptions say where OpenOutputIn may write and how.
type OutputOptions struct {
	// Protect, if not "", is a directory of the root in and below which
	// nothing may be written.
	Protect string
	// NoDirect writes through the page cache even where O_DIRECT works.
	NoDirect bool
}

// OpenOutputIn starts an archive called name inside root (which it closes
// when done), as tar and cp treat what stands under the name: a regular
// file or a missing name is written as a new file that takes the name
// when complete (FileOutput); an existing character device or FIFO is
// written to as a stream (DeviceOutput) and stays what it is; a
// directory, socket, block device or terminal is refused. name must not
// be a symlink (the caller follows them, in its own view of the files).
func OpenOutputIn(root *os.Root, name string, o OutputOptions) (Output, error) {
	if o.Protect != "" {
		if err := checkOutside(root, name, o.Protect); err != nil {
			root.Close()
			return nil, err
		}
	}
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) || err == nil && fi.Mode().IsRegular() {
		return createFileIn(root, name, o.NoDirect)
	}
	defer root.Close()
	if err != nil {
		return nil, err
	}
	if err := outputKind(fi.Mode()); err != nil {
		return nil, err
	}
	f, err := root.OpenFile(name, os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	return streamInto(f)
}

// OpenStreamOutput starts an archive written into the character device or
// FIFO at name, which the kernel resolves (symlinks and /proc's magic
// links such as /dev/stdout included). For names on the host only: inside
// a node, names are resolved in the node's root (OpenOutputIn).
func OpenStreamOutput(name string) (Output, error) {
	f, err := os.OpenFile(name, os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	return streamInto(f)
}

// streamInto makes f, just opened for writing, a DeviceOutput if it is a
// character device (not a terminal) or a FIFO, and closes it otherwise.
func streamInto(f *os.File) (Output, error) {
	// What was opened must be a device or FIFO (not replaced since).
	fi, err := f.Stat()
	if err == nil {
		err = outputKind(fi.Mode())
	}
	if err == nil && fi.Mode()&fs.ModeCharDevice != 0 {
		if _, terr := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); terr == nil {
			err = errors.New("it is a terminal; refusing to write an archive to it")
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &DeviceOutput{f: f}, nil
}

// outputKind accepts the kinds of file an archive is streamed into:
// character devices and FIFOs.
func outputKind(m fs.FileMode) error {
	switch {
	case m&fs.ModeDir != 0:
		return errors.New("it is a directory")
	case m&fs.ModeSocket != 0:
		return errors.New("it is a socket; give a file, a FIFO or a character device")
	case m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0:
		return errors.New("it is a block device; give a file, a FIFO or a character device")
	case m&(fs.ModeCharDevice|fs.ModeNamedPipe) == 0:
		return fmt.Errorf("it is not a file (%s)", m.Type())
	}
	return nil
}

// checkOutside refuses a name whose directory is protect, or lies below
// it, in root: the directory is opened (symlinks resolved inside root)
// and its ancestors compared with protect by device and inode, up to
// root, so neither symlinks nor bind mounts lead into protect.
func checkOutside(root *os.Root, name, protect string) error {
	pfi, err := root.Stat(protect)
	if err != nil {
		return nil // nothing there to protect
	}
	rfi, err := root.Stat(".")
	if err != nil {
		return err
	}
	refused := fmt.Errorf("/%s is crtree's own directory in the node; write the archive elsewhere", protect)
	if path.Clean(name) == path.Clean(protect) {
		return refused
	}
	dir, err := root.Open(path.Dir(name))
	if err != nil {
		return nil // the write fails later, with its own reason
	}
	defer dir.Close()
	prot, top := fileID(pfi), fileID(rfi)
	fd, err := unix.Dup(int(dir.Fd()))
	if err != nil {
		return err
	}
	var prev [2]uint64
	for i := 0; i < 4096; i++ {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			break
		}
		id := [2]uint64{st.Dev, st.Ino}
		if id == prot {
			unix.Close(fd)
			return refused
		}
		if id == top || id == prev {
			break
		}
		prev = id
		up, err := unix.Openat(fd, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return err
		}
		fd = up
	}
	unix.Close(fd)
	return nil
}

func fileID(fi fs.FileInfo) [2]uint64 {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return [2]uint64{}
	}
	return [2]uint64{st.Dev, st.Ino}
}

// DeviceOutput writes an archive to an open character device or FIFO:
// nothing is renamed, and what stands under the name stays there. A
// reader of an aborted archive sees it end without its trailer.
type DeviceOutput struct{ f *os.File }

// Write writes to the device or FIFO.
func (o *DeviceOutput) Write(p []byte) (int, error) { return o.f.Write(p) }

// Commit closes the device or FIFO.
func (o *DeviceOutput) Commit() error {
	if err := o.f.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	return nil
}

// Abort closes the device or FIFO. It may be called more than once.
func (o *DeviceOutput) Abort() { o.f.Close() }
