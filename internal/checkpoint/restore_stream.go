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

// streamed restores the nodes while the archive is read: the images
// CRIU needs first are extracted from near the end (the index), every
// running node's CRIU is started as soon as the nodes' files are in place
// and reads its page images from a criu.ImageServer fed by the
// front-to-back read. CRIU holds the restored processes until the whole
// archive has been verified (the gates), so nothing runs from an archive
// found damaged at its end.
//
// Without ix (a stream written pages last, from a pipe), the images CRIU
// needs first come first in the read itself; CRIU starts at the first page
// image, and nothing is checked before the end of the archive: the gates
// still hold every process until then.
func (rs *restoring) streamed(ix *indexed) error {
	packStart := time.Now()
	var sums *archive.Checksums
	if ix != nil {
		if err := archive.ExtractMeta(ix.f, ix.size, ix.index, rs.m, ix.sums, rs.dst); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		rs.ar.Expect(ix.sums)
		sums = ix.sums
	}
	f := newFeeder(rs.stage, sums)
	srv, err := serveImages(rs.m, rs.dst, f)
	defer srv.close()
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	extracted := rs.readArchive(f, srv)
	reports, rerr := rs.startWhenReady(f, srv)
	rs.rep.Nodes = reports
	xerr := <-extracted
	f.close()
	rs.rep.Pack = Duration(time.Since(packStart))
	switch {
	case xerr != nil && !errors.Is(xerr, errAborted):
		// The archive's fault comes first: CRIU failed because of it.
		return fmt.Errorf("restore: %w", xerr)
	case rerr != nil:
		return rerr
	case xerr != nil:
		return fmt.Errorf("restore: %w", xerr)
	}
	return nil
}

// imageServers are the image servers and gates of a streamed restore, one
// each per running node.
type imageServers struct {
	feeder  *feeder
	servers []*criu.ImageServer
	// gates are the read ends CRIU waits on, opens the write ends the
	// archive's reader writes the go-ahead to (see node.FromImages.Gate).
	gates, opens []*os.File
	reading      bool
	wg           sync.WaitGroup
}

// serveImages starts the image servers and makes the gates.
func serveImages(m *archive.Manifest, dst *destination, f *feeder) (*imageServers, error) {
	s := &imageServers{feeder: f, gates: make([]*os.File, len(m.Nodes)), opens: make([]*os.File, len(m.Nodes))}
	for i, n := range m.Nodes {
		if !n.Running {
			continue
		}
		srv, err := criu.ListenImages(dst.ImagesDir(i))
		if err != nil {
			return s, err
		}
		s.servers = append(s.servers, srv)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := f.serve(i, srv); err != nil && !errors.Is(err, errAborted) {
				// CRIU's own error says more; this is for the log.
				f.abort()
			}
		}()
		if s.gates[i], s.opens[i], err = os.Pipe(); err != nil {
			return s, err
		}
	}
	return s, nil
}

// close stops the servers and closes the gates: a CRIU still holding its
// processes then kills them.
func (s *imageServers) close() {
	s.feeder.abort()
	for _, srv := range s.servers {
		srv.Close()
	}
	for i := range s.gates {
		if s.gates[i] != nil {
			s.gates[i].Close()
			if !s.reading {
				s.opens[i].Close()
			}
		}
	}
	s.wg.Wait()
}

// readArchive reads the archive front to back in the background (node
// files, then images, then the trailer), and opens the gates once it is
// verified; its result comes on the channel returned.
func (rs *restoring) readArchive(f *feeder, srv *imageServers) <-chan error {
	extracted := make(chan error, 1)
	srv.reading = true
	total := len(rs.m.Nodes)
	go func() {
		err := archive.Extract(rs.ar, &streamDest{destination: rs.dst, feeder: f}, func(n int64) {
			rs.o.progress(Progress{Phase: "extract", NodesTotal: total, Bytes: n})
		})
		// Verified: the restored processes may run; else the gates close
		// and CRIU kills them.
		for _, w := range srv.opens {
			if w != nil {
				if err == nil {
					w.Write([]byte{node.GateOpen})
				}
				w.Close()
			}
		}
		if err != nil {
			f.abort()
		}
		f.end()
		f.readyOnce.Do(func() { close(f.ready) })
		extracted <- err
	}()
	return extracted
}

// startWhenReady restores the nodes once the images CRIU reads first are
// in place, unless the archive failed before.
func (rs *restoring) startWhenReady(f *feeder, srv *imageServers) ([]NodeReport, error) {
	<-f.ready
	select {
	case <-f.aborted:
		// The archive failed before any image: no CRIU is started.
		return nil, nil
	default:
	}
	criuStart := time.Now()
	reports, err := rs.restoreNodes(srv.gates)
	rs.rep.Criu = Duration(time.Since(criuStart))
	if err != nil {
		f.abort()
	}
	return reports, err
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
