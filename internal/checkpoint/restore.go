package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/image"
	"github.com/crtree/crtree/internal/node"
)

// RestoreTarget says where a restore puts the subtree: under Parent,
// with the top node called Name (its archived name if empty), and which
// host paths its binds may use.
type RestoreTarget struct {
	Parent hier.Path
	Name   string
	// Binds provide the host path of archived binds, by mount point
	// inside the node (Target): every node of the archive that bound
	// something there gets Source instead. Their ReadOnly is ignored:
	// a bind keeps the mode it was dumped with.
	Binds []hier.Bind
	// KeepBinds re-creates the archive's other binds from the host paths
	// it names. Without it (or Binds), an archive that has binds is
	// refused: host paths come only from the restoring side.
	KeepBinds bool
	// InNode is set for a restore asked from inside a node: an archive
	// with binds is refused whatever else is set, and no port published.
	InNode bool
	// KeepPorts publishes the ports the archive's nodes published again.
	// Without it they are restored unpublished: the ports of the host are
	// the restoring side's to open, and a clone beside its original
	// cannot have them.
	KeepPorts bool
}

// specs returns the spec each archived node is restored with: its
// archived spec, with every bind's host path given by the restoring side
// (t.Binds, or the archive's own with t.KeepBinds) or else refused. An
// archive is hostile: it must not name a host path for the caller.
func (t RestoreTarget) specs(m *archive.Manifest) ([]hier.Spec, error) {
	archived := map[string]bool{}
	for _, an := range m.Nodes {
		for _, b := range an.Spec.Binds {
			archived[b.Target] = true
		}
	}
	for _, b := range t.Binds {
		if !archived[b.Target] {
			return nil, fmt.Errorf("--bind %s:%s: no node of the archive binds anything at %s", b.Source, b.Target, b.Target)
		}
	}
	specs := make([]hier.Spec, len(m.Nodes))
	for i, an := range m.Nodes {
		spec := hierSpec(an.Spec)
		spec.Binds = nil
		for _, b := range an.Spec.Binds {
			switch src, given := t.bindSource(b.Target); {
			case t.InNode:
				return nil, fmt.Errorf("%s binds host path %s at %s, and host paths cannot be bound from inside a node", archivedPath(m, i), b.Source, b.Target)
			case given:
				b.Source = src
			case !t.KeepBinds:
				return nil, fmt.Errorf("%s binds host path %s at %s; host paths come from the restoring side: give --bind SRC:%s, or --keep-binds to bind %s again (crtree inspect lists an archive's binds)", archivedPath(m, i), b.Source, b.Target, b.Target, b.Source)
			}
			spec.Binds = append(spec.Binds, hier.Bind(b))
		}
		if len(spec.Ports) > 0 && !t.KeepPorts {
			spec.Ports = nil
		}
		// A --rootfs base is a host path too.
		switch {
		case spec.Rootfs != "" && t.InNode:
			return nil, fmt.Errorf("%s runs on the host directory %s (run --rootfs), which cannot be given from inside a node", archivedPath(m, i), spec.Rootfs)
		case spec.Rootfs != "" && !t.KeepBinds:
			return nil, fmt.Errorf("%s runs on the host directory %s (run --rootfs); host paths come from the restoring side: give --keep-binds to use it again", archivedPath(m, i), spec.Rootfs)
		}
		specs[i] = spec
	}
	return specs, nil
}

// hasBases refuses an archive whose nodes run on an image or a --rootfs
// base that this state root or host lacks.
func hasBases(h *node.Host, m *archive.Manifest) error {
	var ids []string
	for _, n := range m.Nodes {
		if n.Spec.Image != "" {
			ids = append(ids, n.Spec.Image)
		}
	}
	missing, err := h.Images.Missing(ids)
	if err != nil {
		return err
	}
	for i, n := range m.Nodes {
		switch sp := n.Spec; {
		case sp.Image != "":
			if slices.Contains(missing, sp.Image) && m.CarriedImage(sp.Image) == nil {
				return fmt.Errorf("%s runs on the image %s (%s), which this state root does not have and the archive does not carry: import it (crtree image import FILE) and restore again, or dump with --with-image", archivedPath(m, i), sp.ImageName, sp.Image)
			}
		case sp.Rootfs != "":
			if fi, err := os.Stat(sp.Rootfs); err != nil || !fi.IsDir() {
				return fmt.Errorf("%s runs on the host directory %s (run --rootfs), which this host lacks", archivedPath(m, i), sp.Rootfs)
			}
		}
	}
	return nil
}

