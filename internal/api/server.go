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
	ln     *net.UnixListener
	handle Handler
	// reading holds a place for each connection whose request is being
	// read, slots for each request running (the others, and the long
	// ones), refusing for each connection being turned away.
	reading  chan struct{}
	slots    [2]chan struct{}
	refusing chan struct{}
	wg       sync.WaitGroup
	closing  chan struct{}
}

// MaxConns is how many requests one node may have running at once, of
// each kind: long ones (exec and logs, which run for as long as their
// caller likes) and the others, so that followers never starve an ls.
const MaxConns = 16

// maxRefusing bounds the connections being turned away at once; beyond
// it, a connection is closed without an answer.
const maxRefusing = 4 * MaxConns

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
	return &Server{
		ln: ln, handle: h,
		reading:  make(chan struct{}, MaxConns),
		slots:    [2]chan struct{}{make(chan struct{}, MaxConns), make(chan struct{}, MaxConns)},
		refusing: make(chan struct{}, maxRefusing),
		closing:  make(chan struct{}),
	}, nil
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
		case s.reading <- struct{}{}:
		default:
			s.refuse(c, busy(false))
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
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

// busy is the answer to a request beyond the limit of its kind.
func busy(long bool) Response {
	what := ""
	if long {
		what = " exec and logs"
	}
	return Response{Exit: 1, Error: fmt.Sprintf("too many requests at once (at most %d%s); try again", MaxConns, what)}
}

// refuse answers r to a connection whose request was not read, then reads
// the request before closing: a unix socket closed with a message unread
// resets its peer's connection, and the client would never see why.
func (s *Server) refuse(c *net.UnixConn, r Response) {
	reply(c, r)
	select {
	case s.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.refusing }()
		defer c.Close()
		drain(c)
	}()
}

// drain reads one message from c within requestTimeout and drops it,
// closing the descriptors it carried.
func drain(c *net.UnixConn) {
	c.SetReadDeadline(time.Now().Add(requestTimeout))
	var buf [1]byte
	oob := make([]byte, unix.CmsgSpace(4*8))
	_, oobn, _, _, err := c.ReadMsgUnix(buf[:], oob)
	if err != nil {
		return
	}
	fds, _ := parseRights(oob[:oobn])
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// serveConn reads c's request and runs it if a slot of its kind is free.
// Every answer is sent after the request was read, so that closing the
// connection never resets it.
func (s *Server) serveConn(c *net.UnixConn) {
	req, stdio, err := readRequest(c)
	<-s.reading
	if err != nil {
		reply(c, Response{Exit: 1, Error: err.Error()})
		return
	}
	req.Uid = peerUid(c)
	defer func() {
		for _, f := range stdio {
			f.Close()
		}
	}()
	long := req.Long()
	slots := s.slots[0]
	if long {
		slots = s.slots[1]
	}
	select {
	case slots <- struct{}{}:
	default:
		reply(c, busy(long))
		return
	}
	defer func() { <-slots }()
	s.run(c, req, stdio)
}

// run runs req and answers its exit status.
func (s *Server) run(c *net.UnixConn, req *Request, stdio [3]*os.File) {
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

// peerUid returns the user ID of the process at the other end of c, -1
// if the kernel does not say.
func peerUid(c *net.UnixConn) int {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1
	}
	uid := -1
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid = int(cred.Uid)
		}
	})
	return uid
}
