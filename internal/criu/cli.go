package criu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// CRIU refuses --stream in its RPC service (it cannot know that a
// streamer runs for each request), so streamed dumps and every restore
// run the criu command instead of `criu swrk`, with the same options
// spelled as flags. The RPC's notification becomes an action script: a
// shell script that, before CRIU lets restored processes run, says so on
// one FIFO and waits on another for the go-ahead (resumeGate), or, after
// a dump wrote every image, asks through pipes whether to kill the
// processes (killGate).

// restoreCLI is Restore: the criu command, held at pre-resume with
// o.BeforeResume; with o.LazyPages, its lazy-pages daemon too, which
// outlives it.
func restoreCLI(bin string, o RestoreOptions) (pid int, lazy *LazyPages, err error) {
	if k := o.LazyKeeper; k != nil {
		// Until the daemon takes it over, no process was restored:
		// nothing for the keeper to kill.
		defer func() {
			if o.LazyKeeper != nil {
				releaseKept(k)
			}
		}()
	}
	images, work, err := absDirs(o.ImagesDir, o.WorkDir)
	if err != nil {
		return 0, nil, fmt.Errorf("criu restore: %w", err)
	}
	pidfile := filepath.Join(work, "restored.pid")
	args := append(cliCommon("restore", images, work, o.LogLevel, o.TCPEstablished, o.OwnNetwork),
		"--root", o.Root, "--restore-detached", "--restore-sibling", "--pidfile", pidfile)
	if o.Stream {
		args = append(args, "--stream")
	}
	if o.LazyPages != nil {
		// Its own variable: a failed return sets lazy to nil before
		// the deferred kill runs (and err is the result, not shadowed).
		var daemon *LazyPages
		if daemon, err = startLazyRestore(bin, images, work, &o); err != nil {
			return 0, nil, err
		}
		defer func() {
			if err != nil {
				// The processes may have run: the keeper kills them
				// before its copies go.
				daemon.Kill()
				daemon.abandonKeeper()
				daemon.Release()
			}
		}()
		lazy = daemon
		args = append(args, "--lazy-pages")
	}
	for _, m := range o.ExternalMounts {
		args = append(args, "--external", "mnt["+m.Key+"]:"+m.HostPath)
	}
	var extra []*os.File
	if o.Netns != nil {
		// The first of cmd.ExtraFiles is the command's descriptor 3.
		extra = append(extra, o.Netns)
		args = append(args, "--inherit-fd", "fd[3]:"+NetnsKey)
	}
	var gate *resumeGate
	if o.BeforeResume != nil {
		if gate, err = openResumeGate(work, o.CgroupFD, o.BeforeResume); err != nil {
			return 0, nil, fmt.Errorf("criu restore: %w", err)
		}
		args = append(args, "--action-script", gate.script)
		go gate.serve()
	}
	cmd := exec.Command(bin, args...)
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = ownGroup()
	if o.CgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, o.CgroupFD
	}
	var onStart func(int)
	if gate != nil {
		onStart = gate.started
	}
	stopWatch := watchLazy(lazy, gate)
	err = runCLI(cmd, "restore", work, o.KeepLogs, onStart)
	stopWatch()
	if gate != nil {
		err = gate.finish(err)
	}
	if err != nil {
		return 0, nil, err
	}
	if pid, err = readPidFile(pidfile); err != nil {
		return 0, nil, err
	}
	return pid, lazy, nil
}

// startLazyRestore starts the lazy-pages daemon of a post-copy restore
// and makes o.BeforeResume first give it every userfaultfd, before the
// processes run.
func startLazyRestore(bin, images, work string, o *RestoreOptions) (*LazyPages, error) {
	lazy, err := startLazyPages(bin, images, work, o.LogLevel, o.KeepLogs, o.LazyPages)
	if err != nil {
		return nil, err
	}
	lazy.keeper, o.LazyKeeper = o.LazyKeeper, nil
	before := o.BeforeResume
	o.BeforeResume = func(criuPid int) error {
		if err := lazy.hold(); err != nil {
			return err
		}
		go lazy.keepHolding()
		if before == nil {
			return nil
		}
		return before(criuPid)
	}
	return lazy, nil
}

// readPidFile reads the PID CRIU wrote of the restored tree's root.
func readPidFile(pidfile string) (int, error) {
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

// watchLazy kills the restore (CRIU and the processes it restored, through
// the gate's cgroup) if its lazy-pages daemon fails before it ends: a restored
// process that touches a page would wait for it forever. stop ends the
// watch, once the restore has ended.
func watchLazy(lazy *LazyPages, gate *resumeGate) (stop func()) {
	if lazy == nil || gate == nil {
		return func() {}
	}
	restoring := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-lazy.done:
			// Well, it has delivered every page already (a small tree).
			if !lazy.daemonOK {
				gate.killAll()
			}
		case <-restoring:
		}
	}()
	return func() {
		close(restoring)
		<-watched
	}
}

