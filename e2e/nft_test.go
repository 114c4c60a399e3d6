package e2e

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/crtree/crtree/internal/archive"
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

// liftLocks deletes the nftables tables with which CRIU locked the TCP
// connections of the archives in dir (a restore would have deleted them):
// a script that fails between dump and restore leaves none behind. Only
// those tables are touched; other tests may lock connections meanwhile.
func liftLocks(t logger, dir string) {
	archives, _ := filepath.Glob(filepath.Join(dir, "*.crtree"))
	for _, a := range archives {
		for _, table := range lockTables(a) {
			if err := deleteNftTable(table); err != nil && err != unix.ENOENT {
				t.Log("teardown: delete nftables table", table+":", err)
			}
		}
	}
}

// lockTables returns the names of the nftables tables of CRIU's network
// lock for each node of an archive: "CRIU-" and the run ID of the node's
// dump (inventory.img, field dump_criu_run_id), cut as CRIU cuts it
// ("inet CRIU-<id>" in a 32-byte buffer, nftables_get_table in
// criu/netfilter.c).
func lockTables(archivePath string) []string {
	f, err := os.Open(archivePath)
	if err != nil {
		return nil
	}
	defer f.Close()
	r, err := archive.NewReader(f)
	if err != nil {
		return nil
	}
	defer r.Close()
	var tables []string
	for {
		hdr, body, err := r.Next()
		if err != nil {
			return tables
		}
		if path.Base(hdr.Name) != "inventory.img" {
			continue
		}
		data, _ := io.ReadAll(body)
		if id := dumpRunID(data); id != "" {
			name := "inet CRIU-" + id
			tables = append(tables, strings.TrimPrefix(name[:min(len(name), 31)], "inet "))
		}
	}
}

// dumpRunID reads dump_criu_run_id (field 13) from an inventory image:
// two magic numbers, then one length-prefixed InventoryEntry.
func dumpRunID(img []byte) string {
	if len(img) < 12 {
		return ""
	}
	n := int(binary.LittleEndian.Uint32(img[8:]))
	b := img[12:min(len(img), 12+n)]
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return ""
		}
		b = b[l:]
		if num == 13 && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			return string(v)
		}
		if l = protowire.ConsumeFieldValue(num, typ, b); l < 0 {
			return ""
		}
		b = b[l:]
	}
	return ""
}

// deleteNftTable deletes the inet table name (one nftables batch).
func deleteNftTable(name string) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	attr := nlAttr(unix.NFTA_TABLE_NAME, append([]byte(name), 0))
	var req []byte
	req = append(req, nfMsg(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, 0, unix.NFNL_SUBSYS_NFTABLES, nil)...)
	req = append(req, nfMsg(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_DELTABLE, unix.NLM_F_REQUEST|unix.NLM_F_ACK, unix.NFPROTO_INET, 0, attr)...)
	req = append(req, nfMsg(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, 0, unix.NFNL_SUBSYS_NFTABLES, nil)...)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
				return unix.Errno(-e)
			}
		}
	}
	return nil
}

// nfMsg is one nfnetlink message: header, nfgenmsg, attributes.
func nfMsg(typ, flags uint16, family byte, resID uint16, attrs []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(attrs))
	b = append(b, attrs...)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	b[16] = family
	binary.BigEndian.PutUint16(b[18:], resID)
	return b
}

func nlAttr(typ uint16, data []byte) []byte {
	b := make([]byte, (4+len(data)+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], data)
	return b
}
