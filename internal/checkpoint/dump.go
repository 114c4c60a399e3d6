package checkpoint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"

	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/image"
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
	// NoDirect reads archives (restore) through the page cache only, never
	// with O_DIRECT. (Writing is set by OutputOptions.NoDirect.)
	NoDirect bool
	// WithImage makes a dump carry the images its nodes run on (their
	// configs and layers), so that a state root without them can restore
	// it; a restore imports those it lacks.
	WithImage bool
	// CriuLogLevel is CRIU's log level, "0" to "4"; "" is
	// criu.DefaultLogLevel.
	CriuLogLevel string
	// Progress, if set, is called as the operation advances.
	Progress func(Progress)
	// Lazy, if set, makes a dump post-copy: CRIU leaves the memory of
	// the processes out of the archive and serves it, once the archive is
	// committed, through Lazy's sockets, the processes frozen meanwhile;
	// they are ended once all of it has arrived (the dump returns then),
	// and resumed if the transfer fails (LazyError). Not with
	// LeaveRunning. For a restore: where each node's memory comes from.
	Lazy PageServers
	// LazyFromFile makes a restore from an archive file post-copy
	// (restore --lazy): it returns once the nodes run, and each node's
	// supervisor feeds its memory from the archive, every piece verified
	// before any page of it is used (see lazyfile.go). Not with Lazy.
	LazyFromFile bool
}

// PageServers are the channels of a post-copy dump or restore (see
// Options.Lazy).
type PageServers interface {
	// Socket returns, for the archive's node i, a connected socket: the
	// end on which the dump's CRIU serves its memory, or the end from
	// which the restore's lazy-pages daemon fetches it.
	Socket(node int) (*os.File, error)
	// Abort ends every transfer not complete yet as failed: a dump's
	// CRIUs then resume their processes. A dump calls it when it fails
	// before its commit.
	Abort()
}

// LazyError is the error of a post-copy dump whose memory transfer failed
// after the commit: the restored side had the subtree running, and the
// processes here were resumed from where they were frozen.
type LazyError struct {
	Err error
}

func (e *LazyError) Error() string { return e.Err.Error() }

func (e *LazyError) Unwrap() error { return e.Err }

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

// dumpNode is one node of the subtree being dumped.
type dumpNode struct {
	n      hier.Node
	index  int // in the manifest's nodes
	path   hier.Path
	rel    string
	parent int
	status node.Status
	group  cgroup.Group
	dir    string               // staging directory of this node
	memory int64                // resident memory of its processes, what CRIU will write
	mounts []criu.ExternalMount // its external mounts, for CRIU and the manifest
	trees  []string             // crtree tree mounts in it, which CRIU leaves out
	report NodeReport
}

// Dump checkpoints the node at p and all its descendants into out. The
// workload is frozen while CRIU dumps it; without LeaveRunning the nodes
// are removed once the archive is committed, and never before. On a
// failure before the commit, or when ctx is cancelled before it, nothing
// stands under out's name and the workload runs on.
func Dump(ctx context.Context, h *node.Host, p hier.Path, out Output, o Options) (rep *Report, err error) {
	d := &dumping{ctx: ctx, h: h, p: p, out: out, o: o, start: time.Now(), rep: &Report{Path: p.String()}}
	defer d.end(&err)
	defer func() {
		// Whatever failed once ctx was cancelled failed because of it.
		if err != nil && !d.committed && ctx.Err() != nil {
			err = fmt.Errorf("dump %s: %w; nothing was dumped", p, context.Cause(ctx))
		}
	}()
	steps := []func() error{
		d.prepare,     // a recovery marker, the subtree held, refusals
		d.stageDirs,   // where CRIU writes what is not streamed
		d.freeze,      // the whole subtree at one instant
		d.openArchive, // the manifest and every node's files
		d.runCRIU,     // CRIU dumps, its images archived as they come
		d.commit,      // the archive complete, synced, under its name
		d.finish,      // the workload thawed, or ended and removed
	}
	for _, step := range steps {
		if d.ctx.Err() != nil && !d.committed {
			return nil, context.Cause(d.ctx)
		}
		if err := step(); err != nil {
			if d.committed {
				return d.rep, err
			}
			return nil, err
		}
	}
	d.rep.Total = Duration(time.Since(d.start))
	return d.rep, nil
}

