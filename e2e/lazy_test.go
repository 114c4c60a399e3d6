package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/node"
	"github.com/crtree/crtree/internal/testutil"
)

// pipeMaxSize is the sysctl that CRIU's page server for a post-copy dump
// needs above 3.2 MiB where crtree lacks CAP_SYS_RESOURCE.
const pipeMaxSize = "/proc/sys/fs/pipe-max-size"

// setPipeMax sets fs.pipe-max-size for the test and puts the value it
// had back at its end.
func setPipeMax(t *testing.T, v int) {
	t.Helper()
	old, err := os.ReadFile(pipeMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pipeMaxSize, []byte(strconv.Itoa(v)), 0o644); err != nil {
		t.Fatalf("set fs.pipe-max-size: %v", err)
	}
	t.Cleanup(func() { os.WriteFile(pipeMaxSize, old, 0o644) })
}

// lazyTree starts /m (a sleep) with /m/hog holding mib MiB of random
// memory and /m/c, a counter.
func lazyTree(h *host, mib int) {
	h.must("run", "/m", "--", "sleep", "1e5")
	h.startHog("/m/hog", mib)
	h.must("run", "/m/c", "--", "sh", "-c", "i=0; while :; do i=$((i+1)); echo n=$i; sleep 0.05; done")
}

// checkLazyTree checks /m's workload on h (at prefix): the hog's memory
// intact, the counter going on from where it was, neither restarted nor
// skipping.
func checkLazyTree(t *testing.T, h *host, prefix string) {
	t.Helper()
	h.must("kill", "-s", "USR1", prefix+"/m/hog")
	if !poll(15*time.Second, 100*time.Millisecond, func() bool {
		return strings.Contains(h.must("logs", prefix+"/m/hog"), "check=ok")
	}) {
		t.Fatalf("the hog's memory: %s", h.must("logs", prefix+"/m/hog"))
	}
	before := len(strings.Fields(h.must("logs", prefix+"/m/c")))
	if !poll(15*time.Second, 100*time.Millisecond, func() bool {
		lines := strings.Fields(h.must("logs", prefix+"/m/c"))
		for i, l := range lines {
			if l != fmt.Sprintf("n=%d", i+1) {
				t.Fatalf("the counter restarted or skipped at line %d: %q", i+1, l)
			}
		}
		return len(lines) > before+10
	}) {
		t.Fatal("the counter does not go on")
	}
}

