package migrate

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/crtree/crtree/internal/checkpoint"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// Options say how a migration runs.
type Options struct {
	// Self is the crtree binary that restores on a local: target.
	Self string
	// SSH is the ssh command for an ssh:// target ("ssh" if empty); the
	// far host runs "crtree" from its PATH.
	SSH string
	// Name, if set, renames the top node on arrival.
	Name string
	// KeepBinds binds the host paths the subtree's binds name on the far
	// side too (restore --keep-binds).
	KeepBinds bool
	// Dump are the dump's options (LeaveRunning is ignored: the source
	// goes once the far side runs the subtree).
	Dump checkpoint.Options
	// Stderr receives the far restore's messages (warnings, imported
	// images) once it has succeeded; a failure quotes its reason.
	Stderr io.Writer
	// Lazy migrates post-copy: the subtree runs on the far side as soon
	// as everything but its memory has arrived, and the memory follows
	// (see pageRelay).
	Lazy bool
	// Progress, if set, is called about once a second while the memory
	// of a post-copy migration is arriving, with the bytes sent so far.
	Progress func(sent int64)
}

// Report is what a migration did: the dump's report (its Frozen is the
// downtime: from the freeze until the far side ran the subtree and the
// source was ended), where it went and what the top node is called there.
type Report struct {
	*checkpoint.Report
	Target      string `json:"target"`
	Destination string `json:"destination"`
	// Lazy says the migration was post-copy.
	Lazy bool `json:"lazy"`
	// Downtime is how long the subtree ran nowhere: from the freeze until
	// the far side ran it (Frozen, for both modes).
	Downtime checkpoint.Duration `json:"downtime"`
	// Transferred is the time from the start until everything had
	// arrived on the far side: the archive, and post-copy the memory.
	Transferred checkpoint.Duration `json:"transferred"`
	// MemoryBytes is, post-copy, how much memory (with the requests'
	// headers) went over after the subtree ran there.
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
}

// Run moves the subtree at p to t. The source is frozen, dumped into the
// far side's restore as the archive is written, and ended only once that
// restore has reported the subtree running; if anything fails before,
// the far restore removes what it made and the source is thawed and goes
// on.
func Run(ctx context.Context, h *node.Host, p hier.Path, t Target, o Options) (*Report, error) {
	start := time.Now()
	// A node that is not there is the first thing to say, then what the
	// far side would refuse only once the subtree is frozen.
	if err := hostPathsGiven(h, p, o); err != nil {
		return nil, fmt.Errorf("migrate %s to %s: %w", p, t, err)
	}
	if err := preflight(ctx, t, o); err != nil {
		return nil, fmt.Errorf("migrate %s to %s: %w; nothing was done", p, t, err)
	}
	relay, closeRelay, err := openRelay(ctx, h, o)
	if err != nil {
		return nil, fmt.Errorf("migrate %s to %s: %w; nothing was done", p, t, err)
	}
	defer closeRelay()
	far, err := startRestore(t, o, relay)
	if err != nil {
		return nil, fmt.Errorf("migrate %s to %s: %w", p, t, err)
	}
	dump := o.Dump
	dump.LeaveRunning = false
	if relay != nil {
		dump.Lazy = relay
		stop := reportProgress(relay, o.Progress)
		defer stop()
	}
	rep, err := checkpoint.Dump(ctx, h, p, far, dump)
	var lazyErr *checkpoint.LazyError
	switch {
	case errors.As(err, &lazyErr):
		return nil, lostAfterSwitch(p, t, far, relay, lazyErr)
	case err != nil && rep != nil:
		// Committed: the far side runs it; ending it here failed.
		return nil, fmt.Errorf("migrate %s to %s: it runs there as %s, but ending it here failed: %w; remove it here with crtree rm -r -f %s", p, t, far.restored, err, p)
	case errors.Is(err, hier.ErrNotFound):
		far.Abort()
		return nil, fmt.Errorf("migrate %s to %s: %w", p, t, err)
	case err != nil:
		far.Abort()
		return nil, fmt.Errorf("migrate %s to %s: %w; the subtree goes on here", p, t, err)
	}
	r := &Report{Report: rep, Target: t.String(), Destination: far.restored, Lazy: o.Lazy, Downtime: rep.Frozen}
	if relay != nil {
		// Every page arrived (the relay passed the far side's word on):
		// the far restore ends once it has reported that.
		if err := far.wait(); err != nil {
			// Each far node counted its memory arrived only once this
			// side had answered: the subtree runs there.
			return nil, fmt.Errorf("migrate %s to %s: it runs there as %s with all its memory (the far side confirmed every page, and it was ended here), but the far crtree restore ended badly afterwards (%w): check it with crtree ls there", p, t, far.restored, err)
		}
		far.showMessages()
		r.MemoryBytes = relay.Sent()
	}
	r.Transferred = checkpoint.Duration(time.Since(start))
	r.Total = r.Transferred
	return r, nil
}

