package criu

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"
)

// ExternalMount is an external mount of a node: a mount inside the node
// that comes from the host, which CRIU leaves out of its images. A dump
// records the one at Mountpoint under Key (--external mnt[Mountpoint]:Key);
// a restore has HostPath mounted where the images say Key was
// (--external mnt[Key]:HostPath).
type ExternalMount struct {
	Mountpoint string
	Key        string
	HostPath   string
}

// DumpOptions are what crtree asks of one CRIU dump.
type DumpOptions struct {
	// Pid is the host PID of the root of the process tree (a node's init).
	Pid int
	// ImagesDir receives the images; WorkDir the log (dump.log).
	ImagesDir, WorkDir string
	// FreezeCgroup is the cgroup CRIU freezes to seize the tree. If it is
	// frozen before the dump, CRIU leaves it frozen afterwards.
	FreezeCgroup string
	// ExternalMounts are the node's external mounts, each recorded under
	// its Key (HostPath is not used).
	ExternalMounts []ExternalMount
	// SkipMounts are mount points CRIU leaves out of the images: the
	// restored node has an empty directory there (crtree's own tree
	// mounts, which a restore does not bring back).
	SkipMounts []string
	// TCPEstablished lets CRIU dump established TCP connections.
	TCPEstablished bool
	// OwnNetwork says that the tree has a network namespace of its own,
	// which CRIU locks while it works.
	OwnNetwork bool
	// ExternalNetns, if not 0, is the inode of the tree's network
	// namespace, which CRIU then leaves out of the images as external
	// (NetnsKey): the restore provides one (RestoreOptions.Netns).
	ExternalNetns uint64
	// LogLevel is CRIU's log level, "0" to "4"; "" is DefaultLogLevel.
	LogLevel string
	// GhostLimit is the largest deleted file still open (a ghost file)
	// that CRIU carries in the images, in bytes; 0 leaves CRIU's default
	// (1 MiB). Both encodings cap it at 4 GiB - 1 (the RPC's field).
	GhostLimit int64
	// KeepLogs is where the log of a failed run is copied, to outlive
	// WorkDir.
	KeepLogs string
	// OnStart, if set, is told the PID of the CRIU process once it runs.
	OnStart func(pid int)
	// Stream makes CRIU write its images to a CaptureServer listening in
	// ImagesDir instead of to files.
	Stream bool
	// BeforeKill, if set, makes CRIU end the processes itself, as a plain
	// `criu dump` does, instead of leaving them running: their established
	// TCP connections stay locked (CRIU's nftables table) and in repair
	// mode, so that the peers get neither FIN nor RST; a restore unlocks
	// them. CRIU calls BeforeKill once every image is written (its
	// post-dump action) and waits for it: nil lets CRIU kill the
	// processes; an error makes CRIU undo the dump as after a failure
	// (connections unlocked and out of repair mode, processes resumed, a
	// frozen cgroup left frozen) and Dump return that error. Dump returns
	// only after BeforeKill has.
	BeforeKill func() error
	// LazyPages, if set (with BeforeKill), is a connected socket on which
	// CRIU serves the memory of the processes, left out of the images, to
	// the lazy-pages daemon of a restore (RestoreOptions.LazyPages) once
	// BeforeKill has returned nil, the processes still frozen: Dump then
	// returns once the daemon has every page and CRIU has killed the
	// processes, or with an error once the transfer failed, the processes
	// resumed (as after any failed dump). CRIU takes the end of the
	// connection without PS_IOV_FORCE_CLOSE for success: the caller must
	// make it fail (an unknown command) when the other end goes away.
	// Dump closes LazyPages once CRIU has it: the other end then ends
	// when CRIU does.
	LazyPages *os.File
}

// PostDump is the name of CRIU's action (script or RPC notification) run
// once a dump has written every image, before the processes are killed or
// resumed.
const PostDump = "post-dump"

