package criu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestErrorQuotesLog(t *testing.T) {
	log := filepath.Join(t.TempDir(), "dump.log")
	os.WriteFile(log, []byte(`(00.045966) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.059639) unix: 	Runaway socket: ino 68429
(00.059641) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option.
(00.059800) Error (criu/cr-dump.c:1975): Dumping FAILED.
`), 0o600)
	e := &Error{Op: "dump", Err: errors.New("Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self"), Log: log, Quoted: logErrors(log)}
	msg := e.Error()
	first := strings.SplitN(msg, "\n", 2)[0]
	if first != "criu dump: unix: External socket is used. Consider using --ext-unix-sk option." {
		t.Errorf("first line = %q", first)
	}
	if strings.Contains(msg, "RLIMIT") {
		t.Errorf("harmless rlimit error quoted:\n%s", msg)
	}
	if !strings.Contains(msg, "Runaway socket") || !strings.Contains(msg, "full log: "+log) {
		t.Errorf("context or log path missing:\n%s", msg)
	}
	// Without a log, CRIU's own message stands, unless it is the harmless one.
	if got := (&Error{Op: "restore", Err: errors.New("boom")}).Error(); got != "criu restore: boom" {
		t.Errorf("no log: %q", got)
	}
	if got := (&Error{Op: "dump", Err: errors.New("rlimit: Can't setup RLIMIT_NOFILE")}).Error(); got != "criu dump: failed" {
		t.Errorf("harmless only: %q", got)
	}
}

// flagValue returns the value after flag in args, and whether flag is
// there at all.
func flagValue(args []string, flag string) (string, bool) {
	for i, a := range args {
		if a == flag {
			if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				return args[i+1], true
			}
			return "", true
		}
	}
	return "", false
}

