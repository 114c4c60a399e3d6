package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/node"
)

// Post-copy restore (Options.Lazy): every running node's supervisor
// restores it without its memory and runs a lazy-pages daemon that
// fetches it from the dump's page server while the node runs; each
// supervisor reports on a pipe how its transfer ended.

// lazyNode gives node i's supervisor its page server connection and the
// write end of the pipe its result comes back on, keeping the read end.
func (rs *restoring) lazyNode(i int, from *node.FromImages) error {
	conn, err := rs.o.Lazy.Socket(i)
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		conn.Close()
		return err
	}
	from.LazyPages, from.LazyDone = conn, w
	rs.lazyDone[i] = r // each node's own element: no lock
	return nil
}

// lazyStarted closes this process's copies of what lazyNode gave node i's
// supervisor, once it has started (or failed to).
func lazyStarted(from *node.FromImages) {
	if from.LazyPages != nil {
		from.LazyPages.Close()
		from.LazyDone.Close()
	}
}

// MemoryTransfer is the memory of a post-copy restore still arriving
// after Restore has returned with the subtree running.
type MemoryTransfer struct {
	rs    *restoring
	start time.Time
}

// Wait waits until the memory of every node has arrived: nil then, and
// the subtree is no longer held (Restore holds it till then). If
// any node's transfer failed, the whole restored subtree is killed (the
// failed node's supervisor has killed its processes already, before any
// of them could see a page that did not come) and removed, and Wait says
// why. Either way, the staging directory goes.
func (t *MemoryTransfer) Wait() error {
	rs := t.rs
	defer rs.cleanUp()
	var errs []error
	for i, r := range rs.lazyDone {
		if r == nil {
			continue
		}
		var res node.LazyResult
		if err := json.NewDecoder(r).Decode(&res); err != nil {
			res.Error = "its supervisor ended without saying how the transfer went"
		}
		r.Close()
		if res.Error != "" {
			errs = append(errs, fmt.Errorf("%s: %s", rs.res.Paths[i], res.Error))
		}
	}
	if err := errors.Join(errs...); err != nil {
		rs.h.Destroy(rs.res.IDs[0])
		return fmt.Errorf("restore: the memory of the subtree did not all arrive, so it was killed and removed: %w", err)
	}
	rs.rep.Memory = Duration(time.Since(t.start))
	if err := rs.h.Release(rs.res.IDs[0]); err != nil {
		return fmt.Errorf("restore: all its memory arrived, but letting other commands act on it failed: %w", err)
	}
	return nil
}

// resumeBarrier holds the processes of every node of a post-copy restore
// at CRIU's pre-resume until all of them are there, then lets them run
// at once: the subtree resumes at one instant, as it was frozen at one,
// and no node's memory transfer competes with the restore of the others
// (on a machine with few cores, that doubled the restore of a subtree).
// Each node's gate (node.FromImages.Gate) is a socket: its supervisor
// says when its processes are ready, then waits for the go-ahead.
type resumeBarrier struct {
	ours []*os.File // per node; nil for a node that does not run
	// theirs are the supervisors' ends: this process's copy of each is
	// closed once its node's restore has returned (started), so that a
	// supervisor gone ends run's wait.
	theirs []*os.File
}

// newResumeBarrier makes a gate for every node that runs.
func newResumeBarrier(running []bool) (*resumeBarrier, error) {
	b := &resumeBarrier{ours: make([]*os.File, len(running)), theirs: make([]*os.File, len(running))}
	for i, r := range running {
		if !r {
			continue
		}
		// Ours non-blocking, so that abort ends run's read.
		var err error
		if b.theirs[i], b.ours[i], err = criu.SocketPair(); err != nil {
			b.abort()
			return nil, fmt.Errorf("resume gate: %w", err)
		}
	}
	return b, nil
}

// started closes this process's copy of node i's gate once its restore
// has returned, whether it started a supervisor or failed before.
func (b *resumeBarrier) started(i int) {
	if b.theirs[i] != nil {
		b.theirs[i].Close()
	}
}

// run waits until every node's processes are ready, then opens every
// gate; if a node fails before (its gate closes) or ctx is cancelled, it
// closes them all, and every CRIU kills what it restored.
func (b *resumeBarrier) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, b.abort)
	defer stop()
	for _, g := range b.ours {
		if g == nil {
			continue
		}
		var c [1]byte
		if n, _ := g.Read(c[:]); n != 1 || c[0] != node.GateReady {
			b.abort()
			return
		}
	}
	for _, g := range b.ours {
		if g != nil {
			g.Write([]byte{node.GateOpen})
			g.Close()
		}
	}
}

// abort closes both ends of every gate that this process holds (closing
// one twice does no harm).
func (b *resumeBarrier) abort() {
	for _, g := range append(b.ours, b.theirs...) {
		if g != nil {
			g.Close()
		}
	}
}
