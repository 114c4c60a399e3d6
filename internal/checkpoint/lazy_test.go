package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/crtree/crtree/internal/node"
)

// The resume barrier of a post-copy restore, its supervisors played by
// the test (each gets node.GateOpen, or its gate ends).

// gateAnswer reads what node i's supervisor end gets within 5 s: the
// byte, or 0 if the gate ended (the end is blocking, as a supervisor's
// is: no deadline, a goroutine).
func gateAnswer(t *testing.T, b *resumeBarrier, i int) byte {
	t.Helper()
	got := make(chan byte, 1)
	go func() {
		var c [1]byte
		if n, _ := b.theirs[i].Read(c[:]); n != 1 {
			c[0] = 0
		}
		got <- c[0]
	}()
	select {
	case c := <-got:
		return c
	case <-time.After(5 * time.Second):
		t.Fatalf("node %d: its gate neither opened nor ended", i)
		return 0
	}
}

func TestResumeBarrierOpensOnceAllAreReady(t *testing.T) {
	b, err := newResumeBarrier([]bool{true, false, true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.abort()
	go b.run(context.Background())
	b.theirs[0].Write([]byte{node.GateReady})
	// Node 2 is not ready: node 0 must not be let go.
	answer0 := make(chan byte, 1)
	go func() {
		var c [1]byte
		b.theirs[0].Read(c[:])
		answer0 <- c[0]
	}()
	select {
	case <-answer0:
		t.Fatal("node 0 was let go before node 2 was ready")
	case <-time.After(300 * time.Millisecond):
	}
	b.theirs[2].Write([]byte{node.GateReady})
	if c := gateAnswer(t, b, 2); c != node.GateOpen {
		t.Fatalf("node 2 got %q, want the go-ahead", c)
	}
	select {
	case c := <-answer0:
		if c != node.GateOpen {
			t.Fatalf("node 0 got %q, want the go-ahead", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("node 0 was never let go")
	}
}

// A node whose restore failed before its supervisor had its gate (its
// page server connection could not be made, say) ends the wait: the
// others' gates end instead of holding them for ever.
func TestResumeBarrierEndsWhenANodeFails(t *testing.T) {
	b, err := newResumeBarrier([]bool{true, true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.abort()
	go b.run(context.Background())
	b.theirs[0].Write([]byte{node.GateReady})
	b.started(1) // node 1's restore returned without a supervisor
	if c := gateAnswer(t, b, 0); c != 0 {
		t.Fatalf("node 0 got %q, want its gate ended", c)
	}
}

func TestResumeBarrierEndsWhenCancelled(t *testing.T) {
	b, err := newResumeBarrier([]bool{true, true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.abort()
	ctx, cancel := context.WithCancel(context.Background())
	go b.run(ctx)
	b.theirs[0].Write([]byte{node.GateReady})
	cancel()
	if c := gateAnswer(t, b, 0); c != 0 {
		t.Fatalf("node 0 got %q, want its gate ended", c)
	}
}

// The error of a node whose restore failed is the one kept, not those of
// the nodes held at their gates that were let go because of it.
func TestWithoutWithdrawn(t *testing.T) {
	cause := errors.New("restore /r/c: criu restore: something broke")
	withdrawn := fmt.Errorf("restore /r: %s", node.GateWithdrawn)
	got := withoutWithdrawn([]error{withdrawn, nil, cause, withdrawn})
	if len(got) != 1 || got[0] != cause {
		t.Fatalf("kept %v", got)
	}
	if got := withoutWithdrawn([]error{withdrawn, nil}); len(got) != 1 || got[0] != withdrawn {
		t.Fatalf("kept %v, want the withdrawal when nothing else failed", got)
	}
}