// The RPC options and the criu command's flags ask CRIU the same: the
// network lock (nftables wherever CRIU locks: TCP connections or a
// network namespace of the tree's own), the ghost limit (capped to the
// RPC's 32 bits in both), TCP, leave-running, the log level, the
// external mounts.
func TestEncodingsAgree(t *testing.T) {
	dir := t.TempDir()
	img, wd, err := openDirs(dir, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	defer wd.Close()
	for _, tc := range []struct {
		o     DumpOptions
		limit string // expected ghost limit, "" for CRIU's default
	}{
		{DumpOptions{Pid: 7}, ""},
		{DumpOptions{Pid: 7, LogLevel: "0"}, ""},
		{DumpOptions{Pid: 7, LogLevel: "2", OwnNetwork: true, GhostLimit: 64 << 20}, "67108864"},
		{DumpOptions{Pid: 7, TCPEstablished: true, BeforeKill: func() error { return nil }}, ""},
		{DumpOptions{Pid: 7, TCPEstablished: true, OwnNetwork: true, GhostLimit: 8 << 30}, "4294967295"},
	} {
		o := tc.o
		opts := dumpOpts(o, img, wd)
		args := dumpArgs(o, dir, dir)
		lock, hasLock := flagValue(args, "--network-lock")
		wantLock := o.TCPEstablished || o.OwnNetwork
		if hasLock != wantLock || (opts.NetworkLock != nil) != wantLock {
			t.Errorf("%+v: network lock: flag %v, RPC %v; want %v", o, hasLock, opts.NetworkLock, wantLock)
		}
		if wantLock && (lock != "nftables" || opts.GetNetworkLock().String() != "NFTABLES") {
			t.Errorf("%+v: network lock %q / %v, want nftables", o, lock, opts.GetNetworkLock())
		}
		limit, _ := flagValue(args, "--ghost-limit")
		rpcLimit := ""
		if opts.GhostLimit != nil {
			rpcLimit = fmt.Sprint(opts.GetGhostLimit())
		}
		if limit != tc.limit || rpcLimit != tc.limit {
			t.Errorf("%+v: ghost limit: flag %q, RPC %q; want %q", o, limit, rpcLimit, tc.limit)
		}
		wantLevel := o.LogLevel
		if wantLevel == "" {
			wantLevel = "4"
		}
		if !slices.Contains(args, "-v"+wantLevel) || fmt.Sprint(opts.GetLogLevel()) != wantLevel {
			t.Errorf("%+v: log level: flags %v, RPC %d; want %s", o, args, opts.GetLogLevel(), wantLevel)
		}
		_, tcp := flagValue(args, "--tcp-established")
		_, lr := flagValue(args, "--leave-running")
		if tcp != opts.GetTcpEstablished() || lr != opts.GetLeaveRunning() || lr != (o.BeforeKill == nil) {
			t.Errorf("%+v: tcp %v/%v, leave-running %v/%v", o, tcp, opts.GetTcpEstablished(), lr, opts.GetLeaveRunning())
		}
	}
	// External mounts: recorded under their keys.
	o := DumpOptions{Pid: 7, ExternalMounts: []ExternalMount{{Mountpoint: "/usr", Key: "/usr", HostPath: "/usr"}, {Mountpoint: "/mnt/d", Key: "d", HostPath: "/data"}}}
	var flags, rpcs []string
	args := dumpArgs(o, dir, dir)
	for i, a := range args {
		if a == "--external" && i+1 < len(args) {
			flags = append(flags, args[i+1])
		}
	}
	for _, m := range dumpOpts(o, img, wd).ExtMnt {
		rpcs = append(rpcs, "mnt["+m.GetKey()+"]:"+m.GetVal())
	}
	if want := []string{"mnt[/usr]:/usr", "mnt[/mnt/d]:d"}; !slices.Equal(flags, want) || !slices.Equal(rpcs, want) {
		t.Errorf("external mounts: flags %q, RPC %q; want %q", flags, rpcs, want)
	}
	// A restore: the same lock.
	for _, net := range []bool{false, true} {
		opts := commonOpts(img, wd, "restore.log", "", false, net)
		_, hasLock := flagValue(cliCommon("restore", dir, dir, "", false, net), "--network-lock")
		if hasLock != net || (opts.NetworkLock != nil) != net {
			t.Errorf("restore, own network %v: network lock flag %v, RPC %v", net, hasLock, opts.NetworkLock)
		}
	}
}

// On a host without the iptables commands, every restore of a network
// namespace logs that CRIU could not probe them (harmless when there are
// no iptables images): the summary is the real cause.
func TestErrorSkipsIptablesProbe(t *testing.T) {
	log := filepath.Join(t.TempDir(), "restore.log")
	os.WriteFile(log, []byte(`Error (criu/util.c:642): execvp("iptables-restore", ...) failed: No such file or directory
(00.854931)      1: Error (criu/util.c:1723): iptables-restore -V failed
Error (criu/util.c:642): execvp("iptables-legacy-restore", ...) failed: No such file or directory
(00.864012)      1: Error (criu/util.c:1723): iptables-legacy-restore -V failed
Error (criu/util.c:642): execvp("ip6tables-restore", ...) failed: No such file or directory
(00.878072)      1: Error (criu/util.c:1723): ip6tables-restore -V failed
(00.889574)      1: No iptables-10.img image
(00.906535)      1: Error (criu/protobuf.c:93): Read 0 bytes while 32766 expected from socket:[553618]: Connection reset by peer
(00.937702) Error (criu/cr-restore.c:2331): Restoring FAILED.
`), 0o600)
	e := &Error{Op: "restore", Err: errors.New("criu exited with status 1"), Log: log, Quoted: logErrors(log)}
	msg := e.Error()
	if first := strings.SplitN(msg, "\n", 2)[0]; first != "criu restore: Read 0 bytes while 32766 expected from socket:[553618]: Connection reset by peer" {
		t.Errorf("first line = %q", first)
	}
	if strings.Contains(msg, "-V failed") || strings.Contains(msg, "execvp") {
		t.Errorf("iptables probe quoted:\n%s", msg)
	}
}
