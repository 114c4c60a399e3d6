package criu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// gateScript is the action script of a resumeGate; the %s are the FIFOs'
// paths: the one it says it runs on, then the one it reads the answer
// from.
const gateScript = `#!/bin/sh
# crtree: hold the restored processes until crtree has checked them.
[ "$CRTOOLS_SCRIPT_ACTION" = pre-resume ] || exit 0
echo r > '%s' || exit 1
read -r go < '%s' || exit 1
[ "$go" = y ]
`

// A resumeGate holds the processes a criu restore command restored at
// its pre-resume action until check (RestoreOptions.BeforeResume) lets
// them run. CRIU only logs a failed pre-resume action and resumes the
// processes anyway, so the gate does not rely on it: a refusal kills the
// node's cgroup (CRIU, its script and the held processes) before
// answering, and a restore that ends without the gate's go-ahead (the
// script never reached crtree, or the kill failed) is failed and killed
// by finish.
type resumeGate struct {
	ready, answer *os.File // FIFOs, open read-write so opening never waits
	script        string
	kill          int // the node's cgroup.kill, or -1
	check         func(criuPid int) error
	criuPid       atomic.Int64
	done          chan struct{}
	// Set by serve before done is closed.
	refused  error
	answered bool
}

// openResumeGate makes the FIFOs and the script in work, and opens the
// cgroup.kill of the cgroup open as cgroupFD (the restored processes' and
// CRIU's) now, while cgroupFD is sure to be that cgroup.
func openResumeGate(work string, cgroupFD int, check func(int) error) (*resumeGate, error) {
	g := &resumeGate{kill: -1, check: check, done: make(chan struct{})}
	if cgroupFD >= 0 {
		fd, err := unix.Openat(cgroupFD, "cgroup.kill", unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open cgroup.kill: %w", err)
		}
		g.kill = fd
	}
	var fifos [2]*os.File
	for i, name := range []string{"resume-ready.fifo", "resume.fifo"} {
		fifo := filepath.Join(work, name)
		os.Remove(fifo)
		err := unix.Mkfifo(fifo, 0o600)
		if err == nil {
			fifos[i], err = os.OpenFile(fifo, os.O_RDWR, 0)
		}
		if err != nil {
			g.close(fifos[:i]...)
			return nil, err
		}
	}
	g.ready, g.answer = fifos[0], fifos[1]
	g.script = filepath.Join(work, "resume-gate.sh")
	if err := os.WriteFile(g.script, fmt.Appendf(nil, gateScript, g.ready.Name(), g.answer.Name()), 0o700); err != nil {
		g.close(fifos[:]...)
		return nil, err
	}
	return g, nil
}

// started is told CRIU's PID once it runs.
func (g *resumeGate) started(pid int) { g.criuPid.Store(int64(pid)) }

// serve waits for the script, asks check and answers; it returns without
// answering if CRIU never gets to the script (finish closes ready).
func (g *resumeGate) serve() {
	defer close(g.done)
	var b [8]byte
	if _, err := g.ready.Read(b[:]); err != nil {
		return
	}
	if err := g.check(int(g.criuPid.Load())); err != nil {
		g.refused = err
		if kerr := g.killAll(); kerr != nil {
			g.refused = errors.Join(err, kerr)
		}
		g.answer.Write([]byte("n\n"))
		return
	}
	g.answered = true
	g.answer.Write([]byte("y\n"))
}

// finish is called with how the criu command ended: it waits for serve,
// and turns a restore that ran without the go-ahead into a failure whose
// processes are killed.
func (g *resumeGate) finish(criuErr error) error {
	g.ready.Close()
	<-g.done
	defer g.close(g.answer)
	switch {
	case g.refused != nil:
		return g.refused
	case criuErr != nil:
		return criuErr
	case !g.answered:
		err := errors.New("criu restore: the restored processes were resumed without crtree's go-ahead (its pre-resume action did not reach crtree); they were killed")
		if kerr := g.killAll(); kerr != nil {
			err = errors.Join(err, kerr)
		}
		return err
	}
	return nil
}

// killAll kills every process of the node's cgroup.
func (g *resumeGate) killAll() error {
	if g.kill < 0 {
		return errors.New("no cgroup to kill the restored processes in")
	}
	if _, err := unix.Write(g.kill, []byte("1")); err != nil {
		return fmt.Errorf("kill the restored processes: %w", err)
	}
	return nil
}

// close closes the given FIFOs and the cgroup.kill descriptor.
func (g *resumeGate) close(fs ...*os.File) {
	for _, f := range fs {
		f.Close()
	}
	if g.kill >= 0 {
		unix.Close(g.kill)
		g.kill = -1
	}
}
