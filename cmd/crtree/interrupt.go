package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// interrupted is the cause of a command's context cancelled by a signal.
type interrupted struct{ sig syscall.Signal }

func (e interrupted) Error() string { return "interrupted by " + unix.SignalName(e.sig) }

// exitCode is the status of a command ended by the signal, as a shell
// reports it.
func (e interrupted) exitCode() int { return 128 + int(e.sig) }

// repeatGrace is how long after a first signal a second one is taken as
// the same (a tool such as timeout(1) signals the command, then its
// group) rather than as a request to stop at once.
const repeatGrace = 300 * time.Millisecond

// interruptible returns a context that SIGINT or SIGTERM cancels, for a
// command that must undo what it did rather than die half-way (dump,
// restore). A second signal, later than repeatGrace, ends crtree at once:
// what it leaves is undone by the next crtree command (the recovery
// markers), or shown as incomplete until rm -r -f removes it. A write to
// a closed pipe (dump -o - | a reader that ended) fails the command,
// which undoes what it did, instead of killing it (SIGPIPE). stop ends
// the cancelling.
func interruptible() (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	signal.Ignore(syscall.SIGPIPE)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sigs:
			sig := s.(syscall.Signal)
			cancel(interrupted{sig})
			fmt.Fprintf(os.Stderr, "crtree: %s: stopping (again to stop at once)\n", unix.SignalName(sig))
			time.Sleep(repeatGrace)
			signal.Reset(syscall.SIGINT, syscall.SIGTERM)
		case <-ctx.Done():
		}
	}()
	// Signals stay caught until crtree exits: one that comes once the
	// work is done changes nothing.
	return ctx, func() { cancel(nil) }
}