// dumpCLI is Dump with o.Stream or o.LazyPages.
func dumpCLI(bin string, o DumpOptions) error {
	images, work, err := absDirs(o.ImagesDir, o.WorkDir)
	if err != nil {
		return fmt.Errorf("criu dump: %w", err)
	}
	args := dumpArgs(o, images, work)
	if o.BeforeKill == nil {
		return runCLI(exec.Command(bin, args...), "dump", work, o.KeepLogs, o.OnStart)
	}
	gate, err := openKillGate(work, o.BeforeKill)
	if err != nil {
		return fmt.Errorf("criu dump: %w", err)
	}
	args = append(args, "--action-script", gate.script)
	cmd := exec.Command(bin, args...)
	onStart := o.OnStart
	if o.LazyPages != nil {
		// CRIU takes the end of its page server's connection for success
		// and kills its processes: if crtree dies, CRIU must die with it
		// (the processes stay frozen, for recovery to thaw), not see the
		// end of the relay. Pdeathsig follows the thread that starts it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd.SysProcAttr = ownGroup()
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
		// The page server's socket is the command's descriptor 3; once
		// CRIU has it, the caller's end sees CRIU's end when CRIU ends.
		cmd.ExtraFiles = []*os.File{o.LazyPages}
		onStart = func(pid int) {
			o.LazyPages.Close()
			if o.OnStart != nil {
				o.OnStart(pid)
			}
		}
	}
	err = runCLI(cmd, "dump", work, o.KeepLogs, onStart)
	if o.LazyPages != nil {
		o.LazyPages.Close()
	}
	if held := gate.close(); held != nil {
		return fmt.Errorf("criu dump: undone: %w", held)
	}
	return err
}

// cliCommon are commonOpts as flags of the criu command op.
func cliCommon(op, images, work, level string, tcp, ownNet bool) []string {
	args := []string{op, "-D", images, "-W", work, "-o", op + ".log",
		"-v" + strconv.Itoa(int(logLevel(level))), "--file-locks", "--manage-cgroups=ignore"}
	if tcp {
		args = append(args, "--tcp-established")
	}
	if tcp || ownNet {
		args = append(args, "--network-lock", "nftables")
	}
	return args
}

// dumpArgs are dumpOpts as flags of the criu command.
func dumpArgs(o DumpOptions, images, work string) []string {
	args := append(cliCommon("dump", images, work, o.LogLevel, o.TCPEstablished, o.OwnNetwork),
		"-t", strconv.Itoa(o.Pid))
	if o.Stream {
		args = append(args, "--stream")
	}
	if o.LazyPages != nil {
		args = append(args, "--lazy-pages", "--ps-socket", "3")
	}
	if o.BeforeKill == nil {
		args = append(args, "--leave-running")
	}
	if o.FreezeCgroup != "" {
		args = append(args, "--freeze-cgroup", o.FreezeCgroup)
	}
	if o.GhostLimit > 0 {
		args = append(args, "--ghost-limit", strconv.FormatUint(uint64(ghostLimit(o.GhostLimit)), 10))
	}
	for _, m := range o.ExternalMounts {
		args = append(args, "--external", "mnt["+m.Mountpoint+"]:"+m.Key)
	}
	for _, m := range o.SkipMounts {
		args = append(args, "--skip-mnt", m)
	}
	if o.ExternalNetns != 0 {
		args = append(args, "--external", externalNetns(o.ExternalNetns))
	}
	return args
}

// killScript is the action script of a dump whose processes CRIU kills:
// at post-dump it tells crtree that every image is written and waits for
// the verdict, each through a pipe that crtree holds open and the script
// reaches through /proc (%[1]d is crtree's PID, %[2]d and %[3]d the pipes'
// descriptors). If crtree is gone, opening or reading fails and CRIU
// undoes the dump: the processes go on.
const killScript = `#!/bin/sh
# crtree: kill the dumped processes only once their archive is safe.
[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0
echo > /proc/%[1]d/fd/%[2]d || exit 1
read -r go < /proc/%[1]d/fd/%[3]d || exit 1
[ "$go" = y ]
`

// killGate runs a dump's BeforeKill when its killScript says CRIU got to
// post-dump, and answers the script.
type killGate struct {
	script          string
	arrived, answer [2]*os.File // read and write ends
	done            chan struct{}
	err             error // BeforeKill's, once done
}

// openKillGate writes the script into work and starts waiting for it.
func openKillGate(work string, beforeKill func() error) (*killGate, error) {
	g := &killGate{script: filepath.Join(work, "kill-gate.sh"), done: make(chan struct{})}
	var err error
	if g.arrived[0], g.arrived[1], err = os.Pipe(); err != nil {
		return nil, err
	}
	if g.answer[0], g.answer[1], err = os.Pipe(); err != nil {
		g.arrived[0].Close()
		g.arrived[1].Close()
		return nil, err
	}
	script := fmt.Sprintf(killScript, os.Getpid(), fdOf(g.arrived[1]), fdOf(g.answer[0]))
	if err := os.WriteFile(g.script, []byte(script), 0o700); err != nil {
		close(g.done)
		g.close()
		return nil, err
	}
	go func() {
		defer close(g.done)
		var b [1]byte
		if n, _ := g.arrived[0].Read(b[:]); n == 0 {
			return // CRIU ended before post-dump
		}
		g.err = beforeKill()
		verdict := "y\n"
		if g.err != nil {
			verdict = "n\n"
		}
		g.answer[1].Write([]byte(verdict))
	}()
	return g, nil
}

// close is called once CRIU has exited: it ends the wait for the script
// and returns BeforeKill's error, if it was called.
func (g *killGate) close() error {
	g.arrived[1].Close()
	<-g.done
	g.arrived[0].Close()
	g.answer[0].Close()
	g.answer[1].Close()
	return g.err
}

// fdOf is f's descriptor, without switching f to blocking mode (as Fd
// does).
func fdOf(f *os.File) int {
	n := -1
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { n = int(fd) })
	}
	return n
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
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = ownGroup()
	}
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

// ownGroup starts CRIU in a process group of its own: a Ctrl-C on
// crtree's terminal must not kill CRIU half-way (crtree cancels and lets
// it finish or undo), and a signal to crtree's group does not reach it.
func ownGroup() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
