package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/node"
)

// busy is what ls says holds the node at path on h, "" for nothing.
func busy(h *host, path string) string {
	var es []struct {
		Path string `json:"path"`
		Busy string `json:"busy"`
	}
	if err := json.Unmarshal([]byte(h.must("ls", "-r", "--json")), &es); err != nil {
		h.t.Fatal(err)
	}
	for _, e := range es {
		if e.Path == path {
			return e.Busy
		}
	}
	return ""
}

// crtree restore --lazy FILE: refused from a pipe, saying why; then the
// subtree runs at once, its 1 GiB hog held (a dump or an exec refused,
// ls saying so) while its memory arrives from the file, then checked
// intact, the counter going on, the hold ended and nothing of the
// transfer left (an exited node had an empty images directory left).
// A subtree whose memory is arriving can be removed at once.
func TestRestoreLazy(t *testing.T) {
	h := newHost(t)
	lazyTree(h, 1024)
	h.must("run", "/m/ex", "--", "true")
	file := filepath.Join(t.TempDir(), "m.crtree")
	h.must("dump", "/m", "-o", file)

	if _, err := h.run("restore", "--lazy", "--keep-binds", "-"); err == nil || !strings.Contains(err.Error(), "needs an archive file, not a pipe") {
		t.Fatalf("restore --lazy from stdin: %v", err)
	}
	for _, c := range []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"--lazy-pages-from", "/nope", file}, "", "--lazy and --lazy-pages-from: the memory comes from one or the other"},
		{[]string{file}, "CRTREE_NO_STREAM=1", "which CRTREE_NO_STREAM=1 leaves aside"},
		{[]string{filepath.Join("..", "testdata", "archives", "good-running.crtree")}, "", "the archive has no page table (it was written by a crtree before format version 4); restore it without --lazy"},
	} {
		cmd := h.cmd(append([]string{"restore", "--lazy", "--keep-binds"}, c.args...)...)
		if c.env != "" {
			cmd.Env = append(cmd.Env, c.env)
		}
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), c.want) {
			t.Fatalf("restore --lazy %v (%s): %v: %s", c.args, c.env, err, out)
		}
	}
	if len(h.ls()) != 0 {
		t.Fatalf("left by the refusals: %v", h.ls())
	}

	start := time.Now()
	cmd := h.cmd("restore", "--lazy", "--keep-binds", file)
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil || !strings.Contains(string(out), "/m runs; its memory is read from "+file+" meanwhile") {
		t.Fatalf("restore --lazy: %v: %s", err, out)
	}
	t.Logf("restore --lazy of 1 GiB returned in %.2fs", took.Seconds())
	for _, args := range [][]string{{"dump", "/m/hog", "-o", filepath.Join(t.TempDir(), "x.crtree")}, {"exec", "/m/hog", "--", "true"}} {
		if _, err := h.run(args...); err == nil || !strings.Contains(err.Error(), "/m/hog is being restored: its memory is still arriving from the archive") {
			t.Fatalf("%s while the memory arrives: %v", args[0], err)
		}
	}
	if out := h.must("ls", "/m"); !regexp.MustCompile(`(?m)^/m/hog +running \(memory arriving\)`).MatchString(out) {
		t.Fatalf("ls while the memory arrives: %s", out)
	}
	// The supervisor is kept from the OOM killer meanwhile (where it may
	// lower its score: CAP_SYS_RESOURCE); the restored processes are
	// not (they inherited its score once).
	hog := h.ls()["/m/hog"]
	if adj := oomScoreAdj(t, hog.Pid); adj != "0" {
		t.Fatalf("the restored hog's oom_score_adj: %s", adj)
	}
	wantAdj := "0"
	if node.HasCapSysResource() {
		wantAdj = "-1000"
	}
	if adj := oomScoreAdj(t, hog.Supervisor); adj != wantAdj {
		t.Fatalf("its supervisor's oom_score_adj while the memory arrives: %s, want %s", adj, wantAdj)
	}
	if !poll(60*time.Second, 50*time.Millisecond, func() bool { return busy(h, "/m/hog") == "" && busy(h, "/m") == "" }) {
		t.Fatalf("still held a minute later: %q", busy(h, "/m/hog"))
	}
	t.Logf("its memory had arrived %.2fs after the restore began", time.Since(start).Seconds())
	if root := filepath.Base(cgroup.BaseFor("/", h.root)); !poll(10*time.Second, 50*time.Millisecond, func() bool { return len(keepers(root)) == 0 }) {
		t.Fatalf("keepers left once the memory arrived: %v", keepers(root))
	}
	if adj := oomScoreAdj(t, hog.Supervisor); adj != "0" {
		t.Fatalf("its supervisor's oom_score_adj once the memory arrived: %s", adj)
	}
	checkLazyTree(t, h, "")
	for p, e := range h.ls() {
		if _, err := os.Stat(filepath.Join(h.root, "nodes", e.ID, "memory")); !os.IsNotExist(err) {
			t.Fatalf("%s: its images are left after its memory arrived: %v", p, err)
		}
	}
	// Released: the subtree dumps again, and restores as usual.
	again := filepath.Join(t.TempDir(), "again.crtree")
	h.must("dump", "/m", "-o", again)
	h.must("restore", "--keep-binds", again)
	checkLazyTree(t, h, "")

	// Signalled and removed while its memory arrives: at once, its
	// supervisors gone.
	h.must("restore", "--lazy", "--keep-binds", "--name", "m2", file)
	if b := busy(h, "/m2/hog"); b == "" {
		t.Fatal("/m2/hog's memory had all arrived before the test could remove it")
	}
	h.must("kill", "-s", "STOP", "/m2/c")
	var sups []int
	for p, e := range h.ls() {
		if strings.HasPrefix(p, "/m2") && e.Supervisor != 0 {
			sups = append(sups, e.Supervisor)
		}
	}
	h.must("rm", "-r", "-f", "/m2")
	if _, ok := h.ls()["/m2"]; ok {
		t.Fatal("/m2 is still there")
	}
	for _, pid := range sups {
		if !poll(20*time.Second, 50*time.Millisecond, func() bool { return syscall.Kill(pid, 0) != nil }) {
			t.Fatalf("supervisor %d of a removed node still runs", pid)
		}
	}
}

