package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
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

// criuDumps are the CRIU dumps of a subtree, running in the background.
type criuDumps struct {
	run   *criuRun
	start time.Time
	// exited receives dumpAll's result once every CRIU has ended.
	exited chan error
	err    error
	ended  bool
}

// startCRIUs starts one CRIU dump per running node (dumpAll); once ctx is
// cancelled, no more are started.
func startCRIUs(ctx context.Context, h *node.Host, op *node.Op, nodes []*dumpNode, o Options, stream bool) *criuDumps {
	c := &criuDumps{
		run:    newCriuRun(countRunning(nodes), o.TCPEstablished && !o.LeaveRunning),
		start:  time.Now(),
		exited: make(chan error, 1),
	}
	go func() { c.exited <- dumpAll(ctx, h, op, nodes, o, stream, c.run) }()
	return c
}

// wait waits until every CRIU has ended, and returns their errors. A held
// CRIU ends only once it has its verdict (run.release).
func (c *criuDumps) wait() error {
	if !c.ended {
		c.err, c.ended = <-c.exited, true
	}
	return c.err
}

// countRunning is how many of the nodes CRIU dumps.
func countRunning(nodes []*dumpNode) int {
	n := 0
	for _, m := range nodes {
		if m.status.State == hier.Running {
			n++
		}
	}
	return n
}

// dumpAll runs one CRIU dump per running node, in parallel (as many at
// once as there are CPUs, at least two), each reported to run once
// written or ended. A node whose turn comes after ctx is cancelled or
// another CRIU failed is not dumped.
func dumpAll(ctx context.Context, h *node.Host, op *node.Op, nodes []*dumpNode, o Options, stream bool, run *criuRun) error {
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	sem := make(chan struct{}, max(2, runtime.NumCPU()))
	var mu sync.Mutex
	done := 0
	progress := func() {
		mu.Lock()
		defer mu.Unlock()
		done++
		o.progress(Progress{Phase: "criu", NodesDone: done, NodesTotal: len(nodes)})
	}
	for i, m := range nodes {
		if m.status.State != hier.Running {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			var freeSlot sync.Once
			leave := func() { freeSlot.Do(func() { <-sem }) }
			defer leave()
			if ctx.Err() != nil || run.failed() != nil {
				// The dump fails anyway, for that reason.
				errs[i] = context.Cause(ctx)
				run.end(errs[i])
				return
			}
			errs[i] = dumpOne(h, op, m, o, stream, run, leave, progress)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dumpOne runs CRIU on one node, and tells run once CRIU has written its
// images (a held CRIU: then it frees its slot, leave, and waits for the
// verdict) or has ended.
func dumpOne(h *node.Host, op *node.Op, m *dumpNode, o Options, stream bool, run *criuRun, leave, progress func()) error {
	t0 := time.Now()
	var reported atomic.Bool
	report := func(err error) {
		if reported.Swap(true) {
			return
		}
		m.report.Criu = Duration(time.Since(t0))
		progress()
		run.end(err)
	}
	netns, err := externalNetns(m)
	if err != nil {
		err = fmt.Errorf("dump %s: %w", m.path, err)
		report(err)
		return err
	}
	var beforeKill func() error
	var pages *os.File
	switch {
	case o.Lazy != nil:
		// Post-copy: CRIU serves the memory right after its images,
		// and ends the processes once it has all gone (or resumes them).
		if pages, err = o.Lazy.Socket(m.index); err != nil {
			err = fmt.Errorf("dump %s: %w", m.path, err)
			report(err)
			return err
		}
		beforeKill = func() error {
			leave()
			report(nil)
			return nil
		}
	case run.hold:
		beforeKill = func() error {
			// A held CRIU waits for the whole subtree's archive: it must
			// not keep others from starting meanwhile.
			leave()
			report(nil)
			return run.wait()
		}
	}
	err = criu.Dump(o.CriuBin, criu.DumpOptions{
		Pid:            m.n.Pid,
		ImagesDir:      filepath.Join(m.dir, "criu"),
		WorkDir:        filepath.Join(m.dir, "work"),
		FreezeCgroup:   m.group.Leaf().Path(),
		ExternalMounts: m.mounts,
		SkipMounts:     m.trees,
		TCPEstablished: o.TCPEstablished,
		OwnNetwork:     m.n.Spec.OwnNet(),
		ExternalNetns:  netns,
		GhostLimit:     o.ghostLimit(),
		LogLevel:       o.CriuLogLevel,
		KeepLogs:       h.LogDir(),
		// While CRIU runs, the dump counts as running even if this
		// process dies: nothing is thawed or removed under it.
		OnStart:    func(pid int) { h.AddHelper(op, pid) },
		Stream:     stream,
		BeforeKill: beforeKill,
		LazyPages:  pages,
	})
	if err != nil {
		err = fmt.Errorf("dump %s: %w", m.path, dumpHint(err, o.ghostLimit()))
	}
	report(err)
	return err
}

// externalNetns is the inode of a NetBridge node's network namespace,
// which CRIU leaves out of its images (a restore makes the node a new
// one, on the bridge, and CRIU puts the processes into it); 0 for other
// nodes, whose namespace CRIU dumps (an empty one) or does not touch (the
// host's).
func externalNetns(m *dumpNode) (uint64, error) {
	if m.n.Spec.Net != hier.NetBridge {
		return 0, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", m.n.Pid), &st); err != nil {
		return 0, fmt.Errorf("its network namespace: %w", err)
	}
	return st.Ino, nil
}