// RestoreOptions are what crtree asks of one CRIU restore.
type RestoreOptions struct {
	ImagesDir, WorkDir string
	// Root is the host directory that becomes the restored tree's /.
	Root string
	// ExternalMounts provide the host path of each external mount of the
	// images, by Key (Mountpoint is not used).
	ExternalMounts []ExternalMount
	// CgroupFD, if >= 0, is the cgroup the restored processes are born in.
	CgroupFD       int
	TCPEstablished bool
	// OwnNetwork says that the tree has a network namespace of its own.
	OwnNetwork bool
	// Netns, if set, is the network namespace the processes of a tree
	// dumped with ExternalNetns are restored into.
	Netns *os.File
	// LogLevel is CRIU's log level, "0" to "4"; "" is DefaultLogLevel.
	LogLevel string
	// KeepLogs is where the log of a failed run is copied.
	KeepLogs string
	// Stream makes CRIU read its images from an ImageServer listening in
	// ImagesDir instead of from files.
	Stream bool
	// BeforeResume, if set, is called once the processes are restored
	// and held, before they run, with the PID of the CRIU that holds
	// them (it and its children are not the restored processes). An
	// error refuses them: they are killed with CRIU (the cgroup of
	// CgroupFD is killed, see resumeGate) and the restore fails with that
	// error. (It is an action script of the criu command, as Stream.)
	BeforeResume func(criuPid int) error
	// LazyPages, if set, is a connected socket to the page server of a
	// dump with DumpOptions.LazyPages: the processes are restored without
	// their memory, which a lazy-pages daemon (RestoreLazy's LazyPages)
	// fetches through it while they run. Not with Stream: the daemon
	// reads the images from ImagesDir.
	LazyPages *os.File
	// LazyKeeper, with LazyPages, is the holder's end of a KeeperPair
	// whose other end a keeper process (Keep) serves: the restore hands
	// it every copy of the userfaultfds it holds, so that the processes
	// are killed rather than read zeros if the restoring process dies
	// before their memory has arrived. RestoreLazy takes it over, and
	// releases it if it fails before any process was restored.
	LazyKeeper *os.File
}

// Error is a failed CRIU operation, with the lines of CRIU's log that say
// why and where the whole log was kept.
type Error struct {
	Op     string
	Err    error
	Log    string
	Quoted []string
	// Hint, if set, ends the summary line: what the user can do about it.
	Hint string
}

// Error is the summary line, the quoted log lines and where the log is.
func (e *Error) Error() string {
	msg := fmt.Sprintf("criu %s: %s", e.Op, e.summary())
	if e.Hint != "" {
		msg += " (" + e.Hint + ")"
	}
	if len(e.Quoted) > 0 {
		msg += "\n  " + strings.Join(e.Quoted, "\n  ")
	}
	if e.Log != "" {
		msg += "\n  (full log: " + e.Log + ")"
	}
	return msg
}

// Unwrap returns CRIU's own error.
func (e *Error) Unwrap() error { return e.Err }

// GhostTooLarge says whether CRIU refused a deleted file still open for
// being larger than its ghost limit.
func (e *Error) GhostTooLarge() bool { return e.Says("Can't dump ghost file") }

// Says reports whether CRIU's cause of failure (the summary line) says
// what: for the caller's hints.
func (e *Error) Says(what string) bool { return strings.Contains(e.summary(), what) }

// summary is the most telling line: the first error CRIU logged (the
// cause; later ones are its consequences), without its time stamp and
// source location.
func (e *Error) summary() string {
	for i := 0; i < len(e.Quoted); i++ {
		line := e.Quoted[i]
		_, msg, ok := strings.Cut(line, "): ")
		if !ok || !strings.Contains(line, "Error (") || strings.Contains(msg, "FAILED") {
			continue
		}
		return msg
	}
	msg := e.Err.Error()
	for _, h := range harmless {
		if strings.Contains(msg, h) {
			return "failed"
		}
	}
	return msg
}

// harmless are CRIU errors printed on every run on some hosts: the
// rlimit, and, restoring a network namespace on a host without the
// iptables commands, CRIU's probe of them (it needs them only for
// iptables images, and says so).
var harmless = []string{"Can't setup RLIMIT_NOFILE",
	`tables-restore", ...) failed: No such file or directory`,
	`tables-legacy-restore", ...) failed: No such file or directory`,
	"tables-restore -V failed", "tables-legacy-restore -V failed"}

