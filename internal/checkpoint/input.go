package checkpoint

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// prefetchChunk and prefetchDepth size the read-ahead of archive input.
const (
	prefetchChunk = 4 << 20
	prefetchDepth = 4
)

// Prefetch returns a reader that reads r ahead in a goroutine, up to
// prefetchDepth chunks, so that the disk (or the pipe) keeps delivering
// while the archive is decompressed, hashed and written out. With direct,
// a regular file is read with O_DIRECT where the file system allows it,
// which skips filling the page cache with an archive that is read once.
func Prefetch(r io.Reader, direct bool) io.ReadCloser {
	p := &prefetcher{chunks: make(chan chunk, prefetchDepth), free: make(chan []byte, prefetchDepth+2), stop: make(chan struct{})}
	if f, ok := r.(*os.File); ok && direct {
		direct = tryDirectRead(f)
	} else {
		direct = false
	}
	for i := 0; i < cap(p.free); i++ {
		if direct {
			buf, err := unix.Mmap(-1, 0, prefetchChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err == nil {
				p.mapped = append(p.mapped, buf)
				p.free <- buf
				continue
			}
		}
		p.free <- make([]byte, prefetchChunk)
	}
	go p.fill(r)
	return p
}

type chunk struct {
	data []byte
	err  error
}

type prefetcher struct {
	chunks chan chunk
	free   chan []byte
	stop   chan struct{}
	cur    []byte
	buf    []byte
	err    error
	mapped [][]byte
}

func (p *prefetcher) fill(r io.Reader) {
	defer close(p.chunks)
	for {
		var buf []byte
		select {
		case buf = <-p.free:
		case <-p.stop:
			return
		}
		n, err := io.ReadFull(r, buf)
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		select {
		case p.chunks <- chunk{buf[:n], err}:
		case <-p.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

func (p *prefetcher) Read(b []byte) (int, error) {
	for len(p.cur) == 0 {
		if p.buf != nil {
			p.free <- p.buf[:cap(p.buf)]
			p.buf = nil
		}
		if p.err != nil {
			return 0, p.err
		}
		c, ok := <-p.chunks
		if !ok {
			return 0, io.EOF
		}
		p.buf, p.cur, p.err = c.data, c.data, c.err
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// Close stops the read-ahead.
func (p *prefetcher) Close() error {
	close(p.stop)
	for range p.chunks {
	}
	for _, m := range p.mapped {
		unix.Munmap(m)
	}
	return nil
}

// tryDirectRead switches f to O_DIRECT if it is a regular file on a file
// system that supports it, unless the file is in the page cache already
// (just copied to this host, say): reading it from memory is faster. The
// last read of an unaligned file size is short, which O_DIRECT allows at
// end of file.
func tryDirectRead(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || cached(f, fi.Size()) {
		return false
	}
	fd := f.Fd()
	fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
	if err != nil {
		return false
	}
	_, err = unix.FcntlInt(fd, unix.F_SETFL, fl|unix.O_DIRECT)
	return err == nil
}

// cacheSamples is how many places of a file cached looks at.
const cacheSamples = 64

// cached reports whether nearly all of a file of size bytes is in the
// page cache, judging from one byte at each of cacheSamples places read
// with RWF_NOWAIT (which fails rather than wait for the disk).
func cached(f *os.File, size int64) bool {
	if size < cacheSamples {
		return false
	}
	resident := 0
	one := [][]byte{make([]byte, 1)}
	for k := int64(0); k < cacheSamples; k++ {
		n, err := unix.Preadv2(int(f.Fd()), one, (size-1)*k/(cacheSamples-1), unix.RWF_NOWAIT)
		if err == nil && n == 1 {
			resident++
		}
	}
	return resident*10 >= cacheSamples*9
}
