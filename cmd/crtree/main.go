// Command crtree keeps a named tree of containers and checkpoints and
// restores whole subtrees of it with CRIU. Run `crtree --help`.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/crtree/crtree/internal/api"

	"github.com/crtree/crtree/internal/node"
	"github.com/crtree/crtree/internal/treefs"
)

func init() {
	// The main goroutine keeps the main thread, so that no other
	// goroutine runs on it: one that changes its thread's network
	// namespace (internal/network) ends its thread when it returns, which
	// Go cannot do with the main thread (it would stay in that namespace,
	// and /proc/self/ns/net, which is the main thread's, with it).
	runtime.LockOSThread()
}

// Exit codes, decided here and nowhere else.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// exitStatus carries a command's own exit status (crtree exec).
type exitStatus struct{ code int }

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// usageError marks an error in how crtree was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	// The init stage runs before anything else: it is PID 1 of a new node
	// and must not touch the tree or parse flags.
	if filepath.Base(os.Args[0]) == node.ReaperName {
		node.ReaperMain(os.Args[1:], os.Environ())
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "__init" {
		node.InitMain()
		return
	}
	// So does the start of a command crtree exec runs in a node.
	if len(os.Args) > 1 && os.Args[1] == node.SetsidArg {
		node.SetsidMain(os.Args[2:], os.Environ())
		return
	}
	// And the helper that attaches a node's view of the tree inside it.
	if len(os.Args) > 1 && os.Args[1] == treefs.AttachArg {
		os.Exit(treefs.AttachMain(os.Args[2:]))
	}
	// Inside a node, crtree asks the node's supervisor to do the work.
	if inNodeClient() {
		if k := hostOnly(os.Args[1:]); k != "" {
			fmt.Fprintf(os.Stderr, "crtree: %s cannot be used inside a node\n", k)
			os.Exit(exitUsage)
		}
		code, err := api.Call(os.Args[1:], os.Getenv("TERM"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "crtree:", err)
			if errors.Is(err, api.ErrUnknownCommand) {
				os.Exit(exitUsage)
			}
			os.Exit(exitError)
		}
		os.Exit(code)
	}
	root := newRootCmd()
	cmd, err := root.ExecuteC()
	if err != nil && cmd == root {
		// The root command runs nothing itself: an error there is an
		// unknown command or a bad flag, which is wrong usage.
		err = usageError{fmt.Errorf("%w (see crtree --help)", err)}
	}
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
	fmt.Fprintln(os.Stderr, "crtree:", errorScrubber(err.Error()))
	var in interrupted
	if errors.As(err, &in) {
		return in.exitCode()
	}
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitError
}

// errorScrubber rewrites error messages before they are printed (inside a
// node: the node's own full path becomes /).
var errorScrubber = func(msg string) string { return msg }

// inNodeClient reports whether this crtree runs in a node and should talk
// to the node's supervisor: the node's socket is there and this is not the
// command the supervisor runs on the host for it. Inside a node, crtree
// never works on its own: --root, --criu and their environment variables
// are refused (see hostOnly).
func inNodeClient() bool {
	return os.Getenv(node.EnvScope) == "" && api.InNode()
}

// hostOnly returns the first flag (before any "--") or environment
// variable in crtree's arguments that names a host path, which has no
// meaning inside a node.
func hostOnly(args []string) string {
	for _, a := range args {
		if a == "--" {
			break
		}
		for _, f := range []string{"--root", "--criu"} {
			if a == f || strings.HasPrefix(a, f+"=") {
				return f
			}
		}
	}
	for _, k := range []string{"CRTREE_ROOT", "CRTREE_CRIU"} {
		if os.Getenv(k) != "" {
			return k
		}
	}
	return ""
}
