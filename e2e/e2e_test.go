// Package e2e drives the real crtree binary through scripts in testdata/
// (rogpeppe/go-internal testscript): real namespaces, real cgroups and the
// real CRIU, as root. Each script gets its own state root, and every node
// it started is killed and removed when it ends, pass or fail.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
	"github.com/crtree/crtree/internal/testutil"
)

// binDir holds the crtree binary built for this run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "crtree-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "crtree"), "../cmd/crtree")
	// Static, as make build: it runs inside nodes too, on images without a
	// C library.
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build crtree:", err)
		os.Exit(1)
	}
	for _, helper := range []string{"memhog", "vforker"} {
		b := exec.Command("go", "build", "-o", filepath.Join(dir, helper), "../testdata/"+helper)
		b.Env = append(os.Environ(), "CGO_ENABLED=0")
		b.Stdout, b.Stderr = os.Stderr, os.Stderr
		if err := b.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build "+helper+":", err)
			os.Exit(1)
		}
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestScripts(t *testing.T) {
	testutil.RequireE2E(t)
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata",
		RequireExplicitExec: true,
		Setup:               setup,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitlog":      cmdWaitlog,
			"nodepid":      cmdNodepid,
			"pidalive":     cmdPidalive,
			"sleep":        cmdSleep,
			"httpget":      cmdHttpget,
			"flipbyte":     cmdFlipbyte,
			"waitfile":     cmdWaitfile,
			"waitbusy":     cmdWaitbusy,
			"locked":       cmdLocked,
			"waitcrtree":   cmdWaitcrtree,
			"waitunstaged": cmdWaitunstaged,
			"serversgone":  cmdServersgone,
			"nodecgroup":   cmdNodecgroup,
		},
	})
}

