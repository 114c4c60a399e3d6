// Package archive reads and writes crtree archives: one zstd-compressed
// tar stream holding a checkpointed subtree, readable front to back so it
// can go through pipes and ssh.
//
// The stream is, in order:
//
//	manifest.json          the Manifest: versions, the subtree, every member
//	nodes/N/files/...      node N's own files (its writable root)
//	nodes/N/criu/...       node N's CRIU images
//	checksums.json         a SHA-256 of every 32 MiB piece of every member above,
//	                       and of its tar header (mode, owner, times, xattrs...)
//
// The format is specified in docs/ARCHIVE.md; FormatVersion changes with
// any change a reader of an older version could not handle.
//
// A Reader treats the stream as hostile: every member must be listed in
// the manifest with its size and type, appear once, and match its
// checksum; extraction (Extract) keeps every path inside its destination.
package archive
