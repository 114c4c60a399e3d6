package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// treeMount is where the tree is mounted for the ls measurements.
func treeMount() string { return filepath.Join(*workDir, "tree") }

// treeBench measures the mounted tree (crtree mount) on the ls series'
// nodes: ls -R of the whole tree, ls of the directory of its nodes and
// find -type d against crtree ls -r, and the server's memory after
// listing it many times.
func treeBench() {
	dir := treeMount()
	must(os.MkdirAll(dir, 0o755))
	run(*crtreeBin, "mount", dir)
	defer unmountTree()
	pid := treeServerPid(dir)
	for rep := 1; rep <= *reps; rep++ {
		for _, c := range []struct {
			name string
			args []string
		}{
			{"ls -R of the mounted tree", []string{"ls", "-R", dir}},
			{"ls of its directory", []string{"ls", filepath.Join(dir, "many")}},
			{"find -type d in it", []string{"find", dir, "-type", "d"}},
		} {
			t0 := time.Now()
			run(c.args[0], c.args[1:]...)
			record(fmt.Sprintf("%s, %d nodes", c.name, *lsN), "-", rep, time.Since(t0), 0, 0)
		}
	}
	for i := 0; i < 20; i++ {
		run("ls", "-RA", dir)
	}
	rss, hwm := procMemory(pid)
	fmt.Fprintf(os.Stderr, "  tree server after %d listings of %d nodes: RSS %d MiB, peak %d MiB\n", 3*(*reps)+20, *lsN, rss>>10, hwm>>10)
	samples = append(samples, sample{fmt.Sprintf("tree server peak RSS, %d nodes", *lsN), "-", 1, 0, 0, hwm})
}

// treeServerPid finds the server of the tree mounted on dir in the state
// root's log of tree servers.
func treeServerPid(dir string) int {
	data, err := os.ReadFile(filepath.Join(os.Getenv("CRTREE_ROOT"), "logs", "tree-mounts.log"))
	must(err)
	re := regexp.MustCompile(regexp.QuoteMeta("crtree tree "+dir+" [") + `(\d+)\]: \S+ \S+ mounted`)
	ms := re.FindAllStringSubmatch(string(data), -1)
	if len(ms) == 0 {
		fatal("no server for the tree on %s in the log", dir)
	}
	pid, _ := strconv.Atoi(ms[len(ms)-1][1])
	return pid
}

// procMemory returns a process's resident and peak resident memory, KiB.
func procMemory(pid int) (rss, hwm int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(err)
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

// unmountTree detaches the bench's tree mount, if there is one.
func unmountTree() {
	unix.Unmount(treeMount(), unix.MNT_DETACH)
}
