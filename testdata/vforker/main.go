// Command vforker keeps its process waiting for vfork children most of
// the time, as a shell running external commands in a loop does (dash
// starts them with vfork), but for long: each child sleeps 40 ms before
// it exits, the parent 10 ms between children. A process waiting for its
// vfork child is in uninterruptible sleep (state D), which CRIU cannot
// seize; if the freeze of a dump catches a child before it exits, the
// parent stays that way until the thaw. The end-to-end tests dump it.
package main

import (
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	ts := syscall.Timespec{Nsec: 40e6}
	fmt.Println("ready")
	for {
		// clone(CLONE_VFORK) without CLONE_VM: the child has a copy of
		// the address space and only makes raw system calls.
		pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, syscall.CLONE_VFORK|uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
		if errno != 0 {
			fmt.Fprintln(os.Stderr, "vforker: clone:", errno)
			os.Exit(1)
		}
		if pid == 0 {
			syscall.RawSyscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
		}
		var ws syscall.WaitStatus
		syscall.Wait4(int(pid), &ws, 0, nil)
		time.Sleep(10 * time.Millisecond)
	}
}
