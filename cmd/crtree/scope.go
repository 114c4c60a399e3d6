package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/api"
	"github.com/crtree/crtree/internal/checkpoint"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// scope is set when crtree runs on behalf of a process inside a node (its
// supervisor started it for a request on the node's socket): every path is
// relative to the node, and every file is the node's.
type scope struct {
	id      string
	path    hier.Path
	cwd     string
	initPid int
	// uid is the caller's user ID, -1 if unknown.
	uid int
}

// loadScope reads the scope from the environment the supervisor set, and
// refuses flags that would step outside it.
func (g *globalOptions) loadScope(cmd *cobra.Command) error {
	id := os.Getenv(node.EnvScope)
	if id == "" {
		return nil
	}
	for _, f := range []string{"root", "criu"} {
		if cmd.Flags().Changed(f) {
			return usageError{fmt.Errorf("--%s cannot be used inside a node", f)}
		}
	}
	h, err := g.host()
	if err != nil {
		return err
	}
	s := &scope{id: id, cwd: os.Getenv(node.EnvScopeCwd), uid: -1}
	if uid, err := strconv.Atoi(os.Getenv(node.EnvScopeUid)); err == nil {
		s.uid = uid
	}
	err = h.Store.View(func(t *hier.Tree) error {
		n := t.Nodes[id]
		if n == nil {
			return errors.New("this node no longer exists")
		}
		s.path, s.initPid = t.PathOf(n), n.Pid
		return nil
	})
	if err != nil {
		return err
	}
	if s.cwd == "" || !path.IsAbs(s.cwd) {
		s.cwd = "/"
	}
	g.scope = s
	return nil
}

// nodePath parses a path argument; inside a node it is taken below the
// node, which is its "/".
func (g *globalOptions) nodePath(arg string) (hier.Path, bool, error) {
	p, dir, err := parseNodePath(arg)
	if err != nil || g.scope == nil {
		return p, dir, err
	}
	return g.scope.path.Join(p...), dir, nil
}

// nodeAndHost parses a path argument and opens the state root.
func (g *globalOptions) nodeAndHost(arg string) (hier.Path, *node.Host, error) {
	p, _, err := g.nodePath(arg)
	if err != nil {
		return nil, nil, err
	}
	h, err := g.host()
	return p, h, err
}

// isSelf reports whether p is the calling node itself.
func (g *globalOptions) isSelf(p hier.Path) bool {
	return g.scope != nil && len(p) == len(g.scope.path)
}

// display turns a full path into what the caller sees.
func (g *globalOptions) display(full string) string {
	if g.scope == nil {
		return full
	}
	prefix := g.scope.path.String()
	if full == prefix {
		return "/"
	}
	return strings.TrimPrefix(full, prefix)
}

// scrub rewrites the node's own full path out of an error message.
func (g *globalOptions) scrub(msg string) string {
	if g.scope == nil {
		return msg
	}
	re := regexp.MustCompile(regexp.QuoteMeta(g.scope.path.String()) + `(/|\b)`)
	return re.ReplaceAllString(msg, "/")
}

// fileRoot returns the directory that file arguments are resolved in and
// the path of name inside it: on the host, name's own directory; inside a
// node, the node's root as its processes see it (through its init's
// /proc/PID/root), so that nothing outside the node can be read or written.
func (g *globalOptions) fileRoot(name string) (*os.Root, string, error) {
	if g.scope == nil {
		dir, base := path.Split(name)
		if dir == "" {
			dir = "."
		}
		r, err := os.OpenRoot(dir)
		return r, base, err
	}
	if !path.IsAbs(name) {
		name = path.Join(g.scope.cwd, name)
	}
	r, err := os.OpenRoot("/proc/" + strconv.Itoa(g.scope.initPid) + "/root")
	if err != nil {
		return nil, "", fmt.Errorf("open the node's files: %w", err)
	}
	rel := strings.TrimPrefix(path.Clean(name), "/")
	if rel == "" {
		rel = "."
	}
	return r, rel, nil
}

