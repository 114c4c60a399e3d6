package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Entry is a file on disk planned as an archive member.
type Entry struct {
	Name string
	// Type is "file", "dir", "symlink", "hardlink" or "fifo".
	Type string
	// Size is the content the member holds: for a sparse file, its data
	// only (Spans).
	Size int64
	// Path is the file on disk (it may be longer than PATH_MAX).
	Path string
	// Spans are the data ranges of a sparse file, nil for any other.
	Spans  []Span
	header *tar.Header
}

// Span is a range of a file: Len bytes at offset Off.
type Span struct{ Off, Len int64 }

// PAX records of crtree's own (docs/ARCHIVE.md).
const (
	// sparseMapKey lists a sparse file's data ranges, "off,len,off,len";
	// the member's content is that data, in order.
	sparseMapKey = "CRTREE.sparse.map"
	// sparseSizeKey is a sparse file's apparent size.
	sparseSizeKey = "CRTREE.sparse.size"
	// opaqueXattr marks an overlayfs directory as opaque: it hides what
	// the layers below hold in it.
	opaqueXattr = "trusted.overlay.opaque"
	// xattrPrefix starts the PAX record of each extended attribute.
	xattrPrefix = "SCHILY.xattr."
)

// archivedXattr reports whether an extended attribute is archived and
// restored: user.* and security.capability.
func archivedXattr(name string) bool {
	return strings.HasPrefix(name, "user.") || name == "security.capability"
}

// scanner walks a tree with *at calls relative to open directories, so
// that depth is no limit.
type scanner struct {
	out   []Entry
	links map[[2]uint64]string
	// overlay: the tree is an overlayfs upper directory, whose whiteouts
	// and opaque directories are archived too (ScanUpper).
	overlay bool
}

// Scan plans the members for the tree at dir, named prefix/<relative
// path>: directories, regular files (sparse ones as their data only),
// symlinks, FIFOs, and hard links to files seen earlier, with their
// user.* and security.capability extended attributes. Sockets and device
// nodes are skipped. Entries come in a stable order, each directory
// before what it holds.
func Scan(prefix, dir string) ([]Entry, error) {
	return scan(prefix, dir, &scanner{links: map[[2]uint64]string{}})
}

// ScanUpper is Scan for the upper directory of a node whose root is an
// overlay (an image or a --rootfs base): its whiteouts (character
// devices 0/0) and opaque directories (trusted.overlay.opaque) are
// archived too, so that what the node deleted of its base stays deleted.
func ScanUpper(prefix, dir string) ([]Entry, error) {
	return scan(prefix, dir, &scanner{links: map[[2]uint64]string{}, overlay: true})
}

func scan(prefix, dir string, s *scanner) ([]Entry, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	if err := s.add(fd, "", &st, prefix, dir); err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	if err := s.walk(fd, prefix, dir); err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	return s.out, nil
}

// walk adds what the directory open as fd holds, in name order.
func (s *scanner) walk(fd int, name, path string) error {
	names, err := readNames(fd)
	if err != nil {
		return fmt.Errorf("read %s: %w", elide(name), err)
	}
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // gone meanwhile
			}
			return fmt.Errorf("lstat %s: %w", elide(name+"/"+n), err)
		}
		if err := s.add(fd, n, &st, name+"/"+n, path+"/"+n); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		sub, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", elide(name+"/"+n), err)
		}
		err = s.walk(sub, name+"/"+n, path+"/"+n)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

// readNames returns the names in the directory open as fd, sorted.
func readNames(fd int) ([]string, error) {
	dup, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), ".")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

// add plans the entry n of the directory open as dir (dir itself if n is
// "") whose lstat is st.
func (s *scanner) add(dir int, n string, st *unix.Stat_t, name, path string) error {
	hdr := &tar.Header{Name: name, Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec)}
	e := Entry{Path: path, Name: name, header: hdr}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		hdr.Typeflag, e.Type = tar.TypeDir, "dir"
	case unix.S_IFLNK:
		hdr.Typeflag, e.Type = tar.TypeSymlink, "symlink"
		link, err := readlinkat(dir, n)
		if err != nil {
			return fmt.Errorf("readlink %s: %w", elide(name), err)
		}
		hdr.Linkname = link
	case unix.S_IFIFO:
		hdr.Typeflag, e.Type = tar.TypeFifo, "fifo"
	case unix.S_IFREG:
		hdr.Typeflag, e.Type, hdr.Size = tar.TypeReg, "file", st.Size
		if st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := s.links[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				e.Type = "hardlink"
				break
			}
			s.links[key] = name
		}
		if st.Blocks*512 < st.Size {
			if err := planSparse(dir, n, &e); err != nil {
				return fmt.Errorf("map %s: %w", elide(name), err)
			}
		}
		e.Size = hdr.Size
	case unix.S_IFCHR:
		if !s.overlay || st.Rdev != 0 {
			return nil // device nodes are never archived
		}
		hdr.Typeflag, e.Type = tar.TypeChar, "whiteout"
	default:
		return nil // sockets and device nodes are never archived
	}
	if e.Type == "file" || e.Type == "dir" {
		if err := readXattrs(dir, n, hdr, s.overlay && e.Type == "dir"); err != nil {
			return fmt.Errorf("read extended attributes of %s: %w", elide(name), err)
		}
	}
	s.out = append(s.out, e)
	return nil
}

