package criu

import (
	"fmt"
	"os"
	"time"

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
		if err := unix.Sendmsg(int(conn.Fd()), []byte{op}, oob, nil, unix.MSG_NOSIGNAL); err != nil {
			return fmt.Errorf("hand the userfaultfds to the keeper: %w", err)
		}
		op = keepAdd
	}
	return nil
}

// releaseKept tells the keeper on conn to let its copies go, and closes
// conn.
func releaseKept(conn *os.File) {
	unix.Sendmsg(int(conn.Fd()), []byte{keepRelease}, nil, nil, unix.MSG_NOSIGNAL)
	conn.Close()
}

// Keep is a keeper: it holds the copies of userfaultfds it receives on
// conn until told to release them (it returns nil then). If conn ends
// first (their holder died), or brings what it cannot take whole, it
// calls kill, which must end every process the copies guard, until kill
// succeeds, and lets them go only then.
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
		n, oobn, flags, _, err := unix.Recvmsg(int(conn.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		var fds []int
		if err == nil && n == 1 {
			fds, err = receivedFds(oob[:oobn])
		}
		switch {
		case err != nil || n == 0:
			return killAll(kill, "the holder of the userfaultfds went away")
		case flags&unix.MSG_CTRUNC != 0:
			closeFds(fds)
			return killAll(kill, "copies of userfaultfds came cut short")
		}
		switch buf[0] {
		case keepRelease:
			closeFds(fds)
			return nil
		case keepReplace:
			closeFds(kept)
			kept = fds
		case keepAdd:
			kept = append(kept, fds...)
		default:
			closeFds(fds)
		}
	}
}

// killAll calls kill until it succeeds (the copies stay held meanwhile:
// the processes stay blocked rather than read zeros), and says why.
func killAll(kill func() error, why string) error {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := kill()
		if err == nil {
			return fmt.Errorf("%s: the processes they guard were killed", why)
		}
		fmt.Fprintf(os.Stderr, "crtree keeper: %s, and killing the processes they guard failed (again in %v): %v\n", why, wait, err)
		time.Sleep(wait)
	}
}

// closeFds closes the descriptors fds.
func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
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
