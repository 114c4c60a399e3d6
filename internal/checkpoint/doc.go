// Package checkpoint dumps a subtree of nodes into one archive and
// restores an archive as a subtree under any parent.
//
// A dump freezes the whole subtree at one instant (the cgroup of its top
// node), hands the freeze over to each node's own process cgroup, runs one
// CRIU dump per running node in parallel, packs each node's files while
// everything is still frozen, and writes the archive. Only when the
// archive is complete are the nodes killed and removed (or, with
// LeaveRunning, thawed). Any failure before that thaws the subtree: a
// failed checkpoint never costs the workload. With TCPEstablished, each
// CRIU waits for that moment and kills its processes itself, so that
// their connections stay locked and no peer sees them close; after a
// failure it unlocks them instead.
//
// A restore reserves every name of the subtree in one change of the tree,
// extracts and verifies the archive, then restores the nodes parents
// first, each under a supervisor of its own. Any failure removes every
// node it created.
package checkpoint