// setup gives each script its own state root and tears down every node
// it leaves, even when the script fails.
func setup(env *testscript.Env) error {
	root := filepath.Join(env.WorkDir, ".state")
	env.Setenv("CRTREE_ROOT", root)
	// A second state root plays another host.
	root2 := filepath.Join(env.WorkDir, ".state2")
	env.Setenv("CRTREE_ROOT2", root2)
	env.Setenv("PATH", binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	env.Setenv("BIN", binDir)
	archives, _ := filepath.Abs("../testdata/archives")
	env.Setenv("ARCHIVES", archives)
	for _, k := range []string{"CRTREE_CRIU", "HOME", "CRTREE_NO_STREAM"} {
		if v := os.Getenv(k); v != "" {
			env.Setenv(k, v)
		}
	}
	env.Defer(func() {
		unmountTrees(env.T(), env.WorkDir)
		teardown(env.T(), root)
		teardown(env.T(), root2)
		endTreeServers(env.T(), root)
		liftLocks(env.T(), env.WorkDir)
	})
	return nil
}

// logger is what teardown needs of testing.T and testscript.T.
type logger interface {
	Log(args ...any)
	Fatal(args ...any)
}

// teardown kills every node of a state root, waits until their
// supervisors have recorded it and exited, and removes the cgroups.
func teardown(t logger, root string) {
	if _, err := os.Stat(root); err != nil {
		return
	}
	h, err := node.NewHost(root)
	if err != nil {
		t.Log("teardown:", err)
		return
	}
	var sups []int
	h.Store.View(func(tr *hier.Tree) error {
		for _, n := range tr.Nodes {
			if n.SupervisorPid > 0 && node.Alive(n.SupervisorPid, n.SupervisorStart) {
				sups = append(sups, n.SupervisorPid)
			}
		}
		return nil
	})
	if err := h.CgroupBase.Kill(); err != nil {
		t.Log("teardown:", err)
	}
	if err := h.CgroupBase.WaitEmpty(10 * time.Second); err != nil {
		t.Fatal("teardown: ", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range sups {
		for running(pid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	// Commands killed by the test may have left staging directories (in
	// /dev/shm); they are removed once their CRIU is gone.
	for h.Recover(); h.PendingOps() > 0 && time.Now().Before(deadline); h.Recover() {
		time.Sleep(50 * time.Millisecond)
	}
	// The nodes' addresses and network namespaces (mounts under the
	// state root), and the state root's bridge.
	var tops []string
	h.Store.View(func(tr *hier.Tree) error {
		for id, n := range tr.Nodes {
			if n.Parent == "" {
				tops = append(tops, id)
			}
		}
		return nil
	})
	for _, id := range tops {
		if err := h.Destroy(id); err != nil {
			t.Log("teardown:", err)
		}
	}
	if _, err := h.GC(); err != nil {
		t.Log("teardown:", err)
	}
	if err := h.CgroupBase.Remove(); err != nil {
		t.Log("teardown:", err)
	}
	// A command still finishing (a request served inside a node) may
	// recreate the group once; try again a little later.
	time.Sleep(100 * time.Millisecond)
	if h.CgroupBase.Exists() {
		h.CgroupBase.Kill()
		h.CgroupBase.WaitEmpty(5 * time.Second)
		h.CgroupBase.Remove()
	}
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(data), ") Z ")
}

// flipbyte FILE PERCENT: invert one byte of FILE, PERCENT of the way in.
func cmdFlipbyte(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: flipbyte FILE PERCENT")
	}
	pct, err := strconv.Atoi(args[1])
	ts.Check(err)
	name := ts.MkAbs(args[0])
	data, err := os.ReadFile(name)
	ts.Check(err)
	data[len(data)*pct/100] ^= 0xff
	ts.Check(os.WriteFile(name, data, 0o644))
}

// poll calls try every interval until it returns true or limit has
// passed, and says whether it did.
func poll(limit, interval time.Duration, try func() bool) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(interval) {
		if try() {
			return true
		}
	}
	return false
}

// limitArg is the optional SECONDS argument of a wait command, or def.
func limitArg(args []string, i int, def time.Duration) time.Duration {
	if len(args) <= i {
		return def
	}
	s, _ := strconv.Atoi(args[i])
	return time.Duration(s) * time.Second
}

// waitlog [-after FILE] PATH REGEXP [SECONDS]: wait until the node's log
// matches. With -after, the log must begin with FILE's content (it went
// on from there, nothing rewritten), and what follows must match.
func cmdWaitlog(ts *testscript.TestScript, neg bool, args []string) {
	var prefix []byte
	if len(args) > 1 && args[0] == "-after" {
		var err error
		prefix, err = os.ReadFile(ts.MkAbs(args[1]))
		ts.Check(err)
		args = args[2:]
	}
	if len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: waitlog [-after FILE] PATH REGEXP [SECONDS]")
	}
	re := regexp.MustCompile(args[1])
	limit := limitArg(args, 2, 15*time.Second)
	var out []byte
	matched := poll(limit, 100*time.Millisecond, func() bool {
		out, _ = crtree(ts, "logs", args[0])
		rest, ok := bytes.CutPrefix(out, prefix)
		return ok && re.Match(rest)
	})
	if prefix != nil && !bytes.HasPrefix(out, prefix) {
		ts.Fatalf("log of %s does not begin with what it held before:\n%s\nnow:\n%s", args[0], prefix, out)
	}
	switch {
	case matched && neg:
		ts.Fatalf("log of %s matches %s:\n%s", args[0], re, out)
	case !matched && !neg:
		ts.Fatalf("log of %s does not match %s after %v:\n%s", args[0], re, limit, out)
	}
}

// waitfile FILE REGEXP [SECONDS]: wait until FILE's content matches.
func cmdWaitfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: waitfile FILE REGEXP [SECONDS]")
	}
	re := regexp.MustCompile("(?m)" + args[1])
	limit := limitArg(args, 2, 30*time.Second)
	var data []byte
	if !poll(limit, 50*time.Millisecond, func() bool {
		data, _ = os.ReadFile(ts.MkAbs(args[0]))
		return re.Match(data)
	}) {
		ts.Fatalf("%s does not match %s after %v:\n%s", args[0], re, limit, data)
	}
}

// waitbusy PATH REGEXP: wait until ls --json says the node at PATH is
// busy with an operation matching REGEXP (such as "being dumped").
func cmdWaitbusy(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitbusy PATH REGEXP")
	}
	re := regexp.MustCompile(args[1])
	var last []byte
	if !poll(30*time.Second, 20*time.Millisecond, func() bool {
		out, err := crtree(ts, "ls", "-r", "--json", "/")
		if err != nil {
			return false
		}
		last = out
		var entries []struct {
			Path string `json:"path"`
			Busy string `json:"busy"`
		}
		json.Unmarshal(out, &entries)
		for _, e := range entries {
			if e.Path == args[0] && re.MatchString(e.Busy) {
				return true
			}
		}
		return false
	}) {
		ts.Fatalf("%s is not %s after 30s:\n%s", args[0], re, last)
	}
}

