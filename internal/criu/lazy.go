package criu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Post-copy ("lazy pages"): a dump with DumpOptions.LazyPages leaves the
// memory of the processes out of its images and, once every other image
// is written, serves it as CRIU's page server on a socket; a restore with
// RestoreOptions.LazyPages runs a lazy-pages daemon on the other end of
// that socket, which fills the restored processes' memory through
// userfaultfd: the pages they touch first, the rest in the background.
// The processes run as soon as CRIU has restored everything else.
//
// The source's CRIU keeps its processes frozen while it serves their
// pages: it kills them once the daemon has them all and says so
// (PS_IOV_FORCE_CLOSE), and resumes them if the transfer fails.

// LazyPages is the lazy-pages daemon of a restore: it runs until every
// page has arrived, or the transfer failed. (It also hands each set of
// copies of the userfaultfds described below to a keeper, keeper.go.) Its page server connection
// goes through a pageProxy, which has the last word on whether the
// transfer succeeded.
//
// Closing a userfaultfd that has not delivered every page would let the
// processes read zeros where their memory was (the kernel fills an
// unregistered range with zero pages), so LazyPages holds its own copy of
// each of the daemon's userfaultfds while the daemon runs (taken at
// pre-resume, then again every holdEvery for those of processes forked
// since): if the daemon dies first, the processes wait at their next
// missing page instead, until Release, which the caller calls only once
// it has killed them, or once Wait said every page arrived (the copies
// go by themselves once the daemon has ended well). A process
// forked less than holdEvery before the daemon dies can escape this.
type LazyPages struct {
	cmd      *exec.Cmd
	proxy    *pageProxy
	done     chan struct{} // the daemon has ended
	daemonOK bool
	log      string
	keepLogs string
	waitOnce sync.Once
	err      error

	mu    sync.Mutex
	uffds []*os.File
	// keeper, if set, gets a copy of each set of uffds (keeper.go).
	keeper *os.File
	// released: Release has run; hold takes no more copies.
	released bool
}

// holdEvery is how often LazyPages takes copies of the daemon's
// userfaultfds again.
const holdEvery = 100 * time.Millisecond

// startLazyPages starts `criu lazy-pages` for a restore from images,
// fetching pages from upstream through a pageProxy, and waits until it
// listens for the restore (in work, lazy-pages.socket).
func startLazyPages(bin, images, work, level, keepLogs string, upstream *os.File) (*LazyPages, error) {
	theirs, ours, err := SocketPair()
	if err != nil {
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	defer theirs.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		ours.Close()
		return nil, err
	}
	defer statusR.Close()
	// The first of ExtraFiles is descriptor 3, the second 4.
	args := []string{"lazy-pages", "-D", images, "-W", work, "-o", "lazy-pages.log",
		"-v" + strconv.Itoa(int(logLevel(level))), "--page-server", "--ps-socket", "3", "--status-fd", "4"}
	l := &LazyPages{cmd: exec.Command(bin, args...), log: filepath.Join(work, "lazy-pages.log"), keepLogs: keepLogs, done: make(chan struct{})}
	l.cmd.ExtraFiles = []*os.File{theirs, statusW}
	l.cmd.SysProcAttr = ownGroup()
	err = l.cmd.Start()
	statusW.Close()
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	l.proxy = newPageProxy(upstream, ours)
	go func() {
		defer close(l.done)
		l.daemonOK = l.cmd.Wait() == nil
	}()
	var b [1]byte
	if n, _ := statusR.Read(b[:]); n != 1 {
		if err := l.Wait(); err != nil {
			return nil, err
		}
		return nil, errors.New("criu lazy-pages: ended before it was ready")
	}
	return l, nil
}

