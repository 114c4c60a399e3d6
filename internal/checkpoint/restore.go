package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/hier"
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
	// with binds is refused whatever else is set.
	InNode bool
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
		specs[i] = spec
	}
	return specs, nil
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
// failure every node it created is killed and removed.
func Restore(h *node.Host, in io.Reader, target RestoreTarget, o Options) (rep *Report, err error) {
	start := time.Now()
	// A file with an index is read twice at once: the images CRIU needs
	// first, from near its end, then the whole from the start, with the
	// page images going to CRIU as they come off the disk.
	var ix *indexed
	if !o.NoStream {
		if ix, err = openIndexed(in); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	if ix != nil {
		defer ix.Close()
	}
	pre := Prefetch(in, !o.NoDirect)
	defer pre.Close()
	ar, err := archive.NewReader(pre)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer ar.Close()
	m := ar.Manifest()
	// CRIU restores the established connections of a --tcp-established
	// dump only with the same option, and fails without it (an archive of
	// an earlier version does not say: the failure then says what to do).
	o.TCPEstablished = o.TCPEstablished || m.TCPEstablished
	defer func() {
		if err != nil && !o.TCPEstablished && strings.Contains(err.Error(), "Connected TCP socket in image") {
			err = fmt.Errorf("restore: the archive holds established TCP connections: restore it with --tcp-established: %w", err)
		}
	}()
	if target.Name == "" {
		target.Name = m.Nodes[0].Name
	}
	if err := hier.ValidateName(target.Name); err != nil {
		return nil, fmt.Errorf("restore: --name: %w", err)
	}
	for i, n := range m.Nodes {
		if err := nodeRestorable(archivedPath(m, i), hierSpec(n.Spec), n.Running); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}

	specs, err := target.specs(m)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	ids, paths, err := reserve(h, m, specs, target)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if derr := h.Destroy(ids[0]); derr != nil {
				err = errors.Join(err, fmt.Errorf("clean up: %w", derr))
			}
		}
	}()
	rep = &Report{Path: paths[0].String()}

	var need int64
	for _, n := range m.Nodes {
		// CRIU's images are about the size of the memory it dumped.
		need += n.Memory
	}
	stage, err := h.StageDir("restore", need)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer h.RemoveLater(stage)
	op, err := h.BeginOp("restore")
	if err != nil {
		return nil, err
	}
	defer h.EndOp(op)
	op.Remove = []string{stage}
	if err := h.SaveOp(op); err != nil {
		return nil, err
	}
	dst := &destination{h: h, ids: ids, stage: stage}
	for i := range m.Nodes {
		for _, d := range []string{"criu", "work"} {
			if err := os.MkdirAll(filepath.Join(stage, strconv.Itoa(i), d), 0o700); err != nil {
				return nil, err
			}
		}
	}
	// From a pipe, an archive written pages last streams too.
	if ix != nil || (m.PagesLast && !o.NoStream) {
		reports, err := restoreStreamed(h, ix, ar, dst, paths, o, rep)
		rep.Nodes = reports
		if err != nil {
			return nil, err
		}
		return rep, finishRestore(h, ar, ids, rep, start)
	}
	packStart := time.Now()
	o.progress(Progress{Phase: "extract", NodesTotal: len(m.Nodes)})
	if err := archive.Extract(ar, dst, func(n int64) {
		o.progress(Progress{Phase: "extract", NodesTotal: len(m.Nodes), Bytes: n})
	}); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	rep.Pack = Duration(time.Since(packStart))

	criuStart := time.Now()
	reports, err := restoreNodes(h, m, ids, paths, stage, o, nil)
	rep.Criu = Duration(time.Since(criuStart))
	rep.Nodes = reports
	if err != nil {
		return nil, err
	}
	return rep, finishRestore(h, ar, ids, rep, start)
}

