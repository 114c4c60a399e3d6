// Package checkpoint dumps a subtree of nodes into one archive and
// restores an archive as a subtree under any parent.
//
// A dump (Dump, dump.go) goes through named steps: it holds the subtree
// (nothing is created in it or removed from it meanwhile), freezes it at
// one instant (the cgroup of its top node) and hands the freeze over to
// each node's own process cgroup, writes the manifest and each node's
// files while everything is still frozen, runs one CRIU dump per running
// node in parallel while an imagePipeline (pipeline.go) moves CRIU's
// images into the archive as they come, and commits the archive. Only
// when the archive is committed are the nodes killed and removed (or,
// with LeaveRunning, thawed as soon as CRIU is done). Any failure or
// cancellation before that thaws the subtree: a failed checkpoint never
// costs the workload. With TCPEstablished, each CRIU waits for that
// moment and kills its processes itself, so that their connections stay
// locked and no peer sees them close; after a failure it unlocks them
// instead (criurun.go).
//
// A restore (Restore, restore.go) reserves every node of the subtree in
// one change of the tree (node.Host.Reserve), then either extracts and
// verifies the whole archive and restores the nodes parents first
// (staged), or, from a file with an index or a stream written pages last,
// starts every node's CRIU at once while the archive is read, CRIU
// reading its page images as they come and holding the processes until
// the whole archive is verified (streamed, restore_stream.go). Any
// failure or cancellation removes every node it created; success hands
// them over (Commit).
package checkpoint
