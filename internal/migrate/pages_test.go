package migrate

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/crtree/crtree/internal/criu"
)

// The relay's decisions, with the two ends it relays played by the test:
// each node's CRIU page server (the end Socket returns) and the far side
// (a connection through NewPageDialer). CRIU itself is tested end to end
// (e2e TestMigrateLazy*); here, what it is sent and when.

const (
	psIovGet        = 7
	psIovForceClose = 0x1024
	psIovRefuse     = 0xdead
)

func request(cmd uint32) []byte {
	req := make([]byte, criu.PageRequestSize)
	binary.LittleEndian.PutUint32(req, cmd)
	return req
}

func cmdOf(req []byte) uint32 { return binary.LittleEndian.Uint32(req) & 0xffff }

// conn makes f a net.Conn, for its deadlines.
func conn(t *testing.T, f *os.File) net.Conn {
	t.Helper()
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readRequest reads one request within d; nil if none came.
func readRequest(t *testing.T, c net.Conn, d time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	req := make([]byte, criu.PageRequestSize)
	if _, err := io.ReadFull(c, req); err != nil {
		return nil
	}
	return req
}

// newTestRelay is a relay with n nodes: their CRIU ends and far sides.
func newTestRelay(t *testing.T, n int) (*pageRelay, []net.Conn, []net.Conn) {
	t.Helper()
	r, err := newPageRelay(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	var criuEnds, far []net.Conn
	for i := 0; i < n; i++ {
		s, err := r.Socket(i)
		if err != nil {
			t.Fatal(err)
		}
		criuEnds = append(criuEnds, conn(t, s))
		f, err := NewPageDialer(r.Path()).Socket(i)
		if err != nil {
			t.Fatal(err)
		}
		far = append(far, conn(t, f))
	}
	return r, criuEnds, far
}

// A page request goes to CRIU and its pages come back; FORCE_CLOSE is
// held until every node sent its own and the far side runs the subtree
// (arm), then reaches every CRIU, whose answer goes back.
func TestRelayHoldsForceCloseUntilAllAndArmed(t *testing.T) {
	r, criuEnds, far := newTestRelay(t, 2)
	far[0].Write(request(psIovGet))
	if req := readRequest(t, criuEnds[0], 5*time.Second); req == nil || cmdOf(req) != psIovGet {
		t.Fatalf("CRIU 0 got %x, want the page request", req)
	}
	page := bytes.Repeat([]byte{7}, 4096)
	criuEnds[0].Write(page)
	got := make([]byte, len(page))
	far[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(far[0], got); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("the far side got %v (%v), want the page", got[:8], err)
	}

	far[0].Write(request(psIovForceClose))
	r.arm()
	if req := readRequest(t, criuEnds[0], 300*time.Millisecond); req != nil {
		t.Fatalf("CRIU 0 got %x before node 1 had all its memory", req)
	}
	far[1].Write(request(psIovForceClose))
	for i, c := range criuEnds {
		if req := readRequest(t, c, 5*time.Second); req == nil || cmdOf(req) != psIovForceClose {
			t.Fatalf("CRIU %d got %x, want FORCE_CLOSE", i, req)
		}
		c.Write([]byte{0, 0, 0, 0})
		c.Close()
	}
	for i, f := range far {
		var status [4]byte
		f.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(f, status[:]); err != nil {
			t.Fatalf("far side %d: no answer to FORCE_CLOSE: %v", i, err)
		}
	}
	if passed, err := r.outcome(); !passed || err != nil {
		t.Fatalf("outcome: passed %v, %v", passed, err)
	}
}

// Not armed (the far side never said it runs the subtree): FORCE_CLOSE
// is never passed on, however every node asked.
func TestRelayUnarmedPassesNothing(t *testing.T) {
	r, criuEnds, far := newTestRelay(t, 1)
	far[0].Write(request(psIovForceClose))
	if req := readRequest(t, criuEnds[0], 300*time.Millisecond); req != nil {
		t.Fatalf("CRIU got %x though the far side does not run the subtree", req)
	}
	if passed, _ := r.outcome(); passed {
		t.Fatal("passed without arm")
	}
}

// A far connection that ends before its FORCE_CLOSE fails the whole
// transfer: every CRIU is refused (it resumes its processes), even the
// one whose node had all its memory, and every far connection closes.
func TestRelayBreakRefusesEveryCRIU(t *testing.T) {
	r, criuEnds, far := newTestRelay(t, 2)
	r.arm()
	far[0].Write(request(psIovForceClose))
	far[1].Close()
	for i, c := range criuEnds {
		if req := readRequest(t, c, 5*time.Second); req == nil || cmdOf(req) != psIovRefuse {
			t.Fatalf("CRIU %d got %x, want the refusal", i, req)
		}
	}
	far[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := far[0].Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("far side 0 still open: %d, %v", n, err)
	}
	if passed, err := r.outcome(); passed || err == nil || !strings.Contains(err.Error(), "broke before all memory had arrived") {
		t.Fatalf("outcome: passed %v, %v", passed, err)
	}
}

// Connections that are not the far side's are closed and change
// nothing: garbage, a second one for a node, one for no node.
func TestRelayStrayConnections(t *testing.T) {
	r, criuEnds, far := newTestRelay(t, 1)
	for _, hello := range []string{"GET / HTTP/1.0\n", helloPrefix + "0\n", helloPrefix + "9\n"} {
		c, err := net.Dial("unix", r.Path())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(hello))
		c.Write(request(psIovForceClose))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("%q: the relay kept the connection (%d, %v)", hello, n, err)
		}
		c.Close()
	}
	if _, err := r.outcome(); err != nil {
		t.Fatalf("a stray connection failed the transfer: %v", err)
	}
	r.arm()
	far[0].Write(request(psIovForceClose))
	if req := readRequest(t, criuEnds[0], 5*time.Second); req == nil || cmdOf(req) != psIovForceClose {
		t.Fatalf("CRIU got %x, want FORCE_CLOSE", req)
	}
}
