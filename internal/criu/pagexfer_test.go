package criu

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// The far proxy's decisions (pageProxy), with both of its ends played by
// the test: the lazy-pages daemon and the page server upstream.

func pageRequest(cmd uint32) []byte {
	req := make([]byte, PageRequestSize)
	binary.LittleEndian.PutUint32(req, cmd)
	return req
}

// proxyPair starts a proxy and returns the daemon's and upstream's ends.
func proxyPair(t *testing.T) (p *pageProxy, daemon, upstream net.Conn) {
	t.Helper()
	dCriu, dOurs, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	uFar, uOurs, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	p = newPageProxy(uOurs, dOurs)
	toConn := func(f *os.File) net.Conn {
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return p, toConn(dCriu), toConn(uFar)
}

func readN(t *testing.T, c net.Conn, n int, d time.Duration) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	b := make([]byte, n)
	_, err := io.ReadFull(c, b)
	return b, err
}

// Requests go up and pages come down; the daemon's FORCE_CLOSE is
// answered by the proxy, not passed on; only finish(true) sends it
// upstream, and succeeds only on upstream's answer 0.
func TestPageProxyForceCloseOnlyAfterTheDaemonEndedWell(t *testing.T) {
	for _, status := range []uint32{0, 1} {
		p, daemon, upstream := proxyPair(t)
		daemon.Write(pageRequest(psIovGet))
		if req, err := readN(t, upstream, PageRequestSize, 5*time.Second); err != nil || binary.LittleEndian.Uint32(req) != psIovGet {
			t.Fatalf("upstream got %x (%v), want the request", req, err)
		}
		page := bytes.Repeat([]byte{9}, 4096)
		upstream.Write(page)
		if got, err := readN(t, daemon, len(page), 5*time.Second); err != nil || !bytes.Equal(got, page) {
			t.Fatalf("the daemon got no page: %v", err)
		}
		daemon.Write(pageRequest(psIovForceClose))
		if got, err := readN(t, daemon, 4, 5*time.Second); err != nil || !bytes.Equal(got, []byte{0, 0, 0, 0}) {
			t.Fatalf("the daemon's FORCE_CLOSE was not answered: %x, %v", got, err)
		}
		if req, err := readN(t, upstream, PageRequestSize, 300*time.Millisecond); err == nil {
			t.Fatalf("upstream got %x before the daemon had ended", req)
		}
		done := make(chan error, 1)
		go func() { done <- p.finish(true) }()
		if req, err := readN(t, upstream, PageRequestSize, 5*time.Second); err != nil || binary.LittleEndian.Uint32(req) != psIovForceClose {
			t.Fatalf("upstream got %x (%v), want FORCE_CLOSE", req, err)
		}
		var ans [4]byte
		binary.LittleEndian.PutUint32(ans[:], status)
		upstream.Write(ans[:])
		var err error
		select {
		case err = <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("finish did not end after upstream's answer")
		}
		if status == 0 && err != nil {
			t.Fatalf("finish: %v", err)
		}
		if status != 0 && (err == nil || !strings.Contains(err.Error(), "ended with status 1")) {
			t.Fatalf("finish with status %d: %v", status, err)
		}
	}
}

// A daemon that failed (or never asked to close) ends the connection
// upstream without FORCE_CLOSE: the source then resumes its processes.
func TestPageProxyFailedDaemonSendsNoForceClose(t *testing.T) {
	for _, asked := range []bool{true, false} {
		p, daemon, upstream := proxyPair(t)
		ok := true
		if asked {
			daemon.Write(pageRequest(psIovForceClose))
			readN(t, daemon, 4, 5*time.Second)
			ok = false // asked, but exited badly
		}
		done := make(chan error, 1)
		go func() { done <- p.finish(ok) }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("asked %v: finish succeeded", asked)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("asked %v: finish waits for an answer upstream", asked)
		}
		if req, err := readN(t, upstream, PageRequestSize, 5*time.Second); err == nil {
			t.Fatalf("asked %v: upstream got %x", asked, req)
		}
	}
}
