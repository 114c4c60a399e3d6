package checkpoint

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// extraMemory measures, while a node is frozen, what CRIU archives of it
// beyond its processes' resident memory: the used bytes of every tmpfs
// mounted in the node (once per file system, with room for a tar header
// per inode), the size of every memfd, shared mapping or deleted file its
// processes hold by descriptor or mapping (once per inode), what the pipes
// they hold contain, and the SysV shared memory of its IPC namespace. It errs on the large side; what it
// cannot read it leaves out, and the dump's final check against the
// manifest's bound catches that.
func extraMemory(initPid int, pids []int) int64 {
	seen := map[[2]uint64]bool{}
	total := tmpfsBytes(initPid, seen)
	for _, pid := range pids {
		for _, dir := range []string{"fd", "map_files"} {
			total += heldBytes(fmt.Sprintf("/proc/%d/%s", pid, dir), seen)
		}
	}
	return total + sysvShmBytes(initPid)
}

// tmpfsBytes sums what the tmpfs mounts in pid's mount namespace hold.
func tmpfsBytes(pid int, seen map[[2]uint64]bool) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE ...
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fl := range fields {
			if fl == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) || fields[sep+1] != "tmpfs" {
			continue
		}
		p := fmt.Sprintf("/proc/%d/root%s", pid, unescapeMount(fields[4]))
		var st unix.Stat_t
		var fs unix.Statfs_t
		if unix.Stat(p, &st) != nil || unix.Statfs(p, &fs) != nil {
			continue
		}
		key := [2]uint64{st.Dev, 0}
		if seen[key] {
			continue
		}
		seen[key] = true
		total += int64(fs.Blocks-fs.Bfree) * fs.Bsize
		if fs.Files > fs.Ffree {
			total += int64(fs.Files-fs.Ffree) * 1024
		}
	}
	return total
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// heldBytes sums the sizes of the memfd, shared memory and deleted files
// linked from a /proc/PID/fd or map_files directory, which CRIU archives
// whole.
func heldBytes(dir string, seen map[[2]uint64]bool) int64 {
	des, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var total int64
	for _, d := range des {
		p := dir + "/" + d.Name()
		link, err := os.Readlink(p)
		if err == nil && strings.HasPrefix(link, "pipe:[") {
			total += pipeBytes(p, seen)
			continue
		}
		if err != nil || !strings.HasPrefix(link, "/memfd:") && !strings.HasSuffix(link, " (deleted)") {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		key := [2]uint64{st.Dev, st.Ino}
		if !seen[key] {
			seen[key] = true
			total += st.Size
		}
	}
	return total
}

// pipeBytes returns what the pipe behind the descriptor link p holds,
// which CRIU archives (once per pipe): opened through /proc without
// waiting (reading nothing), asked with FIONREAD (TIOCINQ).
func pipeBytes(p string, seen map[[2]uint64]bool) int64 {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || seen[[2]uint64{st.Dev, st.Ino}] {
		return 0
	}
	seen[[2]uint64{st.Dev, st.Ino}] = true
	n, err := unix.IoctlGetInt(fd, unix.TIOCINQ)
	if err != nil {
		return 0
	}
	return int64(n)
}

// sysvShmBytes sums the SysV shared memory segments of pid's IPC
// namespace, which CRIU archives whether attached or not. The kernel shows
// /proc/sysvipc/shm for the reader's namespace: a thread of its own joins
// pid's, reads, and is then discarded.
func sysvShmBytes(pid int) int64 {
	res := make(chan int64, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/ipc", pid))
		if err != nil {
			res <- 0
			return
		}
		defer ns.Close()
		if unix.Setns(int(ns.Fd()), unix.CLONE_NEWIPC) != nil {
			res <- 0
			return
		}
		data, err := os.ReadFile("/proc/sysvipc/shm")
		if err != nil {
			res <- 0
			return
		}
		var total int64
		for _, line := range strings.Split(string(data), "\n")[1:] {
			// key shmid perms size ...
			if f := strings.Fields(line); len(f) > 3 {
				if n, err := strconv.ParseInt(f[3], 10, 64); err == nil {
					total += n
				}
			}
		}
		res <- total
	}()
	return <-res
}
