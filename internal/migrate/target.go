// Package migrate moves a subtree to another state root or host while it
// runs (stop-and-copy): a dump of the subtree whose archive is read, as it
// is written, by a crtree restore on the far side, run through the user's
// own ssh for another host. The dump commits only once that restore
// reports the whole subtree running there: until then the source stays
// (frozen), and on any failure it is thawed and goes on, and the far side
// removes what it created.
package migrate

import (
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/crtree/crtree/internal/hier"
)

// Target is where a migration goes.
type Target struct {
	// Root is the destination's state root for a local: target, "" for
	// ssh (the far crtree's default or CRTREE_ROOT there).
	Root string
	// Host is the ssh destination, [user@]host, "" for local.
	Host string
	// Port is the ssh port, 0 for ssh's default.
	Port int
	// Parent is the node the subtree goes under on the far side.
	Parent string
}

// ParseTarget reads TARGET: ssh://[user@]host[:port][/PARENT] or
// local:STATEROOT[/PARENT], a state root of this machine; isRoot says
// whether a directory is one (has a tree), which tells the state root from
// the parent: the longest prefix that is one, else the whole path.
func ParseTarget(s string, isRoot func(dir string) bool) (Target, error) {
	switch {
	case strings.HasPrefix(s, "ssh://"):
		u, err := url.Parse(s)
		if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			return Target{}, fmt.Errorf("target %q: want ssh://[user@]host[:port][/PARENT]", s)
		}
		t := Target{Host: u.Hostname(), Parent: "/" + strings.Trim(u.Path, "/")}
		if u.User != nil {
			if _, set := u.User.Password(); set {
				return Target{}, fmt.Errorf("target %q: no password in the target: ssh asks for it, or uses your key", s)
			}
			t.Host = u.User.Username() + "@" + t.Host
		}
		if p := u.Port(); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return Target{}, fmt.Errorf("target %q: bad port %q", s, p)
			}
			t.Port = n
		}
		if strings.HasPrefix(u.Hostname(), "-") || u.User != nil && strings.HasPrefix(u.User.Username(), "-") {
			return Target{}, fmt.Errorf("target %q: a host or user cannot start with '-'", s)
		}
		return t, checkParent(s, t.Parent)
	case strings.HasPrefix(s, "local:"):
		p := strings.TrimPrefix(s, "local:")
		if !path.IsAbs(p) {
			return Target{}, fmt.Errorf("target %q: want local:/STATEROOT[/PARENT], with an absolute state root", s)
		}
		p = path.Clean(p)
		if p == "/" {
			return Target{}, fmt.Errorf("target %q: / is no state root", s)
		}
		for root := p; root != "/"; root = path.Dir(root) {
			if isRoot(root) {
				t := Target{Root: root, Parent: "/" + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")}
				return t, checkParent(s, t.Parent)
			}
		}
		return Target{Root: p, Parent: "/"}, nil
	}
	return Target{}, fmt.Errorf("target %q: want ssh://[user@]host[:port][/PARENT] or local:/STATEROOT[/PARENT]", s)
}

// checkParent refuses a parent that is not a node path (names of
// [A-Za-z0-9_.-]): it goes to the far side's shell.
func checkParent(target, parent string) error {
	if _, _, err := hier.ParsePath(parent); err != nil {
		return fmt.Errorf("target %q: the parent %q: %w", target, parent, err)
	}
	return nil
}

// String is how messages name the target.
func (t Target) String() string {
	if t.Host == "" {
		return "local:" + path.Join(t.Root, t.Parent)
	}
	s := "ssh://" + t.Host
	if t.Port != 0 {
		s += ":" + strconv.Itoa(t.Port)
	}
	return s + t.Parent
}
