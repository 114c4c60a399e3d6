package checkpoint

import (
	"errors"
	"testing"
)

func TestCriuRun(t *testing.T) {
	r := newCriuRun(2, true)
	verdicts := make(chan error, 1)
	go func() {
		r.end(nil) // written, then held
		verdicts <- r.wait()
	}()
	boom := errors.New("boom")
	r.end(boom) // the other one failed
	<-r.ready
	if err := r.failed(); !errors.Is(err, boom) {
		t.Fatalf("failed = %v", err)
	}
	r.release(errNoArchive)
	r.release(nil) // too late: the first verdict counts
	if v := <-verdicts; v != errNoArchive {
		t.Fatalf("verdict = %v", v)
	}
	if v := r.wait(); v != errNoArchive {
		t.Fatalf("verdict for a late CRIU = %v", v)
	}
	if empty := newCriuRun(0, false); !isClosed(empty.ready) {
		t.Fatal("no CRIU to wait for, yet not ready")
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
