package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/crtree/crtree/internal/testutil"
)

// The downtime of crtree migrate between two state roots, stop-and-copy
// and post-copy (--lazy), for each size of -migrate-mib: from the
// workload's own view, the largest gap in the t= stream memhog -tick
// writes every 10 ms (its log moves with it), and the whole migration's
// wall time.

// farRoot is the state root migrations go to.
func farRoot() string { return filepath.Join(*workDir, "state-far") }

// pipeMaxWas is fs.pipe-max-size before migrateSeries raised it for
// CRIU's page server (--lazy), put back by cleanup; "" if untouched.
var pipeMaxWas string

const pipeMax = "/proc/sys/fs/pipe-max-size"

// raisePipeMax gives CRIU's page server the 4 MiB pipes it sets: root
// lacks CAP_SYS_RESOURCE on these machines (crtree check says so).
func raisePipeMax() {
	old, err := os.ReadFile(pipeMax)
	must(err)
	if n, _ := strconv.Atoi(strings.TrimSpace(string(old))); n >= 4<<20 {
		return
	}
	pipeMaxWas = string(old)
	must(os.WriteFile(pipeMax, []byte("4194304"), 0o644))
}

func migrateSeries(sizes []int) {
	raisePipeMax()
	for _, mib := range sizes {
		for rep := 1; rep <= *migrateReps; rep++ {
			filePathOnce(mib, rep)
			migrateOnce(mib, rep, false)
			migrateOnce(mib, rep, true)
			lazySpeedOnce(mib, rep)
		}
	}
}

// filePathOnce is the stop-and-copy baseline issue 15 sets: dump -o FILE,
// then restore FILE, of the same node (into the same state root), the
// downtime being the largest gap the workload saw.
func filePathOnce(mib, rep int) {
	path := "/mg"
	startWith(path, hogBind(), mib, "random", "-tick", "10ms")
	file := filepath.Join(*workDir, "migrate-baseline.crtree")
	t0 := time.Now()
	run(*crtreeBin, "dump", path, "-o", file)
	run(*crtreeBin, "restore", "--keep-binds", file)
	total := time.Since(t0)
	os.Remove(file)
	time.Sleep(500 * time.Millisecond)
	logs := runOut(*crtreeBin, "logs", path)
	record(migrateName("downtime seen by the workload", false, mib)+" (dump -o FILE + restore FILE)", "", rep, largestGap(logs), 0, 0)
	record(migrateName("total", false, mib)+" (dump -o FILE + restore FILE)", "", rep, total, 0, 0)
	run(*crtreeBin, "rm", "-r", "-f", path)
}

// lazySpeedOnce measures the workload's speed while its memory arrives
// after a post-copy migration: memhog -scan reads a word of every page
// round and round, and counts the pages per 100 ms; its speed before the
// freeze, between the switch and the end of the transfer, and after.
func lazySpeedOnce(mib, rep int) {
	path := "/mg"
	startWith(path, hogBind(), mib, "random", "-scan", "100ms")
	time.Sleep(time.Second) // a few samples before
	runRSS(*crtreeBin, "migrate", "--lazy", "--keep-binds", path, "local:"+farRoot())
	arrived := time.Now().UnixNano()
	time.Sleep(time.Second) // and after
	far := []string{"CRTREE_ROOT=" + farRoot()}
	logs, _ := runRSSEnv(far, *crtreeBin, "logs", path)
	for k, rate := range scanSpeeds(logs, arrived) {
		if rate > 0 {
			record(migrateName("workload speed "+speedPhases[k], true, mib), "", rep, 0, int64(rate), 0)
		}
	}
	runRSSEnv(far, *crtreeBin, "rm", "-r", "-f", path)
}

// hogBind is the flag that gives a node the memhog binary.
func hogBind() []string { return []string{"--bind", abs(*memhogBin) + ":/memhog:ro"} }

// speedPhases name the three speeds scanSpeeds returns.
var speedPhases = [3]string{"before", "while its pages arrive", "after"}

// scanSpeeds reads memhog's scan=UNIXNANO,PAGES lines and returns its
// speed in bytes of memory read per second (speedPhases): before the
// largest gap (the freeze), after it until arrived (UNIXNANO: when the
// migration returned, a little after the last page came), and after
// arrived; 0 for a phase of fewer than 2 samples. The sample across the
// gap and the one across arrived are left out.
func scanSpeeds(logs string, arrived int64) [3]float64 {
	type pt struct{ t, pages int64 }
	var pts []pt
	for _, l := range strings.Split(logs, "\n") {
		v, ok := strings.CutPrefix(l, "scan=")
		if !ok {
			continue
		}
		a, b, _ := strings.Cut(v, ",")
		t, err1 := strconv.ParseInt(a, 10, 64)
		n, err2 := strconv.ParseInt(b, 10, 64)
		if err1 == nil && err2 == nil {
			pts = append(pts, pt{t, n})
		}
	}
	gapAt := 0
	for i := 1; i < len(pts); i++ {
		if pts[i].t-pts[i-1].t > pts[gapAt].t-pts[max(gapAt-1, 0)].t {
			gapAt = i
		}
	}
	var sums [3]struct{ pages, ns, n int64 }
	for i := 1; i < len(pts); i++ {
		if i == gapAt || (pts[i-1].t <= arrived && pts[i].t > arrived) {
			continue // a line that counts the pages of two phases
		}
		phase := 0
		switch {
		case i > gapAt && pts[i].t <= arrived:
			phase = 1
		case i > gapAt:
			phase = 2
		}
		sums[phase].pages += pts[i].pages
		sums[phase].ns += pts[i].t - pts[i-1].t
		sums[phase].n++
	}
	var rates [3]float64
	for k, s := range sums {
		if s.n >= 2 {
			rates[k] = float64(s.pages*4096) / (float64(s.ns) / 1e9)
		}
	}
	return rates
}

