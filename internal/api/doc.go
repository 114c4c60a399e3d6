// Package api is how crtree works inside a node: the in-node crtree sends
// its command line, working directory and its stdin, stdout and stderr
// (as file descriptors) over a unix socket to the node's supervisor, which
// runs the command on the host, scoped to the node's subtree, and answers
// with its exit status.
//
// Each node has its own socket, bind-mounted at /run/crtree/api.sock in the
// node: which socket a request came through is the caller's identity, and
// nothing in the request can change it. A request is one SOCK_SEQPACKET
// message of at most MaxRequest bytes carrying exactly three descriptors;
// anything else is refused.
package api
