// Package node is crtree's node runtime: it starts a node's init in new
// namespaces with the file system layout CRIU can dump (layout.go, init.go),
// keeps it under a supervisor process outside the node (supervisor.go),
// enters it (exec.go) and reads its processes from /proc (proc.go).
//
// The crtree binary plays three parts. The command the user runs asks a
// supervisor to start; the supervisor (crtree re-executed as
// "__supervise") is the parent and child subreaper of the node's init and
// records how it ends; and the init stage (crtree re-executed as "__init"
// in the new namespaces) builds the node's mounts, pivots into its root and
// execs the user's command, which thus runs as PID 1 of the node.
package node
