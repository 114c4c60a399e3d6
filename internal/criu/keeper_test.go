package criu

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
)

// keptPipe is a stand-in for a userfaultfd: a pipe whose read end is
// handed to the keeper, so that whether the keeper still holds it shows
// on the write end (EPIPE once every read end is closed).
func keptPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

func stillHeld(w *os.File) bool {
	_, err := w.Write([]byte{0})
	return !errors.Is(err, syscall.EPIPE)
}

// A holder that goes away without a release: the keeper kills first,
// while it still holds the copies, and lets them go after.
func TestKeeperKillsFirst(t *testing.T) {
	holder, keeper, err := KeeperPair()
	if err != nil {
		t.Fatal(err)
	}
	r1, w1 := keptPipe(t)
	r2, w2 := keptPipe(t)
	var heldAtKill []bool
	done := make(chan error, 1)
	go func() {
		done <- Keep(keeper, func() error {
			heldAtKill = []bool{stillHeld(w1), stillHeld(w2)}
			return nil
		})
	}()
	if err := sendKept(holder, []*os.File{r1}); err != nil {
		t.Fatal(err)
	}
	if err := sendKept(holder, []*os.File{r2}); err != nil { // in place of r1
		t.Fatal(err)
	}
	r1.Close()
	r2.Close()
	holder.Close()
	err = <-done
	if err == nil || !strings.Contains(err.Error(), "were killed") {
		t.Fatalf("the keeper after its holder went: %v", err)
	}
	if len(heldAtKill) != 2 || heldAtKill[0] || !heldAtKill[1] {
		t.Fatalf("held when killing (r1 replaced, r2 kept): %v", heldAtKill)
	}
	if stillHeld(w2) {
		t.Fatal("the keeper still holds a copy after it ended")
	}
}

// A release lets the copies go without killing anything; a set larger
// than one packet is kept whole.
func TestKeeperRelease(t *testing.T) {
	holder, keeper, err := KeeperPair()
	if err != nil {
		t.Fatal(err)
	}
	var rs []*os.File
	var ws []*os.File
	for range keepBatch + 5 {
		r, w := keptPipe(t)
		rs, ws = append(rs, r), append(ws, w)
	}
	done := make(chan error, 1)
	killed := false
	go func() { done <- Keep(keeper, func() error { killed = true; return nil }) }()
	if err := sendKept(holder, rs); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		r.Close()
	}
	// Every copy is held by the keeper alone now (or on its way to it).
	for i, w := range ws {
		if !stillHeld(w) {
			t.Fatalf("copy %d not held", i)
		}
	}
	releaseKept(holder)
	if err := <-done; err != nil || killed {
		t.Fatalf("the keeper after a release: %v, killed %v", err, killed)
	}
	for i, w := range ws {
		if stillHeld(w) {
			t.Fatalf("copy %d still held after the release", i)
		}
	}
}
