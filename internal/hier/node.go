package hier

import "time"

// State is the life-cycle state of a node as recorded in the tree.
type State string

// The states a node goes through. A node is Creating while crtree sets up
// its namespaces or restores it; Running once its init runs under a
// supervisor; Exited when its init has ended (ExitCode says how).
const (
	Creating State = "creating"
	Running  State = "running"
	Exited   State = "exited"
	// Incomplete is never recorded: it is how a node whose creation was
	// interrupted (its crtree command died) is reported.
	Incomplete State = "incomplete"
)

// Node is one entry of the tree. Its identity is ID, which never changes;
// Name and Parent change with mv.
type Node struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Parent   string    `json:"parent,omitempty"` // parent's ID; empty for a top-level node
	Created  time.Time `json:"created"`
	Spec     Spec      `json:"spec"`
	State    State     `json:"state"`
	ExitCode int       `json:"exitCode,omitempty"`

	// Pid is the host PID of the node's init while it runs, and PidStart
	// its start time in clock ticks since boot, which tells a live init
	// from an unrelated process that reused the PID.
	Pid      int    `json:"pid,omitempty"`
	PidStart uint64 `json:"pidStart,omitempty"`
	// SupervisorPid is the host PID of the crtree supervisor of this node.
	SupervisorPid   int    `json:"supervisorPid,omitempty"`
	SupervisorStart uint64 `json:"supervisorStart,omitempty"`
	// OwnerPid is the crtree command that is creating the node (run,
	// restore) until it is complete; a node whose owner died before that
	// is incomplete.
	OwnerPid   int    `json:"ownerPid,omitempty"`
	OwnerStart uint64 `json:"ownerStart,omitempty"`
	// Busy is set while a crtree command holds the node's subtree (a
	// dump of it, a restore that creates it): nothing may be created,
	// renamed, removed, signalled or entered in it meanwhile.
	Busy *Busy `json:"busy,omitempty"`
	// Addr is the node's address on the state root's bridge (Spec.Net
	// NetBridge) while it has one; for a node being restored, the one it
	// had, which it asks for again.
	Addr *Addr `json:"addr,omitempty"`
}

// Addr is a node's place on the state root's bridge.
type Addr struct {
	IP  string `json:"ip"`
	MAC string `json:"mac,omitempty"`
}

// Busy is a hold on a subtree by a crtree command: Op says what it does
// ("dumped", "restored"), Pid and Start which process holds it. A hold
// whose process is gone no longer counts.
type Busy struct {
	Op    string `json:"op"`
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// Spec is how a node was asked to run: what `crtree run` was given. Its
// JSON is part of tree.json, not of archives: an archive carries its own
// copy (archive.Spec, converted in package checkpoint).
type Spec struct {
	Cmd      []string `json:"cmd"`
	Env      []string `json:"env,omitempty"`
	Cwd      string   `json:"cwd,omitempty"`
	Hostname string   `json:"hostname,omitempty"`
	Binds    []Bind   `json:"binds,omitempty"`
	// Rootfs is a host directory used as the read-only base of the node's
	// root; the node's own storage is an overlay upper layer above it.
	Rootfs string `json:"rootfs,omitempty"`
	// Image is the ID of the image (internal/image) whose layers are the
	// read-only base of the node's root, "" for none; the node then sees
	// nothing of the host's files but its binds. ImageName is what the
	// image was called when the node was created, for messages.
	Image     string `json:"image,omitempty"`
	ImageName string `json:"imageName,omitempty"`
	// User is who the command runs as: "" (root), or "user[:group]" by
	// name or number, looked up in the node's own /etc/passwd and
	// /etc/group (an image's config gives it).
	User string `json:"user,omitempty"`
	// Net is "" (the host's network), NetNone (a new network namespace
	// with only the loopback interface) or NetBridge (a namespace with an
	// address on the state root's bridge, internal/network).
	Net string `json:"net,omitempty"`
	// Ports are the ports published on the host for a NetBridge node.
	Ports []Port `json:"ports,omitempty"`
	// Init puts a minimal init at the node's PID 1 that runs Cmd as its
	// child, reaps orphans and passes signals on (run --init).
	Init bool `json:"init,omitempty"`
}

// Port is a published port: Host on the host forwards to Node on the
// node's address, for Proto ("tcp", the default, or "udp").
type Port struct {
	Host  int    `json:"host"`
	Node  int    `json:"node"`
	Proto string `json:"proto,omitempty"`
}

// Bind is a host path bound into a node. Bound paths are not the node's
// own storage and are never packed into an archive.
type Bind struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// The values of Spec.Net. A node records "" for the host's network; NetHost
// is how a request says so explicitly, so that it can be told from "as the
// parent has" (see [Tree.Isolate]).
const (
	// NetNone is a node with its own, empty network namespace.
	NetNone = "none"
	// NetHost asks for the host's network; it is recorded as "".
	NetHost = "host"
	// NetBridge is a node with its own network namespace and an address
	// on the state root's bridge.
	NetBridge = "bridge"
)

// OwnNet reports whether a node of spec s has a network namespace of its
// own (NetNone or NetBridge).
func (s Spec) OwnNet() bool { return s.Net == NetNone || s.Net == NetBridge }