// dumping is a dump under way: what each step of Dump finds or makes.
type dumping struct {
	ctx   context.Context
	h     *node.Host
	p     hier.Path
	out   Output
	o     Options
	start time.Time
	rep   *Report

	op       *node.Op
	nodes    []*dumpNode
	top      cgroup.Group // the dumped node's cgroup, frozen first
	held     bool
	stage    string
	stream   bool // CRIU's page images go through a capture, not files
	frozen   bool
	frozenAt time.Time

	manifest  *archive.Manifest
	packStart time.Time
	files     [][]archive.Entry // each node's own files
	counter   *countingWriter
	buffered  *bufio.Writer
	w         *archive.Writer

	criu      *criuDumps
	committed bool
	carried   []*image.Carried // the images the archive carries (WithImage)
}

// prepare writes the recovery marker (if this process dies from here on,
// whoever finds it removes the partial archive and later the staging
// directory, and thaws what was frozen), then takes and holds the
// subtree, and refuses what could not be restored.
func (d *dumping) prepare() error {
	if len(d.p) == 0 {
		return errors.New("dump: / is the root of the tree, not a node")
	}
	var err error
	if d.op, err = d.h.BeginOp("dump"); err != nil {
		return err
	}
	if po, ok := d.out.(interface{ PartialPath() string }); ok && po.PartialPath() != "" {
		d.op.Remove = append(d.op.Remove, po.PartialPath())
		if err := d.h.SaveOp(d.op); err != nil {
			return err
		}
	}
	criuVersion, err := criu.Version(d.o.CriuBin)
	if err != nil {
		return err
	}
	// From here until end, nothing is created in the subtree or removed
	// from it that the archive would not hold. (A dump that removes it
	// ends the hold with the nodes.)
	if d.nodes, d.top, err = collect(d.h, d.p); err != nil {
		return err
	}
	d.held = true
	if err := d.lazyRefusals(); err != nil {
		return err
	}
	if !d.o.LeaveRunning {
		if err := restorable(d.nodes, d.o.InNode); err != nil {
			return fmt.Errorf("dump %s: %w; nothing was dumped (use --leave-running to archive it and keep it running)", d.p, err)
		}
	}
	if err := refuseAttached(d.nodes); err != nil {
		return err
	}
	if err := d.imagesKept(); err != nil {
		return err
	}
	if err := d.carryImages(); err != nil {
		return err
	}
	d.manifest = d.newManifest(criuVersion)
	d.stream = !d.manifest.PagesLast && !d.o.NoStream
	// What costs I/O is looked up once, before the freeze.
	for _, m := range d.nodes {
		if m.mounts, err = d.h.ExternalMountsFor(&m.n); err != nil {
			return fmt.Errorf("dump %s: %w", m.path, err)
		}
		if m.n.State == hier.Running {
			if m.trees, err = node.TreeMountsIn(m.n.Pid); err != nil {
				return fmt.Errorf("dump %s: %w", m.path, err)
			}
		}
	}
	return nil
}

// lazyRefusals refuses what a post-copy dump cannot do: keep the subtree
// running, and resume cleanly, after a failed transfer, processes whose
// network CRIU locked (established TCP connections, a network namespace
// of their own): CRIU lifts its lock only when the dump itself fails, not
// the transfer after it.
func (d *dumping) lazyRefusals() error {
	if d.o.Lazy == nil {
		return nil
	}
	if d.o.LeaveRunning || d.o.TCPEstablished {
		return fmt.Errorf("dump %s: post-copy is not for --leave-running or --tcp-established; nothing was dumped", d.p)
	}
	for _, m := range d.nodes {
		if m.status.State == hier.Running && m.n.Spec.OwnNet() {
			return fmt.Errorf("dump %s: post-copy: %s has a network of its own (--net %s), which CRIU locks and would leave locked if the memory transfer failed; migrate it without --lazy; nothing was dumped", d.p, m.path, m.n.Spec.Net)
		}
	}
	return nil
}

// newManifest starts the manifest: where the archive comes from and how
// its images are laid out; the nodes are added once they are frozen.
func (d *dumping) newManifest(criuVersion int) *archive.Manifest {
	return &archive.Manifest{
		Format: archive.FormatName, Version: archive.FormatVersion,
		CrtreeVersion: Version, CriuVersion: criu.FormatVersion(criuVersion),
		Kernel: kernelRelease(), Arch: runtime.GOARCH,
		// With --leave-running, CRIU writes the page images to the staging
		// directory at full speed, so that the workload is frozen no
		// longer than CRIU takes, and they are archived after every other
		// image, so that a restore reading a pipe can start CRIU before
		// they arrive. Without it, CRIU streams them into the archive
		// (capture): the frozen time does not matter, since the workload
		// is killed after, and nothing large is staged. (Writing them
		// while CRIU dumps is faster even for a migration through a pipe:
		// dump | restore of 640 MiB took 1.7 s that way against 2.1-2.3 s
		// pages last, staged.)
		PagesLast: d.o.LeaveRunning, TCPEstablished: d.o.TCPEstablished,
		Images: manifestImages(d.carried),
	}
}