// migrateName is the name of a migration measurement.
func migrateName(what string, lazy bool, mib int) string {
	mode := "stop-and-copy"
	if lazy {
		mode = "--lazy"
	}
	return fmt.Sprintf("migrate %s: %s, %d MiB", mode, what, mib)
}

// migrateOnce moves a mib MiB memhog node to the far state root and back
// out of existence, recording the downtime it saw and the wall time.
func migrateOnce(mib, rep int, lazy bool) {
	path := "/mg"
	startWith(path, hogBind(), mib, "random", "-tick", "10ms")
	args := []string{"migrate", "--json", "--keep-binds", path, "local:" + farRoot()}
	if lazy {
		args = append(args, "--lazy")
	}
	t0 := time.Now()
	out, rss := runRSS(*crtreeBin, args...)
	total := time.Since(t0)
	var r struct {
		Downtime    float64 `json:"downtime"`
		MemoryBytes int64   `json:"memoryBytes"`
	}
	must(json.Unmarshal([]byte(out), &r))
	far := []string{"CRTREE_ROOT=" + farRoot()}
	// Ticks from after the move, so that the gap is closed.
	time.Sleep(500 * time.Millisecond)
	logs, _ := runRSSEnv(far, *crtreeBin, "logs", path)
	gap := largestGap(logs)
	record(migrateName("downtime seen by the workload", lazy, mib), "", rep, gap, 0, 0)
	record(migrateName("downtime crtree reports", lazy, mib), "", rep, time.Duration(r.Downtime*float64(time.Second)), 0, 0)
	record(migrateName("total", lazy, mib), "", rep, total, r.MemoryBytes, rss)
	runRSSEnv(far, *crtreeBin, "rm", "-r", "-f", path)
}

// largestGap is how long memhog -tick stood still, from its log.
func largestGap(logs string) time.Duration {
	gap, _ := testutil.LargestTickGap(logs)
	return gap
}

// migrateReport prints the series and the targets.
func migrateReport(sizes []int) {
	if len(sizes) == 0 {
		return
	}
	fmt.Printf("\ncrtree migrate between two state roots, medians of %d (seconds): downtime as the workload saw it (largest gap in a 10 ms tick)\n\n", *migrateReps)
	fmt.Printf("| MiB | stop-and-copy downtime | stop-and-copy total | --lazy downtime | --lazy total | lazy total / stop total (target <= 1.3) |\n|---|---|---|---|---|---|\n")
	for _, mib := range sizes {
		sd, _, _ := median(migrateName("downtime seen by the workload", false, mib), "")
		st, _, _ := median(migrateName("total", false, mib), "")
		ld, _, _ := median(migrateName("downtime seen by the workload", true, mib), "")
		lt, _, _ := median(migrateName("total", true, mib), "")
		fmt.Printf("| %d | %.3f | %.3f | %.3f | %.3f | %.2f |\n", mib, sd, st, ld, lt, lt/st)
	}
	fmt.Printf("\nstop-and-copy downtime against dump -o FILE + restore FILE of the same node (target <= 1.2), and the workload's speed (memory read per second, memhog -scan) before a --lazy migration, while its pages arrive, and after\n\n")
	fmt.Printf("| MiB | stop-and-copy downtime | file path downtime | ratio | speed before | while pages arrive | after |\n|---|---|---|---|---|---|---|\n")
	for _, mib := range sizes {
		sd, _, _ := median(migrateName("downtime seen by the workload", false, mib), "")
		fd, _, _ := median(migrateName("downtime seen by the workload", false, mib)+" (dump -o FILE + restore FILE)", "")
		var speeds [3]string
		for k, phase := range speedPhases {
			speeds[k] = "-"
			if _, b, ok := median(migrateName("workload speed "+phase, true, mib), ""); ok {
				speeds[k] = fmt.Sprintf("%.0f MiB/s", float64(b)/(1<<20))
			}
		}
		fmt.Printf("| %d | %.3f | %.3f | %.2f | %s | %s | %s |\n", mib, sd, fd, sd/fd, speeds[0], speeds[1], speeds[2])
	}
	first, last := sizes[0], sizes[len(sizes)-1]
	a, _, _ := median(migrateName("downtime seen by the workload", true, last), "")
	b, _, _ := median(migrateName("downtime seen by the workload", true, first), "")
	fmt.Printf("\n--lazy downtime at %d MiB: %.3fs (target <= 0.5 s at 4 GiB); %.2f x the downtime at %d MiB (target <= 1.5)\n", last, a, a/b, first)
}

// parseSizes reads a list of sizes in MiB (-migrate-mib,
// -lazy-restore-mib).
func parseSizes(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			fatal("%q is not a size in MiB", f)
		}
		out = append(out, n)
	}
	return out
}
