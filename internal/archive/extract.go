package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Destination says where node i's members go: its files into FilesDir(i)
// and its CRIU images into ImagesDir(i). Both directories must exist.
type Destination interface {
	FilesDir(node int) string
	ImagesDir(node int) string
}

// ImageSink, when a Destination implements it, takes the CRIU images
// instead of their being written into ImagesDir: Image is called with each
// image member's node, file name, size and content, which the reader
// hashes as the sink reads it (what the sink leaves unread is read and
// hashed after it returns). A sink that returns ErrExtractImage without
// reading body has the member extracted into ImagesDir as usual.
type ImageSink interface {
	Image(node int, name string, size int64, body io.Reader) error
}

// CarriedSink, when a Destination implements it, takes the images the
// archive carries (Manifest.Images): each config and each layer, which
// the reader hashes as the sink reads them. Without it, they are read,
// verified and dropped.
type CarriedSink interface {
	ImageConfig(id string, body io.Reader) error
	ImageLayer(digest string, body io.Reader) error
}

// ErrExtractImage is what an ImageSink returns for an image it leaves to
// the extraction.
var ErrExtractImage = errors.New("extract this image")

// Extract reads the rest of the archive into dst, verifying it. Every path
// is resolved inside its destination directory (os.Root): members cannot
// climb out with "..", absolute paths or symlinks, and hard links may only
// point at files of the same node. Files are created exclusively. It
// returns only once the trailer's checksums matched; on error, what was
// written is left for the caller to remove with the destination.
func Extract(r *Reader, dst Destination, progress func(n int64)) error {
	return extract(r, dst, progress, false)
}

// ExtractFiles extracts the nodes' files, which come before any CRIU
// image, and stops at the first image: a restore that reads the images
// through the index instead (restore --lazy). r must have been given the
// trailer (Expect); every member read is checked against it before
// ExtractFiles returns nil.
func ExtractFiles(r *Reader, dst Destination, progress func(n int64)) error {
	if r.expect == nil {
		return errors.New("ExtractFiles needs the trailer read ahead (Expect)")
	}
	return extract(r, dst, progress, true)
}

func extract(r *Reader, dst Destination, progress func(n int64), filesOnly bool) error {
	x := &extractor{dst: dst, roots: map[string]*os.Root{}, progress: progress, hashes: r.pool, limit: ExpansionLimit(r.Manifest())}
	defer x.close()
	// On failure, the caller's buffers are not hashed any more once
	// Extract returns.
	defer r.settle()
	sink, _ := dst.(ImageSink)
	for {
		hdr, body, err := r.Next()
		if err == io.EOF {
			return x.finish()
		}
		if err != nil {
			return err
		}
		if filesOnly && (isImage(hdr.Name) || IsCarried(hdr.Name)) {
			if err := x.finish(); err != nil {
				return err
			}
			if err := r.verifyRead(); err != nil {
				return err
			}
			return r.onlyImagesLeft()
		}
		if IsCarried(hdr.Name) {
			if err := x.carried(r.Manifest(), hdr, body); err != nil {
				return fmt.Errorf("extract %s: %w", hdr.Name, err)
			}
			continue
		}
		if sink != nil && isImage(hdr.Name) && hdr.Typeflag == tar.TypeReg {
			if x.total+hdr.Size > x.limit {
				return corrupt("the archive holds more than the %d bytes its manifest accounts for", x.limit)
			}
			node, _, name := split(hdr.Name)
			err := sink.Image(node, name, hdr.Size, body)
			if err == nil {
				x.total += hdr.Size
				if x.progress != nil {
					x.progress(x.total)
				}
				continue
			}
			if !errors.Is(err, ErrExtractImage) {
				return fmt.Errorf("extract %s: %w", hdr.Name, err)
			}
		}
		if hdr.Typeflag == tar.TypeReg {
			// Files are hashed from disk as they are written, on every
			// core; the trailer check waits for them.
			r.hashElsewhere()
		}
		if err := x.member(hdr, body); err != nil {
			return fmt.Errorf("extract %s: %w", hdr.Name, err)
		}
	}
}

