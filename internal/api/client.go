package api

import (
	"encoding/json"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// InNode reports whether this process runs inside a crtree node (its
// node's socket is there).
func InNode() bool {
	fi, err := os.Stat(SocketPath)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// Call sends args to the node's supervisor with this process's stdin,
// stdout and stderr, waits for the command to end and returns its exit
// status. A request that the supervisor would refuse for its shape is
// refused here, without connecting. term is the caller's TERM, for a
// command run on a terminal.
func Call(args []string, term string) (int, error) {
	cwd, err := os.Getwd()
	if err != nil {
		cwd = "/"
	}
	req := Request{Args: args, Cwd: cwd, Term: term}
	if err := req.Validate(); err != nil {
		return 0, err
	}
	data, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: SocketPath, Net: "unixpacket"})
	if err != nil {
		return 0, fmt.Errorf("connect to the node's crtree: %w", err)
	}
	defer c.Close()
	rights := unix.UnixRights(0, 1, 2)
	if _, _, err := c.WriteMsgUnix(data, rights, nil); err != nil {
		return 0, fmt.Errorf("send request: %w", err)
	}
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		return 0, fmt.Errorf("the node's crtree did not answer: %w", err)
	}
	var resp Response
	if err := json.Unmarshal(buf[:n], &resp); err != nil {
		return 0, fmt.Errorf("bad answer from the node's crtree: %w", err)
	}
	if resp.Error != "" {
		return 1, fmt.Errorf("%s", resp.Error)
	}
	return resp.Exit, nil
}