// logErrors returns the Error lines of a CRIU log (and the line before
// each), without the ones known to be harmless.
func logErrors(file string) []string {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	prev := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "Error (") {
			skip := false
			for _, h := range harmless {
				skip = skip || strings.Contains(line, h)
			}
			if !skip {
				if prev != "" && !strings.Contains(prev, "Error (") {
					out = append(out, prev)
				}
				out = append(out, line)
			}
		}
		prev = line
	}
	if len(out) > 12 {
		out = out[len(out)-12:]
	}
	return out
}

func openDirs(images, work string) (*os.File, *os.File, error) {
	img, err := os.Open(images)
	if err != nil {
		return nil, nil, err
	}
	wd, err := os.Open(work)
	if err != nil {
		img.Close()
		return nil, nil, err
	}
	return img, wd, nil
}

// CRIU's swrk mode opens the directory descriptors of a request through
// /proc/<client>/fd/N: they are numbers in this process, not passed ones.

// commonOpts are the options every crtree dump and restore passes CRIU:
// images and work directories, debug log, file locks, cgroups left alone
// (crtree places processes itself), and, where CRIU locks the network (TCP
// connections, a network namespace of the tree's own), the lock through
// nftables (CRIU links libnftables), not the iptables command, which many
// hosts no longer have. The criu command's flags say the same (cliCommon).
func commonOpts(img, wd *os.File, log, level string, tcp, ownNet bool) *rpc.CriuOpts {
	opts := &rpc.CriuOpts{
		ImagesDirFd:       proto.Int32(int32(img.Fd())),
		WorkDirFd:         proto.Int32(int32(wd.Fd())),
		LogFile:           proto.String(log),
		LogLevel:          proto.Int32(logLevel(level)),
		FileLocks:         proto.Bool(true),
		TcpEstablished:    proto.Bool(tcp),
		ManageCgroups:     proto.Bool(false),
		ManageCgroupsMode: rpc.CriuCgMode_IGNORE.Enum(),
	}
	if tcp || ownNet {
		opts.NetworkLock = rpc.CriuNetworkLockMethod_NFTABLES.Enum()
	}
	return opts
}

// dumpOpts are the RPC options of a dump (dumpArgs says the same as
// flags).
func dumpOpts(o DumpOptions, img, wd *os.File) *rpc.CriuOpts {
	opts := commonOpts(img, wd, "dump.log", o.LogLevel, o.TCPEstablished, o.OwnNetwork)
	opts.Pid = proto.Int32(int32(o.Pid))
	opts.LeaveRunning = proto.Bool(o.BeforeKill == nil)
	if o.FreezeCgroup != "" {
		opts.FreezeCgroup = proto.String(o.FreezeCgroup)
	}
	if o.GhostLimit > 0 {
		opts.GhostLimit = proto.Uint32(ghostLimit(o.GhostLimit))
	}
	for _, m := range o.ExternalMounts {
		opts.ExtMnt = append(opts.ExtMnt, &rpc.ExtMountMap{Key: proto.String(m.Mountpoint), Val: proto.String(m.Key)})
	}
	opts.SkipMnt = o.SkipMounts
	if o.ExternalNetns != 0 {
		opts.External = append(opts.External, externalNetns(o.ExternalNetns))
	}
	return opts
}

// NetnsKey is the name under which CRIU records a network namespace it
// leaves out of the images (DumpOptions.ExternalNetns).
const NetnsKey = "crtree-netns"

// externalNetns is the --external value that leaves the network
// namespace of inode ino out of the images.
func externalNetns(ino uint64) string { return fmt.Sprintf("net[%d]:%s", ino, NetnsKey) }

// ghostLimit is a ghost limit as both encodings pass it: at most what the
// RPC's 32-bit field holds.
func ghostLimit(n int64) uint32 {
	return uint32(min(n, math.MaxUint32))
}

