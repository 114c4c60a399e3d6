package hier

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
)

// ErrNotFound is returned when a path names no node.
var ErrNotFound = errors.New("no such node")

// ErrExists is returned when a path is already taken.
var ErrExists = errors.New("node already exists")

// Tree is the whole named hierarchy of one state root.
type Tree struct {
	// Version is the format version of tree.json.
	Version int `json:"version"`
	// NextID numbers new nodes; IDs are never reused within a state root.
	NextID int              `json:"nextID"`
	Nodes  map[string]*Node `json:"nodes"`
}

func newTree() *Tree { return &Tree{Version: 1, NextID: 1, Nodes: map[string]*Node{}} }

// Children returns the children of the node with the given ID ("" for the
// root of the tree), sorted by name.
func (t *Tree) Children(id string) []*Node {
	var out []*Node
	for _, n := range t.Nodes {
		if n.Parent == id {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Child returns the child of parent ID named name, or nil.
func (t *Tree) Child(parent, name string) *Node {
	for _, n := range t.Nodes {
		if n.Parent == parent && n.Name == name {
			return n
		}
	}
	return nil
}

// Lookup returns the node at p; for the root path it returns nil and no
// error.
func (t *Tree) Lookup(p Path) (*Node, error) {
	var cur *Node
	id := ""
	for i, name := range p {
		cur = t.Child(id, name)
		if cur == nil {
			return nil, fmt.Errorf("%s: %w", p[:i+1], ErrNotFound)
		}
		id = cur.ID
	}
	return cur, nil
}

// PathOf returns the full path of n.
func (t *Tree) PathOf(n *Node) Path {
	var rev []string
	for n != nil {
		rev = append(rev, n.Name)
		n = t.Nodes[n.Parent]
	}
	p := make(Path, len(rev))
	for i, name := range rev {
		p[len(rev)-1-i] = name
	}
	return p
}

// Subtree returns n and all its descendants, parents before children
// (depth first, children by name). For a nil n it returns every node.
func (t *Tree) Subtree(n *Node) []*Node {
	children := map[string][]*Node{}
	for _, c := range t.Nodes {
		children[c.Parent] = append(children[c.Parent], c)
	}
	var out []*Node
	var walk func(id string)
	walk = func(id string) {
		kids := children[id]
		sort.Slice(kids, func(i, j int) bool { return kids[i].Name < kids[j].Name })
		for _, c := range kids {
			out = append(out, c)
			walk(c.ID)
		}
	}
	if n == nil {
		walk("")
		return out
	}
	out = append(out, n)
	walk(n.ID)
	return out
}

// Ancestors returns the IDs from the top-level node down to n, n included.
func (t *Tree) Ancestors(n *Node) []string {
	var rev []string
	for n != nil {
		rev = append(rev, n.ID)
		n = t.Nodes[n.Parent]
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev
}

// FreeUnnamed returns the name unnamedN with the smallest N >= 1 that no
// child of parent ID uses.
func (t *Tree) FreeUnnamed(parent string) string {
	used := map[string]bool{}
	for _, c := range t.Children(parent) {
		used[c.Name] = true
	}
	for i := 1; ; i++ {
		name := "unnamed" + strconv.Itoa(i)
		if !used[name] {
			return name
		}
	}
}

// Add creates a node named name under parent ID and returns it; the caller
// fills in the rest. It fails with ErrExists if the name is taken.
func (t *Tree) Add(parent, name string) (*Node, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if parent != "" && t.Nodes[parent] == nil {
		return nil, fmt.Errorf("parent %s: %w", parent, ErrNotFound)
	}
	if t.Child(parent, name) != nil {
		p := Path{}
		if parent != "" {
			p = t.PathOf(t.Nodes[parent])
		}
		return nil, fmt.Errorf("%s: %w", p.Join(name), ErrExists)
	}
	id := "n" + strconv.Itoa(t.NextID)
	t.NextID++
	n := &Node{ID: id, Name: name, Parent: parent, State: Creating}
	t.Nodes[id] = n
	return n, nil
}

// Remove deletes the node with the given ID from the tree. Its children,
// if any, must have been removed first.
func (t *Tree) Remove(id string) error {
	if len(t.Children(id)) > 0 {
		return fmt.Errorf("%s has children", t.PathOf(t.Nodes[id]))
	}
	delete(t.Nodes, id)
	return nil
}

// ErrIsolation is returned when a node would get more than its parent
// has: the host's network under a parent that has none, the host's files
// under a parent on an image.
var ErrIsolation = errors.New("a node cannot have more than its parent")

// Isolate applies the parent's isolation to spec, the spec of a new node
// under parent ID: a node never gets more than its ancestors have. Under
// a --net none or --net bridge ancestor, a spec that asks for nothing gets
// the same kind of network of its own (an empty one, or its own address
// on the bridge), and one that asks for the host's network (NetHost, or
// "" with explicit set, as restored nodes are) is refused, as is a bridge
// under --net none. A NetHost request
// that is allowed is recorded as "". Under an ancestor on an image, a
// spec without an image (the host's files, or a --rootfs base with the
// host's /usr and /etc) is refused.
func (t *Tree) Isolate(parent string, spec *Spec, explicit bool) error {
	// Files: under a node on an image, which sees none of the host's
	// files, a child does not either.
	if spec.Image == "" {
		for n := t.Nodes[parent]; n != nil; n = t.Nodes[n.Parent] {
			if n.Spec.Image != "" {
				return fmt.Errorf("%s runs on an image and sees none of the host's files, and %w: run it on an image too (--image)", t.PathOf(n), ErrIsolation)
			}
		}
	}
	switch spec.Net {
	case "", NetHost, NetNone, NetBridge:
	default:
		return fmt.Errorf("unknown network %q (host, none or bridge)", spec.Net)
	}
	wantsHost := spec.Net == NetHost || (explicit && spec.Net == "")
	if spec.Net == NetHost {
		spec.Net = ""
	}
	if spec.Net == NetNone {
		return nil
	}
	for n := t.Nodes[parent]; n != nil; n = t.Nodes[n.Parent] {
		switch {
		case !n.Spec.OwnNet():
			continue
		case wantsHost:
			return fmt.Errorf("%s has no host network (--net %s), and %w", t.PathOf(n), n.Spec.Net, ErrIsolation)
		case n.Spec.Net == NetNone && spec.Net == NetBridge:
			return fmt.Errorf("%s has no network (--net none), and %w", t.PathOf(n), ErrIsolation)
		case spec.Net == "":
			// As its nearest ancestor with a network of its own: an
			// empty one, or an address of its own on the bridge.
			spec.Net = n.Spec.Net
		}
		return nil
	}
	return nil
}
