// Command bench measures crtree's checkpoint and restore against raw CRIU
// on the same workload, in the same run, alternating the two, and prints
// medians and ratios (see docs/PERFORMANCE.md). Run it as root through
// `make bench`; every measurement also goes to a JSON file.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

var (
	crtreeBin   = flag.String("crtree", "bin/crtree", "crtree binary")
	memhogBin   = flag.String("memhog", "bin/memhog", "workload binary (testdata/memhog)")
	criuBin     = flag.String("criu", "criu", "criu binary")
	mib         = flag.Int("mib", 512, "MiB of memory the workload holds")
	reps        = flag.Int("reps", 3, "repetitions of each measurement")
	treeN       = flag.Int("tree-nodes", 16, "nodes in the subtree measurement (0 to skip)")
	treeMiB     = flag.Int("tree-mib", 32, "MiB per node in the subtree measurement")
	lsN         = flag.Int("ls-nodes", 500, "nodes for the ls -r measurement (0 to skip)")
	conds       = flag.String("conditions", "warm,cold", "memory conditions: warm (2 GiB touched and freed before each run), cold")
	jsonOut     = flag.String("json", "bench-results.json", "file for every measurement")
	workDir     = flag.String("work", "/var/tmp/crtree-bench", "scratch directory (on disk)")
	imageMiB    = flag.Int("image-mib", 64, "MiB of incompressible files in the image of the image-node case (-1 to skip it)")
	migrateMiB  = flag.String("migrate-mib", "256,1024,4096", "sizes of the crtree migrate downtime series, MiB (\"\" to skip it)")
	migrateReps = flag.Int("migrate-reps", 1, "repetitions of each migration, and of each restore --lazy")
	lazyMiB     = flag.String("lazy-restore-mib", "1024", "sizes of the restore --lazy series, MiB (\"\" to skip it)")
)

// sample is one measurement.
type sample struct {
	Name      string  `json:"name"`
	Condition string  `json:"condition"`
	Rep       int     `json:"rep"`
	Seconds   float64 `json:"seconds"`
	Bytes     int64   `json:"bytes,omitempty"`
	MaxRSSKiB int64   `json:"maxRSSKiB,omitempty"`
}

var samples []sample

func record(name, cond string, rep int, d time.Duration, bytes, rss int64) {
	samples = append(samples, sample{name, cond, rep, d.Seconds(), bytes, rss})
	fmt.Fprintf(os.Stderr, "  %-34s %-5s rep %d: %7.3fs", name, cond, rep, d.Seconds())
	if bytes > 0 {
		fmt.Fprintf(os.Stderr, "  %s", human(bytes))
	}
	if rss > 0 {
		fmt.Fprintf(os.Stderr, "  rss %d MiB", rss/1024)
	}
	fmt.Fprintln(os.Stderr)
}

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fatal("bench must run as root")
	}
	os.RemoveAll(*workDir)
	must(os.MkdirAll(*workDir, 0o755))
	root := filepath.Join(*workDir, "state")
	os.Setenv("CRTREE_ROOT", root)
	defer cleanup()

	fmt.Fprintf(os.Stderr, "bench: %d MiB workload, %d reps, conditions %s\n", *mib, *reps, *conds)
	if *imageMiB >= 0 {
		importImage()
	}
	for _, cond := range strings.Split(*conds, ",") {
		for rep := 1; rep <= *reps; rep++ {
			// Alternate which side goes first.
			if rep%2 == 1 {
				baseline(cond, rep, "random")
				crtreeRun(cond, rep, "random")
			} else {
				crtreeRun(cond, rep, "random")
				baseline(cond, rep, "random")
			}
			frozen(cond, rep)
			crtreeRun(cond, rep, "zero")
			if *imageMiB >= 0 {
				imageRun(cond, rep)
			}
		}
	}
	if *treeN > 0 {
		for rep := 1; rep <= *reps; rep++ {
			tree(rep)
		}
	}
	if *lsN > 0 {
		lsBench()
	}
	sizes := parseSizes(*migrateMiB)
	migrateSeries(sizes)
	lazySizes := parseSizes(*lazyMiB)
	lazyRestoreSeries(lazySizes)
	data, _ := json.MarshalIndent(samples, "", "  ")
	must(os.WriteFile(*jsonOut, data, 0o644))
	report()
	migrateReport(sizes)
	lazyRestoreReport(lazySizes)
}

