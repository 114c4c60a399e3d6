package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/criu"
)

// The groundwork of a post-copy restore from an archive: a plain CRIU
// dump is restored with --lazy-pages, crtree serving its lazy pages
// (criu.IndexLazy, criu.ServeLazyPages) from a copy of its images, while
// in the images CRIU restores from they are holes: the process runs
// with its memory whole, so CRIU read none of them itself, and they came
// from crtree.
func TestLazyPagesFromImages(t *testing.T) {
	bin, err := criu.Find("")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	images, work := filepath.Join(dir, "images"), filepath.Join(dir, "work")
	os.Mkdir(images, 0o700)
	os.Mkdir(work, 0o700)
	logPath := filepath.Join(dir, "hog.log")
	hogLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	dumpHog(t, bin, logPath, images, work)

	// The lazy pages are served from a copy of the images; in the images
	// CRIU restores from, they are holes: CRIU must not read them.
	served := filepath.Join(dir, "served")
	if out, err := exec.Command("cp", "-a", images, served).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	x, err := criu.IndexLazy(served)
	if err != nil {
		t.Fatal(err)
	}
	if x.Pages() < 64<<20/4096 {
		t.Fatalf("%d lazy pages, fewer than the hog's 64 MiB", x.Pages())
	}
	var punchErr error
	x.Runs(func(image string, off, length int64) {
		f, err := os.OpenFile(filepath.Join(images, filepath.Base(image)), os.O_RDWR, 0)
		if err == nil {
			err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
			f.Close()
		}
		punchErr = errors.Join(punchErr, err)
	})
	if punchErr != nil {
		t.Fatal(punchErr)
	}

	// The daemon's proxy takes the end Go's poller serves (as a
	// supervisor's is), the page server the other.
	theirs, ours, err := criu.SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	serving := make(chan error, 1)
	src := &criu.ImageFiles{}
	defer src.Close()
	go func() { serving <- criu.ServeLazyPages(theirs, x, src) }()
	// ours is the daemon's proxy's from now on.
	pid, lazy, err := criu.RestoreLazy(bin, criu.RestoreOptions{ImagesDir: images, WorkDir: work, Root: "/", CgroupFD: -1, LazyPages: ours})
	if err != nil {
		theirs.Close()
		t.Fatal(err)
	}
	defer func() {
		unix.Kill(pid, unix.SIGKILL)
		unix.Wait4(pid, nil, 0, nil)
		lazy.Kill() // the daemon's end goes, which ends the serving
		lazy.Release()
		theirs.Close()
	}()
	unix.Kill(pid, unix.SIGUSR1)
	if !poll(30*time.Second, 50*time.Millisecond, func() bool { return strings.Contains(hogLog(), "check=") }) {
		select {
		case err := <-serving:
			t.Logf("the page server ended: %v", err)
		default:
		}
		t.Fatalf("the restored hog never checked its memory: %s", hogLog())
	}
	if !strings.Contains(hogLog(), "check=ok") {
		t.Fatalf("the restored hog's memory: %s", hogLog())
	}
	if err := lazy.Wait(); err != nil {
		t.Fatalf("the transfer: %v", err)
	}
	if err := <-serving; err != nil {
		t.Fatalf("serving the pages: %v", err)
	}
}

// dumpHog starts a 64 MiB memhog writing to logPath and dumps it with
// plain CRIU into images (CRIU ends it).
func dumpHog(t *testing.T, bin, logPath, images, work string) {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	hog := exec.Command(filepath.Join(binDir, "memhog"), "-mib", "64")
	hog.Stdout, hog.Stderr = logf, logf
	hog.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	ready := poll(10*time.Second, 20*time.Millisecond, func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "ready")
	})
	if ready {
		err = criu.Dump(bin, criu.DumpOptions{Pid: hog.Process.Pid, ImagesDir: images, WorkDir: work, BeforeKill: func() error { return nil }})
	}
	if !ready || err != nil {
		hog.Process.Kill() // CRIU resumes it after a failure
	}
	hog.Wait()
	if !ready {
		t.Fatal("memhog never got ready")
	}
	if err != nil {
		t.Fatal(err)
	}
}
