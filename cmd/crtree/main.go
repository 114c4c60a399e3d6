// Command crtree keeps a named tree of containers and checkpoints and
// restores whole subtrees of it with CRIU. Run `crtree --help`.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/crtree/crtree/internal/node"
)

// Exit codes, decided here and nowhere else.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// exitError carries a command's own exit status (crtree exec).
type exitStatus struct{ code int }

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// usageError marks an error in how crtree was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	// The init stage runs before anything else: it is PID 1 of a new node
	// and must not touch the tree or parse flags.
	if len(os.Args) > 1 && os.Args[1] == "__init" {
		node.InitMain()
		return
	}
	cmd := newRootCmd()
	err := cmd.Execute()
	os.Exit(exitCode(err))
}

func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var st exitStatus
	if errors.As(err, &st) {
		return st.code
	}
	fmt.Fprintln(os.Stderr, "crtree:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitError
}
