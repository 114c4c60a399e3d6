package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
)

// capturePart is the size of the page image parts a streamed dump
// writes, and captureBuffers how many are in flight at once (what the
// capture adds to crtree's memory: captureBuffers * capturePart).
const (
	capturePart    = 8 << 20
	captureBuffers = 4
)

// capture takes the images of CRIU dumps run with --stream (each node's
// CRIU writes to a criu.CaptureServer in its images directory): page
// images go into the archive in parts as CRIU writes them, through a few
// buffers, so that they are never staged; every other image (small) is
// written to the node's staging directory and archived once CRIU is done.
type capture struct {
	parts   chan pagePart
	free    chan []byte
	stop    chan struct{}
	readers sync.WaitGroup
	servers []*criu.CaptureServer
	serving sync.WaitGroup
	once    sync.Once

	mu    sync.Mutex
	pipes []*os.File
	err   error
	// pages counts each node's page image bytes (written by the archive
	// loop only).
	pages []int64
}

// pagePart is one part of a page image, read from CRIU's pipe.
type pagePart struct {
	node int
	name string // member name
	data []byte
	buf  []byte // to give back to free
}

func startCapture(nodes []*dumpNode) (*capture, error) {
	c := &capture{
		parts: make(chan pagePart),
		free:  make(chan []byte, captureBuffers),
		stop:  make(chan struct{}),
		pages: make([]int64, len(nodes)),
	}
	for i := 0; i < captureBuffers; i++ {
		c.free <- make([]byte, capturePart)
	}
	for i, m := range nodes {
		if m.status.State != hier.Running {
			continue
		}
		srv, err := criu.ListenCapture(filepath.Join(m.dir, "criu"))
		if err != nil {
			c.Close()
			return nil, err
		}
		c.servers = append(c.servers, srv)
		c.serving.Add(1)
		go func() {
			defer c.serving.Done()
			if err := srv.Serve(func(name string, r *os.File) error { return c.take(i, m.dir, name, r) }); err != nil {
				c.fail(err)
			}
		}()
	}
	return c, nil
}

// take starts reading one image CRIU writes.
func (c *capture) take(node int, dir, name string, r *os.File) error {
	c.mu.Lock()
	c.pipes = append(c.pipes, r)
	c.mu.Unlock()
	select {
	case <-c.stop:
		return errAborted
	default:
	}
	c.readers.Add(1)
	if archive.IsPageImage(name) {
		go c.readPages(node, archive.ImagesPrefix(node)+"/"+name, r)
		return nil
	}
	go func() {
		defer c.readers.Done()
		f, err := os.OpenFile(filepath.Join(dir, "criu", name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, err = io.Copy(f, r)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			c.fail(fmt.Errorf("image %s: %w", name, err))
		}
	}()
	return nil
}

// readPages cuts a page image into parts for the archive loop.
func (c *capture) readPages(node int, name string, r *os.File) {
	defer c.readers.Done()
	for {
		var buf []byte
		select {
		case buf = <-c.free:
		case <-c.stop:
			return
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			select {
			case c.parts <- pagePart{node: node, name: name, data: buf[:n], buf: buf}:
			case <-c.stop:
				return
			}
		} else {
			c.free <- buf
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return
		}
		if err != nil {
			c.fail(fmt.Errorf("image %s: %w", name, err))
			return
		}
	}
}

func (c *capture) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

// failed returns the first error of a reader or server.
func (c *capture) failed() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// write archives one part and gives its buffer back once hashed.
func (c *capture) write(w *archive.Writer, p pagePart) error {
	c.pages[p.node] += int64(len(p.data))
	return w.WritePartBytes(p.name, p.data, func() { c.free <- p.buf })
}

// finish is called once every CRIU has written its images successfully
// (it has exited, or waits in its post-dump action with its connection
// open): it archives the parts still on their way and waits until every
// image has been read. CRIU may be done before its last requests
// (inventory.img comes last) have been taken, or even before its
// connection was accepted: each server serves what CRIU sent, to the end
// of the connection or of the requests, which cannot take long;
// finishTimeout is only a guard.
func (c *capture) finish(w *archive.Writer) error {
	for _, s := range c.servers {
		s.EndRequests()
	}
	served := make(chan struct{})
	done := make(chan struct{})
	go func() {
		c.serving.Wait()
		close(served)
		c.readers.Wait()
		close(done)
	}()
	guard := time.NewTimer(finishTimeout)
	defer guard.Stop()
	for {
		select {
		case p := <-c.parts:
			if err := c.write(w, p); err != nil {
				return err
			}
		case <-guard.C:
			// A CRIU held in its post-dump action is alive: an image
			// it never closes would be waited for forever, with the
			// subtree frozen. Give up; the dump fails and is undone.
			c.fail(errors.New("CRIU's images did not all arrive"))
			c.Close()
			return c.failed()
		case <-done:
			return c.failed()
		}
	}
}

// finishTimeout bounds how long finish waits for the image servers.
const finishTimeout = 10 * time.Second

// Close stops the capture: CRIU, if still writing, sees its pipes close.
func (c *capture) Close() {
	c.once.Do(func() {
		close(c.stop)
		for _, s := range c.servers {
			s.Close()
		}
		c.serving.Wait()
		c.mu.Lock()
		for _, p := range c.pipes {
			p.Close()
		}
		c.mu.Unlock()
	})
}
