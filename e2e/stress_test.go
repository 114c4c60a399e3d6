package e2e

import (
	"fmt"
	"math/rand"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// TestConcurrentUnnamed: twenty `run /p/` at once give twenty distinct
// unnamedN nodes, all running.
func TestConcurrentUnnamed(t *testing.T) {
	h := newHost(t)
	h.must("run", "/p", "--", "sleep", "1e5")
	var wg sync.WaitGroup
	paths := make([]string, 20)
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := h.run("run", "/p/", "--", "sleep", "1e5")
			if err != nil {
				t.Error(err)
			}
			paths[i] = strings.TrimSpace(out)
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, p := range paths {
		if seen[p] {
			t.Fatalf("%s given twice: %v", p, paths)
		}
		seen[p] = true
	}
	ls := h.ls()
	for i := 1; i <= 20; i++ {
		p := fmt.Sprintf("/p/unnamed%d", i)
		if !seen[p] || ls[p].State != "running" {
			t.Fatalf("%s: printed=%v state=%q", p, seen[p], ls[p].State)
		}
	}
}

// TestStress runs a few hundred mixed operations (run, unnamed run, mv,
// rm, dump) from several workers on one tree, then checks the tree
// against what succeeded: no node lost, none duplicated.
func TestStress(t *testing.T) {
	h := newHost(t)
	h.must("run", "/s", "--", "sleep", "1e5")
	archives := t.TempDir()
	const workers, opsEach = 6, 50
	var wg sync.WaitGroup
	sets := make([]map[string]bool, workers)
	for w := 0; w < workers; w++ {
		sets[w] = map[string]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			mine := sets[w]
			pick := func() string {
				var names []string
				for n := range mine {
					names = append(names, n)
				}
				if len(names) == 0 {
					return ""
				}
				sort.Strings(names)
				return names[rng.Intn(len(names))]
			}
			for i := 0; i < opsEach; i++ {
				switch op := rng.Intn(10); {
				case op < 4:
					name := fmt.Sprintf("w%d_%d", w, i)
					if _, err := h.run("run", "/s/"+name, "--", "sleep", "1e5"); err != nil {
						t.Error(err)
						continue
					}
					mine[name] = true
				case op < 5:
					out, err := h.run("run", "/s/", "--", "sleep", "1e5")
					if err != nil {
						t.Error(err)
						continue
					}
					mine[strings.TrimPrefix(strings.TrimSpace(out), "/s/")] = true
				case op < 7:
					old := pick()
					if old == "" {
						continue
					}
					name := fmt.Sprintf("w%d_mv%d", w, i)
					if _, err := h.run("mv", "/s/"+old, "/s/"+name); err != nil {
						t.Error(err)
						continue
					}
					delete(mine, old)
					mine[name] = true
				case op < 9:
					old := pick()
					if old == "" {
						continue
					}
					if _, err := h.run("rm", "-f", "/s/"+old); err != nil {
						t.Error(err)
						continue
					}
					delete(mine, old)
				default:
					old := pick()
					if old == "" {
						continue
					}
					if _, err := h.run("dump", "--leave-running", "/s/"+old, "-o", filepath.Join(archives, old)); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	want := map[string]bool{}
	for _, set := range sets {
		for n := range set {
			if want[n] {
				t.Fatalf("%s made twice", n)
			}
			want[n] = true
		}
	}
	ls := h.ls()
	got := map[string]bool{}
	for p, e := range ls {
		if strings.HasPrefix(p, "/s/") {
			got[strings.TrimPrefix(p, "/s/")] = true
			if e.State != "running" {
				t.Errorf("%s is %s", p, e.State)
			}
		}
	}
	for n := range want {
		if !got[n] {
			t.Errorf("lost /s/%s", n)
		}
	}
	for n := range got {
		if !want[n] {
			t.Errorf("unexpected /s/%s", n)
		}
	}
	t.Logf("%d nodes after %d operations", len(got), workers*opsEach)
}
