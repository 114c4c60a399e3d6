// Package criu is crtree's one translation point to CRIU: it finds the
// criu binary, checks its version and features, and turns crtree's plain
// option structs into CRIU RPC requests sent to `criu swrk`.
//
// It speaks CRIU's RPC with go-criu's message types but starts `criu swrk`
// itself (as runc does), so that the CRIU process can be placed in a
// node's cgroup and handed extra file descriptors.
package criu