func warm(cond string) {
	if cond == "warm" {
		run(*memhogBin, "-mib", "2048", "-touch-and-exit")
	}
}

// startNode runs memhog in a new node and waits until it holds its memory.
func startNode(path string, mib int, kind string) (pid int, id string) {
	return startWith(path, hogBind(), mib, kind)
}

// startWith runs /memhog in a new node started with the given run flags,
// and waits until it holds its memory.
func startWith(path string, flags []string, mib int, kind string, hogArgs ...string) (pid int, id string) {
	args := append(append([]string{"run"}, flags...), path, "--", "/memhog", "-mib", fmt.Sprint(mib), "-kind", kind)
	args = append(args, hogArgs...)
	run(*crtreeBin, args...)
	for i := 0; i < 600; i++ {
		out := runOut(*crtreeBin, "logs", path)
		if strings.Contains(out, "ready") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var entries []struct {
		ID   string `json:"id"`
		Path string `json:"path"`
		Pid  int    `json:"pid"`
	}
	must(json.Unmarshal([]byte(runOut(*crtreeBin, "ls", "-r", "--json")), &entries))
	for _, e := range entries {
		if e.Path == path {
			return e.Pid, e.ID
		}
	}
	fatal("node %s not found", path)
	return 0, ""
}

// externalMountArgs are the --external flags of the node's external mounts
// (its mounts that come from the host), as crtree declares them to CRIU.
func externalMountArgs(id string, restore bool) []string {
	root := os.Getenv("CRTREE_ROOT")
	bins, _ := filepath.Glob(filepath.Join(root, "bin", "crtree-*"))
	self := ""
	if len(bins) > 0 {
		self = bins[0]
	}
	m := map[string]string{
		"/usr": "/usr", "/etc": "/etc", "/memhog": abs(*memhogBin),
		"/run/crtree":        filepath.Join(root, "nodes", id, "api"),
		"/run/crtree/crtree": self,
	}
	var args []string
	for k, v := range m {
		if restore {
			args = append(args, "--external", fmt.Sprintf("mnt[%s]:%s", k, v))
		} else {
			args = append(args, "--external", fmt.Sprintf("mnt[%s]:%s", k, k))
		}
	}
	return args
}

// baseline: criu dump to a directory, tar | zstd -1 -T0; then
// zstd -d | tar -x and criu restore.
func baseline(cond string, rep int, kind string) {
	path := "/base"
	pid, id := startNode(path, *mib, kind)
	img := filepath.Join(*workDir, "img")
	os.RemoveAll(img)
	must(os.MkdirAll(img, 0o755))
	warm(cond)
	t0 := time.Now()
	run(*criuBin, append([]string{"dump", "-t", fmt.Sprint(pid), "-D", img, "--manage-cgroups=ignore", "-o", "dump.log"}, externalMountArgs(id, false)...)...)
	dDump := time.Since(t0)
	archive := filepath.Join(*workDir, "base.tar.zst")
	t1 := time.Now()
	run("sh", "-c", fmt.Sprintf("tar -C %s -c . | zstd -q -1 -T0 -f -o %s", img, archive))
	dPack := time.Since(t1)
	record("criu dump (bare)", cond, rep, dDump, dirSize(img), 0)
	record("criu dump + tar|zstd", cond, rep, dDump+dPack, size(archive), 0)
	t2 := time.Now()
	run("sh", "-c", fmt.Sprintf("sync %s", archive))
	record("criu dump + tar|zstd + sync", cond, rep, dDump+dPack+time.Since(t2), 0, 0)

	img2 := filepath.Join(*workDir, "img2")
	os.RemoveAll(img2)
	must(os.MkdirAll(img2, 0o755))
	warm(cond)
	t3 := time.Now()
	run("sh", "-c", fmt.Sprintf("zstd -q -d -c %s | tar -C %s -x", archive, img2))
	dUnpack := time.Since(t3)
	pidfile := filepath.Join(*workDir, "restored.pid")
	os.Remove(pidfile)
	nodeRoot := filepath.Join(os.Getenv("CRTREE_ROOT"), "nodes", id, "rootfs")
	t4 := time.Now()
	run(*criuBin, append([]string{"restore", "-D", img, "--root", nodeRoot, "-d", "--pidfile", pidfile, "--manage-cgroups=ignore", "-o", "restore.log"}, externalMountArgs(id, true)...)...)
	dRestore := time.Since(t4)
	record("criu restore (bare)", cond, rep, dRestore, 0, 0)
	record("zstd -d|tar -x + criu restore", cond, rep, dUnpack+dRestore, 0, 0)
	if data, err := os.ReadFile(pidfile); err == nil {
		var rpid int
		fmt.Sscan(string(data), &rpid)
		syscall.Kill(rpid, syscall.SIGKILL)
		waitGone(rpid)
	}
	run(*crtreeBin, "rm", "-r", "-f", path)
	os.RemoveAll(img)
	os.RemoveAll(img2)
	os.Remove(archive)
}

type report_ struct {
	Frozen       float64 `json:"frozen"`
	Criu         float64 `json:"criu"`
	Pack         float64 `json:"pack"`
	ArchiveBytes int64   `json:"archiveBytes"`
	CarriedBytes int64   `json:"carriedBytes"`
	ImportTime   float64 `json:"importTime"`
}

// benchImage is the image of the image-node case: memhog and imageMiB
// MiB of random files.
const benchImage = "bench/memhog:1"

// importImage imports benchImage from a directory made here.
func importImage() {
	dir := filepath.Join(*workDir, "imageroot")
	must(os.MkdirAll(dir, 0o755))
	hog, err := os.ReadFile(*memhogBin)
	must(err)
	must(os.WriteFile(filepath.Join(dir, "memhog"), hog, 0o755))
	filler := make([]byte, *imageMiB<<20)
	rand.Read(filler)
	must(os.WriteFile(filepath.Join(dir, "filler"), filler, 0o644))
	t0 := time.Now()
	run(*crtreeBin, "image", "import", "--name", benchImage, dir)
	record("crtree image import", "-", 1, time.Since(t0), dirSize(dir), 0)
	os.RemoveAll(dir)
}

// imageRun: the same workload in a node on an image, dumped and restored
// as crtreeRun does; then dumped --with-image and restored on a second
// state root, which imports the image from the archive.
func imageRun(cond string, rep int) {
	path := "/im"
	startWith(path, []string{"--image", benchImage}, *mib, "random")
	archive := filepath.Join(*workDir, "im.crtree")
	warm(cond)
	t0 := time.Now()
	out, rss := runRSS(*crtreeBin, "dump", "--json", path, "-o", archive)
	var r report_
	json.Unmarshal([]byte(out), &r)
	record("crtree dump (image node)", cond, rep, time.Since(t0), r.ArchiveBytes, rss)
	warm(cond)
	t1 := time.Now()
	_, rss = runRSS(*crtreeBin, "restore", "--json", archive)
	record("crtree restore (image node)", cond, rep, time.Since(t1), 0, rss)
	os.Remove(archive)

	warm(cond)
	t2 := time.Now()
	out, rss = runRSS(*crtreeBin, "dump", "--with-image", "--json", path, "-o", archive)
	json.Unmarshal([]byte(out), &r)
	record("crtree dump --with-image (image node)", cond, rep, time.Since(t2), r.ArchiveBytes, rss)
	record("  of which the image's layers", cond, rep, 0, r.CarriedBytes, 0)
	other := "CRTREE_ROOT=" + filepath.Join(*workDir, "state2")
	warm(cond)
	t3 := time.Now()
	out, rss = runRSSEnv([]string{other}, *crtreeBin, "restore", "--json", archive)
	json.Unmarshal([]byte(out), &r)
	record("crtree restore --with-image, importing", cond, rep, time.Since(t3), 0, rss)
	record("  of which importing the image", cond, rep, time.Duration(r.ImportTime*float64(time.Second)), 0, 0)
	runRSSEnv([]string{other}, *crtreeBin, "rm", "-r", "-f", path)
	runRSSEnv([]string{other}, *crtreeBin, "image", "rm", benchImage)
	os.Remove(archive)
}

// crtreeRun: crtree dump to a file, crtree restore from it.
func crtreeRun(cond string, rep int, kind string) {
	path := "/ct"
	startNode(path, *mib, kind)
	archive := filepath.Join(*workDir, "ct.crtree")
	warm(cond)
	t0 := time.Now()
	out, rss := runRSS(*crtreeBin, "dump", "--json", path, "-o", archive)
	d := time.Since(t0)
	var r report_
	json.Unmarshal([]byte(out), &r)
	name := "crtree dump"
	if kind == "zero" {
		name = "crtree dump (zero pages)"
	}
	record(name, cond, rep, d, r.ArchiveBytes, rss)
	if kind == "zero" {
		os.Remove(archive)
		return
	}
	warm(cond)
	t1 := time.Now()
	_, rss = runRSS(*crtreeBin, "restore", "--keep-binds", "--json", archive)
	record("crtree restore", cond, rep, time.Since(t1), 0, rss)
	run(*crtreeBin, "rm", "-r", "-f", path)
	os.Remove(archive)
}

// frozen: how long dump --leave-running stops the workload.
func frozen(cond string, rep int) {
	path := "/fr"
	startNode(path, *mib, "random")
	archive := filepath.Join(*workDir, "fr.crtree")
	warm(cond)
	out, _ := runRSS(*crtreeBin, "dump", "--leave-running", "--json", path, "-o", archive)
	var r report_
	json.Unmarshal([]byte(out), &r)
	record("crtree dump --leave-running: frozen", cond, rep, time.Duration(r.Frozen*float64(time.Second)), 0, 0)
	run(*crtreeBin, "rm", "-r", "-f", path)
	os.Remove(archive)
}

// tree: one dump of a parent with N children against N dumps one after
// another.
func tree(rep int) {
	start := func() {
		run(*crtreeBin, "run", "/tree", "--", "sleep", "infinity")
		for i := 0; i < *treeN; i++ {
			startNode(fmt.Sprintf("/tree/n%d", i), *treeMiB, "random")
		}
	}
	start()
	archive := filepath.Join(*workDir, "tree.crtree")
	t0 := time.Now()
	run(*crtreeBin, "dump", "/tree", "-o", archive)
	record(fmt.Sprintf("dump %dx%dMiB subtree at once", *treeN, *treeMiB), "-", rep, time.Since(t0), size(archive), 0)
	os.Remove(archive)
	start()
	t1 := time.Now()
	for i := 0; i < *treeN; i++ {
		run(*crtreeBin, "dump", fmt.Sprintf("/tree/n%d", i), "-o", archive)
	}
	record(fmt.Sprintf("dump %dx%dMiB one after another", *treeN, *treeMiB), "-", rep, time.Since(t1), 0, 0)
	run(*crtreeBin, "rm", "-r", "-f", "/tree")
	os.Remove(archive)
}

func lsBench() {
	run(*crtreeBin, "run", "/many", "--", "sleep", "infinity")
	for i := 0; i < *lsN-1; i++ {
		run(*crtreeBin, "run", "/many/", "--", "sleep", "infinity")
	}
	for rep := 1; rep <= *reps; rep++ {
		t0 := time.Now()
		run(*crtreeBin, "ls", "-r")
		record(fmt.Sprintf("ls -r on %d nodes", *lsN), "-", rep, time.Since(t0), 0, 0)
		t1 := time.Now()
		run(*crtreeBin, "tree")
		record(fmt.Sprintf("tree on %d nodes", *lsN), "-", rep, time.Since(t1), 0, 0)
	}
	treeBench()
	t2 := time.Now()
	run(*crtreeBin, "kill", "-r", "-s", "KILL", "/many")
	record(fmt.Sprintf("kill -r of %d nodes", *lsN), "-", 1, time.Since(t2), 0, 0)
	// Nothing of the subtree may survive.
	var left []struct {
		Procs int `json:"procs"`
	}
	must(json.Unmarshal([]byte(runOut(*crtreeBin, "ls", "-r", "--json", "/many")), &left))
	alive := 0
	for _, e := range left {
		alive += e.Procs
	}
	if alive > 0 {
		fatal("kill -r left %d processes in /many", alive)
	}
	fmt.Fprintf(os.Stderr, "  kill -r of %d nodes left no process\n", *lsN)
	run(*crtreeBin, "rm", "-r", "-f", "/many")
}

func median(name, cond string) (float64, int64, bool) {
	var xs []float64
	var b []int64
	for _, s := range samples {
		if s.Name == name && (cond == "" || s.Condition == cond) {
			xs = append(xs, s.Seconds)
			b = append(b, s.Bytes)
		}
	}
	if len(xs) == 0 {
		return 0, 0, false
	}
	sort.Float64s(xs)
	sort.Slice(b, func(i, j int) bool { return b[i] < b[j] })
	return xs[len(xs)/2], b[len(b)/2], true
}

func report() {
	fmt.Printf("\n%d MiB of random memory, medians of %d (seconds); ratio = crtree / baseline\n\n", *mib, *reps)
	fmt.Printf("| condition | measurement | crtree | baseline | ratio | target |\n|---|---|---|---|---|---|\n")
	rows := []struct{ ours, base, target string }{
		{"crtree dump", "criu dump + tar|zstd", "<= 0.8"},
		{"crtree dump", "criu dump + tar|zstd + sync", "(same, baseline also synced)"},
		{"crtree dump", "criu dump (bare)", "stretch <= 1.2"},
		{"crtree restore", "zstd -d|tar -x + criu restore", "<= 0.9"},
		{"crtree restore", "criu restore (bare)", "stretch <= 1.5"},
		{"crtree dump --leave-running: frozen", "criu dump (bare)", "<= 1.2"},
		{"crtree dump (zero pages)", "crtree dump", "<= 1.0 (time)"},
		{"crtree dump (image node)", "criu dump + tar|zstd", "<= 0.8"},
		{"crtree restore (image node)", "zstd -d|tar -x + criu restore", "<= 0.9"},
		{"crtree dump --with-image (image node)", "crtree dump (image node)", "(the layers' cost)"},
		{"crtree restore --with-image, importing", "crtree restore (image node)", "(the import's cost)"},
	}
	for _, cond := range strings.Split(*conds, ",") {
		for _, r := range rows {
			a, _, ok1 := median(r.ours, cond)
			b, _, ok2 := median(r.base, cond)
			if ok1 && ok2 {
				fmt.Printf("| %s | %s vs %s | %.3f | %.3f | %.2f | %s |\n", cond, r.ours, r.base, a, b, a/b, r.target)
			}
		}
		if imp, _, ok := median("  of which importing the image", cond); ok {
			_, with, _ := median("crtree dump --with-image (image node)", cond)
			_, plain, _ := median("crtree dump (image node)", cond)
			_, layers, _ := median("  of which the image's layers", cond)
			fmt.Printf("| %s | --with-image: archive grows by | %s | %s of layers | %.2f | ~1 (random files) |\n", cond, human(with-plain), human(layers), float64(with-plain)/float64(layers))
			fmt.Printf("| %s | importing the image on restore | %.3f | | | |\n", cond, imp)
		}
		if _, zb, ok := median("crtree dump (zero pages)", cond); ok {
			fmt.Printf("| %s | zero-page archive size | %s | %d MiB memory | %.4f%% | <= 1%% |\n", cond, human(zb), *mib, 100*float64(zb)/float64(int64(*mib)<<20))
		}
	}
	if *treeN > 0 {
		a, _, _ := median(fmt.Sprintf("dump %dx%dMiB subtree at once", *treeN, *treeMiB), "")
		b, _, _ := median(fmt.Sprintf("dump %dx%dMiB one after another", *treeN, *treeMiB), "")
		fmt.Printf("| - | %dx%d MiB subtree at once vs one after another | %.3f | %.3f | %.2f | <= 0.6 |\n", *treeN, *treeMiB, a, b, a/b)
	}
	var rss int64
	for _, s := range samples {
		rss = max(rss, s.MaxRSSKiB)
	}
	fmt.Printf("\ncrtree peak RSS (dump and restore): %d MiB (target < 100 MiB)\n", rss/1024)
	if *lsN > 0 {
		a, _, _ := median(fmt.Sprintf("ls -r on %d nodes", *lsN), "")
		b, _, _ := median(fmt.Sprintf("tree on %d nodes", *lsN), "")
		c, _, _ := median(fmt.Sprintf("kill -r of %d nodes", *lsN), "")
		fmt.Printf("ls -r on %d nodes: %.3fs; tree: %.3fs; kill -r -s KILL: %.3fs\n", *lsN, a, b, c)
		d, _, _ := median(fmt.Sprintf("ls -R of the mounted tree, %d nodes", *lsN), "")
		e, _, _ := median(fmt.Sprintf("ls of its directory, %d nodes", *lsN), "")
		f, _, _ := median(fmt.Sprintf("find -type d in it, %d nodes", *lsN), "")
		var hwm int64
		for _, s := range samples {
			if s.Name == fmt.Sprintf("tree server peak RSS, %d nodes", *lsN) {
				hwm = s.MaxRSSKiB
			}
		}
		fmt.Printf("mounted tree (crtree mount), %d nodes: ls -R %.3fs (%.2fx ls -r), ls of their directory %.3fs, find -type d %.3fs; server peak RSS %d MiB\n", *lsN, d, d/a, e, f, hwm/1024)
	}
	fmt.Printf("every measurement: %s\n", *jsonOut)
}

func cleanup() {
	unmountTree()
	for _, p := range []string{"/base", "/ct", "/fr", "/tree", "/many", "/im", "/mg", "/lr"} {
		exec.Command(*crtreeBin, "rm", "-r", "-f", p).Run()
	}
	exec.Command(*crtreeBin, "image", "rm", benchImage).Run()
	exec.Command(*crtreeBin, "gc").Run()
	// The other state roots: their nodes, then their cgroups (gc), which
	// removing the work directory would leave behind.
	for root, top := range map[string]string{filepath.Join(*workDir, "state2"): "/im", farRoot(): "/mg"} {
		if _, err := os.Stat(root); err != nil {
			continue
		}
		for _, args := range [][]string{{"rm", "-r", "-f", top}, {"gc"}} {
			cmd := exec.Command(*crtreeBin, args...)
			cmd.Env = append(os.Environ(), "CRTREE_ROOT="+root)
			cmd.Run()
		}
	}
	if pipeMaxWas != "" {
		os.WriteFile(pipeMax, []byte(pipeMaxWas), 0o644)
	}
	os.RemoveAll(*workDir)
}

func run(name string, args ...string) {
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		cleanup()
		fatal("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
}

func runOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		cleanup()
		fatal("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

// runRSS runs a command and returns its stdout and peak RSS in KiB.
func runRSS(name string, args ...string) (string, int64) {
	return runRSSEnv(nil, name, args...)
}

// runRSSEnv is runRSS with env added to the environment.
func runRSSEnv(env []string, name string, args ...string) (string, int64) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		cleanup()
		fatal("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return out.String(), ru.Maxrss
}

func waitGone(pid int) {
	for i := 0; i < 500 && syscall.Kill(pid, 0) == nil; i++ {
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		time.Sleep(10 * time.Millisecond)
	}
}

func size(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func abs(p string) string {
	a, _ := filepath.Abs(p)
	return a
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
}

func must(err error) {
	if err != nil {
		fatal("%v", err)
	}
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
