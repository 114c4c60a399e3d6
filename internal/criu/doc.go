// Package criu is crtree's one translation point to CRIU: it finds the
// criu binary, checks its version and features, and turns crtree's plain
// option structs into CRIU's options.
//
// A dump whose images go to files is an RPC request to `criu swrk`, which
// it starts itself (as runc does) with go-criu's message types; a streamed
// dump and every restore run the criu command with the same options
// spelled as flags (CRIU's RPC refuses --stream, and restores hold their
// processes through an action script, see resumeGate). TestEncodingsAgree
// keeps the two encodings in step.
package criu