// imagesKept refuses nodes whose image is no longer in the store: no
// restore could give them back.
func (d *dumping) imagesKept() error {
	var ids []string
	for _, m := range d.nodes {
		if m.n.Spec.Image != "" {
			ids = append(ids, m.n.Spec.Image)
		}
	}
	missing, err := d.h.Images.Missing(ids)
	if err != nil {
		return fmt.Errorf("dump %s: %w", d.p, err)
	}
	for _, m := range d.nodes {
		if id := m.n.Spec.Image; id != "" && slices.Contains(missing, id) {
			return fmt.Errorf("dump %s: %s runs on image %s, which is no longer in the image store, so no restore could give it back; nothing was dumped", d.p, m.path, id)
		}
	}
	return nil
}

// carryImages finds, for a dump WithImage, what the archive needs to
// carry each image its nodes run on.
func (d *dumping) carryImages() error {
	if !d.o.WithImage {
		return nil
	}
	seen := map[string]bool{}
	for _, m := range d.nodes {
		id := m.n.Spec.Image
		if id == "" || seen[id] {
			continue
		}
		seen[id] = true
		c, err := d.h.Images.Carry(id)
		if err != nil {
			return fmt.Errorf("dump %s: --with-image: %w; nothing was dumped", d.p, err)
		}
		d.carried = append(d.carried, c)
	}
	return nil
}

// manifestImages is how the manifest lists the images an archive
// carries.
func manifestImages(cs []*image.Carried) []archive.Image {
	var out []archive.Image
	for _, c := range cs {
		im := archive.Image{ID: c.Image.ID, Name: c.Image.Name, ConfigSize: c.Config.Size}
		for _, l := range c.Layers {
			im.Layers = append(im.Layers, archive.Layer{Digest: l.Digest, Size: l.Size})
		}
		out = append(out, im)
	}
	return out
}

// writeCarried writes the images the archive carries, after every
// node's members (so that a --leave-running workload runs again before
// they are written): each config, and each layer once.
func (d *dumping) writeCarried() error {
	written := map[string]bool{}
	for _, c := range d.carried {
		if err := d.w.WritePart(archive.ConfigMember(c.Image.ID), c.Config.Path, 0, c.Config.Size); err != nil {
			return fmt.Errorf("dump %s: write archive: %w", d.p, err)
		}
		for _, l := range c.Layers {
			if written[l.Digest] {
				continue
			}
			written[l.Digest] = true
			if err := d.w.WritePart(archive.LayerMember(l.Digest), l.Path, 0, l.Size); err != nil {
				return fmt.Errorf("dump %s: write archive: %w", d.p, err)
			}
			d.rep.CarriedBytes += l.Size
		}
		d.rep.CarriedBytes += c.Config.Size
	}
	return nil
}

// stageDirs makes the staging directory, a directory for each node's
// images and CRIU's work in it, and records it, and the cgroups the
// freeze will touch, in the marker.
func (d *dumping) stageDirs() error {
	var need int64
	for _, m := range d.nodes {
		if d.stream {
			need += 16 << 20 // CRIU's other images
		} else {
			need += m.memory
		}
	}
	stage, err := d.h.StageDir("dump", need)
	if err != nil {
		return fmt.Errorf("dump %s: %w", d.p, err)
	}
	d.stage = stage
	d.op.Remove = append(d.op.Remove, stage)
	d.op.Frozen = append(d.op.Frozen, d.top.Path())
	for _, m := range d.nodes {
		d.op.Frozen = append(d.op.Frozen, m.group.Leaf().Path())
	}
	if err := d.h.SaveOp(d.op); err != nil {
		return err
	}
	for i, m := range d.nodes {
		m.dir = filepath.Join(stage, strconv.Itoa(i))
		for _, sub := range []string{"criu", "work"} {
			if err := os.MkdirAll(filepath.Join(m.dir, sub), 0o700); err != nil {
				return err
			}
		}
	}
	return nil
}

