package checkpoint

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/hier"
)

// imagePipeline moves CRIU's images into the archive: during archives
// them as they come while CRIU runs, after what is left once it is done.
// A dump without LeaveRunning captures the page images from CRIU's pipes
// (capturedImages); one with it, or with Options.NoStream, has CRIU write
// them to files in the staging directory (stagedImages).
type imagePipeline interface {
	// during returns once ready is closed (every CRIU has written its
	// images or failed), when writing fails, or with ctx's cause when ctx
	// is cancelled.
	during(ctx context.Context, w *archive.Writer, ready <-chan struct{}) error
	// after archives every image that is not archived yet.
	after(w *archive.Writer) error
	// close stops what the pipeline started (a CRIU still writing sees
	// its pipes close).
	close()
}

// partSize is the size of the parts in which page images are archived
// while CRIU writes them (one checksum piece each).
const partSize = archive.PieceSize

// stagedPoll is how often stagedImages looks for newly written parts.
const stagedPoll = 2 * time.Millisecond

// stagedImages archives CRIU's images from the staging directories:
// while CRIU runs (if whileCRIU), whole parts of the page images that
// have been written; at the end, every other image and then the rest of
// the pages.
type stagedImages struct {
	nodes []*dumpNode
	// whileCRIU archives page images while CRIU writes them; without it
	// (LeaveRunning, whose workload waits for CRIU only) CRIU gets the CPU
	// to itself.
	whileCRIU bool
	done      map[string]int64 // image path -> bytes archived
	pages     []int64          // page image bytes a capture archived, per node
}

func (s *stagedImages) during(ctx context.Context, w *archive.Writer, ready <-chan struct{}) error {
	for {
		select {
		case <-ready:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		default:
		}
		wrote := false
		if s.whileCRIU {
			var err error
			if wrote, err = s.archiveParts(w); err != nil {
				return err
			}
		}
		if !wrote {
			time.Sleep(stagedPoll)
		}
	}
}

func (s *stagedImages) close() {}

// archiveParts archives the whole parts of page images written so far.
func (s *stagedImages) archiveParts(w *archive.Writer) (bool, error) {
	wrote := false
	for i, m := range s.nodes {
		if m.status.State != hier.Running {
			continue
		}
		dir := filepath.Join(m.dir, "criu")
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
				if err := w.WritePart(archive.ImagesPrefix(i)+"/"+name, path, s.done[path], partSize); err != nil {
					return wrote, err
				}
				s.done[path] += partSize
				wrote = true
			}
		}
	}
	return wrote, nil
}

// after archives every image but the pages first, then the rest of the
// pages: a restore from a file reads the former first (the archive's
// index points at them) and hands CRIU the pages as they come off the
// disk.
func (s *stagedImages) after(w *archive.Writer) error {
	var images []archive.Entry
	for i, m := range s.nodes {
		if m.status.State != hier.Running {
			continue
		}
		ie, err := archive.ScanFlat(archive.ImagesPrefix(i), filepath.Join(m.dir, "criu"))
		if err != nil {
			return err
		}
		// CRIU writes inventory.img last: without it the images are not
		// whole, and the archive must not replace the workload.
		if !hasImage(ie, "inventory.img") {
			return fmt.Errorf("CRIU's images of %s are incomplete (no inventory.img)", m.path)
		}
		m.report.Images = sumSizes(ie)
		if s.pages != nil {
			m.report.Images += s.pages[i]
		}
		images = append(images, ie...)
	}
	if len(images) == 0 {
		return nil
	}
	if err := w.MarkMeta(); err != nil {
		return err
	}
	for _, pages := range []bool{false, true} {
		for _, e := range images {
			if archive.IsPageImage(e.Name) != pages {
				continue
			}
			off := s.done[e.Path]
			switch {
			case off == 0:
				if err := w.WriteEntries([]archive.Entry{e}); err != nil {
					return err
				}
			case e.Size > off:
				if err := w.WritePart(e.Name, e.Path, off, e.Size-off); err != nil {
					return err
				}
			case e.Size < off:
				return fmt.Errorf("%s shrank while CRIU wrote it", e.Path)
			}
		}
	}
	return nil
}

// capturedImages archives the page images as CRIU writes them into the
// capture's pipes, and CRIU's other images from the staging directories.
type capturedImages struct {
	capt   *capture
	staged *stagedImages
}

func (c *capturedImages) during(ctx context.Context, w *archive.Writer, ready <-chan struct{}) error {
	for {
		select {
		case <-ready:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		case part := <-c.capt.parts:
			if err := c.capt.write(w, part); err != nil {
				return err
			}
		}
	}
}

func (c *capturedImages) after(w *archive.Writer) error {
	if err := c.capt.finish(w); err != nil {
		return err
	}
	c.staged.pages = c.capt.pages
	return c.staged.after(w)
}

func (c *capturedImages) close() { c.capt.Close() }
