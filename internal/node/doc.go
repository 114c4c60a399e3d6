// Package node owns crtree's nodes: the tree service that creates,
// changes and removes them, and the runtime that runs each one.
//
// Its files say which part they are:
//
//	host.go        Host: a state root, its paths, a node's status, Destroy
//	tree_*.go      the tree service, host-wide: where nodes are created
//	               (tree_lifecycle.go: Reserve, Commit, Abort), the
//	               operations on existing nodes (tree_ops.go: run, kill,
//	               rm, mv, ls) and the holds that keep a dump or restore's
//	               subtree from changing (tree_busy.go)
//	runtime_*.go   one node's runtime: its init in new namespaces with the
//	               file system layout CRIU can dump (runtime_layout.go,
//	               runtime_init.go), its supervisor outside the node
//	               (runtime_supervisor.go), restoring it from CRIU images
//	               (runtime_restore.go), entering it and running helpers
//	               in it (runtime_exec.go), the API it serves inside
//	               (runtime_api.go), the crtree binary and external mounts
//	               it is given (runtime_binary.go), its processes read
//	               from /proc (runtime_proc.go)
//	recover*.go    undoing what a crtree command killed mid-way left
//	               (markers, staging directories) and gc
//	treemounts.go  the views of the tree (crtree mount, internal/treefs)
//	               mounted in a node, which a dump leaves out
//
// Only this package writes the tree's nodes; internal/checkpoint reserves
// the nodes of a restore here and hands them over when they run.
//
// The crtree binary plays several parts. The command the user runs asks a
// supervisor to start; the supervisor (crtree re-executed as
// "__supervise") is the parent and child subreaper of the node's init and
// records how it ends; and the init stage (crtree re-executed as "__init"
// in the new namespaces) builds the node's mounts, pivots into its root and
// execs the user's command, which thus runs as PID 1 of the node (with
// run --init, the binary bound in the node runs as "crtree-init", a minimal
// init, and the command as its child: runtime_reaper.go). crtree exec
// starts its command through the binary bound in the node too
// ("__setsid"), so that the command leads a session of the node's own.
package node
