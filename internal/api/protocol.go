package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
)

// Where the API lives inside a node.
const (
	MountPoint = "/run/crtree"
	SocketName = "api.sock"
	// BinaryName is the crtree binary bound into MountPoint.
	BinaryName = "crtree"
)

// SocketPath is the socket's path inside a node.
const SocketPath = MountPoint + "/" + SocketName

// Limits of a request.
const (
	MaxRequest = 64 << 10
	MaxArgs    = 256
	MaxArgLen  = 4096
)

// Commands are the crtree commands a node may run through its socket.
var Commands = map[string]bool{
	"run": true, "ls": true, "tree": true, "ps": true, "exec": true, "logs": true,
	"kill": true, "rm": true, "mv": true, "dump": true, "restore": true,
	"inspect": true, "check": true, "mount": true, "umount": true,
	"help": true, "--help": true, "-h": true,
}

// Request is what the in-node crtree sends: its arguments (without the
// program name) and its working directory inside the node.
type Request struct {
	Args []string `json:"args"`
	Cwd  string   `json:"cwd"`
	// Uid is the caller's user ID, from the socket (SO_PEERCRED), never
	// from the message; -1 if the kernel did not say.
	Uid  int    `json:"-"`
	Term string `json:"term,omitempty"`
}

// Response is the supervisor's answer: the command's exit status, or why
// the request was refused.
type Response struct {
	Exit  int    `json:"exit"`
	Error string `json:"error,omitempty"`
}

// Long reports whether the request may run for as long as its caller
// likes: exec, and logs (logs -f follows the node until it exits).
func (r *Request) Long() bool { return r.Args[0] == "exec" || r.Args[0] == "logs" }

// ErrBadRequest wraps every reason to refuse a request.
var ErrBadRequest = errors.New("bad request")

// ErrUnknownCommand is wrapped, with ErrBadRequest, by the refusal of a
// command crtree does not run inside a node: the caller's wrong usage.
var ErrUnknownCommand = errors.New("unknown command")

// unknownCommandError is the refusal of command name.
type unknownCommandError string

func (e unknownCommandError) Error() string {
	return fmt.Sprintf("%s: %q is not a command crtree runs inside a node", ErrBadRequest, string(e))
}

func (e unknownCommandError) Is(target error) bool {
	return target == ErrBadRequest || target == ErrUnknownCommand
}

// DecodeRequest parses and checks a request.
func DecodeRequest(data []byte) (*Request, error) {
	if len(data) > MaxRequest {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadRequest, MaxRequest)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var r Request
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the request", ErrBadRequest)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Validate checks the request's shape: a known command first, bounded
// arguments without NUL bytes, an absolute clean working directory.
func (r *Request) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, a...))
	}
	if len(r.Args) == 0 {
		return bad("no command")
	}
	if len(r.Args) > MaxArgs {
		return bad("more than %d arguments", MaxArgs)
	}
	if !Commands[r.Args[0]] {
		return unknownCommandError(r.Args[0])
	}
	for _, a := range r.Args {
		if len(a) > MaxArgLen {
			return bad("argument longer than %d bytes", MaxArgLen)
		}
		if strings.ContainsRune(a, 0) {
			return bad("argument with a NUL byte")
		}
	}
	if len(r.Cwd) > MaxArgLen || !path.IsAbs(r.Cwd) || path.Clean(r.Cwd) != r.Cwd || strings.ContainsRune(r.Cwd, 0) {
		return bad("working directory %q is not a clean absolute path", r.Cwd)
	}
	if len(r.Term) > 64 || strings.ContainsAny(r.Term, "\x00=\n") {
		return bad("bad TERM")
	}
	return nil
}
