package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// Version is crtree's version, recorded in archives.
var Version = "0.1.0-dev"

// Options are the choices of a dump or restore.
type Options struct {
	// CriuBin is the criu binary.
	CriuBin string
	// LeaveRunning keeps the subtree running after a dump instead of
	// killing and removing it.
	LeaveRunning bool
	// TCPEstablished lets CRIU dump and restore established TCP
	// connections. A dump without LeaveRunning then has CRIU kill the
	// processes itself once the archive is safe, their connections locked
	// and silent (see criuRun).
	TCPEstablished bool
	// InNode is set for a dump asked from inside a node: what it removes
	// must be restorable from there, so nodes with binds (which only the
	// host can provide again) are kept unless LeaveRunning.
	InNode bool
	// GhostLimit is the largest deleted file still open in a node (by
	// descriptor or mapping) that a dump carries, in bytes (CRIU's ghost
	// limit); 0 means DefaultGhostLimit. CRIU refuses to dump a node
	// holding a larger one.
	GhostLimit int64
	// NoStream stages CRIU's images in files instead of streaming them
	// between CRIU and the archive (for measuring, and as a way around).
	NoStream bool
	// NoDirect reads and writes archives through the page cache only.
	NoDirect bool
	// CriuLogLevel is CRIU's log level, "0" to "4"; "" is
	// criu.DefaultLogLevel.
	CriuLogLevel string
	// Progress, if set, is called as the operation advances.
	Progress func(Progress)
}

// DefaultGhostLimit is the ghost limit of a dump that sets none: deleted
// temporary files of databases and build tools are often tens or hundreds
// of MiB (CRIU's own default, 1 MiB, refuses most of them). The archive
// carries the file whole, as the node held it anyway.
const DefaultGhostLimit = 1 << 30

func (o *Options) ghostLimit() int64 {
	if o.GhostLimit > 0 {
		return o.GhostLimit
	}
	return DefaultGhostLimit
}

func (o *Options) progress(p Progress) {
	if o.Progress != nil {
		o.Progress(p)
	}
}

// freezeTimeout bounds how long a subtree may take to freeze.
const freezeTimeout = 10 * time.Second

// member is one node of the subtree being dumped.
type member struct {
	n      hier.Node
	path   hier.Path
	rel    string
	parent int
	status node.Status
	group  cgroup.Group
	dir    string               // staging directory of this node
	memory int64                // resident memory of its processes, what CRIU will write
	mounts []criu.ExternalMount // its external mounts, for CRIU and the manifest
	report NodeReport
}

