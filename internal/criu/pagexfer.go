package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// CRIU's page server protocol (criu/page-xfer.c), as far as crtree relays
// it between a post-copy dump and restore: a request is a struct
// page_server_iov {u32 cmd; u64 nr_pages, vaddr, dst_id}, 32 bytes with
// its padding, the command in the low 16 bits of cmd. A lazy-pages daemon
// sends only requests for pages (PS_IOV_GET), answered by a header and
// the pages, and at its end PS_IOV_FORCE_CLOSE, answered by a 4-byte
// status, after which the page server ends its processes. It sends
// FORCE_CLOSE even when it failed, and the page server takes the end of
// the connection for success: both ends of a relay must decide.
const (
	// PageRequestSize is the size of a page server request.
	PageRequestSize = 32

	psIovClose      = 0x1023
	psIovForceClose = 0x1024
	psCmdMask       = 0xffff
	// psIovRefuse is no command of the protocol: CRIU fails on it.
	psIovRefuse = 0xdead
)

// IsCloseRequest reports whether a page server request ends the session.
func IsCloseRequest(req []byte) bool {
	cmd := binary.LittleEndian.Uint32(req) & psCmdMask
	return cmd == psIovClose || cmd == psIovForceClose
}

// RefuseRequest is a request that makes a page server fail: its dump
// then resumes the processes it serves.
func RefuseRequest() []byte {
	req := make([]byte, PageRequestSize)
	binary.LittleEndian.PutUint32(req, psIovRefuse)
	return req
}

// SocketPair returns a connected pair of Unix stream sockets whose one
// end goes to another process (a CRIU page server, a lazy-pages daemon,
// a supervisor): criuEnd, blocking; ours non-blocking, so that Go's
// poller serves it (a Close or a deadline ends a read).
func SocketPair() (criuEnd, ours *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.SetNonblock(fds[0], false); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "criu-pages"), os.NewFile(uintptr(fds[1]), "pages"), nil
}

// pageProxy stands between a restore's lazy-pages daemon and the page
// server upstream (RestoreOptions.LazyPages): it passes the daemon's
// requests and the pages, and answers the daemon's FORCE_CLOSE itself;
// only once the daemon has ended well does it send FORCE_CLOSE upstream,
// and the transfer has succeeded only once upstream has answered it
// (the dump's side answers once every node of the subtree has all its
// memory, see migrate's relay).
type pageProxy struct {
	upstream *os.File
	daemon   *os.File // our end of the daemon's socket pair
	closed   chan struct{}
	copied   chan struct{}
}

func newPageProxy(upstream, daemon *os.File) *pageProxy {
	p := &pageProxy{upstream: upstream, daemon: daemon, closed: make(chan struct{}), copied: make(chan struct{})}
	go p.requests()
	go p.pages()
	return p
}

// requests passes the daemon's requests upstream until its FORCE_CLOSE,
// which it answers.
func (p *pageProxy) requests() {
	for {
		req := make([]byte, PageRequestSize)
		if _, err := io.ReadFull(p.daemon, req); err != nil {
			return
		}
		if IsCloseRequest(req) {
			p.daemon.Write(make([]byte, 4))
			close(p.closed)
			return
		}
		if _, err := p.upstream.Write(req); err != nil {
			return
		}
	}
}

// pages passes what upstream sends to the daemon, until finish stops it
// (by a read deadline: a plain read loop, as io.Copy between files may
// splice, which no deadline ends).
func (p *pageProxy) pages() {
	defer close(p.copied)
	// Upstream gone (or finish): the daemon must see its connection end,
	// or it would wait for its pages forever.
	defer p.daemon.Close()
	buf := make([]byte, 1<<20)
	for {
		n, err := p.upstream.Read(buf)
		if n > 0 {
			if _, werr := p.daemon.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// finish is called once the daemon has ended, well (ok) or not: if it
// asked to close and ended well, FORCE_CLOSE goes upstream and finish
// waits for the answer. Any other way, the connection upstream is
// closed, which fails the transfer there too.
func (p *pageProxy) finish(ok bool) error {
	defer p.daemon.Close()
	defer p.upstream.Close()
	select {
	case <-p.closed:
	default:
		ok = false
	}
	// Nothing is on its way to the daemon any more: stop copying (a
	// connection that takes no deadline is closed instead).
	if p.upstream.SetReadDeadline(time.Now()) != nil {
		ok = false
		p.upstream.Close()
	}
	<-p.copied
	if !ok {
		return errors.New("the lazy-pages daemon did not end well")
	}
	p.upstream.SetReadDeadline(time.Time{})
	req := make([]byte, PageRequestSize)
	binary.LittleEndian.PutUint32(req, psIovForceClose)
	if _, err := p.upstream.Write(req); err != nil {
		return fmt.Errorf("end the page transfer: %w", err)
	}
	var status [4]byte
	if _, err := io.ReadFull(p.upstream, status[:]); err != nil {
		return fmt.Errorf("the source did not confirm the end of the page transfer (its connection ended: %v)", err)
	}
	if s := int32(binary.LittleEndian.Uint32(status[:])); s != 0 {
		return fmt.Errorf("the source's page server ended with status %d", s)
	}
	return nil
}
