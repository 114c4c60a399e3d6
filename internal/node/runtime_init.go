package node

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/api"
	"github.com/crtree/crtree/internal/hier"
)

// InitConfig is what the supervisor hands the init stage (on fd 3): where
// the node's root is on the host and what to run in it.
type InitConfig struct {
	// RootDir is the host directory that becomes the node's /.
	RootDir string `json:"rootDir"`
	// Lower, Upper and Work, when Lower is set, make RootDir an overlay of
	// the read-only base Lower with the node's writable layer Upper.
	Lower string `json:"lower,omitempty"`
	Upper string `json:"upper,omitempty"`
	Work  string `json:"work,omitempty"`
	// OwnRoot says Lower is an image: the node gets nothing of the host's
	// files (no /usr, /etc) but its binds.
	OwnRoot bool `json:"ownRoot,omitempty"`
	// User is who the command runs as (hier.Spec.User).
	User string `json:"user,omitempty"`

	Hostname string      `json:"hostname"`
	Cmd      []string    `json:"cmd"`
	Env      []string    `json:"env"`
	Cwd      string      `json:"cwd"`
	Binds    []hier.Bind `json:"binds,omitempty"`
	OwnNet   bool        `json:"ownNet,omitempty"`
	// Netns is the network namespace the init starts in (a NetBridge
	// node's, made beforehand), "" for none of its own or a new one.
	Netns string `json:"netns,omitempty"`
	// Init runs Cmd under a minimal init (ReaperMain) instead of as PID 1.
	Init bool `json:"init,omitempty"`
	// APIDir is the host directory bound at /run/crtree: the node's
	// socket to its supervisor; the crtree binary is bound in it too.
	APIDir string `json:"apiDir"`
	// Binary is the crtree binary bound at /run/crtree/crtree.
	Binary string `json:"binary"`
}

// DefaultEnv is the environment every node starts with; --env adds to it
// and overrides it.
var DefaultEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/crtree",
	"HOME=/root",
	"TERM=xterm",
}

// MergeEnv returns base with the K=V pairs of extra added, a later value
// for a key replacing an earlier one.
func MergeEnv(base, extra []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range out {
			if ok, _, _ := strings.Cut(old, "="); ok == k {
				out[i] = kv
				replaced = true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// InitMain is the init stage: it runs as PID 1 of the node's new
// namespaces, reads its InitConfig from fd 3, builds the node's file
// system, and execs the node's command. A failure before the exec is
// written to fd 4 (closed on exec, so the supervisor reads EOF on success)
// and ends the process.
func InitMain() {
	cfgPipe := os.NewFile(3, "config")
	errPipe := os.NewFile(4, "errors")
	fail := func(err error) {
		fmt.Fprint(errPipe, err.Error())
		os.Exit(1)
	}
	var cfg InitConfig
	if err := json.NewDecoder(cfgPipe).Decode(&cfg); err != nil {
		fail(fmt.Errorf("read init config: %w", err))
	}
	cfgPipe.Close()
	if err := setupNode(&cfg); err != nil {
		fail(err)
	}
	argv0, err := lookPath(cfg.Cmd[0], cfg.Env)
	if err != nil {
		fail(err)
	}
	// Nothing the supervisor had open may reach the node: CRIU cannot dump
	// a descriptor that points outside the node's mounts.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fail(fmt.Errorf("close inherited descriptors: %w", err))
	}
	if cfg.Init {
		// The minimal init reports on fd 4 whether the command started.
		if _, err := unix.FcntlInt(4, unix.F_SETFD, 0); err != nil {
			fail(fmt.Errorf("start init: %w", err))
		}
		argv0 = api.MountPoint + "/" + api.BinaryName
		err = unix.Exec(argv0, append([]string{ReaperName}, cfg.Cmd...), cfg.Env)
		fail(fmt.Errorf("start init %s: %w", argv0, err))
	}
	err = unix.Exec(argv0, cfg.Cmd, cfg.Env)
	fail(fmt.Errorf("exec %s: %w", cfg.Cmd[0], err))
}

func setupNode(cfg *InitConfig) error {
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	if cfg.OwnNet {
		if err := loopbackUp(); err != nil {
			return err
		}
	}
	if err := buildRoot(cfg); err != nil {
		return err
	}
	if err := pivot(cfg.RootDir); err != nil {
		return err
	}
	if _, err := unix.Setsid(); err != nil {
		return fmt.Errorf("setsid: %w", err)
	}
	if err := redirectStdio(); err != nil {
		return err
	}
	cwd := cfg.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if err := os.MkdirAll(cwd, 0o755); err != nil {
		return fmt.Errorf("working directory %s: %w", cwd, err)
	}
	if err := unix.Chdir(cwd); err != nil {
		return fmt.Errorf("working directory %s: %w", cwd, err)
	}
	if cfg.User != "" {
		return switchUser(cfg.User, &cfg.Env)
	}
	return nil
}

// redirectStdio points fds 0, 1, 2 at /dev/null and the node's log, both
// inside the node.
func redirectStdio() error {
	null, err := unix.Open("/dev/null", unix.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/null: %w", err)
	}
	log, err := unix.Open(LogPath, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	for fd, src := range []int{null, log, log} {
		if err := unix.Dup3(src, fd, 0); err != nil {
			return fmt.Errorf("redirect fd %d: %w", fd, err)
		}
	}
	unix.Close(null)
	unix.Close(log)
	return nil
}

// lookPath finds cmd on the node's PATH, inside the node.
func lookPath(cmd string, env []string) (string, error) {
	if strings.Contains(cmd, "/") {
		return cmd, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, cmd)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec %s: executable file not found in the node's PATH (%s)", cmd, path)
}

// loopbackUp brings up lo in a new network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	return nil
}
