package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/crtree/crtree/internal/checkpoint"
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
}

// Report is what a migration did: the dump's report (its Frozen is the
// downtime: from the freeze until the far side ran the subtree and the
// source was ended), where it went and what the top node is called there.
type Report struct {
	*checkpoint.Report
	Target      string `json:"target"`
	Destination string `json:"destination"`
}

// Run moves the subtree at p to t. The source is frozen, dumped into the
// far side's restore as the archive is written, and ended only once that
// restore has reported the subtree running; if anything fails before,
// the far restore removes what it made and the source is thawed and goes
// on.
func Run(ctx context.Context, h *node.Host, p hier.Path, t Target, o Options) (*Report, error) {
	if err := preflight(ctx, t, o); err != nil {
		return nil, fmt.Errorf("migrate %s to %s: %w; nothing was done", p, t, err)
	}
	far, err := startRestore(t, o)
	if err != nil {
		return nil, fmt.Errorf("migrate %s to %s: %w", p, t, err)
	}
	dump := o.Dump
	dump.LeaveRunning = false
	rep, err := checkpoint.Dump(ctx, h, p, far, dump)
	switch {
	case err != nil && rep != nil:
		// Committed: the far side runs it; ending it here failed.
		return nil, fmt.Errorf("migrate %s to %s: it runs there as %s, but ending it here failed: %w; remove it here with crtree rm -r -f %s", p, t, far.restored, err, p)
	case err != nil:
		far.Abort()
		return nil, fmt.Errorf("migrate %s to %s: %w; the subtree goes on here", p, t, err)
	}
	return &Report{Report: rep, Target: t.String(), Destination: far.restored}, nil
}

// preflight asks the far side's crtree for its version before anything
// is frozen: ssh's connection and authentication, and a missing crtree
// there, then cost no downtime.
func preflight(ctx context.Context, t Target, o Options) error {
	if t.Host == "" {
		return nil
	}
	cmd := sshCommand(t, o, []string{"--version"})
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		return fmt.Errorf("cannot run crtree on %s (ssh without prompts: a key and a known host key; crtree on the far PATH): %v: %s", t.Host, err, lines[len(lines)-1])
	}
	return ctx.Err()
}

// restoreArgs are the arguments of the far side's crtree restore.
func restoreArgs(t Target, o Options) []string {
	args := []string{"restore", "-", "--parent", t.Parent}
	if o.Name != "" {
		args = append(args, "--name", o.Name)
	}
	if o.KeepBinds {
		args = append(args, "--keep-binds")
	}
	return args
}

// command is the far side's restore: crtree with the target's state root
// for local:, or crtree through ssh.
func command(t Target, o Options) *exec.Cmd {
	if t.Host == "" {
		return exec.Command(o.Self, append([]string{"--root", t.Root}, restoreArgs(t, o)...)...)
	}
	return sshCommand(t, o, restoreArgs(t, o))
}

// sshCommand runs the far crtree with args through ssh.
func sshCommand(t Target, o Options, crtreeArgs []string) *exec.Cmd {
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
// running.
type farRestore struct {
	cmd      *exec.Cmd
	in       io.WriteCloser
	out      bytes.Buffer
	errTail  *tailWriter
	done     bool
	err      error // how the far restore ended, once done
	restored string
	stderr   io.Writer
}

// startRestore starts the far side's restore, in a process group of its
// own: a Ctrl-C on the terminal must not end it (or ssh) while it is
// restoring the subtree, which would leave the outcome unknown.
func startRestore(t Target, o Options) (*farRestore, error) {
	f := &farRestore{cmd: command(t, o), errTail: &tailWriter{}, stderr: o.Stderr}
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	f.cmd.Stdout, f.cmd.Stderr = &f.out, f.errTail
	in, err := f.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	f.in = in
	if err := f.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the far restore: %w", err)
	}
	return f, nil
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

// Commit ends the archive and waits for the far restore: nil once it
// has reported the subtree running.
func (f *farRestore) Commit() error {
	f.in.Close()
	if err := f.wait(); err != nil {
		return err
	}
	// The path the far restore printed: its last line.
	lines := strings.Split(strings.TrimSpace(f.out.String()), "\n")
	f.restored = lines[len(lines)-1]
	if f.stderr != nil {
		f.stderr.Write(f.errTail.buf.Bytes())
	}
	return nil
}

// Abort ends the archive short, which the far restore refuses, removing
// what it made, and waits for it.
func (f *farRestore) Abort() {
	f.in.Close()
	f.wait()
}

// wait waits for the far restore (once), and says why it failed.
func (f *farRestore) wait() error {
	if f.done {
		return f.err
	}
	f.done = true
	if err := f.cmd.Wait(); err != nil {
		if msg := f.errTail.last(); msg != "" {
			f.err = errors.New("far side: " + msg)
		} else {
			f.err = fmt.Errorf("far side: %w", err)
		}
	}
	return f.err
}

// tailWriter keeps the end of what the far side says.
type tailWriter struct {
	buf bytes.Buffer
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if t.buf.Len() > 64<<10 {
		t.buf.Next(t.buf.Len() - 32<<10)
	}
	return len(p), nil
}

// last is the last line the far side said that starts with "crtree:".
func (t *tailWriter) last() string {
	lines := strings.Split(strings.TrimSpace(t.buf.String()), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "crtree: ") {
			return strings.TrimPrefix(lines[i], "crtree: ")
		}
	}
	return strings.TrimSpace(lines[len(lines)-1])
}