// freeze freezes the subtree at one instant, then hands the freeze over
// to each node's own group, which CRIU needs to seize it.
func (d *dumping) freeze() error {
	d.o.progress(Progress{Phase: "freeze", NodesTotal: len(d.nodes)})
	if err := d.freezeSeizable(); err != nil {
		return err
	}
	d.frozen, d.frozenAt = true, time.Now()
	for _, m := range d.nodes {
		if err := m.group.Leaf().Freeze(freezeTimeout); err != nil {
			return fmt.Errorf("dump %s: %w", m.path, err)
		}
	}
	// Again, now that no exec can start or end unseen.
	if err := refuseAttached(d.nodes); err != nil {
		return err
	}
	if err := d.top.Thaw(); err != nil {
		return fmt.Errorf("dump %s: %w", d.p, err)
	}
	return nil
}

// freezeSeizable freezes the subtree's top group at an instant when no
// thread of it is in uninterruptible sleep, which CRIU cannot seize
// (after its 10 s timeout, the dump fails): mostly a shell waiting for
// the command it started with vfork, caught by the freeze before the
// command's exec. Such a thread leaves that state only once the subtree
// runs, so it is thawed for a moment and frozen again, a few times, then
// left as it is (CRIU then says which process it could not seize).
func (d *dumping) freezeSeizable() error {
	for try := 1; ; try++ {
		if err := d.top.Freeze(freezeTimeout); err != nil {
			d.top.Thaw()
			return fmt.Errorf("dump %s: %w", d.p, err)
		}
		if try == seizeTries || !uninterruptible(d.nodes) {
			return nil
		}
		if err := d.top.Thaw(); err != nil {
			return fmt.Errorf("dump %s: %w", d.p, err)
		}
		time.Sleep(time.Duration(try) * time.Millisecond)
	}
}

// seizeTries is how often freezeSeizable freezes at most (it waits 1 ms
// more after each try: about 0.2 s in all).
const seizeTries = 20

// uninterruptible reports whether a thread of a running node of nodes is
// in uninterruptible sleep (state D).
func uninterruptible(nodes []*dumpNode) bool {
	for _, m := range nodes {
		if m.status.State != hier.Running {
			continue
		}
		pids, _ := m.group.Leaf().Procs()
		for _, pid := range pids {
			tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			for _, t := range tasks {
				stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
				// The state follows the command, which is in parentheses
				// and may hold any character.
				if i := bytes.LastIndexByte(stat, ')'); err == nil && i >= 0 && i+2 < len(stat) && stat[i+2] == 'D' {
					return true
				}
			}
		}
	}
	return false
}

// thaw lets the workload run again.
func (d *dumping) thaw() {
	if !d.frozen {
		return
	}
	for _, m := range d.nodes {
		m.group.Leaf().Thaw()
	}
	d.top.Thaw()
	d.frozen = false
}

// openArchive starts the archive: the manifest and every node's files
// (still frozen), before CRIU runs.
func (d *dumping) openArchive() error {
	d.packStart = time.Now()
	d.manifest.Created = time.Now().UTC()
	for i, m := range d.nodes {
		scan := archive.Scan
		if m.n.Spec.Image != "" || m.n.Spec.Rootfs != "" {
			scan = archive.ScanUpper
		}
		fe, err := scan(archive.FilesPrefix(i), d.h.UpperDir(&m.n))
		if err != nil {
			return fmt.Errorf("dump %s: %w", m.path, err)
		}
		d.files = append(d.files, fe)
		m.report.Files = sumSizes(fe)
		d.rep.FileBytes += m.report.Files
		d.manifest.Nodes = append(d.manifest.Nodes, manifestNode(m))
	}
	// Large writes: the archive writer emits many small pieces (frame and
	// block headers), which would each be a system call.
	// Cancelled, the next write fails: whatever step writes stops there.
	d.counter = &countingWriter{w: ctxWriter{d.ctx, d.out}}
	size := 1 << 20
	if b, ok := d.out.(interface{ Buffered() bool }); ok && b.Buffered() {
		size = 16 << 10
	}
	d.buffered = bufio.NewWriterSize(d.counter, size)
	w, err := archive.NewWriter(d.buffered, zstd.SpeedFastest)
	if err != nil {
		return err
	}
	d.w = w
	w.Progress = func(n int64) {
		d.o.progress(Progress{Phase: "pack", NodesTotal: len(d.nodes), Bytes: n})
	}
	return nil
}