// openInput opens FILE (stdin for "-") for reading.
func (g *globalOptions) openInput(name string) (io.Reader, func(), error) {
	if name == "-" {
		return os.Stdin, func() {}, nil
	}
	r, rel, err := g.fileRoot(name)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	f, err := r.Open(rel)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", name, errors.Unwrap(err))
	}
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		f.Close()
		return nil, nil, fmt.Errorf("open %s: %w", name, syscall.EISDIR)
	}
	return f, func() { f.Close() }, nil
}

// createOutput starts an archive called name, as tar and cp do: a symlink
// is followed (inside a node, within the node's root), an existing
// character device or FIFO is written to, a regular file or new name is
// written through a temporary name. Inside a node, nothing is written
// under /run/crtree, where the node's socket and crtree itself are.
func (g *globalOptions) createOutput(name string) (checkpoint.Output, error) {
	if g.scope == nil {
		// On the host, the kernel resolves the name: /dev/stdout and
		// /proc/self/fd/N lead to pipes no path names.
		if fi, err := os.Stat(name); err == nil && fi.Mode()&(os.ModeCharDevice|os.ModeNamedPipe) != 0 {
			out, err := checkpoint.OpenStreamOutput(name)
			if err != nil {
				return nil, fmt.Errorf("write archive to %s: %w", name, unwrapPath(err))
			}
			return out, nil
		}
	}
	target, err := g.followLinks(name)
	if err != nil {
		return nil, fmt.Errorf("write archive to %s: %w", name, err)
	}
	r, rel, err := g.fileRoot(target)
	if err != nil {
		return nil, fmt.Errorf("write archive to %s: %w", name, unwrapPath(err))
	}
	opts := checkpoint.OutputOptions{NoDirect: g.env.NoDirect}
	if g.scope != nil {
		opts.Protect = strings.TrimPrefix(api.MountPoint, "/")
	}
	out, err := checkpoint.OpenOutputIn(r, rel, opts)
	if err != nil {
		return nil, fmt.Errorf("write archive to %s: %w", name, unwrapPath(err))
	}
	return out, nil
}

// maxLinks is how many symlinks followLinks follows, as the kernel does.
const maxLinks = 40

// followLinks resolves name's symlinks: on the host as the kernel would
// (filepath.EvalSymlinks, every component), inside a node within the
// node's root (an absolute target is the node's, and ".." stops at its
// "/"). A name that does not exist, or a last symlink that points nowhere
// (its target is created, as tar does), is followed as far as it goes.
func (g *globalOptions) followLinks(name string) (string, error) {
	lstat, readlink := os.Lstat, os.Readlink
	if g.scope == nil {
		if real, err := filepath.EvalSymlinks(name); err == nil {
			return real, nil
		}
	} else {
		r, _, err := g.fileRoot("/")
		if err != nil {
			return "", err
		}
		defer r.Close()
		if !path.IsAbs(name) {
			name = path.Join(g.scope.cwd, name)
		}
		in := func(n string) string {
			if rel := strings.TrimPrefix(path.Clean(n), "/"); rel != "" {
				return rel
			}
			return "."
		}
		lstat = func(n string) (os.FileInfo, error) { return r.Lstat(in(n)) }
		readlink = func(n string) (string, error) { return r.Readlink(in(n)) }
	}
	for range maxLinks {
		fi, err := lstat(name)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			return name, nil
		}
		t, err := readlink(name)
		if err != nil {
			return "", unwrapPath(err)
		}
		if !path.IsAbs(t) {
			t = path.Join(path.Dir(name), t)
		}
		name = t
	}
	return "", errors.New("too many levels of symbolic links")
}

// unwrapPath drops the *PathError's operation and path, which name the
// file as crtree opened it, not as the caller gave it.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
