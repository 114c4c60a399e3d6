package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Handler runs one request with the caller's stdin, stdout and stderr and
// returns the exit status. done is closed when the caller hangs up; the
// handler should then stop what it runs.
type Handler func(req *Request, stdio [3]*os.File, done <-chan struct{}) int

// Server serves a node's socket.
type Server struct {
	ln      *net.UnixListener
	handle  Handler
	slots   chan struct{}
	wg      sync.WaitGroup
	closing chan struct{}
}

// MaxConns is how many requests one node may have running at once.
const MaxConns = 16

// requestTimeout bounds how long a client may take to send its request.
const requestTimeout = 5 * time.Second

// Listen creates the socket at path (replacing a stale one) and returns a
// server for it.
func Listen(path string, h Handler) (*Server, error) {
	os.Remove(path)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	os.Chmod(path, 0o666)
	return &Server{ln: ln, handle: h, slots: make(chan struct{}, MaxConns), closing: make(chan struct{})}, nil
}

// Serve accepts requests until Close.
func (s *Server) Serve() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.closing:
				return
			default:
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		select {
		case s.slots <- struct{}{}:
		default:
			reply(c, Response{Exit: 1, Error: fmt.Sprintf("too many requests at once (at most %d)", MaxConns)})
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.slots }()
			defer c.Close()
			s.serveConn(c)
		}()
	}
}

// Close stops accepting requests and removes the socket. Requests under
// way are not waited for.
func (s *Server) Close() {
	close(s.closing)
	s.ln.Close()
}

func reply(c *net.UnixConn, r Response) {
	data, _ := json.Marshal(r)
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write(data)
}

func (s *Server) serveConn(c *net.UnixConn) {
	req, stdio, err := readRequest(c)
	if err != nil {
		reply(c, Response{Exit: 1, Error: err.Error()})
		return
	}
	defer func() {
		for _, f := range stdio {
			f.Close()
		}
	}()
	// The caller hanging up (EOF on the socket) stops the command.
	done := make(chan struct{})
	go func() {
		c.SetReadDeadline(time.Time{})
		var b [1]byte
		c.Read(b[:])
		close(done)
	}()
	code := s.handle(req, stdio, done)
	reply(c, Response{Exit: code})
}

// readRequest reads one message with exactly three descriptors.
func readRequest(c *net.UnixConn) (*Request, [3]*os.File, error) {
	var stdio [3]*os.File
	c.SetReadDeadline(time.Now().Add(requestTimeout))
	buf := make([]byte, MaxRequest+1)
	oob := make([]byte, unix.CmsgSpace(4*8))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, stdio, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	fds, ferr := parseRights(oob[:oobn])
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > MaxRequest {
		closeAll()
		return nil, stdio, fmt.Errorf("%w: message larger than %d bytes", ErrBadRequest, MaxRequest)
	}
	if ferr != nil || len(fds) != 3 {
		closeAll()
		return nil, stdio, fmt.Errorf("%w: want stdin, stdout and stderr descriptors", ErrBadRequest)
	}
	req, err := DecodeRequest(buf[:n])
	if err != nil {
		closeAll()
		return nil, stdio, err
	}
	for i, fd := range fds {
		unix.CloseOnExec(fd)
		stdio[i] = os.NewFile(uintptr(fd), fmt.Sprintf("client-%d", i))
	}
	return req, stdio, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		r, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, err
		}
		fds = append(fds, r...)
	}
	if len(fds) == 0 {
		return nil, errors.New("no descriptors")
	}
	return fds, nil
}
