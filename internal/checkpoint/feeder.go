package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/criu"
)

// errAborted ends a streamed restore's feeding after a failure elsewhere.
var errAborted = errors.New("restore aborted")

// feeder hands CRIU the page images of a streamed restore as the archive
// is read. Each node's CRIU asks its image server for one image at a
// time; a page image part that arrives while its CRIU is not reading that
// image yet (it is still being started, or waits for another) is spilled
// into the staging directory, and replayed when CRIU asks. Every other
// image is served from the staging directory: extracted ahead by
// archive.ExtractMeta (a file with an index, whose trailer lists the page
// images), or, from a stream written pages last (inline), extracted as
// it comes, before any page image.
type feeder struct {
	stage  string
	inline bool // no trailer ahead: images come in the read, pages last
	mu     sync.Mutex
	pages  map[string]*pageImage // "node/name"
	// aborted ends every wait after a failure; ended says the read is
	// over, so that an image that never came is not waited for.
	aborted chan struct{}
	once    sync.Once
	ended   chan struct{}
	endOnce sync.Once
	// ready is closed when CRIU may start: at the first image (the
	// files of every node come before any image), or, inline, at the
	// first page image (every other image is there by then).
	ready     chan struct{}
	readyOnce sync.Once
	buf       []byte
	retired   [][]byte // buffers of page images handed over, to unmap
}

// pageImage is one page image on its way to CRIU.
type pageImage struct {
	mu       sync.Mutex
	path     string // spill file
	total    int64  // size, from the trailer (or, inline, once read; else -1)
	received int64  // bytes read from the archive
	spilled  int64  // of which went to the spill file
	live     io.Writer
	done     chan struct{} // closed once CRIU has been given every byte
	ring     [][]byte      // buffers lent to the pipe (feed)
	lentEnd  []int64       // per buffer: sent once its last lending was in, or -1
	next     int
	sent     int64 // bytes put in the pipe
	spare    []byte
}

// newFeeder makes the feeder of a restore staged in stage. sums is the
// trailer read ahead, or nil for a stream written pages last.
func newFeeder(stage string, sums *archive.Checksums) *feeder {
	f := &feeder{stage: stage, inline: sums == nil, pages: map[string]*pageImage{}, aborted: make(chan struct{}), ended: make(chan struct{}), ready: make(chan struct{}), buf: make([]byte, 1<<20)}
	if sums == nil {
		return f
	}
	for _, m := range sums.Members {
		parts := strings.SplitN(m.Name, "/", 4)
		if len(parts) != 4 || parts[0] != "nodes" || parts[2] != "criu" || !archive.IsPageImage(parts[3]) {
			continue
		}
		key := parts[1] + "/" + parts[3]
		p := f.pages[key]
		if p == nil {
			p = &pageImage{path: filepath.Join(stage, parts[1], "criu", parts[3]), done: make(chan struct{})}
			f.pages[key] = p
		}
		p.total += m.Size
	}
	return f
}

// page returns the page image name of node: listed in the trailer, or,
// inline, made on first mention (by the read or by CRIU).
func (f *feeder) page(node int, name string) *pageImage {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := fmt.Sprint(node) + "/" + name
	p := f.pages[key]
	if p == nil && f.inline {
		p = &pageImage{path: filepath.Join(f.stage, fmt.Sprint(node), "criu", name), total: -1, done: make(chan struct{})}
		f.pages[key] = p
	}
	return p
}

// complete says whether every byte of the image has been read.
func (p *pageImage) complete() bool { return p.total >= 0 && p.received == p.total }

// end says the read is over (Extract returned).
func (f *feeder) end() {
	f.endOnce.Do(func() { close(f.ended) })
}

// abort stops feeding: CRIU waiting for an image sees its end early.
func (f *feeder) abort() {
	f.once.Do(func() { close(f.aborted) })
}