// carried hands a carried image's config or layer to the destination,
// if it takes them (CarriedSink); the Reader already checked that the
// manifest lists it.
func (x *extractor) carried(m *Manifest, hdr *tar.Header, body io.Reader) error {
	sink, ok := x.dst.(CarriedSink)
	if !ok {
		return nil
	}
	c, _ := m.carried(hdr.Name)
	if c.Config {
		return sink.ImageConfig(c.Digest, body)
	}
	return sink.ImageLayer(c.Digest, body)
}

type dirTimes struct {
	root  *os.Root
	name  string
	mtime time.Time
}

type extractor struct {
	dst      Destination
	roots    map[string]*os.Root
	dirs     []dirTimes
	progress func(n int64)
	total    int64
	buf      []byte
	hashes   *hashPool
	// limit bounds the bytes written: a small hostile archive of RLE
	// blocks could otherwise expand into terabytes.
	limit int64
}

// metadataAllowance is what an archive may extract per node beyond what
// its manifest accounts for: CRIU's own images (a few hundred KiB) and the
// contents of crtree's small tmpfs mounts, /dev and /dev/shm, in archives
// of crtree versions that did not record them (ExtraMemory).
var metadataAllowance = int64(160 << 20)

// ExpansionLimit is how much content an archive may hold: what its
// manifest says the nodes held (their resident memory and what CRIU
// archives beyond it, and their files), doubled, plus metadataAllowance
// per node. A reader refuses an archive that holds more (a small archive
// of RLE blocks could otherwise expand into terabytes), and a dump refuses
// to stand on an archive that would be refused.
func ExpansionLimit(m *Manifest) int64 {
	var limit int64
	for _, n := range m.Nodes {
		limit += metadataAllowance + 2*(max(n.Memory, 0)+max(n.ExtraMemory, 0)+max(n.Files, 0))
	}
	return limit
}

func (x *extractor) close() {
	if x.hashes != nil {
		x.hashes.wg.Wait()
	}
	for _, r := range x.roots {
		r.Close()
	}
}