// Dump checkpoints the process tree at o.Pid, leaving it running (or
// frozen, if its cgroup was frozen before): crtree decides later whether
// to kill it, once the archive is safe. With o.BeforeKill, CRIU asks
// instead, and kills it itself.
func Dump(bin string, o DumpOptions) error {
	if o.Stream || o.LazyPages != nil {
		return dumpCLI(bin, o)
	}
	img, wd, err := openDirs(o.ImagesDir, o.WorkDir)
	if err != nil {
		return fmt.Errorf("criu dump: %w", err)
	}
	defer img.Close()
	defer wd.Close()
	opts := dumpOpts(o, img, wd)
	so := swrkOptions{CgroupFD: -1, OnStart: o.OnStart}
	var held error
	if o.BeforeKill != nil {
		opts.NotifyScripts = proto.Bool(true)
		so.Notify = func(action string) error {
			if action != PostDump {
				return nil
			}
			held = o.BeforeKill()
			return held
		}
	}
	err = run(bin, "dump", rpc.CriuReqType_DUMP, opts, so, o.WorkDir, o.KeepLogs, nil)
	if held != nil {
		return fmt.Errorf("criu dump: undone: %w", held)
	}
	return err
}

// Restore restores a process tree from o.ImagesDir as a sibling of CRIU,
// that is a child of the calling process, and returns its root's host PID.
// It runs the criu command (restoreCLI), not CRIU's RPC: CRIU's RPC
// refuses --stream, and every crtree restore holds its processes at
// pre-resume (BeforeResume) through an action script, so one way of
// driving a restore is enough.
func Restore(bin string, o RestoreOptions) (int, error) {
	if o.LazyPages != nil {
		return 0, errors.New("criu restore: lazy pages need RestoreLazy")
	}
	pid, _, err := restoreCLI(bin, o)
	return pid, err
}

// RestoreLazy is Restore with o.LazyPages: it also returns the
// lazy-pages daemon, which goes on filling the processes' memory; the
// caller waits for it (LazyPages.Wait) and releases it.
func RestoreLazy(bin string, o RestoreOptions) (int, *LazyPages, error) {
	if o.LazyPages == nil || o.Stream {
		return 0, nil, errors.New("criu restore: lazy pages need a page server's socket, and images in files")
	}
	return restoreCLI(bin, o)
}

func run(bin, op string, typ rpc.CriuReqType, opts *rpc.CriuOpts, so swrkOptions, workDir, keepLogs string, onResp func(*rpc.CriuResp)) error {
	s, err := startSwrk(bin, so)
	if err != nil {
		return fmt.Errorf("criu %s: %w", op, err)
	}
	resp, err := s.call(&rpc.CriuReq{Type: &typ, Opts: opts})
	cerr := s.close()
	if err == nil && onResp != nil {
		onResp(resp)
	}
	if err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		log := filepath.Join(workDir, op+".log")
		e := &Error{Op: op, Err: err, Log: log, Quoted: logErrors(log)}
		e.Log = keepLog(log, keepLogs, op)
		return e
	}
	return nil
}

// keepLog copies a failed run's log into dir and returns where it is now
// ("" if there was no log to keep).
func keepLog(log, dir, op string) string {
	data, err := os.ReadFile(log)
	if err != nil {
		return ""
	}
	if dir == "" {
		return log
	}
	os.MkdirAll(dir, 0o700)
	dst := filepath.Join(dir, fmt.Sprintf("%s-%s-%d.log", op, time.Now().UTC().Format("20060102T150405.000"), os.Getpid()))
	if os.WriteFile(dst, data, 0o600) != nil {
		return log
	}
	return dst
}

// DefaultLogLevel is CRIU's log level unless an option says otherwise:
// debug, so that a failure's log explains itself.
const DefaultLogLevel = 4

// ParseLogLevel checks a log level of the options: "" or "0" to "4".
func ParseLogLevel(s string) (int, error) {
	if s == "" {
		return DefaultLogLevel, nil
	}
	if len(s) != 1 || s[0] < '0' || s[0] > '4' {
		return 0, fmt.Errorf("CRIU log level %q: want 0 to 4", s)
	}
	return int(s[0] - '0'), nil
}

// logLevel is ParseLogLevel for a level that was checked already.
func logLevel(s string) int32 {
	v, err := ParseLogLevel(s)
	if err != nil {
		return DefaultLogLevel
	}
	return int32(v)
}