// hostPathsGiven refuses a subtree that does not exist, or whose nodes
// bind host paths or run on a host directory (run --rootfs) unless
// KeepBinds says to use the same on the far side: the far restore would
// refuse it once the subtree is frozen.
func hostPathsGiven(h *node.Host, p hier.Path, o Options) error {
	if o.KeepBinds || len(p) == 0 {
		_, _, err := h.Get(p) // is there (and not the tree's root)
		return err
	}
	return h.Store.View(func(t *hier.Tree) error {
		top, err := t.Lookup(p)
		if err != nil {
			return err
		}
		for _, n := range t.Subtree(top) {
			switch {
			case len(n.Spec.Binds) > 0:
				b := n.Spec.Binds[0]
				return fmt.Errorf("%s binds host path %s at %s: give --keep-binds to bind the same path on the far side; nothing was done", t.PathOf(n), b.Source, b.Target)
			case n.Spec.Rootfs != "":
				return fmt.Errorf("%s runs on the host directory %s (run --rootfs): give --keep-binds to use the same directory on the far side; nothing was done", t.PathOf(n), n.Spec.Rootfs)
			}
		}
		return nil
	})
}

// openRelay starts the page relay of a post-copy migration (nil for
// stop-and-copy), in a staging directory of the state root: if this
// process is killed, gc removes it. If ctx is cancelled while the memory
// is on its way, the transfer fails, as when the connection breaks: the
// far copy is given up and the subtree resumes here (before the switch,
// the dump is undone). closeRelay ends it.
func openRelay(ctx context.Context, h *node.Host, o Options) (relay *pageRelay, closeRelay func(), err error) {
	if !o.Lazy {
		return nil, func() {}, nil
	}
	dir, err := h.StageDir("pages", 0)
	if err != nil {
		return nil, nil, err
	}
	if relay, err = newPageRelay(dir); err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { relay.fail(context.Cause(ctx)) })
	return relay, func() { stop(); relay.Close() }, nil
}

// lostAfterSwitch is the error of a post-copy migration whose memory
// transfer failed once the far side ran the subtree: the copy there is
// killed and removed by the far side, and the subtree goes on here from
// where it was frozen; what it did there meanwhile is lost.
func lostAfterSwitch(p hier.Path, t Target, far *farRestore, relay *pageRelay, lazyErr *checkpoint.LazyError) error {
	passed, cause := relay.outcome()
	farErr := far.wait()
	if passed {
		// Every node's memory had arrived there and every CRIU here was
		// told to end its processes: one failed at that.
		return fmt.Errorf("migrate %s to %s: it runs there as %s, with all its memory, but ending it here failed: %w; remove it here with crtree rm -r -f %s", p, t, far.restored, lazyErr, p)
	}
	if cause == nil {
		cause = lazyErr.Err
	}
	there := "the far side killed its copy before any of its processes could touch a page that had not come, and removed it"
	if farErr == nil {
		there = "yet the far side reported no failure, so it may run there too: check with crtree ls there and remove one copy (crtree rm -r -f)"
	}
	ran := ""
	if !far.runningAt.IsZero() {
		ran = fmt.Sprintf(" in %.2fs", time.Since(far.runningAt).Seconds())
	}
	// %w: an interrupt's cause gives crtree its exit status, as before
	// the switch.
	return fmt.Errorf("migrate %s to %s: the memory transfer broke after the subtree had started there (%w): %s; the subtree resumes here from the moment it was frozen, so what it did there%s is lost (%d MiB of memory had been sent)",
		p, t, cause, there, ran, relay.Sent()>>20)
}

// reportProgress calls progress about once a second with the bytes the
// relay has sent, from the moment the far side runs the subtree (pages
// its restore faulted in before are counted) until stop.
func reportProgress(relay *pageRelay, progress func(int64)) (stop func()) {
	if progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if relay.switched() {
					progress(relay.Sent())
				}
			}
		}
	}()
	return func() { close(done) }
}

