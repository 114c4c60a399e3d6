package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// indexed is an archive file with an index, opened a second time for
// reading at offsets (the first descriptor is read front to back, with
// O_DIRECT, which pread at any offset would not survive).
type indexed struct {
	f     *os.File
	size  int64
	index *archive.Index
	sums  *archive.Checksums
}

func (ix *indexed) Close() error { return ix.f.Close() }

// openIndexed returns the index of in if in is a regular file that has
// one, nil if it is not (a pipe or an archive without index), and an
// error if the index is damaged.
func openIndexed(in io.Reader) (*indexed, error) {
	f, ok := in.(*os.File)
	if !ok {
		return nil, nil
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil, nil
	}
	g, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return nil, nil
	}
	x, err := archive.ReadIndex(g, fi.Size())
	if err == nil {
		var sums *archive.Checksums
		if sums, err = archive.ReadTrailer(g, fi.Size(), x); err == nil {
			return &indexed{f: g, size: fi.Size(), index: x, sums: sums}, nil
		}
	}
	g.Close()
	if errors.Is(err, archive.ErrNoIndex) {
		return nil, nil
	}
	return nil, err
}

// restoreStreamed restores the nodes while the archive is read: the
// images CRIU needs first are extracted from near the end (the index),
// every running node's CRIU is started as soon as the nodes' files are
// in place and reads its page images from a criu.ImageServer fed by the
// front-to-back read. CRIU holds the restored processes until the whole
// archive has been verified (the gates), so nothing runs from an archive
// found damaged at its end.
//
// Without ix (a stream written pages last, from a pipe), the images CRIU
// needs first come first in the read itself; CRIU starts at the first page
// image, and nothing is checked before the end of the archive: the gates
// still hold every process until then.
func restoreStreamed(h *node.Host, ix *indexed, ar *archive.Reader, dst *destination, paths []hier.Path, o Options, rep *Report) ([]NodeReport, error) {
	m := ar.Manifest()
	packStart := time.Now()
	var sums *archive.Checksums
	if ix != nil {
		if err := archive.ExtractMeta(ix.f, ix.size, ix.index, m, ix.sums, dst); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		ar.Expect(ix.sums)
		sums = ix.sums
	}
	f := newFeeder(dst.stage, sums)
	sd := &streamDest{destination: dst, feeder: f}

	// One image server and one gate per running node.
	gates := make([]*os.File, len(m.Nodes))
	opens := make([]*os.File, len(m.Nodes))
	var servers []*criu.ImageServer
	var wg sync.WaitGroup
	reading := false
	defer func() {
		f.abort()
		for _, s := range servers {
			s.Close()
		}
		for i := range gates {
			if gates[i] != nil {
				gates[i].Close()
				if !reading {
					opens[i].Close()
				}
			}
		}
		wg.Wait()
	}()
	for i, n := range m.Nodes {
		if !n.Running {
			continue
		}
		srv, err := criu.ListenImages(dst.ImagesDir(i))
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		servers = append(servers, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.serve(i, srv); err != nil && !errors.Is(err, errAborted) {
				// CRIU's own error says more; this is for the log.
				f.abort()
			}
		}()
		if gates[i], opens[i], err = os.Pipe(); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}

	// The front-to-back read: node files, then images, then the trailer.
	extracted := make(chan error, 1)
	reading = true
	go func() {
		err := archive.Extract(ar, sd, func(n int64) {
			o.progress(Progress{Phase: "extract", NodesTotal: len(m.Nodes), Bytes: n})
		})
		// Verified: the restored processes may run; else the gates close
		// and CRIU kills them.
		for i := range opens {
			if opens[i] != nil {
				if err == nil {
					opens[i].Write([]byte{'y'})
				}
				opens[i].Close()
			}
		}
		if err != nil {
			f.abort()
		}
		f.end()
		f.readyOnce.Do(func() { close(f.ready) })
		extracted <- err
	}()

	<-f.ready
	var reports []NodeReport
	var rerr error
	select {
	case <-f.aborted:
		// The archive failed before any image: no CRIU is started.
	default:
		criuStart := time.Now()
		reports, rerr = restoreNodes(h, m, dst.ids, paths, dst.stage, o, gates)
		rep.Criu = Duration(time.Since(criuStart))
		if rerr != nil {
			f.abort()
		}
	}
	xerr := <-extracted
	f.close()
	rep.Pack = Duration(time.Since(packStart))
	if xerr != nil && !errors.Is(xerr, errAborted) {
		// The archive's fault comes first: CRIU failed because of it.
		return reports, fmt.Errorf("restore: %w", xerr)
	}
	if rerr != nil {
		return reports, rerr
	}
	if xerr != nil {
		return reports, fmt.Errorf("restore: %w", xerr)
	}
	return reports, nil
}

// streamDest is a restore's destination whose CRIU images go to the
// feeder instead of files.
type streamDest struct {
	*destination
	feeder *feeder
}

func (d *streamDest) Image(node int, name string, size int64, body io.Reader) error {
	return d.feeder.Image(node, name, size, body)
}