// hold takes a copy of each userfaultfd the daemon holds, in place of
// those taken before: called once the restore has handed them all over,
// before the processes run, then every holdEvery until the daemon ends.
// The daemon lets a process's userfaultfd go once it has delivered all
// its pages (or the process ended): one it no longer holds needs no
// guard (a small tree gets its pages while CRIU finishes).
func (l *LazyPages) hold() error {
	pid := l.cmd.Process.Pid
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err == unix.ESRCH {
		return nil // the daemon has ended: Wait says how
	}
	if err != nil {
		return fmt.Errorf("criu lazy-pages: %w", err)
	}
	defer unix.Close(pidfd)
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil // it has ended since
	}
	var held []*os.File
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || target != "anon_inode:[userfaultfd]" {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err == unix.EBADF || err == unix.ESRCH {
			continue // let go since the listing: its pages are all in
		}
		if err != nil {
			closeAll(held)
			return fmt.Errorf("criu lazy-pages: hold its userfaultfd: %w", err)
		}
		held = append(held, os.NewFile(uintptr(fd), "userfaultfd"))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		closeAll(held)
		return nil
	}
	if l.keeper != nil {
		if err := sendKept(l.keeper, held); err != nil {
			// The keeper is gone: this process's own copies still guard.
			fmt.Fprintln(os.Stderr, "crtree: the keeper of the userfaultfds:", err)
			l.keeper.Close()
			l.keeper = nil
		}
	}
	closeAll(l.uffds)
	l.uffds = held
	return nil
}

// keepHolding takes the daemon's userfaultfds again every holdEvery
// until it ends. If it ended well, every page it served has arrived, and
// the copies go at once: a process that then touches memory that was
// never dumped (never used before the dump) gets a zero page from the
// kernel, instead of waiting, held, until the whole subtree's memory has
// arrived and Release is called (a node stood still for up to 9 s so).
func (l *LazyPages) keepHolding() {
	t := time.NewTicker(holdEvery)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			if l.daemonOK {
				l.Release()
			}
			return
		case <-t.C:
			l.hold()
		}
	}
}

// Wait waits until the daemon has ended and the transfer is settled: nil
// once every page of every process it serves has arrived and the source
// has confirmed the end (see pageProxy.finish).
func (l *LazyPages) Wait() error {
	<-l.done
	l.waitOnce.Do(func() {
		err := l.proxy.finish(l.daemonOK)
		if !l.daemonOK {
			e := &Error{Op: "lazy-pages", Err: errors.New("the lazy-pages daemon failed"), Log: l.log, Quoted: logErrors(l.log)}
			e.Log = keepLog(l.log, l.keepLogs, "lazy-pages")
			err = e
		}
		l.err = err
	})
	return l.err
}

// Kill ends the daemon (the processes it served then wait at their next
// missing page, until Release) and the transfer, as failed.
func (l *LazyPages) Kill() {
	l.cmd.Process.Kill()
	l.Wait()
}

// Release drops the copies of the userfaultfds: call it once the daemon
// has delivered every page, or once the processes are dead.
func (l *LazyPages) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	closeAll(l.uffds)
	l.uffds = nil
	l.released = true
	if l.keeper != nil {
		releaseKept(l.keeper)
		l.keeper = nil
	}
}

// abandonKeeper closes the connection to the keeper without a release:
// the keeper kills the processes, then lets its copies go. For a restore
// that failed once its processes may have run.
func (l *LazyPages) abandonKeeper() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keeper != nil {
		l.keeper.Close()
		l.keeper = nil
	}
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// pageServerPipe is the size of the pipes CRIU's page server sets for a
// post-copy dump (PIPE_MAX_SIZE of criu/include/page-pipe.h: 819 pages):
// above fs.pipe-max-size, only a process with CAP_SYS_RESOURCE may. CRIU
// does not check that it could, and then fails the transfer at its first
// page request that is not at the start of one of its page pipes.
// The kernel rounds a pipe's size up to a power of two: 4 MiB.
const pageServerPipe = 4 << 20

// CheckLazyDump says whether CRIU's page server for a post-copy dump can
// work here: nil if its pipes may be as large as it sets them, given
// whether this process has CAP_SYS_RESOURCE.
func CheckLazyDump(capSysResource bool) error {
	if capSysResource {
		return nil
	}
	data, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		return err
	}
	max, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("fs.pipe-max-size: %w", err)
	}
	if max < pageServerPipe {
		return fmt.Errorf("CRIU's page server needs pipes of %d bytes, above fs.pipe-max-size (%d) for a process without CAP_SYS_RESOURCE, which crtree lacks here: raise it (sysctl -w fs.pipe-max-size=4194304)", pageServerPipe, max)
	}
	return nil
}
