package criu

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The copies of a post-copy restore's userfaultfds that LazyPages holds
// (see LazyPages) go with the process that holds them: were it killed,
// the restored processes would read zeros where their memory had not
// arrived. So LazyPages also hands each set of copies to a keeper, a
// process of its own (RestoreOptions.LazyKeeper, Keep), and tells it
// when they may go. A keeper whose holder goes away without saying so
// kills the restored processes first, then lets the copies go.

// Messages to a keeper, each one packet of a SOCK_SEQPACKET socket.
const (
	keepReplace = 'h' // these copies, in place of those before
	keepAdd     = 'a' // these copies too (a set too large for one packet)
	keepRelease = 'r' // let them all go: the transfer is over
)

// keepBatch is how many descriptors go in one packet.
const keepBatch = 200

// KeeperPair returns a connected pair of sockets for a keeper: the end
// LazyPages writes to (RestoreOptions.LazyKeeper) and the keeper's.
func KeeperPair() (holder, keeper *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("keeper socket: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "keeper"), os.NewFile(uintptr(fds[1]), "keeper"), nil
}

// sendKept gives the keeper on conn the copies held, in place of those
// it had.
func sendKept(conn *os.File, held []*os.File) error {
	op := byte(keepReplace)
	for first := true; first || len(held) > 0; first = false {
		batch := held[:min(len(held), keepBatch)]
		held = held[len(batch):]
		fds := make([]int, len(batch))
		for i, f := range batch {
			fds[i] = int(f.Fd())
		}
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if err := unix.Sendmsg(int(conn.Fd()), []byte{op}, oob, nil, 0); err != nil {
			return fmt.Errorf("hand the userfaultfds to the keeper: %w", err)
		}
		op = keepAdd
	}
	return nil
}

// releaseKept tells the keeper on conn to let its copies go, and closes
// conn.
func releaseKept(conn *os.File) {
	unix.Sendmsg(int(conn.Fd()), []byte{keepRelease}, nil, nil, 0)
	conn.Close()
}

// Keep is a keeper: it holds the copies of userfaultfds it receives on
// conn until told to release them (it returns nil then). If conn ends
// first (their holder died), it calls kill, which must end every process
// the copies guard, and lets them go only then.
func Keep(conn *os.File, kill func() error) error {
	var kept []int
	defer func() {
		for _, fd := range kept {
			unix.Close(fd)
		}
	}()
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4*keepBatch))
	for {
		n, oobn, _, _, err := unix.Recvmsg(int(conn.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			if kerr := kill(); kerr != nil {
				return fmt.Errorf("the holder of the userfaultfds went away, and killing the processes they guard failed: %w", kerr)
			}
			return errors.New("the holder of the userfaultfds went away: the processes they guard were killed")
		}
		fds, err := receivedFds(oob[:oobn])
		if err != nil {
			return err
		}
		switch buf[0] {
		case keepRelease:
			return nil
		case keepReplace:
			for _, fd := range kept {
				unix.Close(fd)
			}
			kept = fds
		case keepAdd:
			kept = append(kept, fds...)
		}
	}
}

// receivedFds are the descriptors a packet's control data carries.
func receivedFds(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("keeper: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		rights, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, rights...)
	}
	return fds, nil
}
