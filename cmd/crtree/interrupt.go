package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// interrupted is the cause of a command's context cancelled by a signal.
type interrupted struct{ sig syscall.Signal }

func (e interrupted) Error() string { return "interrupted by " + unix.SignalName(e.sig) }

// exitCode is the status of a command ended by the signal, as a shell
// reports it.
func (e interrupted) exitCode() int { return 128 + int(e.sig) }

// interruptible returns a context that SIGINT or SIGTERM cancels, for a
// command that must undo what it did rather than die half-way (dump,
// restore). A second signal ends crtree at once; what it leaves is undone
// by the next crtree command (the recovery markers). stop ends the
// handling.
func interruptible() (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sigs:
			cancel(interrupted{s.(syscall.Signal)})
			signal.Reset(syscall.SIGINT, syscall.SIGTERM)
			fmt.Fprintf(os.Stderr, "crtree: %s: undoing what was done (again to stop at once)\n", unix.SignalName(s.(syscall.Signal)))
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		cancel(nil)
	}
}
