package node

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// StartTime returns the start time of a process in clock ticks after boot
// (field 22 of /proc/PID/stat), which tells a process from a later one that
// reused its PID.
func StartTime(pid int) (uint64, error) {
	fields, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(fields[22-3], 10, 64)
}

// statFields returns the fields of /proc/PID/stat from field 3 (state)
// on: fields[N-3] is field N.
func statFields(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 22-3+1 {
		return nil, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return fields, nil
}

// pfExiting is the kernel's PF_EXITING task flag.
const pfExiting = 0x4

// exiting reports whether the process pid that started at start is on
// its way out (killed or ended, and not yet reaped: the init of a PID
// namespace stays so, out of its cgroup, until every process of its
// namespace is reaped), and the status it exits with, 128+N for signal N.
func exiting(pid int, start uint64) (int, bool) {
	fields, err := statFields(pid)
	// The flags are field 9 and the exit code (as wait reports it) field
	// 52.
	if err != nil || len(fields) < 52-3+1 || fields[22-3] != strconv.FormatUint(start, 10) {
		return 0, false
	}
	flags, err1 := strconv.ParseUint(fields[9-3], 10, 64)
	ws, err2 := strconv.Atoi(fields[52-3])
	if err1 != nil || err2 != nil || flags&pfExiting == 0 {
		return 0, false
	}
	if sig := ws & 0x7f; sig != 0 {
		return 128 + sig, true
	}
	return ws >> 8 & 0xff, true
}

// Alive reports whether the process pid that started at start still
// exists (and is not a zombie).
func Alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := StartTime(pid)
	if err != nil || st != start {
		return false
	}
	return procState(pid) != 'Z'
}

func procState(pid int) byte {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return 0
	}
	return data[i+2]
}

// ProcInfo describes one process of a node as seen from the host.
type ProcInfo struct {
	// PID is the host PID; NSPid the PID inside the node's PID namespace;
	// PPid the host PID of its parent.
	PID   int    `json:"pid"`
	PPid  int    `json:"ppid,omitempty"`
	NSPid int    `json:"nspid"`
	Cmd   string `json:"cmd"`
	// RSS is the resident memory in bytes; Swap what is swapped out
	// (CRIU dumps both).
	RSS  int64 `json:"rss"`
	Swap int64 `json:"swap,omitempty"`
}

// ReadProc returns what /proc says of pid.
func ReadProc(pid int) (ProcInfo, error) {
	info, err := readStatus(pid)
	if err != nil {
		return info, err
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	info.Cmd = strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))
	if info.Cmd == "" {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		info.Cmd = "[" + strings.TrimSpace(string(comm)) + "]"
	}
	return info, nil
}

// readStatus is what /proc/PID/status says of pid (ReadProc without the
// command line).
func readStatus(pid int) (ProcInfo, error) {
	info := ProcInfo{PID: pid}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return info, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		switch k {
		case "PPid":
			if len(f) > 0 {
				info.PPid, _ = strconv.Atoi(f[0])
			}
		case "NSpid":
			if len(f) > 0 {
				info.NSPid, _ = strconv.Atoi(f[len(f)-1])
			}
		case "VmRSS", "VmSwap":
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				if k == "VmRSS" {
					info.RSS = kb * 1024
				} else {
					info.Swap = kb * 1024
				}
			}
		}
	}
	return info, nil
}
