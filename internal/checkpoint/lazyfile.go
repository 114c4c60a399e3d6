package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/node"

	"golang.org/x/sync/errgroup"
)

// A post-copy restore from an archive file (Options.LazyFromFile,
// restore --lazy): the nodes run as soon as everything but their memory
// is restored, and each node's supervisor feeds its memory from the
// archive while it runs. What the processes use before they run is
// verified first, as in every restore: the nodes' files (read front to
// back, up to the first CRIU image), the CRIU images other than pages
// (read through the index) and the pieces of the page images holding
// the pages CRIU restores itself (those not flagged lazy). Every other
// piece is verified by the supervisor when it is first read, before any
// of its pages is served; a piece that fails kills the node before any
// of its processes can touch such a page. What the archive holds beyond
// that (the rest of the tar stream: headers of page members, padding,
// the images it carries) is not read at all.

// ErrLazyNeedsFile says why restore --lazy refuses a pipe.
var ErrLazyNeedsFile = errors.New("--lazy reads the archive out of order, so it needs an archive file, not a pipe")

// lazily restores the nodes from the archive file ix without their
// memory: each running node's images go to the node's own directory
// (node.FromImages.Archive: its supervisor serves its memory and removes
// them once it has all arrived).
func (rs *restoring) lazily(ix *indexed) error {
	packStart := time.Now()
	pieces, err := rs.pageParts(ix)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := archive.ExtractMeta(ix.f, ix.size, ix.index, rs.m, ix.sums, rs.dst); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	rs.ar.Expect(ix.sums)
	total := len(rs.m.Nodes)
	if err := archive.ExtractFiles(rs.ar, rs.dst, func(n int64) {
		rs.o.progress(Progress{Phase: "extract", NodesTotal: total, Bytes: n})
	}); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	for i, n := range rs.m.Nodes {
		if !n.Running {
			continue
		}
		if err := rs.stagePages(i, ix, pieces[i]); err != nil {
			return fmt.Errorf("restore %s: %w", rs.res.Paths[i], err)
		}
	}
	rs.rep.Pack = Duration(time.Since(packStart))
	return rs.restoreFromImages(true)
}

// pageParts returns the pieces of each running node's page images, or
// why the archive cannot be read piece by piece.
func (rs *restoring) pageParts(ix *indexed) ([]map[string][]archive.PieceRef, error) {
	switch {
	case ix == nil && rs.o.NoStream:
		return nil, errors.New("--lazy reads the archive through its index, which CRTREE_NO_STREAM=1 leaves aside")
	case ix == nil:
		return nil, ErrLazyNeedsFile
	case rs.recv != nil:
		return nil, errors.New("--lazy does not import the images an archive carries, and this state root lacks some: restore it once without --lazy (which imports them), then --lazy works")
	}
	out := make([]map[string][]archive.PieceRef, len(rs.m.Nodes))
	for i, n := range rs.m.Nodes {
		if !n.Running {
			continue
		}
		p, err := ix.sums.PageParts(i)
		if errors.Is(err, archive.ErrNoPageTable) {
			return nil, fmt.Errorf("--lazy: %w; restore it without --lazy", err)
		}
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// stagePages makes node i's page images in its images directory, of
// their full size, holding only the pages CRIU restores itself (read
// from the archive, each piece verified), and lists their pieces for
// the node's supervisor (node.PiecesFile).
func (rs *restoring) stagePages(i int, ix *indexed, pieces map[string][]archive.PieceRef) error {
	dir := rs.dst.ImagesDir(i)
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for name, refs := range pieces {
		if !archive.IsPageImage(name) || filepath.Base(name) != name {
			return fmt.Errorf("page image %q: not a file name", name) // archive.PageParts makes sure
		}
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		files[filepath.Join(dir, name)] = f
		var size int64
		for _, r := range refs {
			size += r.Size
		}
		if err := f.Truncate(size); err != nil {
			return err
		}
	}
	x, err := criu.IndexLazy(dir)
	if err != nil {
		return err
	}
	if err := copyEager(x, archive.NewPagePieces(ix.f, ix.size, pieces), files); err != nil {
		return err
	}
	data, err := json.Marshal(pieces)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(filepath.Dir(dir), node.PiecesFile), data, 0o600)
}

// eagerPiece is a piece of a page image that holds pages CRIU restores
// itself (not lazy): where they are in the image.
type eagerPiece struct {
	image string
	k     int
	runs  [][2]int64 // image offset, length
}

// copyEager writes the pages of x that are not lazy into the page image
// files, reading each piece that holds any of them once, verified, a few
// pieces at once (each read holds its piece's eager pages until the
// piece is verified).
func copyEager(x *criu.LazyIndex, src *archive.PagePieces, files map[string]*os.File) error {
	type key struct {
		image string
		k     int
	}
	var list []*eagerPiece
	at := map[key]*eagerPiece{}
	var err error
	x.Eager(func(image string, off, length int64) {
		if err != nil {
			return
		}
		err = src.Pieces(image, off, length, func(k int, off, length int64) {
			p := at[key{image, k}]
			if p == nil {
				p = &eagerPiece{image: image, k: k}
				at[key{image, k}] = p
				list = append(list, p)
			}
			p.runs = append(p.runs, [2]int64{off, length})
		})
	})
	if err != nil {
		return err
	}
	var g errgroup.Group
	g.SetLimit(min(runtime.NumCPU(), 4))
	for _, p := range list {
		g.Go(func() error { return copyPiece(p, src, files) })
	}
	return g.Wait()
}

// copyPiece reads piece p, verified, and writes its eager pages to their
// image file.
func copyPiece(p *eagerPiece, src *archive.PagePieces, files map[string]*os.File) error {
	data, err := src.ReadRanges(p.image, p.k, p.runs)
	if err != nil {
		return err
	}
	f := files[p.image]
	if f == nil {
		return fmt.Errorf("%s: a page image the archive lacks", filepath.Base(p.image))
	}
	for i, r := range p.runs {
		if _, err := f.WriteAt(data[i], r[0]); err != nil {
			return err
		}
	}
	return nil
}