// A damaged piece of memory in the archive, one the restore itself does
// not read: the node runs, and is killed when the piece is first read,
// before any process of it gets a page of it; its supervisor says why.
func TestRestoreLazyDamaged(t *testing.T) {
	h := newHost(t)
	h.startHog("/hog", 256)
	file := filepath.Join(t.TempDir(), "hog.crtree")
	h.must("dump", "/hog", "-o", file)
	damageMiddlePiece(t, file)

	h.must("restore", "--lazy", "--keep-binds", file)
	id := h.ls()["/hog"].ID
	if !poll(30*time.Second, 50*time.Millisecond, func() bool { return h.ls()["/hog"].State != "running" }) {
		t.Fatal("the node runs on though a piece of its memory is damaged")
	}
	log, _ := os.ReadFile(filepath.Join(h.root, "nodes", id, "supervisor.log"))
	if !strings.Contains(string(log), "does not match its checksum") {
		t.Fatalf("the supervisor's log does not say why the node was killed: %s", log)
	}
	if e := h.ls()["/hog"]; e.State != "exited" {
		t.Fatalf("the node after its memory failed: %+v", e)
	}
	if b := busy(h, "/hog"); b != "" {
		t.Fatalf("still held after it was killed: %q", b)
	}
}

// damageMiddlePiece flips a byte of the middle piece of the largest page
// image in the archive file: memory of the hog's heap, which CRIU leaves
// to its lazy-pages daemon.
func damageMiddlePiece(t *testing.T, file string) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	x, err := archive.ReadIndex(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	sums, err := archive.ReadTrailer(f, fi.Size(), x)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := sums.PageParts(0)
	if err != nil {
		t.Fatal(err)
	}
	var largest []archive.PieceRef
	for _, refs := range parts {
		if len(refs) > len(largest) {
			largest = refs
		}
	}
	if len(largest) < 8 {
		t.Fatalf("the hog's page image has %d pieces", len(largest))
	}
	at := largest[len(largest)/2].Offset + 4096
	b := make([]byte, 1)
	f.ReadAt(b, at)
	b[0] ^= 1
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// oomScoreAdj is process pid's oom_score_adj.
func oomScoreAdj(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// The supervisor of a node whose memory is arriving is killed: the
// node's processes are killed with it (by the keeper of its
// userfaultfds), instead of running on with zeros where their memory had
// not come; the keeper ends too.
func TestRestoreLazySupervisorKilled(t *testing.T) {
	h := newHost(t)
	h.startHog("/hog", 1024)
	file := filepath.Join(t.TempDir(), "hog.crtree")
	h.must("dump", "/hog", "-o", file)
	h.must("restore", "--lazy", "--keep-binds", file)
	e := h.ls()["/hog"]
	if busy(h, "/hog") == "" {
		t.Fatal("/hog's memory had all arrived before the test could kill its supervisor")
	}
	root := filepath.Base(cgroup.BaseFor("/", h.root))
	if len(keepers(root)) != 1 {
		t.Fatalf("keepers before the supervisor is killed: %v", keepers(root))
	}
	if err := syscall.Kill(e.Supervisor, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Made to read all its memory: with zeros where it had not come, it
	// says check=BAD or crashes (its Go runtime's own memory is lazy too).
	h.run("kill", "-s", "USR1", "/hog")
	if !poll(20*time.Second, 50*time.Millisecond, func() bool { return gone(e.Pid) }) {
		logs, _ := h.run("logs", "/hog")
		t.Fatalf("the hog runs on after its supervisor was killed while its memory arrived: %s", logs)
	}
	logs, _ := h.run("logs", "/hog")
	if strings.Contains(logs, "check=") || strings.Contains(logs, "SIG") || strings.Contains(logs, "fatal") {
		t.Fatalf("the hog ran on zeros after its supervisor was killed: %s", logs)
	}
	if !poll(10*time.Second, 50*time.Millisecond, func() bool { return len(keepers(root)) == 0 }) {
		t.Fatalf("keepers left: %v", keepers(root))
	}
	log, _ := os.ReadFile(filepath.Join(h.root, "nodes", e.ID, "supervisor.log"))
	if !strings.Contains(string(log), "the holder of the userfaultfds went away: the processes they guard were killed") {
		t.Fatalf("the keeper did not say it killed the node: %s", log)
	}
}

// gone reports whether process pid has ended (or is a zombie).
func gone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(data), ") ")
	return strings.HasPrefix(rest, "Z")
}

// keepers are the PIDs of the keepers of userfaultfds of the state root
// whose cgroup base is named root.
func keepers(root string) []string {
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		data, _ := os.ReadFile(d)
		if args := string(data); strings.Contains(args, "__keep-uffds") && strings.Contains(args, root) {
			out = append(out, filepath.Base(filepath.Dir(d)))
		}
	}
	return out
}