// finishRestore completes the report from the verified archive and
// hands the restored subtree over: it no longer depends on this command.
func finishRestore(h *node.Host, ar *archive.Reader, ids []string, rep *Report, start time.Time) error {
	for _, n := range ar.Manifest().Nodes {
		rep.FileBytes += n.Files
	}
	for _, mc := range ar.Checksums().Members {
		if parts := strings.SplitN(mc.Name, "/", 4); len(parts) == 4 && parts[2] == "criu" {
			if i, err := strconv.Atoi(parts[1]); err == nil && i < len(rep.Nodes) {
				rep.Nodes[i].Images += mc.Size
				rep.ImageBytes += mc.Size
			}
		}
	}
	if err := h.Store.Update(func(t *hier.Tree) error {
		for _, id := range ids {
			if n := t.Nodes[id]; n != nil {
				n.OwnerPid, n.OwnerStart = 0, 0
				n.Busy = nil
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	rep.Total = Duration(time.Since(start))
	return nil
}

// reserve creates every node of the archive in the tree, in one change,
// as Creating, with its storage and cgroup and the given specs. A name already taken refuses
// the whole restore before anything is created.
func reserve(h *node.Host, m *archive.Manifest, specs []hier.Spec, target RestoreTarget) ([]string, []hier.Path, error) {
	ids := make([]string, len(m.Nodes))
	paths := make([]hier.Path, len(m.Nodes))
	err := h.Store.Update(func(t *hier.Tree) error {
		parent, err := t.Lookup(target.Parent)
		if err != nil {
			return fmt.Errorf("restore: parent %s: %w", target.Parent, hier.ErrNotFound)
		}
		parentID := ""
		if parent != nil {
			parentID = parent.ID
		}
		if err := node.CheckFree(t, parent, false); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		var created []*hier.Node
		for i, an := range m.Nodes {
			pid, name := parentID, an.Name
			if i == 0 {
				name = target.Name
			} else {
				pid = ids[an.Parent]
			}
			spec := specs[i]
			// An archived node had the host's network unless it says
			// otherwise: it keeps what it had, or is refused.
			if err := t.Isolate(pid, &spec, true); err != nil {
				return fmt.Errorf("restore: %s: %w", archivedPath(m, i), err)
			}
			n, err := t.Add(pid, name)
			if err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			n.Spec, n.Created = spec, an.Created
			n.OwnerPid, n.OwnerStart = node.Self()
			if i == 0 && an.Spec.Hostname == "" {
				// The node keeps the hostname it had, even under a new name.
				n.Spec.Hostname = an.Hostname
			}
			if i == 0 {
				// Until finishRestore, nothing may change the subtree.
				node.Hold(n, node.BusyRestore)
			}
			ids[i], paths[i] = n.ID, t.PathOf(n)
			created = append(created, n)
		}
		for _, n := range created {
			if err := h.PrepareStorage(n); err != nil {
				return err
			}
			if err := h.Group(t, n).Create(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		for _, id := range ids {
			if id != "" {
				os.RemoveAll(h.Store.NodeDir(id))
			}
		}
		return nil, nil, err
	}
	return ids, paths, nil
}

type destination struct {
	h     *node.Host
	ids   []string
	stage string
}

func (d *destination) FilesDir(i int) string {
	return d.h.RootDir(d.ids[i])
}

func (d *destination) ImagesDir(i int) string {
	return filepath.Join(d.stage, strconv.Itoa(i), "criu")
}

// restoreNodes restores the running nodes, parents before children (all
// nodes of one depth in parallel), and records the others as exited.
// With gates (a streamed restore), CRIU reads from each node's image
// server and holds the processes until the node's gate opens, which
// happens only once the whole archive is read: there, all nodes are
// restored at once (up to streamedCRIUs), so that each CRIU reads its
// pages as they come rather than after its parent's restore. Nodes do not
// depend on each other's processes (each has its own supervisor), only
// the order of ls would show it.
func restoreNodes(h *node.Host, m *archive.Manifest, ids []string, paths []hier.Path, stage string, o Options, gates []*os.File) ([]NodeReport, error) {
	reports := make([]NodeReport, len(m.Nodes))
	depth := make([]int, len(m.Nodes))
	maxDepth := 0
	limit := len(m.Nodes)
	if gates != nil {
		limit = streamedCRIUs
	}
	sem := make(chan struct{}, limit)
	for i, n := range m.Nodes {
		if i > 0 && gates == nil {
			depth[i] = depth[n.Parent] + 1
		}
		maxDepth = max(maxDepth, depth[i])
		reports[i] = NodeReport{Path: paths[i].String(), Running: n.Running, Files: n.Files}
	}
	done := 0
	for d := 0; d <= maxDepth; d++ {
		var wg sync.WaitGroup
		errs := make([]error, len(m.Nodes))
		for i, n := range m.Nodes {
			if depth[i] != d {
				continue
			}
			if !n.Running {
				errs[i] = h.MarkExited(ids[i], n.ExitCode)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				t0 := time.Now()
				from := node.FromImages{Dir: filepath.Join(stage, strconv.Itoa(i)), CriuBin: o.CriuBin, CriuLogLevel: o.CriuLogLevel, TCPEstablished: o.TCPEstablished}
				if gates != nil {
					from.Stream, from.Gate = true, gates[i]
				}
				pid, err := h.StartRestore(ids[i], from)
				reports[i].Criu = Duration(time.Since(t0))
				reports[i].Pid = pid
				if err != nil {
					errs[i] = fmt.Errorf("restore %s: %w", paths[i], err)
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return reports, err
		}
		for i := range m.Nodes {
			if depth[i] == d {
				done++
			}
		}
		o.progress(Progress{Phase: "restore", NodesDone: done, NodesTotal: len(m.Nodes)})
	}
	return reports, nil
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
