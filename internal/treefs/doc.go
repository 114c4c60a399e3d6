// Package treefs serves crtree's tree of nodes as a FUSE file system, so
// that ls, find, cat, mv, rm -rf, cp and tar work on nodes:
//
//	DIR/vserver1/                 a node: its children are subdirectories
//	DIR/vserver1/.state           read-only facts about it (.pid, .procs,
//	                              .hostname, .memory too), made when opened
//	DIR/vserver1/.checkpoint      reading it streams a dump --leave-running
//	                              of the node's subtree
//	DIR/vserver1/ARCHIVE          an archive written here (create, write,
//	                              close) is restored under vserver1
//	DIR/.errors                   why the last operations failed
//
// rmdir of a node kills and removes its whole subtree (rm -r -f), rename
// within a parent is crtree mv, mkdir is refused (a node needs a command:
// crtree run). The file system has no state of its own: every lookup reads
// the tree (hier.Snapshots), every change goes through node.Host's
// operations, and dumps and restores run as crtree commands, so they take
// the same locks and make the same checks as on the command line.
//
// A file system may be scoped to a node (Options.Scope): it then shows that
// node as its root and nothing above it, and its dumps and restores run
// scoped to the node, as that node's own crtree commands do. Such a view
// is served on the host and attached inside the node (innode.go).
//
// Files: fs.go (directories: lookups, listing, rmdir, rename, create),
// files.go (the read-only files), jobs.go (the dumps behind .checkpoint),
// upload.go (the restores behind written archives), mount.go, daemon.go
// (the server's start and mount points), innode.go (a node's own view).
package treefs
