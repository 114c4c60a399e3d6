// Package node is crtree's node runtime: it starts a node's init in new
// namespaces with the file system layout CRIU can dump (layout.go, init.go),
// keeps it under a supervisor process outside the node (supervisor.go),
// enters it (exec.go) and reads its processes from /proc (proc.go).
//
// The crtree binary plays several parts. The command the user runs asks a
// supervisor to start; the supervisor (crtree re-executed as
// "__supervise") is the parent and child subreaper of the node's init and
// records how it ends; and the init stage (crtree re-executed as "__init"
// in the new namespaces) builds the node's mounts, pivots into its root and
// execs the user's command, which thus runs as PID 1 of the node (with
// run --init, the binary bound in the node runs as "crtree-init", a minimal
// init, and the command as its child: reaper.go). crtree exec starts its
// command through the binary bound in the node too ("__setsid"), so that
// the command leads a session of the node's own.
package node
