// Package cgroup drives the cgroup2 groups that crtree gives every node:
// finding the cgroup2 mount, creating the nested groups of a subtree, and
// freezing, thawing, killing and listing them as one.
//
// A node's group nests like the tree: the group of /a/b is inside the group
// of /a, so that freezing or killing /a reaches every process below it.
// A node's own processes live in the leaf "procs" inside its group, which
// keeps them apart from the groups of its children.
package cgroup

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// ErrNoCgroup2 is returned when no cgroup2 file system is mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 file system mounted (crtree needs cgroup2 to freeze and kill nodes)")

// ProcsLeaf is the name of the group, inside a node's group, that holds
// the node's own processes.
const ProcsLeaf = "procs"

// Mountpoint returns where cgroup2 is mounted: /sys/fs/cgroup on a
// pure cgroup2 system, /sys/fs/cgroup/unified on a hybrid one.
func Mountpoint() (string, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup2"))
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	best := ""
	for _, m := range mounts {
		if m.Root != "/" {
			continue
		}
		if best == "" || len(m.Mountpoint) < len(best) {
			best = m.Mountpoint
		}
	}
	if best == "" {
		return "", ErrNoCgroup2
	}
	return best, nil
}

// BaseFor returns the group under which a state root keeps its nodes'
// groups: crtree-<hash of the state root> directly under the cgroup2
// mount, so that two state roots never share a group.
func BaseFor(mount, stateRoot string) string {
	sum := sha256.Sum256([]byte(stateRoot))
	return filepath.Join(mount, "crtree-"+hex.EncodeToString(sum[:6]))
}

// Group is one cgroup2 directory.
type Group string

// Path returns the group's directory.
func (g Group) Path() string { return string(g) }

// Leaf returns the group that holds the processes of the node whose group
// is g.
func (g Group) Leaf() Group { return Group(filepath.Join(string(g), ProcsLeaf)) }

// Create makes g, its parents and its process leaf.
func (g Group) Create() error {
	if err := os.MkdirAll(string(g.Leaf()), 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	return nil
}

// Mkdir makes g and its parents, without a process leaf.
func (g Group) Mkdir() error {
	if err := os.MkdirAll(string(g), 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	return nil
}

// Exists reports whether the group's directory exists.
func (g Group) Exists() bool {
	_, err := os.Stat(string(g))
	return err == nil
}

// Open opens the group's directory, for clone3's CLONE_INTO_CGROUP.
func (g Group) Open() (*os.File, error) {
	return os.OpenFile(string(g), unix.O_DIRECTORY|unix.O_PATH, 0)
}

func (g Group) write(file, value string) error {
	err := os.WriteFile(filepath.Join(string(g), file), []byte(value), 0)
	if err != nil {
		return fmt.Errorf("cgroup %s: write %s: %w", g, file, err)
	}
	return nil
}

// Events returns the key/value pairs of the group's cgroup.events.
func (g Group) events() (map[string]string, error) {
	data, err := os.ReadFile(filepath.Join(string(g), "cgroup.events"))
	if err != nil {
		return nil, err
	}
	ev := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			ev[k] = v
		}
	}
	return ev, nil
}

// Populated reports whether any process lives in g or below it.
func (g Group) Populated() bool {
	ev, err := g.events()
	return err == nil && ev["populated"] == "1"
}

// Freeze stops every process in g and below it, and waits until the
// kernel reports the group frozen or timeout passes.
func (g Group) Freeze(timeout time.Duration) error {
	if err := g.write("cgroup.freeze", "1"); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		ev, err := g.events()
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", g, err)
		}
		if ev["frozen"] == "1" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: not frozen after %v", g, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// Thaw lets the processes of g run again.
func (g Group) Thaw() error { return g.write("cgroup.freeze", "0") }

// Frozen reports whether g itself was asked to freeze.
func (g Group) Frozen() bool {
	data, err := os.ReadFile(filepath.Join(string(g), "cgroup.freeze"))
	return err == nil && bytes.HasPrefix(data, []byte("1"))
}

// Kill sends SIGKILL to every process in g and below it (cgroup.kill),
// which also reaches processes that double-forked or left their session.
func (g Group) Kill() error {
	if !g.Exists() {
		return nil
	}
	return g.write("cgroup.kill", "1")
}

// KillWait kills every process in g and below it (Kill) and waits until
// none is left, or timeout passes (WaitEmpty).
func (g Group) KillWait(timeout time.Duration) error {
	if err := g.Kill(); err != nil {
		return err
	}
	return g.WaitEmpty(timeout)
}

// WaitEmpty waits until no process is left in g or timeout passes.
func (g Group) WaitEmpty(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for g.Populated() {
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes still alive after %v", g, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// Procs returns the PIDs of the processes directly in g.
func (g Group) Procs() ([]int, error) {
	f, err := os.Open(filepath.Join(string(g), "cgroup.procs"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(sc.Text()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, sc.Err()
}

// MemoryCurrent returns memory.current of g, or false where the memory
// controller is not enabled for it.
func (g Group) MemoryCurrent() (int64, bool) {
	data, err := os.ReadFile(filepath.Join(string(g), "memory.current"))
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return v, err == nil
}

// Remove deletes g and every group below it. The groups must be empty of
// processes.
func (g Group) Remove() error {
	entries, err := os.ReadDir(string(g))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove cgroup: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := Group(filepath.Join(string(g), e.Name())).Remove(); err != nil {
				return err
			}
		}
	}
	if err := unix.Rmdir(string(g)); err != nil && err != unix.ENOENT {
		return fmt.Errorf("remove cgroup %s: %w", g, err)
	}
	return nil
}
