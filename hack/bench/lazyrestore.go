package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// restore --lazy against a plain restore of the same archive, for each
// size of -lazy-restore-mib: when the command returns with the node
// running, and when its memory has all arrived (the node is no longer
// held: ls says nothing of it), against the plain restore's wall time.
// A sleep node restored --lazy shows what CRIU alone costs.

// lazyRestoreSeries measures each size, and the sleep node.
func lazyRestoreSeries(sizes []int) {
	if len(sizes) == 0 {
		return
	}
	for rep := 1; rep <= *migrateReps; rep++ {
		lazyRestoreOnce(0, rep)
		for _, mib := range sizes {
			lazyRestoreOnce(mib, rep)
		}
	}
}

// lazyRestoreName is the name of a restore --lazy measurement (mib 0:
// the sleep node).
func lazyRestoreName(what string, mib int) string {
	if mib == 0 {
		return "restore of a sleep node: " + what
	}
	return fmt.Sprintf("restore %d MiB: %s", mib, what)
}

// lazyRestoreOnce dumps a node of mib MiB of random memory (a sleep for
// 0), restores it plainly, then --lazy.
func lazyRestoreOnce(mib, rep int) {
	path := "/lr"
	if mib == 0 {
		run(*crtreeBin, "run", path, "--", "sleep", "1e5")
	} else {
		startWith(path, hogBind(), mib, "random")
	}
	file := filepath.Join(*workDir, "lazy-restore.crtree")
	run(*crtreeBin, "dump", path, "-o", file)
	defer os.Remove(file)

	t0 := time.Now()
	run(*crtreeBin, "restore", "--keep-binds", file)
	record(lazyRestoreName("restore FILE", mib), "", rep, time.Since(t0), 0, 0)
	run(*crtreeBin, "rm", "-r", "-f", path)

	t0 = time.Now()
	run(*crtreeBin, "restore", "--lazy", "--keep-binds", file)
	record(lazyRestoreName("restore --lazy FILE returned", mib), "", rep, time.Since(t0), 0, 0)
	// Polled gently: each ls is a process, and on 2 cores a tight loop
	// of them slows the transfer it watches (by 30% and more here).
	for held(path) {
		time.Sleep(100 * time.Millisecond)
	}
	record(lazyRestoreName("restore --lazy FILE, memory arrived", mib), "", rep, time.Since(t0), 0, 0)
	run(*crtreeBin, "rm", "-r", "-f", path)
}

// held reports whether ls says a command holds the node at path.
func held(path string) bool {
	var es []struct {
		Path string `json:"path"`
		Busy string `json:"busy"`
	}
	must(json.Unmarshal([]byte(runOut(*crtreeBin, "ls", "-r", "--json")), &es))
	for _, e := range es {
		if e.Path == path {
			return e.Busy != ""
		}
	}
	return false
}

// lazyRestoreReport prints the series and the targets.
func lazyRestoreReport(sizes []int) {
	if len(sizes) == 0 {
		return
	}
	fmt.Printf("\nrestore --lazy FILE against restore FILE of the same archive, medians of %d (seconds)\n\n", *migrateReps)
	fmt.Printf("| node | restore FILE | --lazy returned (target <= 0.2 at 1 GiB) | --lazy memory arrived | arrived / restore (target <= 1) |\n|---|---|---|---|---|\n")
	for _, mib := range append([]int{0}, sizes...) {
		plain, _, _ := median(lazyRestoreName("restore FILE", mib), "")
		ret, _, _ := median(lazyRestoreName("restore --lazy FILE returned", mib), "")
		all, _, _ := median(lazyRestoreName("restore --lazy FILE, memory arrived", mib), "")
		name := fmt.Sprintf("%d MiB", mib)
		if mib == 0 {
			name = "sleep"
		}
		fmt.Printf("| %s | %.3f | %.3f | %.3f | %.2f |\n", name, plain, ret, all, all/plain)
	}
}
