package checkpoint

import (
	"errors"
	"sync"
)

// criuRun follows the CRIU dumps of a subtree's nodes: ready is closed
// once each CRIU has either written every image or failed, which is when
// the archive can be finished.
//
// With hold (--tcp-established without --leave-running), a CRIU that has
// written its images waits in its post-dump action for release: given
// nil, it kills its processes itself, as a plain `criu dump` does, so that
// their TCP connections stay locked and in repair mode and no FIN or RST
// reaches a peer (the restore unlocks them); given an error, it undoes the
// dump (connections unlocked, processes resumed), as after a failure.
// Without hold, every CRIU leaves its processes running and crtree decides
// their fate after the archive.
type criuRun struct {
	hold  bool
	ready chan struct{}
	open  chan struct{}

	mu      sync.Mutex
	left    int // CRIUs neither done writing nor ended
	errs    []error
	once    sync.Once
	verdict error
}

// errNoArchive is the verdict of a dump whose archive was not written.
var errNoArchive = errors.New("the archive was not written")

func newCriuRun(n int, hold bool) *criuRun {
	r := &criuRun{hold: hold, left: n, ready: make(chan struct{}), open: make(chan struct{})}
	if n == 0 {
		close(r.ready)
	}
	return r
}

// wait is what a held CRIU, its images written, waits for: the verdict.
func (r *criuRun) wait() error {
	<-r.open
	return r.verdict
}

// end notes that a CRIU has got as far as it goes before the verdict:
// written, or ended (with err if it failed).
func (r *criuRun) end(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs = append(r.errs, err)
	}
	if r.left--; r.left == 0 {
		close(r.ready)
	}
}

// failed returns the errors of the CRIUs that ended before ready.
func (r *criuRun) failed() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(r.errs...)
}

// release gives every held CRIU, waiting or still to come, its verdict:
// nil once the archive is safe, else why not. Only the first call counts.
func (r *criuRun) release(verdict error) {
	r.once.Do(func() {
		r.verdict = verdict
		close(r.open)
	})
}
