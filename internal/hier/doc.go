// Package hier holds crtree's named tree of nodes: path syntax and name
// rules, the on-disk state of every node under a state root, and the lock
// that serialises changes to it.
//
// A path is a slash-separated list of names, like /vserver1/calculate_pi.
// The tree is stored as one JSON file (tree.json) under the state root,
// rewritten atomically (temporary file, fsync, rename) under an exclusive
// flock, so that concurrent crtree commands never see a half-written tree.
// Each node also owns a storage directory, nodes/<id>, whose name never
// changes when the node is renamed.
package hier