// elide shortens a long name for a message: its start and its end.
func elide(name string) string {
	if len(name) <= 160 {
		return name
	}
	return name[:60] + "..." + name[len(name)-97:]
}

func readlinkat(dir int, n string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		k, err := unix.Readlinkat(dir, n, buf)
		if err != nil {
			return "", err
		}
		if k < size {
			return string(buf[:k]), nil
		}
	}
}

// fdPath names the entry n of the directory open as dir by a short path,
// whatever the directory's depth.
func fdPath(dir int, n string) string {
	p := "/proc/self/fd/" + strconv.Itoa(dir)
	if n != "" {
		p += "/" + n
	}
	return p
}

// readXattrs adds the archived extended attributes of the entry n of dir
// to hdr's PAX records.
func readXattrs(dir int, n string, hdr *tar.Header, opaque bool) error {
	p := fdPath(dir, n)
	buf := make([]byte, 4096)
	k, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ERANGE) {
		var size int
		if size, err = unix.Llistxattr(p, nil); err == nil {
			buf = make([]byte, size)
			k, err = unix.Llistxattr(p, buf)
		}
	}
	if errors.Is(err, unix.ENOTSUP) {
		return nil
	}
	if err != nil || k == 0 {
		return err
	}
	for _, x := range strings.Split(strings.TrimRight(string(buf[:k]), "\x00"), "\x00") {
		if !archivedXattr(x) && !(opaque && x == opaqueXattr) {
			continue
		}
		size, err := unix.Lgetxattr(p, x, nil)
		if err != nil {
			return err
		}
		v := make([]byte, size)
		if size, err = unix.Lgetxattr(p, x, v); err != nil {
			return err
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords[xattrPrefix+x] = string(v[:size])
	}
	return nil
}

// planSparse maps the data of the regular file n of dir with SEEK_DATA
// and SEEK_HOLE; a file with holes becomes a sparse member of its data.
func planSparse(dir int, n string, e *Entry) error {
	fd, err := unix.Openat(dir, n, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	size := e.header.Size
	var spans []Span
	var data int64
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole left
		}
		if err != nil {
			return err
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		end = min(end, size)
		if end > start {
			spans = append(spans, Span{start, end - start})
			data += end - start
		}
		off = end
	}
	if data == size {
		return nil // no hole after all
	}
	e.Spans = spans
	var m []string
	for _, s := range spans {
		m = append(m, strconv.FormatInt(s.Off, 10), strconv.FormatInt(s.Len, 10))
	}
	e.header.PAXRecords = map[string]string{sparseMapKey: strings.Join(m, ","), sparseSizeKey: strconv.FormatInt(size, 10)}
	e.header.Size = data
	return nil
}

// maxApparent bounds the apparent size of an archived sparse file: the
// largest file ext4 holds (16 TiB); holes cost no disk, but a hostile
// archive should not make files no file system has.
const maxApparent = 16 << 40

// sparseSpans returns the data ranges and apparent size of a sparse
// member (nil for any other), refusing a map that is not sorted, that
// overlaps, that leaves the file or does not add up to the content, and
// an apparent size over maxApparent.
func sparseSpans(hdr *tar.Header) ([]Span, int64, error) {
	m, ok := hdr.PAXRecords[sparseMapKey]
	size, sok := hdr.PAXRecords[sparseSizeKey]
	if !ok && !sok {
		return nil, 0, nil
	}
	bad := fmt.Errorf("member %q: malformed sparse map", hdr.Name)
	apparent, err := strconv.ParseInt(size, 10, 64)
	if !ok || err != nil || apparent < 0 || apparent > maxApparent || hdr.Typeflag != tar.TypeReg {
		return nil, 0, bad
	}
	var fields []string
	if m != "" {
		fields = strings.Split(m, ",")
	}
	if len(fields)%2 != 0 {
		return nil, 0, bad
	}
	spans := []Span{}
	var end, data int64
	for i := 0; i < len(fields); i += 2 {
		off, err1 := strconv.ParseInt(fields[i], 10, 64)
		n, err2 := strconv.ParseInt(fields[i+1], 10, 64)
		if err1 != nil || err2 != nil || off < end || n <= 0 || n > apparent-off {
			return nil, 0, bad
		}
		spans = append(spans, Span{off, n})
		end, data = off+n, data+n
	}
	if data != hdr.Size {
		return nil, 0, bad
	}
	return spans, apparent, nil
}

// openDeep opens the file at path for reading without following a
// symlink at its end, component by component when the path is longer
// than the kernel takes.
func openDeep(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if !errors.Is(err, syscall.ENAMETOOLONG) {
		return f, err
	}
	dir := filepath.Dir(path)
	parts := strings.Split(strings.TrimPrefix(dir, "/"), "/")
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if !filepath.IsAbs(dir) {
		fd, err = unix.Open(".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, err
	}
	defer func() { unix.Close(fd) }()
	for _, p := range parts {
		if p == "" || p == "." {
			continue
		}
		next, err := unix.Openat(fd, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		unix.Close(fd)
		fd = next
	}
	last, err := unix.Openat(fd, filepath.Base(path), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(last), path), nil
}
