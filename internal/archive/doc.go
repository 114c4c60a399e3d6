// Package archive reads and writes crtree archives: one zstd-compressed
// tar stream holding a checkpointed subtree, readable front to back so it
// can go through pipes and ssh.
//
// The stream is, in order:
//
//	manifest.json          the Manifest: versions, the subtree (each node's
//	                       spec, processes, sizes); it lists no member
//	nodes/N/files/...      every node's own files (node N's writable root)
//	nodes/N/criu/...       then every node's CRIU images (a page image may
//	                       come in parts, written while CRIU still wrote it)
//	checksums.json         the trailer (Checksums): every member above, in
//	                       order, with its type, size, a SHA-256 of every
//	                       32 MiB piece and one of its tar header (mode,
//	                       owner, times, xattrs...)
//
// and, after the tar stream of an archive written to a file, the Index: a
// zstd skippable frame saying where the images written once CRIU was done
// and checksums.json start, so that a reader that can seek reads them
// first (ReadIndex, ReadTrailer, ExtractMeta).
//
// The format is specified in docs/ARCHIVE.md; FormatVersion changes with
// any change a reader of an older version could not handle. The writer
// writes FormatVersion; a Reader reads it and format version 1, whose
// checksums do not cover tar headers (versions.go holds every difference
// between the versions read). The manifest's
// types (Manifest, Node, Spec, ExternalMount...) are the format's own,
// converted from and to crtree's runtime types outside this package: their
// JSON is the format, whatever those types become.
//
// A Reader treats the stream as hostile: the manifest must be valid, each
// member must have an allowed name (in the files or images of a node of
// the manifest) and type, appear once (only CRIU images come in parts),
// stay within what the manifest accounts for (ExpansionLimit), and match
// its entry in checksums.json, which must list every member; only when
// Next returns io.EOF has the whole archive been verified. Extraction
// (Extract) keeps every path inside its destination.
package archive