// bindSource returns the host path the restoring side gives for mount
// point target, if any.
func (t RestoreTarget) bindSource(target string) (string, bool) {
	for _, b := range t.Binds {
		if b.Target == target {
			return b.Source, true
		}
	}
	return "", false
}

// Restore recreates the archived subtree read from in under target. On
// failure, or when ctx is cancelled, every node it created is killed and
// removed.
func Restore(ctx context.Context, h *node.Host, in io.Reader, target RestoreTarget, o Options) (rep *Report, err error) {
	start := time.Now()
	var cleanupErr error // of removing what was created, after a failure
	defer func() {
		// Whatever failed once ctx was cancelled failed because of it.
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("restore: %w; nothing was restored", context.Cause(ctx))
		}
		if cleanupErr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cleanupErr))
		}
	}()
	src, err := openSource(ctx, in, o)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer src.Close()
	m := src.ar.Manifest()
	// CRIU restores the established connections of a --tcp-established
	// dump only with the same option, and fails without it (an archive of
	// an earlier version does not say: the failure then says what to do).
	o.TCPEstablished = o.TCPEstablished || m.TCPEstablished
	defer func() {
		if err != nil && !o.TCPEstablished && strings.Contains(err.Error(), "Connected TCP socket in image") {
			err = fmt.Errorf("restore: the archive holds established TCP connections: restore it with --tcp-established: %w", err)
		}
	}()
	specs, err := plan(m, &target)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	res, err := reserveOnBases(h, m, specs, target)
	if err != nil {
		return nil, err
	}
	rs := &restoring{ctx: ctx, h: h, ar: src.ar, m: m, res: res, o: o, inNode: target.InNode, rep: &Report{Path: res.Paths[0].String()}}
	defer func() {
		// Whatever stageDirs and receiveImages made, once what failed is
		// undone; a post-copy restore's staging directory holds its
		// daemons' logs until its memory has arrived (MemoryTransfer.Wait).
		if err != nil {
			rs.abortLazy()
			cleanupErr = errors.Join(res.Abort(), rs.dropImported())
		}
		if err != nil || o.Lazy == nil {
			rs.cleanUp()
		}
	}()
	if err := rs.stageDirs(); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := rs.receiveImages(); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := rs.run(src.ix); err != nil {
		return nil, err
	}
	rs.account()
	if err := rs.commit(); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	rs.nameImported()
	rs.rep.Total = Duration(time.Since(start))
	if o.Lazy != nil {
		rs.rep.Transfer = &MemoryTransfer{rs: rs, start: start}
	}
	return rs.rep, nil
}

// commit hands the restored nodes over to the tree. Those whose memory
// is still to arrive stay held: a migration's by this process until
// MemoryTransfer.Wait, a restore --lazy's each by its own supervisor.
func (rs *restoring) commit() error {
	switch {
	case rs.o.Lazy != nil:
		return rs.res.CommitHeld(node.BusyMigrate)
	case rs.o.LazyFromFile:
		return rs.res.CommitHeldBySupervisors(node.BusyMemory)
	}
	return rs.res.Commit()
}

// abortLazy, after a failed post-copy restore, ends every transfer and
// stops listening to the supervisors (the nodes are removed next).
func (rs *restoring) abortLazy() {
	if rs.o.Lazy == nil {
		return
	}
	rs.o.Lazy.Abort()
	for _, r := range rs.lazyDone {
		if r != nil {
			r.Close()
		}
	}
}

// source is an archive being read for a restore.
type source struct {
	// ix is the archive file's index, nil for a pipe (openIndexed).
	ix  *indexed
	pre io.ReadCloser
	ar  *archive.Reader
}

// openSource starts reading an archive, ahead of its use (Prefetch), and
// stops with ctx's cause once ctx is cancelled.
func openSource(ctx context.Context, in io.Reader, o Options) (*source, error) {
	s := &source{}
	if !o.NoStream {
		ix, err := openIndexed(in)
		if err != nil {
			return nil, err
		}
		s.ix = ix
	}
	s.pre = Prefetch(in, !o.NoDirect)
	ar, err := archive.NewReader(ctxReader{ctx, s.pre})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.ar = ar
	return s, nil
}

// Close stops reading.
func (s *source) Close() error {
	if s.ar != nil {
		s.ar.Close()
	}
	s.pre.Close()
	if s.ix != nil {
		s.ix.Close()
	}
	return nil
}

