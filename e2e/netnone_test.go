package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// netNoneRuns is how many restores each case of TestNetNoneRestores makes:
// 10, or CRTREE_NETNONE_RUNS (make test-long sets 50).
func netNoneRuns(t *testing.T) int {
	v := os.Getenv("CRTREE_NETNONE_RUNS")
	if v == "" {
		return 10
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("CRTREE_NETNONE_RUNS=%q: want a positive number", v)
	}
	return n
}

// webServer is a node's command: an HTTP server on the node's loopback.
var webServer = []string{"python3", "-u", "-m", "http.server", "--bind", "127.0.0.1", "8000"}

// startWeb runs a --net none node serving HTTP and waits until it listens.
func (h *host) startWeb(path string) {
	h.t.Helper()
	h.must(append([]string{"run", "--net", "none", path, "--"}, webServer...)...)
	h.waitServing(path)
}

// waitServing waits until the node at path answers HTTP on its own
// loopback (its network namespace).
func (h *host) waitServing(path string) {
	h.t.Helper()
	get := `import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8000/").status)`
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var out string
		if out, err = h.run("exec", path, "--", "python3", "-c", get); err == nil && strings.TrimSpace(out) == "200" {
			return
		}
	}
	h.t.Fatalf("%s does not serve HTTP: %v", path, err)
}

// restoreLoop restores an archive runs times (restore runs one, as name),
// checks that every node of want (paths below the restored top, "" for
// the top) runs, and removes the restored subtree again. Failures are
// counted, not fatal, so that the rate shows.
func (h *host) restoreLoop(what string, runs int, restore func(name string) error, want []string) {
	h.t.Helper()
	start := time.Now()
	var fails []string
	for i := 0; i < runs; i++ {
		name := fmt.Sprintf("%s%d", what, i)
		if err := restore(name); err != nil {
			fails = append(fails, err.Error())
		} else {
			ls := h.ls()
			for _, p := range want {
				if e := ls["/"+name+p]; e.State != "running" {
					fails = append(fails, fmt.Sprintf("/%s%s is %q after its restore", name, p, e.State))
				}
			}
			if i == 0 {
				// Once: the restored server answers in its own network.
				h.waitServing("/" + name + want[len(want)-1])
			}
		}
		if _, err := h.run("rm", "-r", "-f", "/"+name); err != nil && !strings.Contains(err.Error(), "no such node") {
			h.t.Fatal(err)
		}
	}
	h.t.Logf("%s: %d restores in %v", what, runs, time.Since(start).Round(time.Millisecond))
	if len(fails) > 0 {
		h.t.Errorf("%s: %d of %d restores failed; first:\n%s", what, len(fails), runs, fails[0])
	}
}

// TestNetNoneRestores restores --net none nodes again and again, on the
// paths where CRIU reads its images from crtree's image server: from a
// file, from a pipe (an archive dumped --leave-running, pages last), and
// a tree of five nodes with one such node. CRIU closes some images'
// pipes without reading them (nftables); that must not fail a restore.
func TestNetNoneRestores(t *testing.T) {
	h := newHost(t)
	runs := netNoneRuns(t)
	dir := t.TempDir()

	t.Run("file", func(t *testing.T) {
		h := &host{t: t, root: h.root}
		h.startWeb("/web")
		archive := filepath.Join(dir, "web.crtree")
		h.must("dump", "/web", "-o", archive)
		h.restoreLoop("web", runs, func(name string) error {
			_, err := h.run("restore", archive, "--name", name)
			return err
		}, []string{""})
	})

	t.Run("pipe", func(t *testing.T) {
		h := &host{t: t, root: h.root}
		h.startWeb("/lr")
		archive := filepath.Join(dir, "lr.crtree")
		h.must("dump", "--leave-running", "/lr", "-o", archive)
		h.must("rm", "-f", "/lr")
		data, err := os.ReadFile(archive)
		if err != nil {
			t.Fatal(err)
		}
		h.restoreLoop("piped", runs, func(name string) error {
			cmd := h.cmd("restore", "-", "--name", name)
			var errb bytes.Buffer
			cmd.Stdin, cmd.Stderr = bytes.NewReader(data), &errb // a pipe
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("restore - (a pipe): %v: %s", err, errb.String())
			}
			return nil
		}, []string{""})
	})

	t.Run("tree", func(t *testing.T) {
		h := &host{t: t, root: h.root}
		for _, p := range []string{"/tree", "/tree/a", "/tree/a/b", "/tree/c"} {
			h.must("run", p, "--", "sleep", "1e5")
		}
		h.startWeb("/tree/a/web")
		archive := filepath.Join(dir, "tree.crtree")
		h.must("dump", "/tree", "-o", archive)
		h.restoreLoop("tree", runs, func(name string) error {
			_, err := h.run("restore", archive, "--name", name)
			return err
		}, []string{"", "/a", "/a/b", "/c", "/a/web"})
	})
}