// preflight asks the far side's crtree to list the parent before
// anything is frozen: ssh's connection and authentication, a missing
// crtree there and a missing parent then cost no downtime. Post-copy, it
// first asks whether the far side can restore lazily (userfaultfd):
// crtree check --lazy-pages.
func preflight(ctx context.Context, t Target, o Options) error {
	if o.Lazy {
		if err := criu.CheckLazyDump(node.HasCapSysResource()); err != nil {
			return fmt.Errorf("--lazy: %w", err)
		}
		if err := askFar(t, o, "--lazy: ", "check", "--lazy-pages"); err != nil {
			return err
		}
	}
	// The parent is there (which also shows that crtree runs there).
	if err := askFar(t, o, "the far side: ", "ls", t.Parent); err != nil {
		return err
	}
	return ctx.Err()
}

// askFar runs crtree with args on the far side; if it fails, its last
// line is the error, after prefix (or, if ssh could not run crtree
// there, why).
func askFar(t Target, o Options, prefix string, args ...string) error {
	var cmd *exec.Cmd
	if t.Host == "" {
		cmd = exec.Command(o.Self, append([]string{"--root", t.Root}, args...)...)
	} else {
		cmd = sshCommand(t, o, nil, args)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		if t.Host != "" {
			prefix += t.Host + ": "
		}
		return fmt.Errorf("%s%s", prefix, strings.TrimPrefix(lastLine(out.Bytes()), "crtree: "))
	case t.Host == "":
		return fmt.Errorf("run %s: %v: %s", o.Self, err, lastLine(out.Bytes()))
	}
	return fmt.Errorf("cannot run crtree on %s (ssh without prompts: a key and a known host key; crtree on the far PATH): %v: %s", t.Host, err, lastLine(out.Bytes()))
}

// lastLine is the last line of a command's output.
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimPrefix(lines[len(lines)-1], "crtree: ")
}

// restoreArgs are the arguments of the far side's crtree restore; pages
// is where it connects for the memory of a post-copy migration.
func restoreArgs(t Target, o Options, pages string) []string {
	args := []string{"restore", "-", "--parent", t.Parent}
	if pages != "" {
		args = append(args, "--lazy-pages-from", pages)
	}
	if o.Name != "" {
		args = append(args, "--name", o.Name)
	}
	if o.KeepBinds {
		args = append(args, "--keep-binds")
	}
	return args
}

// command is the far side's restore: crtree with the target's state root
// for local:, or crtree through ssh. Post-copy (relay), a local restore
// connects to the relay itself; through ssh, to a Unix socket of a random
// name that ssh forwards to the relay (-R), which sshd makes accessible
// to the ssh user only.
func command(t Target, o Options, relay *pageRelay) (*exec.Cmd, error) {
	if t.Host == "" {
		pages := ""
		if relay != nil {
			pages = relay.Path()
		}
		return exec.Command(o.Self, append([]string{"--root", t.Root}, restoreArgs(t, o, pages)...)...), nil
	}
	if relay == nil {
		return sshCommand(t, o, nil, restoreArgs(t, o, "")), nil
	}
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	farPages := "/tmp/crtree-pages-" + hex.EncodeToString(b[:]) + ".sock"
	forward := []string{"-o", "ExitOnForwardFailure=yes", "-R", farPages + ":" + relay.Path()}
	return sshCommand(t, o, forward, restoreArgs(t, o, farPages)), nil
}

