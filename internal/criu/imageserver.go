package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	streamer "github.com/checkpoint-restore/go-criu/v7/crit/images/img-streamer"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// ServeSocket and CaptureSocket are the sockets a CRIU restore and dump
// run with --stream connect to, in their images directory.
const (
	ServeSocket   = "streamer-serve.sock"
	CaptureSocket = "streamer-capture.sock"
)

// maxRequest bounds one request from CRIU (an image file name).
const maxRequest = 4096

// pipeSize is what the image pipes are enlarged to (the kernel's default
// maximum for unprivileged pipes; root may go further but needs no more).
const pipeSize = 1 << 20

// ImageServer hands a CRIU restore its images over the image-streamer
// protocol (CRIU's img-streamer.c), instead of CRIU reading them from the
// images directory: CRIU connects to ServeSocket and, for each image it
// opens, sends the name; the server says whether the image exists and, if
// so, receives a pipe from CRIU and writes the image into it. CRIU opens
// images one after another.
type ImageServer struct{ streamSocket }

// streamSocket is the socket CRIU connects to, once.
type streamSocket struct {
	l      *net.UnixListener
	mu     sync.Mutex
	conn   *net.UnixConn
	done   bool
	ending bool // no more requests will come: read what is sent, then stop
}

func listen(dir, name string) (*net.UnixListener, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, name), Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(true)
	return l, nil
}

// accept waits for CRIU's connection.
func (s *streamSocket) accept() (*net.UnixConn, error) {
	conn, err := s.l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		conn.Close()
		return nil, errors.New("closed")
	}
	s.conn = conn
	if s.ending {
		conn.CloseRead()
	}
	return conn, nil
}

// Close stops the server; a Serve under way returns.
func (s *streamSocket) Close() error {
	s.mu.Lock()
	s.done = true
	if s.conn != nil {
		s.conn.Close()
	}
	s.mu.Unlock()
	return s.l.Close()
}

// ListenImages creates the socket in the images directory dir.
func ListenImages(dir string) (*ImageServer, error) {
	l, err := listen(dir, ServeSocket)
	if err != nil {
		return nil, fmt.Errorf("image server: %w", err)
	}
	return &ImageServer{streamSocket{l: l}}, nil
}

// serve accepts CRIU's connection and hands each request (an image's
// name) to handle until CRIU hangs up.
func (s *streamSocket) serve(what string, handle func(conn *net.UnixConn, name string) error) error {
	conn, err := s.accept()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer conn.Close()
	for {
		name, err := readRequest(conn)
		if err == io.EOF {
			return nil
		}
		if err == nil {
			err = handle(conn, name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
}

// Serve accepts CRIU's connection and answers its requests until CRIU
// hangs up: has says whether an image exists, send writes its content to
// w (which Serve closes afterwards; CRIU sees the end of the image).
// CRIU may close a pipe before reading the image to its end (it reads
// nftables-N.img by the size of the pipe, which is 0): send then gets
// EPIPE, which ends that image only. Any other error from send ends the
// service: CRIU then fails to read.
func (s *ImageServer) Serve(has func(name string) bool, send func(name string, w io.Writer) error) error {
	return s.serve("image server", func(conn *net.UnixConn, name string) error {
		ok := has(name)
		reply, _ := proto.Marshal(&streamer.ImgStreamerReplyEntry{Exists: proto.Bool(ok)})
		if err := writeMessage(conn, reply); err != nil || !ok {
			return err
		}
		pipe, err := recvPipe(conn)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		unix.FcntlInt(pipe.Fd(), unix.F_SETPIPE_SZ, pipeSize)
		err = send(name, pipe)
		pipe.Close()
		if err != nil && !errors.Is(err, unix.EPIPE) {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

// CaptureServer takes the images of a CRIU dump run with --stream: for
// each image CRIU writes, it sends the name and then a pipe, from which the
// server reads the image until CRIU closes it.
type CaptureServer struct{ streamSocket }

// ListenCapture creates the socket in the images directory dir.
func ListenCapture(dir string) (*CaptureServer, error) {
	l, err := listen(dir, CaptureSocket)
	if err != nil {
		return nil, fmt.Errorf("capture server: %w", err)
	}
	return &CaptureServer{streamSocket{l: l}}, nil
}

// EndRequests says that CRIU will open no more images although it keeps
// its connection (it waits in its post-dump action): Serve takes the
// requests already sent and returns, as if CRIU had hung up. (Shutting
// down the reading side leaves what is queued to be read, pipes included,
// and then reads as the end.)
func (s *CaptureServer) EndRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ending = true
	if s.conn != nil {
		s.conn.CloseRead()
	}
}

// Serve accepts CRIU's connection and hands each image's name and pipe to
// take until CRIU hangs up (or EndRequests). take must return at once (reading the pipe
// elsewhere): CRIU may write several images at a time. take owns the
// pipe; an error from it ends the service.
func (s *CaptureServer) Serve(take func(name string, r *os.File) error) error {
	return s.serve("capture server", func(conn *net.UnixConn, name string) error {
		pipe, err := recvPipe(conn)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		unix.FcntlInt(pipe.Fd(), unix.F_SETPIPE_SZ, pipeSize)
		if err := take(name, pipe); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

// readRequest reads one request: a little-endian 32-bit length and an
// img_streamer_request_entry, as CRIU's pb_write_one frames it.
func readRequest(r io.Reader) (string, error) {
	var lb [4]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return "", errors.New("truncated request")
		}
		return "", err
	}
	n := binary.LittleEndian.Uint32(lb[:])
	if n > maxRequest {
		return "", fmt.Errorf("request of %d bytes", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", fmt.Errorf("truncated request: %w", err)
	}
	var req streamer.ImgStreamerRequestEntry
	if err := proto.Unmarshal(buf, &req); err != nil {
		return "", fmt.Errorf("malformed request: %w", err)
	}
	name := req.GetFilename()
	if name == "" || name != filepath.Base(name) {
		return "", fmt.Errorf("request for %q", name)
	}
	return name, nil
}

func writeMessage(w io.Writer, msg []byte) error {
	b := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+len(msg)), uint32(len(msg)))
	_, err := w.Write(append(b, msg...))
	return err
}

// recvPipe receives the pipe CRIU sends with one dummy byte.
func recvPipe(conn *net.UnixConn) (*os.File, error) {
	var dummy [1]byte
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := conn.ReadMsgUnix(dummy[:], oob)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, errors.New("no pipe received")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, errors.New("no pipe received")
	}
	return os.NewFile(uintptr(fds[0]), "criu-image-pipe"), nil
}
