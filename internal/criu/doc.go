// Package criu is crtree's one translation point to CRIU: it finds the
// criu binary, checks its version and features, and turns crtree's plain
// option structs into CRIU's options.
//
// Which way each operation goes:
//
//   - Dump whose images go to files: an RPC request to `criu swrk`, which
//     the package starts itself (as runc does) with go-criu's message
//     types; its post-dump action (DumpOptions.BeforeKill) is an RPC
//     notification.
//   - Dump with Stream, and every Restore: the criu command, with the same
//     options spelled as flags (CRIU's RPC refuses --stream, and a restore
//     holds its processes through an action script, see resumeGate); their
//     actions are shell scripts that reach crtree through pipes or FIFOs.
//     TestEncodingsAgree keeps a dump's two encodings in step.
//   - Check: an RPC request to `criu swrk`, started as for a dump.
//   - Version and CheckFeatures: go-criu's own RPC calls (go-criu starts
//     `criu swrk`); CheckFeatures also runs `criu check --feature
//     mem_dirty_track`, which says more than the RPC's answer.
//
// With Stream, CRIU reads and writes no image files: a dump hands its
// images to a CaptureServer, and a restore asks an ImageServer for them,
// over CRIU's image-streamer protocol on a socket in the images directory.
//
// Post-copy (lazy.go): a dump with LazyPages serves its memory as CRIU's
// page server on a socket; a restore with LazyPages runs CRIU's
// lazy-pages daemon behind a pageProxy (pagexfer.go) that fetches it
// from there. IndexLazy and ServeLazyPages (lazyimages.go) serve the
// lazy pages of a plain dump's images instead (read through a
// PageSource: the image files, or an archive's pieces), for a post-copy
// restore from images. A keeper process (keeper.go, Keep) holds copies of
// the restore's userfaultfds with its LazyPages, and kills the restored
// processes if their holder dies before their memory has arrived.
package criu