// runCRIU starts the CRIU dumps and writes the archive meanwhile: the
// manifest, the files, and CRIU's images as they come (an imagePipeline);
// with LeaveRunning, the workload is thawed as soon as CRIU is done.
func (d *dumping) runCRIU() error {
	pipe, err := d.pipeline()
	if err != nil {
		return fmt.Errorf("dump %s: %w", d.p, err)
	}
	defer pipe.close()
	d.criu = startCRIUs(d.ctx, d.h, d.op, d.nodes, d.o, d.stream)
	if err := d.writeStart(); err != nil {
		return err
	}
	if err := pipe.during(d.ctx, d.w, d.criu.run.ready); err != nil {
		return fmt.Errorf("dump %s: write archive: %w", d.p, err)
	}
	d.rep.Criu = Duration(time.Since(d.criu.start))
	if err := d.criu.run.failed(); err != nil {
		return err
	}
	// Memory and files are captured: a workload that goes on may run now.
	if d.o.LeaveRunning {
		d.thaw()
		d.rep.Frozen = Duration(time.Since(d.frozenAt))
	}
	if err := pipe.after(d.w); err != nil {
		return fmt.Errorf("dump %s: write archive: %w", d.p, err)
	}
	if err := d.writeCarried(); err != nil {
		return err
	}
	for _, m := range d.nodes {
		d.rep.ImageBytes += m.report.Images
	}
	return nil
}

// writeStart writes the manifest and the nodes' files.
func (d *dumping) writeStart() error {
	if err := d.w.WriteManifest(d.manifest); err != nil {
		return fmt.Errorf("dump %s: write archive: %w", d.p, err)
	}
	for _, fe := range d.files {
		if err := d.w.WriteEntries(fe); err != nil {
			return fmt.Errorf("dump %s: write archive: %w", d.p, err)
		}
	}
	return nil
}

// pipeline returns how CRIU's images reach the archive.
func (d *dumping) pipeline() (imagePipeline, error) {
	staged := &stagedImages{nodes: d.nodes, done: map[string]int64{}, whileCRIU: !d.manifest.PagesLast}
	if !d.stream {
		return staged, nil
	}
	capt, err := startCapture(d.nodes)
	if err != nil {
		return nil, err
	}
	return &capturedImages{capt: capt, staged: staged}, nil
}

// commit finishes the archive and gives it its name. A restore refuses an
// archive that holds more than its manifest accounts for: such an archive
// must not replace the workload.
func (d *dumping) commit() error {
	if limit, content := archive.ExpansionLimit(d.manifest), d.w.Content()-d.rep.CarriedBytes; content > limit {
		return fmt.Errorf("dump %s: the archive holds %d bytes, more than the %d its manifest accounts for, so restore would refuse it; nothing was removed (a crtree bug: please report what the subtree holds)", d.p, content, limit)
	}
	if err := d.w.Close(); err != nil {
		return fmt.Errorf("dump %s: write archive: %w", d.p, err)
	}
	if err := d.buffered.Flush(); err != nil {
		return fmt.Errorf("dump %s: write archive: %w", d.p, err)
	}
	if err := d.out.Commit(); err != nil {
		return fmt.Errorf("dump %s: %w", d.p, err)
	}
	d.committed = true
	if d.o.Lazy != nil {
		// The far side runs the subtree: the downtime ends here.
		d.rep.Frozen = Duration(time.Since(d.frozenAt))
	}
	d.rep.Pack = Duration(time.Since(d.packStart))
	d.rep.ArchiveBytes = d.counter.n
	for _, m := range d.nodes {
		d.rep.Nodes = append(d.rep.Nodes, m.report)
	}
	return nil
}

// finish ends the workload now that the archive is safe, unless it stays
// (LeaveRunning, thawed already). A held CRIU kills its processes itself,
// leaving their connections locked.
func (d *dumping) finish() error {
	if d.o.LeaveRunning {
		return nil
	}
	d.criu.run.release(nil)
	if err := d.criu.wait(); err != nil {
		if d.o.Lazy != nil {
			// Its CRIUs resumed the processes (dumpOne): they go on here.
			d.thaw()
			return &LazyError{Err: fmt.Errorf("dump %s: the memory transfer failed: %w", d.p, err)}
		}
		d.h.Destroy(d.nodes[0].n.ID)
		return fmt.Errorf("dump %s: archive written, but CRIU failed to end the dumped processes: %w", d.p, err)
	}
	if err := d.h.Destroy(d.nodes[0].n.ID); err != nil {
		return fmt.Errorf("dump %s: archive written, but removing the dumped nodes failed: %w", d.p, err)
	}
	d.held = false
	if d.o.Lazy == nil {
		d.rep.Frozen = Duration(time.Since(d.frozenAt))
	}
	return nil
}

