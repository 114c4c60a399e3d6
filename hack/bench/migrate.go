package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
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
			migrateOnce(mib, rep, false)
			migrateOnce(mib, rep, true)
		}
	}
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
	startWith(path, []string{"--bind", abs(*memhogBin) + ":/memhog:ro"}, mib, "random", "-tick", "10ms")
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

// largestGap is the largest interval between two t=UNIXNANO lines.
func largestGap(logs string) time.Duration {
	var prev, gap int64
	for _, l := range strings.Split(logs, "\n") {
		v, ok := strings.CutPrefix(l, "t=")
		if !ok {
			continue
		}
		t, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		if prev != 0 {
			gap = max(gap, t-prev)
		}
		prev = t
	}
	return time.Duration(gap)
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
	first, last := sizes[0], sizes[len(sizes)-1]
	a, _, _ := median(migrateName("downtime seen by the workload", true, last), "")
	b, _, _ := median(migrateName("downtime seen by the workload", true, first), "")
	fmt.Printf("\n--lazy downtime at %d MiB: %.3fs (target <= 0.5 s at 4 GiB); %.2f x the downtime at %d MiB (target <= 1.5)\n", last, a, a/b, first)
}

// parseSizes reads -migrate-mib.
func parseSizes(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			fatal("-migrate-mib: %q is not a size in MiB", f)
		}
		out = append(out, n)
	}
	return out
}
