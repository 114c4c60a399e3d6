package criu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// CRIU refuses --stream in its RPC service (it cannot know that a
// streamer runs for each request), so streamed dumps and restores run the
// criu command instead of `criu swrk`, with the same options spelled as
// flags. The RPC's notification becomes an action script: a shell script
// that, before CRIU lets restored processes run, waits on a FIFO for the
// go-ahead.

// gateScript is the action script; %s is the FIFO's path.
const gateScript = `#!/bin/sh
# crtree: hold the restored processes until the images are verified.
[ "$CRTOOLS_SCRIPT_ACTION" = pre-resume ] || exit 0
read -r go < '%s' || exit 1
[ "$go" = y ]
`

// restoreCLI is Restore with o.Stream or o.BeforeResume.
func restoreCLI(bin string, o RestoreOptions) (int, error) {
	images, work, err := absDirs(o.ImagesDir, o.WorkDir)
	if err != nil {
		return 0, fmt.Errorf("criu restore: %w", err)
	}
	pidfile := filepath.Join(work, "restored.pid")
	args := []string{"restore", "-D", images, "-W", work, "-o", "restore.log",
		"-v" + strconv.Itoa(int(logLevel())), "--root", o.Root,
		"--restore-detached", "--restore-sibling", "--pidfile", pidfile,
		"--file-locks", "--manage-cgroups=ignore"}
	if o.Stream {
		args = append(args, "--stream")
	}
	for _, m := range o.Externals {
		args = append(args, "--external", "mnt["+m.Key+"]:"+m.HostPath)
	}
	if o.TCPEstablished {
		args = append(args, "--tcp-established", "--network-lock", "nftables")
	}
	if o.BeforeResume != nil {
		gate, script, err := makeGate(work)
		if err != nil {
			return 0, fmt.Errorf("criu restore: %w", err)
		}
		defer gate.Close()
		args = append(args, "--action-script", script)
		go func() {
			// The answer waits in the FIFO (held open until CRIU exits)
			// until the script reads it; CRIU may be gone by then.
			answer := "n\n"
			if o.BeforeResume() == nil {
				answer = "y\n"
			}
			gate.Write([]byte(answer))
		}()
	}
	cmd := exec.Command(bin, args...)
	if o.CgroupFD >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: o.CgroupFD}
	}
	if err := runCLI(cmd, "restore", work, o.KeepLogs, nil); err != nil {
		return 0, err
	}
	data, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, fmt.Errorf("criu restore: read the restored PID: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("criu restore: bad PID file %q", data)
	}
	return pid, nil
}

// dumpCLI is Dump with o.Stream.
func dumpCLI(bin string, o DumpOptions) error {
	images, work, err := absDirs(o.ImagesDir, o.WorkDir)
	if err != nil {
		return fmt.Errorf("criu dump: %w", err)
	}
	args := []string{"dump", "--stream", "-D", images, "-W", work, "-o", "dump.log",
		"-v" + strconv.Itoa(int(logLevel())), "-t", strconv.Itoa(o.Pid),
		"--leave-running", "--file-locks", "--manage-cgroups=ignore"}
	if o.FreezeCgroup != "" {
		args = append(args, "--freeze-cgroup", o.FreezeCgroup)
	}
	for _, m := range o.Externals {
		args = append(args, "--external", "mnt["+m.Mountpoint+"]:"+m.Key)
	}
	if o.TCPEstablished {
		args = append(args, "--tcp-established", "--network-lock", "nftables")
	}
	return runCLI(exec.Command(bin, args...), "dump", work, o.KeepLogs, o.OnStart)
}

// absDirs makes the images and work directories absolute: the criu
// command runs with its own working directory (-W).
func absDirs(images, work string) (string, string, error) {
	images, err := filepath.Abs(images)
	if err != nil {
		return "", "", err
	}
	work, err = filepath.Abs(work)
	return images, work, err
}

// runCLI runs a criu command and turns a failure into an *Error quoting
// its log (op.log in work).
func runCLI(cmd *exec.Cmd, op, work, keepLogs string, onStart func(int)) error {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Start()
	if err == nil {
		if onStart != nil {
			onStart(cmd.Process.Pid)
		}
		err = cmd.Wait()
	}
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = fmt.Errorf("criu exited with status %d", ee.ExitCode())
		if msg := strings.TrimSpace(out.String()); msg != "" && !strings.Contains(msg, "\n") {
			err = fmt.Errorf("%s", msg)
		}
	}
	log := filepath.Join(work, op+".log")
	e := &Error{Op: op, Err: err, Log: log, Quoted: logErrors(log)}
	e.Log = keepLog(log, keepLogs, op)
	return e
}

// makeGate creates the FIFO and the script that waits on it, and opens
// the FIFO for writing (read-write, so that opening does not wait for the
// script).
func makeGate(work string) (*os.File, string, error) {
	fifo := filepath.Join(work, "resume.fifo")
	os.Remove(fifo)
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		return nil, "", err
	}
	script := filepath.Join(work, "resume-gate.sh")
	if err := os.WriteFile(script, fmt.Appendf(nil, gateScript, fifo), 0o700); err != nil {
		return nil, "", err
	}
	gate, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		return nil, "", err
	}
	return gate, script, nil
}