func (x *extractor) root(dir string) (*os.Root, error) {
	if r, ok := x.roots[dir]; ok {
		return r, nil
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	x.roots[dir] = r
	return r, nil
}

// split turns "nodes/N/section/rel" into N, section, rel ("." for the
// section's own directory). The manifest check already vetted the form.
func split(name string) (int, string, string) {
	parts := strings.SplitN(name, "/", 4)
	i, _ := strconv.Atoi(parts[1])
	rel := "."
	if len(parts) == 4 {
		rel = parts[3]
	}
	return i, parts[2], rel
}

func (x *extractor) member(hdr *tar.Header, body io.Reader) error {
	node, section, rel := split(hdr.Name)
	dir := x.dst.FilesDir(node)
	if section == "criu" {
		dir = x.dst.ImagesDir(node)
	}
	root, err := x.root(dir)
	if err != nil {
		return err
	}
	mode := os.FileMode(hdr.Mode).Perm()
	if hdr.Mode&unix.S_ISUID != 0 {
		mode |= os.ModeSetuid
	}
	if hdr.Mode&unix.S_ISGID != 0 {
		mode |= os.ModeSetgid
	}
	if hdr.Mode&unix.S_ISVTX != 0 {
		mode |= os.ModeSticky
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if rel != "." {
			if err := root.Mkdir(rel, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
		}
		if fi, err := root.Lstat(rel); err != nil || !fi.IsDir() {
			return fmt.Errorf("not a directory")
		}
		x.dirs = append(x.dirs, dirTimes{root, rel, hdr.ModTime})
	case tar.TypeReg:
		var off int64
		flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
		if section == "criu" {
			// A CRIU image may come in parts: later parts append (the
			// reader allows repeats for images only).
			if fi, err := root.Lstat(rel); err == nil && fi.Mode().IsRegular() {
				flags, off = os.O_WRONLY|os.O_APPEND, fi.Size()
			}
		}
		f, err := root.OpenFile(rel, flags, 0o600)
		if err != nil {
			return err
		}
		if err := x.writeContent(f, hdr, body); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if x.hashes != nil {
			spans, _, _ := sparseSpans(hdr)
			if spans == nil {
				spans = []Span{{off, hdr.Size}}
			}
			x.hashes.addFileIn(hdr.Name, root, rel, spans)
		}
	case tar.TypeSymlink:
		if err := root.Symlink(hdr.Linkname, rel); err != nil {
			return err
		}
	case tar.TypeLink:
		// The target must be a member name of this node and section
		// (split needs one: "x" or "nodes/0" would make it panic).
		target := path.Clean(hdr.Linkname)
		if checkMemberName(target, node+1) != nil {
			return fmt.Errorf("hard link to %q leaves the node's files", hdr.Linkname)
		}
		lnode, lsection, lrel := split(target)
		if lnode != node || lsection != section || lrel == "." {
			return fmt.Errorf("hard link to %q leaves the node's files", hdr.Linkname)
		}
		fi, err := root.Lstat(lrel)
		if err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("hard link target %q is not a file extracted before", hdr.Linkname)
		}
		if err := root.Link(lrel, rel); err != nil {
			return err
		}
		return nil // the target's metadata stands
	case tar.TypeFifo:
		// O_DIRECTORY: a FIFO where the parent should be must fail, not
		// block the open forever.
		parent, err := root.OpenFile(path.Dir(rel), os.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		err = unix.Mkfifoat(int(parent.Fd()), path.Base(rel), 0o600)
		parent.Close()
		if err != nil {
			return err
		}
	case tar.TypeChar:
		// A whiteout (the Reader lets no other device through).
		parent, err := root.OpenFile(path.Dir(rel), os.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		err = unix.Mknodat(int(parent.Fd()), path.Base(rel), unix.S_IFCHR|0o600, 0)
		parent.Close()
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("member type %q is not allowed", hdr.Typeflag)
	}
	if err := root.Lchown(rel, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeSymlink {
		return nil
	}
	if err := root.Chmod(rel, mode); err != nil {
		return err
	}
	// After chown and chmod, which clear file capabilities.
	if err := setXattrs(root, rel, hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeDir {
		return root.Chtimes(rel, hdr.ModTime, hdr.ModTime)
	}
	return nil
}

// writeContent writes a regular member's content into f: at the offsets
// of its sparse map, if it has one, leaving holes between them.
func (x *extractor) writeContent(f *os.File, hdr *tar.Header, body io.Reader) error {
	if x.buf == nil {
		x.buf = make([]byte, 1<<20)
	}
	if x.total+hdr.Size > x.limit {
		return corrupt("the archive holds more than the %d bytes its manifest accounts for", x.limit)
	}
	spans, apparent, err := sparseSpans(hdr)
	if err != nil {
		return corrupt("%v", err)
	}
	if spans == nil {
		n, err := CopyChunks(f, body, func() []byte { return x.buf })
		x.count(n)
		return err
	}
	for _, s := range spans {
		n, err := CopyChunks(io.NewOffsetWriter(f, s.Off), io.LimitReader(body, s.Len), func() []byte { return x.buf })
		x.count(n)
		if err != nil {
			return err
		}
	}
	return f.Truncate(apparent)
}

// count adds n bytes written to the progress.
func (x *extractor) count(n int64) {
	x.total += n
	if x.progress != nil {
		x.progress(x.total)
	}
}

// setXattrs sets the extended attributes the member's PAX records hold.
func setXattrs(root *os.Root, rel string, hdr *tar.Header) error {
	var f *os.File
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, xattrPrefix)
		if !ok {
			continue
		}
		if f == nil {
			var err error
			if f, err = root.OpenFile(rel, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW, 0); err != nil {
				return err
			}
			defer f.Close()
		}
		if err := unix.Fsetxattr(int(f.Fd()), name, []byte(v), 0); err != nil {
			return fmt.Errorf("set extended attribute %s: %w", name, err)
		}
	}
	return nil
}

// finish sets directory times last, children first, since creating
// entries in a directory changes its modification time.
func (x *extractor) finish() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		if err := d.root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
			return err
		}
	}
	return nil
}

// CopyChunks copies r to w in writes of whole buffers, each as full as r
// allows: the decompressor hands out at most a block (128 KiB) per read,
// and *os.File's ReadFrom would write 32 KiB at a time. next returns the
// buffer for each write (the same one, or the next of a ring).
func CopyChunks(w io.Writer, r io.Reader, next func() []byte) (int64, error) {
	var total int64
	for {
		buf := next()
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