// startWatched starts crtree with args on h, its stderr going to a file
// that stderr reads while it runs.
func startWatched(t *testing.T, h *host, args ...string) (cmd *exec.Cmd, stderr func() string) {
	t.Helper()
	cmd = h.cmd(args...)
	errFile := filepath.Join(t.TempDir(), "stderr")
	f, err := os.Create(errFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, func() string { data, _ := os.ReadFile(errFile); return string(data) }
}

// relaySockets are the sockets of the page relays of h's migrations (in
// its staging directories, on tmpfs or under the state root; not those
// of another state root's migrations).
func relaySockets(h *host) []string {
	prefix := filepath.Base(cgroup.BaseFor("/", h.root)) + "-pages-*"
	m, _ := filepath.Glob(filepath.Join("/dev/shm", prefix, "pages.sock"))
	n, _ := filepath.Glob(filepath.Join(h.root, "tmp", prefix, "pages.sock"))
	return append(m, n...)
}

// crtree migrate --lazy between two state roots: refused, saying why and
// doing nothing, where CRIU's page server could not work; refused by the
// far side before the switch (the source resumes, its memory intact);
// then post-copy: the subtree runs there, its memory checked and its
// counter going on, nothing left here, no relay left behind.
func TestMigrateLazy(t *testing.T) {
	a, b := newHost(t), newHost(t)
	lazyTree(a, 256)
	b.must("run", "/pool", "--", "sleep", "1e5")
	relays := len(relaySockets(a))

	if !node.HasCapSysResource() {
		setPipeMax(t, 1<<20)
		_, err := a.run("migrate", "--lazy", "--keep-binds", "/m", "local:"+b.root+"/pool")
		if err == nil || !strings.Contains(err.Error(), "fs.pipe-max-size") || !strings.Contains(err.Error(), "nothing was done") {
			t.Fatalf("--lazy with small pipes: %v", err)
		}
		if e := a.ls()["/m/hog"]; e.State != "running" {
			t.Fatalf("the source after the refusal: %+v", e)
		}
		// A node that is not there is said first (the pipes were).
		if _, err := a.run("migrate", "--lazy", "/nope", "local:"+b.root); err == nil || !strings.Contains(err.Error(), "/nope: no such node") || strings.Contains(err.Error(), "pipe") {
			t.Fatalf("--lazy of no node: %v", err)
		}
	}
	setPipeMax(t, 4<<20)

	// Binds without --keep-binds: refused before the freeze (the far
	// side refused them after it).
	if _, err := a.run("migrate", "--lazy", "/m", "local:"+b.root); err == nil || !strings.Contains(err.Error(), "/m/hog binds host path") || !strings.Contains(err.Error(), "nothing was done") {
		t.Fatalf("binds without --keep-binds: %v", err)
	}
	if f := a.frozen(); len(f) > 0 {
		t.Fatalf("frozen after the refusal: %v", f)
	}

	// What post-copy cannot undo after a failed transfer is refused,
	// saying why, before anything is frozen.
	if _, err := a.run("migrate", "--lazy", "--tcp-established", "--keep-binds", "/m", "local:"+b.root+"/pool"); err == nil || !strings.Contains(err.Error(), "post-copy is not for --leave-running or --tcp-established") || !strings.Contains(err.Error(), "the subtree goes on here") {
		t.Fatalf("--lazy --tcp-established: %v", err)
	}
	a.must("run", "--net", "none", "/m/own", "--", "sleep", "1e5")
	if _, err := a.run("migrate", "--lazy", "--keep-binds", "/m", "local:"+b.root+"/pool"); err == nil || !strings.Contains(err.Error(), "/m/own has a network of its own (--net none)") {
		t.Fatalf("--lazy with a --net none node: %v", err)
	}
	a.must("rm", "-r", "-f", "/m/own")
	if f := a.frozen(); len(f) > 0 {
		t.Fatalf("still frozen after the refusals: %v", f)
	}

	// The far side refuses (the name is taken): CRIU had the subtree
	// frozen, serving pages; it resumes it.
	b.must("run", "/pool/m", "--", "sleep", "1e5")
	_, err := a.run("migrate", "--lazy", "--keep-binds", "/m", "local:"+b.root+"/pool")
	if err == nil || !strings.Contains(err.Error(), "node already exists") || !strings.Contains(err.Error(), "the subtree goes on here") {
		t.Fatalf("--lazy onto a taken name: %v", err)
	}
	if f := a.frozen(); len(f) > 0 {
		t.Fatalf("still frozen after the refusal: %v", f)
	}
	checkLazyTree(t, a, "")
	b.must("rm", "-r", "-f", "/pool/m")

	out := a.must("migrate", "--lazy", "--json", "--keep-binds", "/m", "local:"+b.root+"/pool")
	var rep struct {
		Lazy        bool    `json:"lazy"`
		Downtime    float64 `json:"downtime"`
		Transferred float64 `json:"transferred"`
		MemoryBytes int64   `json:"memoryBytes"`
		Destination string  `json:"destination"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("post-copy, 256 MiB: downtime %.2fs, transferred %.2fs, %d MiB after", rep.Downtime, rep.Transferred, rep.MemoryBytes>>20)
	if !rep.Lazy || rep.Destination != "/pool/m" || rep.MemoryBytes < 250<<20 || rep.Downtime <= 0 || rep.Transferred < rep.Downtime {
		t.Fatalf("report: %s", out)
	}
	if len(a.ls()) != 0 {
		t.Fatalf("left here: %v", a.ls())
	}
	checkLazyTree(t, b, "/pool")
	if n := len(relaySockets(a)); n != relays {
		t.Fatalf("page relays left: %v", relaySockets(a))
	}
}

// Post-copy over real ssh: the memory goes over the ssh connection (a
// forwarded Unix socket); then the connection is killed while the memory
// is arriving: the far side kills and removes its copy, the subtree
// resumes here from the freeze, unharmed, and the error says what was
// lost.
func TestMigrateLazySSH(t *testing.T) {
	a, b := newHost(t), newHost(t)
	setPipeMax(t, 4<<20)
	target, ssh := sshHost(t, b.root)
	socketsBefore, _ := filepath.Glob("/tmp/crtree-pages-*.sock")
	lazyTree(a, 256)
	out := a.must("migrate", "--lazy", "--keep-binds", "--ssh", ssh, "/m", target)
	if !strings.HasPrefix(out, "migrated /m to "+target) || !strings.Contains(out, ": /m (downtime ") || !strings.Contains(out, "memory 2") {
		t.Fatalf("migrate said %q", out)
	}
	checkLazyTree(t, b, "")
	if m, _ := filepath.Glob("/tmp/crtree-pages-*.sock"); len(m) > len(socketsBefore) {
		t.Fatalf("forwarded sockets left: %v", m)
	}
	b.must("rm", "-r", "-f", "/m")

	// The connection breaks after the switch, with memory still to come.
	lazyTree(a, 1024)
	cmd, stderr := startWatched(t, a, "migrate", "--lazy", "--keep-binds", "--ssh", ssh, "/m", target)
	var sshPid int
	poll(10*time.Second, 5*time.Millisecond, func() bool { sshPid = restoreChild(cmd.Process.Pid); return sshPid > 0 })
	// The switch, as the migrating side reports it: its progress lines
	// start once the far side runs the subtree.
	switched := poll(30*time.Second, 20*time.Millisecond, func() bool { return strings.Contains(stderr(), "memory: ") })
	if switched {
		whileArriving(t, b)
	}
	if !switched || sshPid == 0 || unix.Kill(sshPid, unix.SIGKILL) != nil {
		cmd.Wait()
		t.Fatalf("no switch to break (%v, ssh %d): %s", switched, sshPid, stderr())
	}
	err := cmd.Wait()
	t.Logf("killed after the switch: %s", strings.TrimSpace(stderr()))
	checkGivenUp(t, a, b, err, stderr(), "the memory transfer broke after the subtree had started there")
	if !poll(10*time.Second, 100*time.Millisecond, func() bool {
		m, _ := filepath.Glob("/tmp/crtree-pages-*.sock")
		return len(m) <= len(socketsBefore)
	}) {
		t.Fatal("forwarded sockets left")
	}
}

// A connection to a migration's page relay that is not the far side's
// (a garbage one, another for a node that has one) is closed and changes
// nothing: the migration completes (one such connection ended it before).
func TestMigrateLazyStrayConnection(t *testing.T) {
	a, b := newHost(t), newHost(t)
	setPipeMax(t, 4<<20)
	a.startHog("/m", 512)
	cmd, stderr := startWatched(t, a, "migrate", "--lazy", "--keep-binds", "/m", "local:"+b.root)
	var socks []string
	if !poll(30*time.Second, 20*time.Millisecond, func() bool {
		socks = relaySockets(a)
		return strings.Contains(stderr(), "memory: ") && len(socks) > 0
	}) {
		cmd.Wait()
		t.Fatalf("no memory transfer to meddle with: %s", stderr())
	}
	for _, s := range socks {
		for _, hello := range []string{"crtree-pages 0\n", "garbage\n", "crtree-pages 7\n"} {
			c, err := net.Dial("unix", s)
			if err != nil {
				t.Fatalf("connect to the relay: %v", err)
			}
			c.Write([]byte(hello))
			c.Close()
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the migration failed for a stray connection: %v: %s", err, stderr())
	}
	b.must("kill", "-s", "USR1", "/m")
	if !poll(15*time.Second, 100*time.Millisecond, func() bool { return strings.Contains(b.must("logs", "/m"), "check=ok") }) {
		t.Fatalf("the memory after the move: %s", b.must("logs", "/m"))
	}
}

// A post-copy migration resumes the subtree at one instant, as it froze
// it: a parent whose restore is done waits for its children's (it ran
// alone while they were restored, its memory transfer slowing them down:
// the child resumed 0.40-0.44 s after it, the grandchild 0.9 s). Each
// node ticks every 10 ms; after the move, the first tick of each after
// the freeze must come at about the same time (within 0.3 s: a node's
// first tick after it resumed waits for the pages its runtime touches;
// 5-120 ms were seen).
func TestMigrateLazyOneInstant(t *testing.T) {
	a, b := newHost(t), newHost(t)
	setPipeMax(t, 4<<20)
	a.startHog("/t", 32, "-tick", "10ms")
	a.startHog("/t/u", 32, "-tick", "10ms")
	a.startHog("/t/u/v", 32, "-tick", "10ms")
	a.must("migrate", "--lazy", "--keep-binds", "/t", "local:"+b.root)
	time.Sleep(300 * time.Millisecond)
	resumed := map[string]int64{}
	for _, p := range []string{"/t", "/t/u", "/t/u/v"} {
		gap, at := testutil.LargestTickGap(b.must("logs", p))
		t.Logf("%s stood still %v, resumed at %d", p, gap, at)
		if gap < 50*time.Millisecond {
			t.Fatalf("%s never stood still: %s", p, b.must("logs", p))
		}
		resumed[p] = at
	}
	for _, p := range []string{"/t/u", "/t/u/v"} {
		if d := time.Duration(resumed[p] - resumed["/t"]).Abs(); d > 300*time.Millisecond {
			t.Fatalf("%s resumed %v apart from /t: the subtree did not resume at one instant", p, d)
		}
	}
}

// Ctrl-C while the memory of a post-copy migration is on its way stops
// it, as a broken connection does: the far copy is killed and removed,
// the subtree resumes here from the freeze, and the error says what was
// lost (the first Ctrl-C used to wait for the whole transfer).
func TestMigrateLazyInterrupted(t *testing.T) {
	a, b := newHost(t), newHost(t)
	setPipeMax(t, 4<<20)
	lazyTree(a, 1024)
	cmd, stderr := startWatched(t, a, "migrate", "--lazy", "--keep-binds", "/m", "local:"+b.root)
	switched := poll(60*time.Second, 20*time.Millisecond, func() bool { return strings.Contains(stderr(), "memory: ") })
	if !switched {
		cmd.Process.Signal(unix.SIGINT)
		cmd.Wait()
		t.Fatalf("no switch to interrupt: %s", stderr())
	}
	if cmd.Process.Signal(unix.SIGINT) != nil {
		t.Fatal("migrate ended before it was interrupted")
	}
	start := time.Now()
	err := cmd.Wait()
	t.Logf("interrupted after the switch, ended in %v: %s", time.Since(start), strings.TrimSpace(stderr()))
	checkGivenUp(t, a, b, err, stderr(), "interrupted by SIGINT")
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Fatalf("exit status %d, want 130 (SIGINT), as before the switch", code)
	}
}

// whileArriving checks the far side b of a post-copy migration of
// lazyTree's /m while its memory arrives: the subtree is held (a dump of
// it saw memory that had not come, and wrote a damaged archive; a node
// made in it was removed with it when the transfer failed), and the
// counter, whose own memory is all there, goes on (it stood still,
// its userfaultfd held, until the whole subtree's memory had come).
func whileArriving(t *testing.T, b *host) {
	t.Helper()
	for _, args := range [][]string{
		{"dump", "/m", "-o", filepath.Join(t.TempDir(), "m.crtree")},
		{"run", "/m/new", "--", "sleep", "1e5"},
	} {
		if _, err := b.run(args...); err == nil || !strings.Contains(err.Error(), "/m is being migrated") {
			t.Fatalf("crtree %s while the memory arrives: %v", strings.Join(args, " "), err)
		}
	}
	before := len(strings.Fields(b.must("logs", "/m/c")))
	time.Sleep(2 * time.Second)
	if after := len(strings.Fields(b.must("logs", "/m/c"))); after < before+5 {
		t.Fatalf("the counter stood still while the hog's memory arrived: %d lines, then %d 2 s later", before, after)
	}
}

// checkGivenUp checks a post-copy migration from a to b that failed
// after the switch (err, its stderr saying cause): the error says what
// was lost, the subtree runs here unharmed, nothing is left there.
func checkGivenUp(t *testing.T, a, b *host, err error, stderr, cause string) {
	t.Helper()
	if err == nil {
		t.Fatal("the migration completed though it was stopped while the memory was arriving")
	}
	for _, want := range []string{cause, "the far side killed its copy", "resumes here from the moment it was frozen", "is lost"} {
		if !strings.Contains(stderr, want) {
			t.Fatalf("the error does not say %q: %s", want, stderr)
		}
	}
	if f := a.frozen(); len(f) > 0 {
		t.Fatalf("still frozen: %v", f)
	}
	checkLazyTree(t, a, "")
	if !poll(20*time.Second, 200*time.Millisecond, func() bool { return len(b.ls()) == 0 }) {
		t.Fatalf("the far side kept %v", b.ls())
	}
}
