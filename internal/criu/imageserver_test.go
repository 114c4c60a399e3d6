package criu

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	streamer "github.com/checkpoint-restore/go-criu/v7/crit/images/img-streamer"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// The CRIU side of the image-streamer protocol, as img-streamer.c speaks
// it: a length-prefixed request per image, a reply (restore only), then a
// pipe end with one dummy byte.

func dialStreamer(t *testing.T, dir, name string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(dir, name), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sendRequest(t *testing.T, c *net.UnixConn, name string) {
	t.Helper()
	msg, _ := proto.Marshal(&streamer.ImgStreamerRequestEntry{Filename: proto.String(name)})
	if err := writeMessage(c, msg); err != nil {
		t.Fatal(err)
	}
}

func readReply(t *testing.T, c *net.UnixConn) bool {
	t.Helper()
	var lb [4]byte
	if _, err := io.ReadFull(c, lb[:]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, binary.LittleEndian.Uint32(lb[:]))
	io.ReadFull(c, buf)
	var r streamer.ImgStreamerReplyEntry
	if err := proto.Unmarshal(buf, &r); err != nil {
		t.Fatal(err)
	}
	return r.GetExists()
}

func sendPipeEnd(t *testing.T, c *net.UnixConn, f *os.File) {
	t.Helper()
	if _, _, err := c.WriteMsgUnix([]byte{0}, unix.UnixRights(int(f.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// serveImages runs an ImageServer in a new directory until the test ends;
// its result comes on the channel.
func serveImages(t *testing.T, has func(string) bool, send func(string, io.Writer) error) (string, chan error) {
	t.Helper()
	dir := t.TempDir()
	srv, err := ListenImages(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	done := make(chan error, 1)
	go func() { done <- srv.Serve(has, send) }()
	return dir, done
}

func TestImageServer(t *testing.T) {
	dir, done := serveImages(t,
		func(name string) bool { return name == "pages-1.img" },
		func(name string, w io.Writer) error {
			_, err := io.WriteString(w, strings.Repeat("p", 100000))
			return err
		})
	c := dialStreamer(t, dir, ServeSocket)
	sendRequest(t, c, "core-1.img")
	if readReply(t, c) {
		t.Fatal("core-1.img said to exist")
	}
	sendRequest(t, c, "pages-1.img")
	if !readReply(t, c) {
		t.Fatal("pages-1.img said not to exist")
	}
	r, w, _ := os.Pipe()
	sendPipeEnd(t, c, w)
	data, err := io.ReadAll(r)
	if err != nil || len(data) != 100000 {
		t.Fatalf("read %d bytes: %v", len(data), err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve after CRIU hung up: %v", err)
	}
}

// CRIU may close an image's pipe before reading it to the end (it reads
// nftables-N.img by the pipe's size, 0): that ends the image, not the
// service; the next image is served as usual.
func TestImageServerPipeClosedEarly(t *testing.T) {
	var unread []string
	dir, done := serveImages(t,
		func(name string) bool { return true },
		func(name string, w io.Writer) error {
			_, err := io.WriteString(w, strings.Repeat(name[:1], 100000))
			if err != nil {
				unread = append(unread, name)
			}
			return err
		})
	c := dialStreamer(t, dir, ServeSocket)
	sendRequest(t, c, "nftables-10.img")
	if !readReply(t, c) {
		t.Fatal("nftables-10.img said not to exist")
	}
	r, w, _ := os.Pipe()
	r.Close() // before the server writes: it must get EPIPE
	sendPipeEnd(t, c, w)
	sendRequest(t, c, "netns-ct-10.img")
	if !readReply(t, c) {
		t.Fatal("netns-ct-10.img said not to exist")
	}
	r, w, _ = os.Pipe()
	sendPipeEnd(t, c, w)
	data, err := io.ReadAll(r)
	if err != nil || string(data) != strings.Repeat("n", 100000) {
		t.Fatalf("netns-ct-10.img: read %d bytes: %v", len(data), err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if len(unread) != 1 || unread[0] != "nftables-10.img" {
		t.Fatalf("send failed for %v, want nftables-10.img only", unread)
	}
}

func TestImageServerRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(c *net.UnixConn)
	}{
		{"path, not a name", func(c *net.UnixConn) {
			msg, _ := proto.Marshal(&streamer.ImgStreamerRequestEntry{Filename: proto.String("../etc/passwd")})
			writeMessage(c, msg)
		}},
		{"huge request", func(c *net.UnixConn) { c.Write([]byte{0xff, 0xff, 0xff, 0x7f}) }},
		{"garbage", func(c *net.UnixConn) { writeMessage(c, []byte{0xff, 0xff, 0xff}) }},
		{"truncated", func(c *net.UnixConn) { c.Write([]byte{10, 0}); c.CloseWrite() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, done := serveImages(t, func(string) bool { return true }, func(string, io.Writer) error { return nil })
			c := dialStreamer(t, dir, ServeSocket)
			defer c.Close()
			tc.send(c)
			if err := <-done; err == nil {
				t.Fatal("Serve accepted it")
			}
		})
	}
}

func TestCaptureServer(t *testing.T) {
	dir := t.TempDir()
	srv, err := ListenCapture(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	got := make(chan string, 2)
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(func(name string, r *os.File) error {
			// Read elsewhere, as crtree does: CRIU may hold several open.
			go func() {
				data, _ := io.ReadAll(r)
				r.Close()
				got <- name + "=" + string(data)
			}()
			return nil
		})
	}()
	c := dialStreamer(t, dir, CaptureSocket)
	var writers []*os.File
	for _, name := range []string{"pages-1.img", "core-1.img"} {
		sendRequest(t, c, name)
		r, w, _ := os.Pipe()
		sendPipeEnd(t, c, r)
		writers = append(writers, w)
	}
	// Written in the other order than opened, both open at once.
	io.WriteString(writers[1], "core")
	writers[1].Close()
	io.WriteString(writers[0], "pages")
	writers[0].Close()
	seen := map[string]bool{<-got: true, <-got: true}
	if !seen["pages-1.img=pages"] || !seen["core-1.img=core"] {
		t.Fatalf("captured %v", seen)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A dump whose CRIU waits in its post-dump action keeps its connection
// open: EndRequests makes Serve take what CRIU sent (whether or not the
// connection was accepted yet, whether or not Serve waits for more) and
// return.
func TestCaptureServerEndRequests(t *testing.T) {
	for _, tc := range []struct {
		name  string
		early bool // EndRequests before Serve accepts the connection
	}{{"queued", true}, {"waiting", false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			srv, err := ListenCapture(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			c := dialStreamer(t, dir, CaptureSocket)
			defer c.Close()
			names := []string{"pages-1.img", "core-1.img", "inventory.img"}
			taken := make(chan string, len(names))
			serve := func() chan error {
				done := make(chan error, 1)
				go func() {
					done <- srv.Serve(func(name string, r *os.File) error {
						r.Close()
						taken <- name
						return nil
					})
				}()
				return done
			}
			var done chan error
			if !tc.early {
				done = serve()
			}
			for _, name := range names {
				sendRequest(t, c, name)
				r, w, _ := os.Pipe()
				sendPipeEnd(t, c, r)
				w.Close()
			}
			if !tc.early {
				for range names {
					<-taken
				}
			}
			srv.EndRequests()
			if tc.early {
				done = serve()
				for range names {
					<-taken
				}
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve still waits for requests")
			}
		})
	}
}