// waitcrtree [-count=N] REGEXP ARGS...: wait until the output of
// crtree ARGS matches REGEXP (with -count, exactly N times), for states
// that come a moment after the command that causes them (a node's exit,
// a double fork).
func cmdWaitcrtree(ts *testscript.TestScript, neg bool, args []string) {
	count := 0
	if len(args) > 0 && strings.HasPrefix(args[0], "-count=") {
		n, err := strconv.Atoi(strings.TrimPrefix(args[0], "-count="))
		ts.Check(err)
		count, args = n, args[1:]
	}
	if neg || len(args) < 2 {
		ts.Fatalf("usage: waitcrtree [-count=N] REGEXP ARGS...")
	}
	re := regexp.MustCompile("(?m)" + args[0])
	var out []byte
	if !poll(15*time.Second, 50*time.Millisecond, func() bool {
		out, _ = crtree(ts, args[1:]...)
		if count > 0 {
			return len(re.FindAllIndex(out, -1)) == count
		}
		return re.Match(out)
	}) {
		ts.Fatalf("crtree %s does not match %s (count %d) after 15s:\n%s", strings.Join(args[1:], " "), re, count, out)
	}
}

// waitunstaged: wait until the state root has no staging directory left
// (a command removes its own in the background, once it has answered).
func cmdWaitunstaged(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: waitunstaged")
	}
	root, err := filepath.Abs(ts.Getenv("CRTREE_ROOT"))
	ts.Check(err)
	// Named as node.StageDir names them, in the places it puts them.
	prefix := filepath.Base(cgroup.BaseFor("/", root)) + "-"
	var left []string
	if !poll(30*time.Second, 50*time.Millisecond, func() bool {
		left = nil
		for _, dir := range []string{filepath.Join(root, "tmp"), "/dev/shm", ts.Getenv("CRTREE_STAGE_DIR")} {
			if dir == "" {
				continue
			}
			des, _ := os.ReadDir(dir)
			for _, d := range des {
				if strings.HasPrefix(d.Name(), prefix) {
					left = append(left, filepath.Join(dir, d.Name()))
				}
			}
		}
		return len(left) == 0
	}) {
		ts.Fatalf("staging directories left after 30s: %v", left)
	}
}

// nodepid [-s] VAR PATH: set VAR to the host PID of the node's init (with
// -s, of its supervisor).
func cmdNodepid(ts *testscript.TestScript, neg bool, args []string) {
	sup := len(args) > 0 && args[0] == "-s"
	if sup {
		args = args[1:]
	}
	if len(args) != 2 {
		ts.Fatalf("usage: nodepid [-s] VAR PATH")
	}
	out, err := crtree(ts, "ls", "-r", "--json", "/")
	ts.Check(err)
	var entries []node.Entry
	ts.Check(json.Unmarshal(out, &entries))
	for _, e := range entries {
		if e.Path == args[1] {
			pid := e.Pid
			if sup {
				pid = e.SupervisorPid
			}
			ts.Setenv(args[0], strconv.Itoa(pid))
			return
		}
	}
	ts.Fatalf("no node %s", args[1])
}

// pidalive PID...: every PID is a live process (with !, none is).
func cmdPidalive(ts *testscript.TestScript, neg bool, args []string) {
	for _, a := range args {
		pid, err := strconv.Atoi(a)
		ts.Check(err)
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		alive := err == nil && !strings.Contains(string(data), ") Z ")
		if alive == neg {
			ts.Fatalf("process %d alive=%v", pid, alive)
		}
	}
}

// httpget URL: GET URL (retrying for a few seconds) and print the body.
func cmdHttpget(ts *testscript.TestScript, neg bool, args []string) {
	var err error
	for i := 0; i < 50; i++ {
		var resp *http.Response
		if resp, err = http.Get(args[0]); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if neg {
				ts.Fatalf("GET %s answered", args[0])
			}
			ts.Stdout().Write(body)
			return
		}
		if neg {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	ts.Fatalf("GET %s: %v", args[0], err)
}

// sleep SECONDS (fractions allowed).
func cmdSleep(ts *testscript.TestScript, neg bool, args []string) {
	d, err := time.ParseDuration(args[0] + "s")
	ts.Check(err)
	time.Sleep(d)
}

func crtree(ts *testscript.TestScript, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(binDir, "crtree"), args...)
	cmd.Env = append(os.Environ(), "CRTREE_ROOT="+ts.Getenv("CRTREE_ROOT"))
	return cmd.Output()
}