// ctxReader is a reader that fails with its context's cause once the
// context is cancelled: every phase of a restore reads the archive, so
// each stops at its next read.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, context.Cause(c.ctx)
	}
	return c.r.Read(p)
}

// plan checks that the archive can be restored as target asks and
// returns the spec of each node: target's name defaults to the archived
// one, and binds come from the restoring side only (see specs).
func plan(m *archive.Manifest, target *RestoreTarget) ([]hier.Spec, error) {
	if target.Name == "" {
		target.Name = m.Nodes[0].Name
	}
	if err := hier.ValidateName(target.Name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	return target.specs(m)
}

// restoring is a restore under way, from the reservation of its nodes on.
type restoring struct {
	ctx   context.Context
	h     *node.Host
	ar    *archive.Reader
	m     *archive.Manifest
	res   *node.Reservation
	o     Options
	rep   *Report
	stage string
	op    *node.Op
	dst   *destination
	// recv takes the images the archive carries that the image store
	// lacks; nil if it lacks none.
	recv *image.Receiver
	// inNode is set for a restore asked from inside a node: the images
	// it imports get no name (nameImported).
	inNode bool
	// lazyDone are, for a post-copy restore (o.Lazy), where each running
	// node's supervisor reports the end of its memory transfer.
	lazyDone []*os.File
	// resume, for a post-copy restore, lets every node's processes run
	// at once.
	resume *resumeBarrier
	// archive is the archive file of a restore --lazy, which each
	// node's supervisor reads its memory from.
	archive *indexed
}

// stageDirs makes the staging directory of CRIU's images, each node's
// images and work directories in it, and the marker that removes it if
// this process dies.
func (rs *restoring) stageDirs() error {
	var need int64
	for _, n := range rs.m.Nodes {
		// CRIU's images are about the size of the memory it dumped;
		// post-copy, the memory is not among them.
		if rs.o.Lazy != nil || rs.o.LazyFromFile {
			need += 16 << 20
		} else {
			need += n.Memory
		}
	}
	rs.lazyDone = make([]*os.File, len(rs.m.Nodes))
	stage, err := rs.h.StageDir("restore", need)
	if err != nil {
		return err
	}
	rs.stage = stage
	rs.dst = &destination{h: rs.h, ids: rs.res.IDs, stage: stage, inNodes: rs.o.LazyFromFile}
	for _, n := range rs.m.Nodes {
		rs.dst.specs = append(rs.dst.specs, n.Spec)
	}
	if rs.op, err = rs.h.BeginOp("restore"); err != nil {
		return err
	}
	rs.op.Remove = []string{stage}
	if err := rs.h.SaveOp(rs.op); err != nil {
		return err
	}
	for i, n := range rs.m.Nodes {
		if rs.dst.inNodes && !n.Running {
			continue // no images, and no supervisor to remove them
		}
		for _, d := range []string{"criu", "work"} {
			if err := os.MkdirAll(filepath.Join(rs.dst.Base(i), d), 0o700); err != nil {
				return err
			}
		}
	}
	return nil
}

// receiveImages gets ready to take into the image store the images the
// archive carries and the store lacks (if it has room for their layers),
// recording where they go in the marker.
func (rs *restoring) receiveImages() error {
	var ids []string
	for _, im := range rs.m.Images {
		ids = append(ids, im.ID)
	}
	missing, err := rs.h.Images.Missing(ids)
	if err != nil || len(missing) == 0 {
		return err
	}
	var wants []image.Want
	layers := map[string]int64{}
	for _, id := range missing {
		im := rs.m.CarriedImage(id)
		w := image.Want{ID: im.ID, Name: im.Name}
		for _, l := range im.Layers {
			w.Layers = append(w.Layers, l.Digest)
			layers[l.Digest] = l.Size
		}
		wants = append(wants, w)
	}
	if err := rs.h.Images.CheckRoom(layers); err != nil {
		return err
	}
	if rs.recv, err = rs.h.Images.Receive(wants); err != nil {
		return err
	}
	rs.op.Remove = append(rs.op.Remove, rs.recv.Dir())
	return rs.h.SaveOp(rs.op)
}

// adoptImages records the images received, without their names yet,
// once the archive has been verified.
func (rs *restoring) adoptImages() error {
	added, err := rs.recv.Commit()
	for _, id := range added {
		rs.rep.Imported = append(rs.rep.Imported, Imported{ID: id, Name: rs.m.CarriedImage(id).Name})
	}
	rs.rep.ImportTime = Duration(rs.recv.Took)
	return err
}

// nameImported gives the images the restore imported the names the
// archive gives them, where free, now that its nodes are in the tree: an
// image a restore that died had imported has none, and gc removes it. A
// restore from inside a node names none: a node may not name images for
// the host.
func (rs *restoring) nameImported() {
	if rs.inNode {
		return
	}
	for i, im := range rs.rep.Imported {
		if im.Name != "" {
			// Unnamed, the image is still there for its nodes.
			name, _ := rs.h.Images.Name(im.ID, im.Name)
			rs.rep.Imported[i].Named = name != ""
		}
	}
}

// dropImported removes the images a failed restore imported, once its
// nodes are gone, unless another restore's nodes use them meanwhile.
func (rs *restoring) dropImported() error {
	var errs []error
	for _, im := range rs.rep.Imported {
		if err := rs.h.Images.Remove(im.ID, rs.h.NodesOnImage); err != nil && !errors.Is(err, image.ErrInUse) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cleanUp removes the staging directory (in the background), what was
// received and not recorded, and the marker.
func (rs *restoring) cleanUp() {
	if rs.recv != nil {
		rs.recv.Close()
	}
	if rs.op != nil {
		rs.h.EndOp(rs.op)
	}
	if rs.stage != "" {
		rs.h.RemoveLater(rs.stage)
	}
}

// run restores the nodes: from a file with an index, or from a pipe when
// the archive was written pages last, CRIU reads the pages as they come
// (streamed); else, or when images the archive carries (which come last)
// are to be imported first, the archive is extracted first (staged).
// Cancelled meanwhile, it fails even if the nodes run (they are removed).
func (rs *restoring) run(ix *indexed) error {
	var err error
	switch {
	case rs.o.LazyFromFile:
		rs.archive = ix
		err = rs.lazily(ix)
	case rs.recv == nil && rs.o.Lazy == nil && (ix != nil || (rs.m.PagesLast && !rs.o.NoStream)):
		err = rs.streamed(ix)
	default:
		err = rs.staged()
	}
	if err == nil && rs.ctx.Err() != nil {
		err = context.Cause(rs.ctx)
	}
	return err
}

// staged extracts the whole archive, verified, then restores the nodes
// from the extracted images.
func (rs *restoring) staged() error {
	packStart := time.Now()
	total := len(rs.m.Nodes)
	rs.o.progress(Progress{Phase: "extract", NodesTotal: total})
	var dst archive.Destination = rs.dst
	if rs.recv != nil {
		dst = &receivingDest{rs.dst, rs.recv}
	}
	if err := archive.Extract(rs.ar, dst, func(n int64) {
		rs.o.progress(Progress{Phase: "extract", NodesTotal: total, Bytes: n})
	}); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if rs.recv != nil {
		if err := rs.adoptImages(); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	rs.rep.Pack = Duration(time.Since(packStart))
	return rs.restoreFromImages(rs.o.Lazy != nil)
}

// restoreFromImages restores every running node from its images in
// files; post-copy, all at one instant (the resume barrier).
func (rs *restoring) restoreFromImages(postCopy bool) error {
	if postCopy {
		if err := rs.startBarrier(); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	criuStart := time.Now()
	// A failure ends the barrier by itself: each node's restore closes
	// its gate's end as it returns (or the cancelled context does).
	reports, err := rs.restoreNodes(nil)
	rs.rep.Criu = Duration(time.Since(criuStart))
	rs.rep.Nodes = reports
	return err
}

// startBarrier makes the resume barrier of a post-copy restore: every
// running node's processes run at once, when all are restored.
func (rs *restoring) startBarrier() error {
	running := make([]bool, len(rs.m.Nodes))
	for i, n := range rs.m.Nodes {
		running[i] = n.Running
	}
	var err error
	if rs.resume, err = newResumeBarrier(running); err != nil {
		return err
	}
	go rs.resume.run(rs.ctx)
	return nil
}

// account completes the report from the verified archive.
func (rs *restoring) account() {
	for _, n := range rs.m.Nodes {
		rs.rep.FileBytes += n.Files
	}
	sums := rs.ar.Checksums()
	if rs.archive != nil {
		sums = rs.archive.sums // restore --lazy: not read to its end
	}
	for _, mc := range sums.Members {
		if parts := strings.SplitN(mc.Name, "/", 4); len(parts) == 4 && parts[2] == "criu" {
			if i, err := strconv.Atoi(parts[1]); err == nil && i < len(rs.rep.Nodes) {
				rs.rep.Nodes[i].Images += mc.Size
				rs.rep.ImageBytes += mc.Size
			}
		}
	}
}

// reserveOnBases reserves the archive's nodes (reserve) once it has found
// the images and --rootfs bases they run on; image rm waits until the
// nodes are in the tree (or are not).
func reserveOnBases(h *node.Host, m *archive.Manifest, specs []hier.Spec, target RestoreTarget) (*node.Reservation, error) {
	unlock, err := h.Images.Shared()
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer unlock()
	if err := hasBases(h, m); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return reserve(h, m, specs, target)
}

// reserve creates every node of the archive in the tree, in one change,
// as Creating, with its storage and cgroup and the given specs, the
// subtree held until Commit. A name already taken refuses the whole
// restore before anything is created.
func reserve(h *node.Host, m *archive.Manifest, specs []hier.Spec, target RestoreTarget) (*node.Reservation, error) {
	nodes := make([]node.NewNode, len(m.Nodes))
	for i, an := range m.Nodes {
		// A node keeps the hostname it had, even under a new name.
		nodes[i] = node.NewNode{Name: an.Name, Parent: an.Parent, Spec: specs[i], Created: an.Created, Hostname: an.Hostname, Archived: true}
		// A node that was running asks for its address again; one that
		// was not gets none until it runs.
		if a := an.Addr; a != nil && an.Running {
			nodes[i].Addr = &hier.Addr{IP: a.IP, MAC: a.MAC}
		}
		if i == 0 {
			nodes[i].Name = target.Name
		}
	}
	r, err := h.Reserve(target.Parent, nodes, node.BusyRestore)
	var ne *node.NodeError
	if errors.As(err, &ne) {
		return nil, fmt.Errorf("restore: %s: %w", archivedPath(m, ne.Index), ne.Err)
	}
	if errors.Is(err, hier.ErrExists) {
		return nil, fmt.Errorf("restore: %w; restore it under another name with --name, or elsewhere with --parent", err)
	}
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return r, nil
}

type destination struct {
	h     *node.Host
	ids   []string
	specs []archive.Spec
	stage string
	// inNodes puts each node's CRIU images in the node's own directory
	// rather than the staging directory (restore --lazy: the node's
	// supervisor needs them after the restore has returned).
	inNodes bool
}

// Base is where node i's CRIU images (criu/) and CRIU's work directory
// (work/) are.
func (d *destination) Base(i int) string {
	if d.inNodes {
		return filepath.Join(d.h.Store.NodeDir(d.ids[i]), "memory")
	}
	return filepath.Join(d.stage, strconv.Itoa(i))
}

// FilesDir is where node i's files go: its root, or the upper layer of
// its overlay when it runs on an image or a --rootfs base.
func (d *destination) FilesDir(i int) string {
	return d.h.UpperDir(&hier.Node{ID: d.ids[i], Spec: hierSpec(d.specs[i])})
}

func (d *destination) ImagesDir(i int) string {
	return filepath.Join(d.Base(i), "criu")
}

// receivingDest is a restore's destination that takes the images the
// archive carries into a Receiver (an archive.CarriedSink).
type receivingDest struct {
	*destination
	recv *image.Receiver
}

// ImageConfig hands the config of the image id to the receiver.
func (d *receivingDest) ImageConfig(id string, body io.Reader) error {
	return d.recv.Config(id, body)
}

// ImageLayer hands a layer to the receiver.
func (d *receivingDest) ImageLayer(digest string, body io.Reader) error {
	return d.recv.Layer(digest, body)
}

// restoreNodes restores the running nodes, parents before children (all
// nodes of one depth in parallel), and records the others as exited.
// With gates (a streamed restore), CRIU reads from each node's image
// server and holds the processes until the node's gate opens, which
// happens only once the whole archive is read: there, all nodes are
// restored at once (up to streamedCRIUs), so that each CRIU reads its
// pages as they come rather than after its parent's restore. So are the
// nodes of a post-copy restore, with no limit: each is held until all
// are ready (the resume barrier). Nodes do not depend on each other's
// processes (each has its own supervisor), only the order of ls would
// show it.
func (rs *restoring) restoreNodes(gates []*os.File) ([]NodeReport, error) {
	m := rs.m
	reports := make([]NodeReport, len(m.Nodes))
	for i, n := range m.Nodes {
		reports[i] = NodeReport{Path: rs.res.Paths[i].String(), Running: n.Running, Files: n.Files}
	}
	// No limit but for a streamed restore: the resume barrier of a
	// post-copy one waits for every node's CRIU at once.
	limit := len(m.Nodes)
	if gates != nil {
		limit = streamedCRIUs
	}
	sem := make(chan struct{}, limit)
	levels := restoreLevels(m, gates != nil || rs.resume != nil)
	done := 0
	for _, level := range levels {
		if rs.ctx.Err() != nil {
			return reports, fmt.Errorf("restore: %w", context.Cause(rs.ctx))
		}
		var wg sync.WaitGroup
		errs := make([]error, len(m.Nodes))
		for _, i := range level {
			if !m.Nodes[i].Running {
				errs[i] = rs.h.MarkExited(rs.res.IDs[i], m.Nodes[i].ExitCode)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				errs[i] = rs.restoreOne(i, gates, &reports[i])
			}()
		}
		wg.Wait()
		if err := errors.Join(withoutWithdrawn(errs)...); err != nil {
			return reports, err
		}
		done += len(level)
		rs.o.progress(Progress{Phase: "restore", NodesDone: done, NodesTotal: len(m.Nodes)})
	}
	return reports, nil
}

// withoutWithdrawn drops, from the errors of nodes restored together,
// those of nodes whose gate was closed because another failed
// (node.GateWithdrawn), if that other's error is among them: it is the
// one that says why.
func withoutWithdrawn(errs []error) []error {
	var causes, withdrawn []error
	for _, err := range errs {
		switch {
		case err == nil:
		case strings.Contains(err.Error(), node.GateWithdrawn):
			withdrawn = append(withdrawn, err)
		default:
			causes = append(causes, err)
		}
	}
	if len(causes) > 0 {
		return causes
	}
	return withdrawn
}

// restoreLevels returns the indexes of the archive's nodes in the order
// they are restored: by depth, parents first, or all at once.
func restoreLevels(m *archive.Manifest, allAtOnce bool) [][]int {
	depth := make([]int, len(m.Nodes))
	var levels [][]int
	for i, n := range m.Nodes {
		if i > 0 && !allAtOnce {
			depth[i] = depth[n.Parent] + 1
		}
		for len(levels) <= depth[i] {
			levels = append(levels, nil)
		}
		levels[depth[i]] = append(levels[depth[i]], i)
	}
	return levels
}

// restoreOne starts node i's supervisor, which restores it from its
// images (through its image server and gate, if gates).
func (rs *restoring) restoreOne(i int, gates []*os.File, rep *NodeReport) error {
	if rs.resume != nil {
		defer rs.resume.started(i)
	}
	t0 := time.Now()
	from := node.FromImages{Dir: rs.dst.Base(i), CriuBin: rs.o.CriuBin, CriuLogLevel: rs.o.CriuLogLevel, TCPEstablished: rs.o.TCPEstablished}
	if gates != nil {
		from.Stream, from.Gate = true, gates[i]
	}
	if rs.resume != nil {
		from.Gate = rs.resume.theirs[i]
	}
	if rs.o.Lazy != nil {
		if err := rs.lazyNode(i, &from); err != nil {
			return fmt.Errorf("restore %s: %w", rs.res.Paths[i], err)
		}
	}
	if rs.o.LazyFromFile {
		from.Archive = rs.archive.f
	}
	pid, warning, err := rs.h.StartRestore(rs.res.IDs[i], from)
	lazyStarted(&from)
	rep.Criu = Duration(time.Since(t0))
	rep.Pid, rep.Warning = pid, warning
	if err != nil {
		return fmt.Errorf("restore %s: %w", rs.res.Paths[i], err)
	}
	return nil
}

// streamedCRIUs bounds how many CRIUs a streamed restore runs at once;
// the nodes beyond start as others finish, from their spilled pages.
const streamedCRIUs = 16

// archivedPath is how an archived node is named in messages: its path
// as dumped, from the archive's top node.
func archivedPath(m *archive.Manifest, i int) string {
	if i == 0 {
		return "/" + m.Nodes[0].Name
	}
	return "/" + m.Nodes[0].Name + "/" + m.Nodes[i].Path
}