// end undoes what a failed dump did, whatever step it failed at: the
// archive aborted, every CRIU told and waited for, the workload thawed;
// and in every case the hold, the marker and the staging directory go.
func (d *dumping) end(errp *error) {
	if *errp != nil && !d.committed {
		d.out.Abort()
	}
	if d.criu != nil {
		d.criu.run.release(errNoArchive)
		if *errp != nil && !d.committed && d.o.Lazy != nil {
			// CRIUs serving pages no one will fetch.
			d.o.Lazy.Abort()
		}
		d.criu.wait()
	}
	if *errp != nil {
		// Whatever is left of the workload goes on.
		d.thaw()
	}
	if d.held {
		d.h.Release(d.nodes[0].n.ID)
	}
	if d.stage != "" {
		d.h.RemoveLater(d.stage)
	}
	if d.op != nil {
		d.h.EndOp(d.op)
	}
}

// collect holds the subtree at p for the dump and returns its nodes,
// with the resident memory of their processes (what CRIU will write), and
// the top node's cgroup.
func collect(h *node.Host, p hier.Path) ([]*dumpNode, cgroup.Group, error) {
	held, err := h.HoldSubtree(p, node.BusyDump)
	if errors.Is(err, hier.ErrNotFound) {
		return nil, "", err
	}
	if err != nil {
		return nil, "", fmt.Errorf("dump %s: %w", p, err)
	}
	var nodes []*dumpNode
	for _, hn := range held {
		dn := &dumpNode{
			n: hn.Node, index: len(nodes), path: hn.Path, rel: path.Join(hn.Path[len(p):]...), parent: hn.Parent, status: hn.Status, group: hn.Group,
			report: NodeReport{Path: hn.Path.String(), Running: hn.Status.State == hier.Running},
		}
		if hn.Status.State == hier.Running {
			pids, _ := dn.group.Leaf().Procs()
			for _, pid := range pids {
				if info, err := node.ReadProc(pid); err == nil {
					dn.memory += info.RSS + info.Swap
				}
			}
		}
		nodes = append(nodes, dn)
	}
	return nodes, held[0].Group, nil
}

// restorable refuses a subtree whose archive could not be restored where
// it would have to be: a dump that removes such nodes would lose them.
// For a dump from inside a node (inNode), that is a restore from there,
// which cannot provide binds.
func restorable(nodes []*dumpNode, inNode bool) error {
	for _, m := range nodes {
		if inNode && len(m.n.Spec.Binds) > 0 {
			b := m.n.Spec.Binds[0]
			return fmt.Errorf("%s has a bind at %s, which a restore inside a node cannot provide", m.path, b.Target)
		}
	}
	return nil
}

// refuseAttached fails when a crtree exec is still attached to a running
// node of the subtree: what it runs is not below the node's init, and
// CRIU would leave it out of the archive (and the dump would kill it).
func refuseAttached(nodes []*dumpNode) error {
	for _, m := range nodes {
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
	case ce.Says("Unseizable non-zombie"):
		ce.Hint = "a process of the node stayed in uninterruptible sleep (state D: waiting on a disk or network file system, or on a command it started with vfork) however often the freeze was retried; dump again once it has left that state"
	case ce.Says("Can't get rlimit") && !node.HasCapSysResource():
		ce.Hint = "CRIU reads the resource limits of processes of other users only with CAP_SYS_RESOURCE, which root lacks on this machine (crtree check says so): a node that runs as another user (run --user, or its image's user) cannot be dumped here; run it as root"
	}
	return err
}

func manifestNode(m *dumpNode) archive.Node {
	n := archive.Node{
		Path: m.rel, Name: m.n.Name, Parent: m.parent, Running: m.status.State == hier.Running,
		Spec: archiveSpec(m.n.Spec), Hostname: m.n.Spec.Hostname, Created: m.n.Created,
		Files: m.report.Files, ExternalMounts: archiveExternalMounts(m.mounts),
	}
	if a := m.n.Addr; a != nil && m.n.Spec.Net == hier.NetBridge {
		n.Addr = &archive.Addr{IP: a.IP, MAC: a.MAC}
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

// ctxWriter is a writer that fails with its context's cause once the
// context is cancelled.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, context.Cause(c.ctx)
	}
	return c.w.Write(p)
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

func hasImage(es []archive.Entry, name string) bool {
	for _, e := range es {
		if path.Base(e.Name) == name {
			return true
		}
	}
	return false
}