// Dump checkpoints the node at p and all its descendants into out.
func Dump(h *node.Host, p hier.Path, out Output, o Options) (rep *Report, err error) {
	start := time.Now()
	if len(p) == 0 {
		return nil, errors.New("dump: / is the root of the tree, not a node")
	}
	// First of all, a marker: if this process dies from here on, whoever
	// finds it removes the partial archive (and later the staging
	// directory) and thaws what was frozen.
	op, err := h.BeginOp("dump")
	if err != nil {
		return nil, err
	}
	defer h.EndOp(op)
	if po, ok := out.(interface{ PartialPath() string }); ok && po.PartialPath() != "" {
		op.Remove = append(op.Remove, po.PartialPath())
		if err := h.SaveOp(op); err != nil {
			return nil, err
		}
	}
	criuVersion, err := criu.Version(o.CriuBin)
	if err != nil {
		return nil, err
	}
	members, top, err := collect(h, p)
	if err != nil {
		return nil, err
	}
	// The subtree is held from collect on: nothing is created in it or
	// removed from it that the archive would not hold. (A dump that
	// removes it ends the hold with the nodes.)
	defer h.Release(members[0].n.ID)
	if !o.LeaveRunning {
		if err := restorable(members, o.InNode); err != nil {
			return nil, fmt.Errorf("dump %s: %w; nothing was dumped (use --leave-running to archive it and keep it running)", p, err)
		}
	}
	if err := refuseAttached(members); err != nil {
		return nil, err
	}
	// Without --leave-running, CRIU streams the page images into the
	// archive (capture): the frozen time does not matter, since the
	// workload is killed after, and nothing large is staged. With it, CRIU
	// writes to the staging directory at full speed, so that the workload
	// is frozen no longer than CRIU takes.
	// With it, the page images are archived after every other image
	// (PagesLast), so that a restore reading a pipe can start CRIU before
	// they arrive. (Without it, writing them while CRIU dumps is faster
	// even for a migration through a pipe: dump | restore of 640 MiB took
	// 1.7 s that way against 2.1-2.3 s pages last, staged.)
	pagesLast := o.LeaveRunning
	stream := !pagesLast && !o.NoStream
	var need int64
	for _, m := range members {
		if stream {
			need += 16 << 20 // CRIU's other images
		} else {
			need += m.memory
		}
	}
	stage, err := h.StageDir("dump", need)
	if err != nil {
		return nil, fmt.Errorf("dump %s: %w", p, err)
	}
	defer h.RemoveLater(stage)
	op.Remove = append(op.Remove, stage)
	op.Frozen = append(op.Frozen, top.Path())
	for _, m := range members {
		op.Frozen = append(op.Frozen, m.group.Leaf().Path())
	}
	if err := h.SaveOp(op); err != nil {
		return nil, err
	}
	// What costs I/O is looked up once, before the freeze.
	for _, m := range members {
		if m.mounts, err = h.ExternalMountsFor(&m.n); err != nil {
			return nil, fmt.Errorf("dump %s: %w", m.path, err)
		}
	}
	for i, m := range members {
		m.dir = filepath.Join(stage, strconv.Itoa(i))
		for _, d := range []string{"criu", "work"} {
			if err := os.MkdirAll(filepath.Join(m.dir, d), 0o700); err != nil {
				return nil, err
			}
		}
	}

	// Freeze the subtree at one instant, then hand the freeze over to each
	// node's own process group, which CRIU needs to seize it.
	o.progress(Progress{Phase: "freeze", NodesTotal: len(members)})
	thawAll := func() {
		for _, m := range members {
			m.group.Leaf().Thaw()
		}
		top.Thaw()
	}
	if err := top.Freeze(freezeTimeout); err != nil {
		top.Thaw()
		return nil, fmt.Errorf("dump %s: %w", p, err)
	}
	frozenAt := time.Now()
	thawed := false
	defer func() {
		if err != nil && !thawed {
			thawAll()
		}
		if err != nil {
			out.Abort()
		}
	}()
	for _, m := range members {
		if err := m.group.Leaf().Freeze(freezeTimeout); err != nil {
			return nil, fmt.Errorf("dump %s: %w", m.path, err)
		}
	}
	// Again, now that no exec can start or end unseen.
	if err := refuseAttached(members); err != nil {
		return nil, err
	}
	if err := top.Thaw(); err != nil {
		return nil, fmt.Errorf("dump %s: %w", p, err)
	}

	rep = &Report{Path: p.String()}

	// The archive starts at once: the manifest and every node's files
	// (still frozen), while CRIU dumps the nodes; CRIU's page images are
	// streamed into the archive as they grow, in parts.
	packStart := time.Now()
	manifest := &archive.Manifest{
		Format: archive.FormatName, Version: archive.FormatVersion,
		CrtreeVersion: Version, CriuVersion: criu.FormatVersion(criuVersion),
		Kernel: kernelRelease(), Arch: runtime.GOARCH, Created: time.Now().UTC(),
		PagesLast: pagesLast, TCPEstablished: o.TCPEstablished,
	}
	var files [][]archive.Entry
	for i, m := range members {
		fe, err := archive.Scan(archive.FilesPrefix(i), h.UpperDir(&m.n))
		if err != nil {
			return nil, fmt.Errorf("dump %s: %w", m.path, err)
		}
		files = append(files, fe)
		m.report.Files = sumSizes(fe)
		rep.FileBytes += m.report.Files
		manifest.Nodes = append(manifest.Nodes, manifestNode(m))
	}

	// Large writes: the archive writer emits many small pieces (frame and
	// block headers), which would each be a system call.
	counter := &countingWriter{w: out}
	size := 1 << 20
	if b, ok := out.(interface{ Buffered() bool }); ok && b.Buffered() {
		size = 16 << 10
	}
	buffered := bufio.NewWriterSize(counter, size)
	w, err := archive.NewWriter(buffered, zstd.SpeedFastest)
	if err != nil {
		return nil, err
	}
	w.Progress = func(n int64) {
		o.progress(Progress{Phase: "pack", NodesTotal: len(members), Bytes: n})
	}

	var capt *capture
	if stream {
		if capt, err = startCapture(members); err != nil {
			return nil, fmt.Errorf("dump %s: %w", p, err)
		}
	}
	criuStart := time.Now()
	run := newCriuRun(countRunning(members), o.TCPEstablished && !o.LeaveRunning)
	criuExited := make(chan error, 1)
	go func() { criuExited <- dumpAll(h, op, members, o, stream, run) }()
	// Whatever happens below, a held CRIU gets a verdict (undo, unless the
	// archive was committed) and every CRIU is waited for before returning.
	exitErr, exited := error(nil), false
	waitExit := func() error {
		if !exited {
			exitErr, exited = <-criuExited, true
		}
		return exitErr
	}
	defer waitExit()
	defer run.release(errNoArchive)
	if capt != nil {
		// Runs before waitExit: a CRIU still writing sees its pipes close.
		defer capt.Close()
	}
	// CRIU has done its part once every image is written (it may still
	// wait for the verdict).
	var criuErr error
	criuFinished := false
	criuWritten := func() {
		criuErr, criuFinished = run.failed(), true
		rep.Criu = Duration(time.Since(criuStart))
	}

	if err := w.WriteManifest(manifest); err != nil {
		return nil, fmt.Errorf("dump %s: write archive: %w", p, err)
	}
	for _, fe := range files {
		if err := w.WriteEntries(fe); err != nil {
			return nil, fmt.Errorf("dump %s: write archive: %w", p, err)
		}
	}
	st := &streamer{w: w, members: members, done: map[string]int64{}}
	for capt != nil && !criuFinished {
		select {
		case <-run.ready:
			criuWritten()
		case part := <-capt.parts:
			if err := capt.write(w, part); err != nil {
				return nil, fmt.Errorf("dump %s: write archive: %w", p, err)
			}
		}
	}
	if capt != nil && criuErr == nil {
		if err := capt.finish(w); err != nil {
			return nil, fmt.Errorf("dump %s: write archive: %w", p, err)
		}
		st.pages = capt.pages
	}
	for !criuFinished {
		select {
		case <-run.ready:
			criuWritten()
			continue
		default:
		}
		// With --leave-running the workload waits for CRIU only (it is
		// thawed as soon as CRIU is done), so CRIU gets the CPU to itself;
		// otherwise streaming alongside CRIU shortens the whole dump.
		wrote := false
		if !pagesLast {
			if wrote, err = st.step(false); err != nil {
				return nil, fmt.Errorf("dump %s: write archive: %w", p, err)
			}
		}
		if !wrote {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if criuErr != nil {
		return nil, criuErr
	}
	// Memory and files are captured: a workload that goes on may run now.
	if o.LeaveRunning {
		thawAll()
		thawed = true
		rep.Frozen = Duration(time.Since(frozenAt))
	}
	if _, err := st.step(true); err != nil {
		return nil, fmt.Errorf("dump %s: write archive: %w", p, err)
	}
	for _, m := range members {
		rep.ImageBytes += m.report.Images
	}
	// A restore refuses an archive that holds more than its manifest
	// accounts for: such an archive must not replace the workload.
	if limit := archive.ExpansionLimit(manifest); w.Content() > limit {
		return nil, fmt.Errorf("dump %s: the archive holds %d bytes, more than the %d its manifest accounts for, so restore would refuse it; nothing was removed (a crtree bug: please report what the subtree holds)", p, w.Content(), limit)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("dump %s: write archive: %w", p, err)
	}
	if err := buffered.Flush(); err != nil {
		return nil, fmt.Errorf("dump %s: write archive: %w", p, err)
	}
	if err := out.Commit(); err != nil {
		return nil, fmt.Errorf("dump %s: %w", p, err)
	}
	rep.Pack = Duration(time.Since(packStart))
	rep.ArchiveBytes = counter.n
	for _, m := range members {
		rep.Nodes = append(rep.Nodes, m.report)
	}

	// The archive is safe: only now may the workload go. A held CRIU
	// kills its processes itself, leaving their connections locked.
	if !o.LeaveRunning {
		run.release(nil)
		if err := waitExit(); err != nil {
			h.Destroy(members[0].n.ID)
			return rep, fmt.Errorf("dump %s: archive written, but CRIU failed to end the dumped processes: %w", p, err)
		}
		if err := h.Destroy(members[0].n.ID); err != nil {
			return rep, fmt.Errorf("dump %s: archive written, but removing the dumped nodes failed: %w", p, err)
		}
		rep.Frozen = Duration(time.Since(frozenAt))
	}
	rep.Total = Duration(time.Since(start))
	return rep, nil
}

// collect snapshots the subtree at p and holds it for the dump, in one
// change of the tree.
func collect(h *node.Host, p hier.Path) ([]*member, cgroup.Group, error) {
	var members []*member
	var top cgroup.Group
	err := h.Store.Update(func(t *hier.Tree) error {
		members = nil
		n, err := t.Lookup(p)
		if err != nil {
			return err
		}
		if err := node.CheckFree(t, n, true); err != nil {
			return fmt.Errorf("dump %s: %w", p, err)
		}
		node.Hold(n, node.BusyDump)
		top = h.Group(t, n)
		index := map[string]int{}
		for i, m := range t.Subtree(n) {
			st := node.StatusOf(m)
			switch st.State {
			case hier.Creating:
				return fmt.Errorf("dump %s: node %s is still being created", p, t.PathOf(m))
			case hier.Incomplete:
				return fmt.Errorf("dump %s: node %s is incomplete (its creation was interrupted; remove it with rm -r -f)", p, t.PathOf(m))
			}
			mp := t.PathOf(m)
			rel := path.Join(mp[len(p):]...)
			parent := -1
			if i > 0 {
				parent = index[m.Parent]
			}
			index[m.ID] = i
			mem := &member{
				n: *m, path: mp, rel: rel, parent: parent, status: st, group: h.Group(t, m),
				report: NodeReport{Path: mp.String(), Running: st.State == hier.Running},
			}
			if st.State == hier.Running {
				pids, _ := mem.group.Leaf().Procs()
				for _, pid := range pids {
					if info, err := node.ReadProc(pid); err == nil {
						mem.memory += info.RSS + info.Swap
					}
				}
			}
			members = append(members, mem)
		}
		return nil
	})
	return members, top, err
}

// restorable refuses a subtree whose archive this crtree could not
// restore: a dump that removes such nodes would lose them. It applies the
// refusals of Restore that depend on the archive alone, and for a dump
// from inside a node (inNode) those of a restore from there.
func restorable(members []*member, inNode bool) error {
	for _, m := range members {
		if err := nodeRestorable(m.path.String(), m.n.Spec, m.status.State == hier.Running); err != nil {
			return err
		}
		if inNode && len(m.n.Spec.Binds) > 0 {
			b := m.n.Spec.Binds[0]
			return fmt.Errorf("%s has a bind at %s, which a restore inside a node cannot provide", m.path, b.Target)
		}
	}
	return nil
}

// nodeRestorable is what Restore requires of one archived node, named
// path in messages.
func nodeRestorable(path string, spec hier.Spec, running bool) error {
	if spec.Rootfs != "" && running {
		return fmt.Errorf("%s runs on a --rootfs base, which restore does not support yet", path)
	}
	return nil
}

// refuseAttached fails when a crtree exec is still attached to a running
// node of the subtree: what it runs is not below the node's init, and
// CRIU would leave it out of the archive (and the dump would kill it).
func refuseAttached(members []*member) error {
	for _, m := range members {
		if m.status.State != hier.Running {
			continue
		}
		if info, ok := node.AttachedExec(m.group.Leaf(), m.n.Pid); ok {
			return fmt.Errorf("dump %s: process %d (%s) runs under crtree exec, which is still attached; let it end or stop it, then dump again",
				m.path, info.PID, info.Cmd)
		}
	}
	return nil
}

// countRunning is how many members CRIU dumps.
func countRunning(members []*member) int {
	n := 0
	for _, m := range members {
		if m.status.State == hier.Running {
			n++
		}
	}
	return n
}

// dumpAll runs one CRIU dump per running node, in parallel, each reported
// to run once written or ended.
func dumpAll(h *node.Host, op *node.Op, members []*member, o Options, stream bool, run *criuRun) error {
	var wg sync.WaitGroup
	errs := make([]error, len(members))
	sem := make(chan struct{}, max(2, runtime.NumCPU()))
	done := 0
	var mu sync.Mutex
	for i, m := range members {
		if m.status.State != hier.Running {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			var freeSlot sync.Once
			leave := func() { freeSlot.Do(func() { <-sem }) }
			defer leave()
			t0 := time.Now()
			var reported atomic.Bool
			report := func(err error) {
				if reported.Swap(true) {
					return
				}
				m.report.Criu = Duration(time.Since(t0))
				mu.Lock()
				done++
				o.progress(Progress{Phase: "criu", NodesDone: done, NodesTotal: len(members)})
				mu.Unlock()
				run.end(err)
			}
			var beforeKill func() error
			if run.hold {
				beforeKill = func() error {
					// A held CRIU waits for the whole subtree's archive:
					// it must not keep others from starting meanwhile.
					leave()
					report(nil)
					return run.wait()
				}
			}
			err := criu.Dump(o.CriuBin, criu.DumpOptions{
				Pid:            m.n.Pid,
				ImagesDir:      filepath.Join(m.dir, "criu"),
				WorkDir:        filepath.Join(m.dir, "work"),
				FreezeCgroup:   m.group.Leaf().Path(),
				ExternalMounts: m.mounts,
				TCPEstablished: o.TCPEstablished,
				OwnNetwork:     m.n.Spec.Net == hier.NetNone,
				GhostLimit:     o.ghostLimit(),
				LogLevel:       o.CriuLogLevel,
				KeepLogs:       h.LogDir(),
				// While CRIU runs, the dump counts as running even if
				// this process dies: nothing is thawed or removed under it.
				OnStart:    func(pid int) { h.AddHelper(op, pid) },
				Stream:     stream,
				BeforeKill: beforeKill,
			})
			if err != nil {
				errs[i] = fmt.Errorf("dump %s: %w", m.path, dumpHint(err, o.ghostLimit()))
			}
			report(errs[i])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dumpHint adds to a CRIU refusal the user can act on what to do.
func dumpHint(err error, ghostLimit int64) error {
	var ce *criu.Error
	if !errors.As(err, &ce) {
		return err
	}
	switch {
	case ce.GhostTooLarge():
		ce.Hint = fmt.Sprintf("the limit is %d bytes; dump --ghost-limit SIZE carries larger deleted files", ghostLimit)
	case ce.Says("Can't lookup mount="):
		ce.Hint = "a process of the node holds a file from outside the node, often the stdin, stdout or stderr a `crtree exec` gave a background job: start such jobs with their stdio inside the node (</dev/null >/dev/null 2>&1, or a file), or end them, then dump again"
	case ce.Says("External socket is used"):
		ce.Hint = "a process of the node is connected to a socket outside it, such as an in-node crtree command (logs -f, exec) still talking to its supervisor: let it end, then dump again"
	}
	return err
}

func manifestNode(m *member) archive.Node {
	n := archive.Node{
		Path: m.rel, Name: m.n.Name, Parent: m.parent, Running: m.status.State == hier.Running,
		Spec: archiveSpec(m.n.Spec), Hostname: m.n.Spec.Hostname, Created: m.n.Created,
		Files: m.report.Files, ExternalMounts: archiveExternalMounts(m.mounts),
	}
	if n.Hostname == "" {
		n.Hostname = m.n.Name
	}
	if !n.Running {
		n.ExitCode = m.status.ExitCode
	}
	if n.Running {
		pids, _ := m.group.Leaf().Procs()
		for _, pid := range pids {
			if info, err := node.ReadProc(pid); err == nil {
				n.Procs = append(n.Procs, archive.Proc{PID: info.NSPid, Cmd: info.Cmd})
				n.Memory += info.RSS + info.Swap
			}
		}
		n.ExtraMemory = extraMemory(m.n.Pid, pids)
	}
	return n
}

func sumSizes(es []archive.Entry) int64 {
	var n int64
	for _, e := range es {
		n += e.Size
	}
	return n
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

type countingWriter struct {
	w interface{ Write([]byte) (int, error) }
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// partSize is the size of the parts in which page images are streamed
// while CRIU writes them (one checksum piece each).
const partSize = archive.PieceSize

// streamer moves CRIU's images from the staging directories into the
// archive: while CRIU runs, whole parts of the page images that have been
// written; at the end, every other image and then the rest of the pages.
type streamer struct {
	w       *archive.Writer
	members []*member
	done    map[string]int64 // image path -> bytes archived
	pages   []int64          // page image bytes a capture archived, per node
}

// step archives what is ready. With final, CRIU has finished and every
// image is complete.
func (s *streamer) step(final bool) (bool, error) {
	wrote := false
	var images []archive.Entry
	for i, m := range s.members {
		if m.status.State != hier.Running {
			continue
		}
		dir := filepath.Join(m.dir, "criu")
		if !final {
			des, _ := os.ReadDir(dir)
			for _, d := range des {
				name := d.Name()
				if !archive.IsPageImage(name) {
					continue
				}
				path := filepath.Join(dir, name)
				fi, err := os.Stat(path)
				if err != nil {
					continue
				}
				for s.done[path]+partSize <= fi.Size() {
					if err := s.w.WritePart(archive.ImagesPrefix(i)+"/"+name, path, s.done[path], partSize); err != nil {
						return wrote, err
					}
					s.done[path] += partSize
					wrote = true
				}
			}
			continue
		}
		ie, err := archive.ScanFlat(archive.ImagesPrefix(i), dir)
		if err != nil {
			return wrote, err
		}
		// CRIU writes inventory.img last: without it the images are not
		// whole, and the archive must not replace the workload.
		if !hasImage(ie, "inventory.img") {
			return wrote, fmt.Errorf("CRIU's images of %s are incomplete (no inventory.img)", m.path)
		}
		m.report.Images = sumSizes(ie)
		if s.pages != nil {
			m.report.Images += s.pages[i]
		}
		images = append(images, ie...)
	}
	if !final || len(images) == 0 {
		return wrote, nil
	}
	// Every image but the pages first, then the rest of the pages: a
	// restore from a file reads the former first (the archive's index
	// points at them) and hands CRIU the pages as they come off the disk.
	if err := s.w.MarkMeta(); err != nil {
		return wrote, err
	}
	for _, pages := range []bool{false, true} {
		for _, e := range images {
			if archive.IsPageImage(e.Name) != pages {
				continue
			}
			off := s.done[e.Path]
			switch {
			case off == 0:
				if err := s.w.WriteEntries([]archive.Entry{e}); err != nil {
					return wrote, err
				}
			case e.Size > off:
				if err := s.w.WritePart(e.Name, e.Path, off, e.Size-off); err != nil {
					return wrote, err
				}
			case e.Size < off:
				return wrote, fmt.Errorf("%s shrank while CRIU wrote it", e.Path)
			}
			wrote = true
		}
	}
	return wrote, nil
}

func hasImage(es []archive.Entry, name string) bool {
	for _, e := range es {
		if path.Base(e.Name) == name {
			return true
		}
	}
	return false
}