// Image takes an image member from the archive (archive.ImageSink).
func (f *feeder) Image(node int, name string, size int64, body io.Reader) error {
	if !f.inline || archive.IsPageImage(name) {
		f.readyOnce.Do(func() { close(f.ready) })
	}
	// The reader has finished with the previous member: its buffers may go.
	f.unmapRetired()
	select {
	case <-f.aborted:
		return errAborted
	default:
	}
	if !archive.IsPageImage(name) {
		if f.inline {
			return archive.ErrExtractImage
		}
		return nil // extracted ahead; the reader still checks it
	}
	p := f.page(node, name)
	if p == nil {
		return fmt.Errorf("%w: page image %s is not listed", archive.ErrCorrupt, name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if f.inline && p.total >= 0 {
		return fmt.Errorf("%w: page image %s comes twice", archive.ErrCorrupt, name)
	}
	if !f.inline && p.received+size > p.total {
		return fmt.Errorf("%w: page image %s is larger than listed", archive.ErrCorrupt, name)
	}
	var n int64
	var err error
	if p.live != nil {
		cr := &countingReader{r: body}
		_, err = p.feed(cr)
		if errors.Is(err, unix.EPIPE) {
			// CRIU closed the pipe before the end of the image: the
			// rest is still read (and checked), for nobody.
			_, err = io.Copy(io.Discard, cr)
			p.live = io.Discard
		}
		n = cr.n
	} else {
		spill, oerr := os.OpenFile(p.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if oerr != nil {
			return oerr
		}
		n, err = archive.CopyChunks(spill, body, func() []byte { return f.buf })
		if cerr := spill.Close(); err == nil {
			err = cerr
		}
	}
	p.received += n
	if p.live == nil {
		p.spilled += n
	}
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%w: page image %s is truncated", archive.ErrCorrupt, name)
	}
	if f.inline {
		p.total = p.received // a page image comes in one member
	}
	if p.live != nil && p.complete() {
		// Its buffers are unmapped once the reader is done hashing them.
		f.retired = append(f.retired, p.ring...)
		p.ring = nil
		close(p.done)
	}
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// close unmaps the buffers of every page image; the archive reader must
// be done (pages still lent to a pipe stay valid until CRIU reads them).
func (f *feeder) close() {
	f.unmapRetired()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pages {
		p.mu.Lock()
		f.retired = append(f.retired, p.ring...)
		p.ring = nil
		p.mu.Unlock()
	}
	f.unmapRetired()
}

func (f *feeder) unmapRetired() {
	for _, b := range f.retired {
		unix.Munmap(b)
	}
	f.retired = nil
}

// ringBuffers is how many buffers of a page image may be lent to CRIU's
// pipe at once (the pipe holds about one).
const ringBuffers = 3

// feed moves r into CRIU's pipe without copying it into the pipe:
// vmsplice lends the pipe the buffer's pages, which CRIU's read copies
// out. A buffer is refilled only once the pipe holds none of what was
// lent from it (the pipe's unread bytes are fewer than those put in after
// it); otherwise that chunk goes through a spare buffer and a plain write.
// Each image has its own buffers, unmapped once the reader is done.
func (p *pageImage) feed(r io.Reader) (int64, error) {
	pipe, ok := p.live.(*os.File)
	if !ok {
		return copyPlain(p.live, r)
	}
	if p.ring == nil {
		for i := 0; i < ringBuffers; i++ {
			b, err := unix.Mmap(-1, 0, spliceChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				for _, b := range p.ring {
					unix.Munmap(b)
				}
				p.ring = nil
				return copyPlain(p.live, r)
			}
			p.ring = append(p.ring, b)
			p.lentEnd = append(p.lentEnd, -1)
		}
		p.spare = make([]byte, spliceChunk)
	}
	fd := int(pipe.Fd())
	var total int64
	for {
		i := p.next
		p.next = (p.next + 1) % len(p.ring)
		lend := p.lentEnd[i] < 0
		if !lend {
			unread, err := unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD
			lend = err == nil && int64(unread) <= p.sent-p.lentEnd[i]
		}
		buf := p.spare
		if lend {
			buf = p.ring[i]
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			var werr error
			if lend {
				werr = vmspliceAll(fd, buf[:n])
				p.lentEnd[i] = p.sent + int64(n)
			} else {
				_, werr = pipe.Write(buf[:n])
			}
			if werr != nil {
				return total, werr
			}
			p.sent += int64(n)
			total += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func vmspliceAll(fd int, b []byte) error {
	for len(b) > 0 {
		iov := []unix.Iovec{{Base: &b[0]}}
		iov[0].SetLen(len(b))
		n, err := unix.Vmsplice(fd, iov, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// spliceChunk is the size of a buffer lent to CRIU's pipe.
const spliceChunk = 1 << 20

func copyPlain(w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, spliceChunk)
	return archive.CopyChunks(w, r, func() []byte { return buf })
}

// has says whether node's CRIU may ask for the image name.
func (f *feeder) has(node int, name string) bool {
	if archive.IsPageImage(name) {
		// Inline, CRIU asks only for the page images its pagemaps name;
		// one that never comes ends its wait when the read is over.
		return f.page(node, name) != nil
	}
	fi, err := os.Lstat(filepath.Join(f.stage, fmt.Sprint(node), "criu", name))
	return err == nil && fi.Mode().IsRegular()
}

// send writes the image name of node to CRIU's pipe w: a page image as
// the archive delivers it (first what was spilled), any other from the
// staging directory.
func (f *feeder) send(node int, name string, w io.Writer) error {
	if !archive.IsPageImage(name) {
		src, err := os.Open(filepath.Join(f.stage, fmt.Sprint(node), "criu", name))
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(w, src)
		return err
	}
	p := f.page(node, name)
	p.mu.Lock()
	if p.live != nil {
		p.mu.Unlock()
		return fmt.Errorf("CRIU asked for %s twice", name)
	}
	if p.spilled > 0 {
		src, err := os.Open(p.path)
		if err != nil {
			p.mu.Unlock()
			return err
		}
		_, err = io.CopyN(w, src, p.spilled)
		src.Close()
		if err != nil {
			p.mu.Unlock()
			return err
		}
		// What CRIU has read need not stay in memory (tmpfs) any longer.
		os.Remove(p.path)
	}
	p.live = w
	if p.complete() {
		close(p.done)
	}
	p.mu.Unlock()
	select {
	case <-p.done:
		return nil
	case <-f.aborted:
		return errAborted
	case <-f.ended:
		select {
		case <-p.done:
			return nil
		default:
			return fmt.Errorf("%s is not in the archive", name)
		}
	}
}

// serve runs node's image server until its CRIU hangs up.
func (f *feeder) serve(node int, srv *criu.ImageServer) error {
	return srv.Serve(
		func(name string) bool { return f.has(node, name) },
		func(name string, w io.Writer) error { return f.send(node, name, w) },
	)
}
