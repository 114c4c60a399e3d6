package e2e

import (
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/sys/unix"
)

// nfttables: print the nftables tables of the test's network namespace,
// one "FAMILY NAME" a line (as `nft list tables` would, without needing
// the nft command).
func cmdNfttables(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: nfttables")
	}
	tables, err := nftTables()
	ts.Check(err)
	for _, t := range tables {
		fmt.Fprintln(ts.Stdout(), t)
	}
}

// nftTables asks the kernel for its nftables tables over netlink.
func nftTables() ([]string, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nftables socket: %w", err)
	}
	defer unix.Close(fd)
	req := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETTABLE)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1) // sequence
	// nfgenmsg: family AF_UNSPEC (every family), version 0, res_id 0.
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("nftables request: %w", err)
	}
	var tables []string
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("nftables answer: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("nftables answer: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return tables, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 && int32(binary.NativeEndian.Uint32(m.Data)) != 0 {
					return nil, fmt.Errorf("nftables answer: %w", unix.Errno(-int32(binary.NativeEndian.Uint32(m.Data))))
				}
				return tables, nil
			}
			if len(m.Data) < 4 {
				continue
			}
			tables = append(tables, nftFamily(m.Data[0])+" "+nftAttr(m.Data[4:], unix.NFTA_TABLE_NAME))
		}
	}
}

// nftAttr returns the string attribute typ of a netlink attribute list.
func nftAttr(b []byte, typ uint16) string {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			break
		}
		if binary.NativeEndian.Uint16(b[2:])&0x3fff == typ {
			return string(trimNul(b[4:l]))
		}
		b = b[min(len(b), (l+3)&^3):]
	}
	return "?"
}

func trimNul(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

func nftFamily(f byte) string {
	switch f {
	case unix.NFPROTO_INET:
		return "inet"
	case unix.NFPROTO_IPV4:
		return "ip"
	case unix.NFPROTO_IPV6:
		return "ip6"
	case unix.NFPROTO_ARP:
		return "arp"
	case unix.NFPROTO_BRIDGE:
		return "bridge"
	case unix.NFPROTO_NETDEV:
		return "netdev"
	}
	return strconv.Itoa(int(f))
}

// waitfile FILE REGEXP [SECONDS]: wait until FILE's content matches.
func cmdWaitfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: waitfile FILE REGEXP [SECONDS]")
	}
	re := regexp.MustCompile("(?m)" + args[1])
	limit := 30 * time.Second
	if len(args) == 3 {
		s, _ := strconv.Atoi(args[2])
		limit = time.Duration(s) * time.Second
	}
	deadline := time.Now().Add(limit)
	var data []byte
	for time.Now().Before(deadline) {
		data, _ = os.ReadFile(ts.MkAbs(args[0]))
		if re.Match(data) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	ts.Fatalf("%s does not match %s after %v:\n%s", args[0], re, limit, data)
}