// sshCommand runs the far crtree with args through ssh, with sshArgs
// added to ssh's own options.
func sshCommand(t Target, o Options, sshArgs, crtreeArgs []string) *exec.Cmd {
	ssh := o.SSH
	if ssh == "" {
		ssh = "ssh"
	}
	// No terminal (the archive is binary), no prompts (keys and a known
	// host key only), and a connection that goes silent is given up.
	args := []string{"-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"}
	if t.Port != 0 {
		args = append(args, "-p", strconv.Itoa(t.Port))
	}
	args = append(args, sshArgs...)
	// ssh hands the far shell one string: each argument is quoted
	// (node paths and names are of [A-Za-z0-9_.-/] anyway).
	args = append(args, t.Host, "--", "crtree")
	for _, a := range crtreeArgs {
		args = append(args, shellQuote(a))
	}
	return exec.Command(ssh, args...)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// farRestore is the far side's restore as the dump's output: the archive
// goes to its stdin, and Commit waits for it to report the subtree
// running: by ending (stop-and-copy), or by printing the restored path
// while the memory still arrives (post-copy, relay set).
type farRestore struct {
	cmd      *exec.Cmd
	in       io.WriteCloser
	errTail  *tailWriter
	relay    *pageRelay
	first    chan string // the far restore's first line of stdout (closed without one)
	mu       sync.Mutex
	last     string        // its last line so far
	exited   chan struct{} // closed once it has ended
	err      error         // how it ended, once exited
	restored string
	// runningAt is when the far side said it runs the subtree (post-copy).
	runningAt time.Time
	stderr    io.Writer
	shown     bool
}

// startRestore starts the far side's restore, in a process group of its
// own: a Ctrl-C on the terminal must not end it (or ssh) while it is
// restoring the subtree, which would leave the outcome unknown.
func startRestore(t Target, o Options, relay *pageRelay) (*farRestore, error) {
	cmd, err := command(t, o, relay)
	if err != nil {
		return nil, fmt.Errorf("start the far restore: %w", err)
	}
	f := &farRestore{cmd: cmd, errTail: &tailWriter{}, stderr: o.Stderr, relay: relay,
		first: make(chan string, 1), exited: make(chan struct{})}
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	f.cmd.Stderr = f.errTail
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	in, err := f.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	f.in = in
	if err := f.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the far restore: %w", err)
	}
	go f.follow(out)
	return f, nil
}

// follow reads the far restore's stdout, then waits for it to end.
func (f *farRestore) follow(out io.Reader) {
	sc := bufio.NewScanner(out)
	for n := 0; sc.Scan(); n++ {
		if n == 0 {
			f.first <- sc.Text()
		}
		f.mu.Lock()
		f.last = sc.Text()
		f.mu.Unlock()
	}
	close(f.first)
	if err := f.cmd.Wait(); err != nil {
		if msg := f.errTail.last(); msg != "" {
			f.err = errors.New("far side: " + msg)
		} else {
			f.err = fmt.Errorf("far side: %w", err)
		}
	}
	close(f.exited)
}

// Write sends archive bytes to the far restore.
func (f *farRestore) Write(p []byte) (int, error) {
	n, err := f.in.Write(p)
	if err != nil {
		if ferr := f.wait(); ferr != nil {
			err = ferr
		}
		return n, fmt.Errorf("the far restore stopped reading: %w", err)
	}
	return n, nil
}

// Commit ends the archive and waits for the far restore to report the
// subtree running: nil then. Stop-and-copy, that is its success; post-
// copy, the path it prints first, after which the relay may let the
// memory transfer succeed.
func (f *farRestore) Commit() error {
	f.in.Close()
	if f.relay == nil {
		if err := f.wait(); err != nil {
			return err
		}
		// The path the far restore printed: its last line.
		f.mu.Lock()
		f.restored = f.last
		f.mu.Unlock()
		f.showMessages()
		return nil
	}
	l, ok := <-f.first
	if !ok {
		if err := f.wait(); err != nil {
			return err
		}
		return errors.New("far side: ended without saying where it restored the subtree")
	}
	f.restored, f.runningAt = l, time.Now()
	f.relay.arm()
	return nil
}

// showMessages passes on what the far side said (warnings, imported
// images), once.
func (f *farRestore) showMessages() {
	if f.stderr != nil && !f.shown {
		f.shown = true
		f.stderr.Write(f.errTail.bytes())
	}
}

// Abort ends the archive short, which the far restore refuses, removing
// what it made, and waits for it.
func (f *farRestore) Abort() {
	f.in.Close()
	f.wait()
}

// wait waits for the far restore to end, and says why it failed.
func (f *farRestore) wait() error {
	<-f.exited
	return f.err
}

// tailWriter keeps the end of what the far side says.
type tailWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if t.buf.Len() > 64<<10 {
		t.buf.Next(t.buf.Len() - 32<<10)
	}
	return len(p), nil
}

// bytes is what it kept.
func (t *tailWriter) bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.buf.Bytes())
}

// last is the last line the far side said that starts with "crtree:".
func (t *tailWriter) last() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(t.buf.String()), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "crtree: ") {
			return strings.TrimPrefix(lines[i], "crtree: ")
		}
	}
	return strings.TrimSpace(lines[len(lines)-1])
}
