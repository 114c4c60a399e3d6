package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Whiteouts of the OCI image format: a file .wh.NAME deletes NAME of the
// layers below; .wh..wh..opq in a directory hides everything below it.
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// opaqueXattr marks an overlayfs directory as opaque.
const opaqueXattr = "trusted.overlay.opaque"

// maxLayerEntries bounds the entries of one layer (a hostile layer of
// empty files could otherwise exhaust inodes at leisure).
const maxLayerEntries = 4 << 20

// unpack writes the layer read from r into dir (which must exist and be
// empty) as an overlayfs lower directory. Every name stays inside dir
// (os.Root), whatever links the layer holds; device nodes are skipped
// and counted in skipped.
func unpack(r io.Reader, dir string) (skipped int, err error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var dirTimes []dirTime
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return skipped, fmt.Errorf("read layer: %w", err)
		}
		if n >= maxLayerEntries {
			return skipped, fmt.Errorf("layer holds more than %d entries", maxLayerEntries)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return skipped, err
		}
		if err := refuseSparse(hdr); err != nil {
			return skipped, err
		}
		if name == "." {
			continue
		}
		dirName, base := path.Split(name)
		dirName = strings.TrimSuffix(dirName, "/")
		if dirName == "" {
			dirName = "."
		}
		switch {
		case base == opaqueMarker && dirName == ".":
			// overlayfs ignores an opaque layer root: what it means, a
			// layer that hides all below, cannot be had.
			return skipped, fmt.Errorf("layer entry %q: an opaque layer root is not supported", hdr.Name)
		case base == opaqueMarker:
			err = setOpaque(root, dirName)
		case strings.HasPrefix(base, whiteoutPrefix):
			err = whiteout(root, dirName, strings.TrimPrefix(base, whiteoutPrefix))
		default:
			var isDev bool
			isDev, err = writeEntry(root, name, hdr, tr)
			if isDev {
				skipped++
			}
			if err == nil && hdr.Typeflag == tar.TypeDir {
				dirTimes = append(dirTimes, dirTime{name, hdr.ModTime})
			}
		}
		if err != nil {
			return skipped, fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
	}
	// Directory times last: writing into a directory changes its own.
	for i := len(dirTimes) - 1; i >= 0; i-- {
		root.Chtimes(dirTimes[i].name, dirTimes[i].t, dirTimes[i].t)
	}
	return skipped, nil
}

type dirTime struct {
	name string
	t    time.Time
}

// refuseSparse refuses a sparse file (GNU tar's PAX form: Go's reader
// hands it over as a regular file with its holes as zeros): a few KiB of
// layer could otherwise unpack into terabytes. (GNU tar's older form, type
// 'S', is refused as a type.) Images do not hold them.
func refuseSparse(hdr *tar.Header) error {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return fmt.Errorf("layer entry %q: sparse files are not supported in a layer", hdr.Name)
		}
	}
	return nil
}

// cleanName returns a layer entry's name relative to the layer's root,
// refusing one that would leave it.
func cleanName(name string) (string, error) {
	c := path.Clean(strings.TrimPrefix(name, "./"))
	if path.IsAbs(c) {
		c = path.Clean(strings.TrimLeft(c, "/"))
	}
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("layer entry %q leaves the layer", name)
	}
	if c == "" {
		c = "."
	}
	return c, nil
}

// writeEntry creates one entry of a layer; device nodes are skipped
// (isDev). An entry replaces what a previous entry of the same layer left
// under its name, except a directory over a directory.
func writeEntry(root *os.Root, name string, hdr *tar.Header, body io.Reader) (isDev bool, err error) {
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return false, err
	}
	if hdr.Typeflag != tar.TypeDir {
		if err := root.RemoveAll(name); err != nil {
			return false, err
		}
	}
	mode := fs.FileMode(hdr.Mode) & fs.ModePerm
	switch hdr.Typeflag {
	case tar.TypeDir:
		if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
			root.RemoveAll(name)
		}
		if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return false, err
		}
	case tar.TypeReg, tar.TypeRegA:
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return false, err
		}
		_, err = io.Copy(f, body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return false, err
		}
	case tar.TypeSymlink:
		if err := root.Symlink(hdr.Linkname, name); err != nil {
			return false, err
		}
		return false, root.Lchown(name, hdr.Uid, hdr.Gid)
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return false, err
		}
		return false, root.Link(target, name)
	case tar.TypeFifo:
		if err := mknodIn(root, name, unix.S_IFIFO, 0); err != nil {
			return false, err
		}
	case tar.TypeChar, tar.TypeBlock:
		return true, nil
	default:
		return false, fmt.Errorf("type %q is not allowed in a layer", hdr.Typeflag)
	}
	if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
		return false, err
	}
	// After chown, which clears the set-ID bits.
	if err := root.Chmod(name, mode|setIDBits(hdr.Mode)); err != nil {
		return false, err
	}
	if err := setXattrs(root, name, hdr); err != nil {
		return false, err
	}
	if hdr.Typeflag != tar.TypeDir {
		root.Chtimes(name, hdr.ModTime, hdr.ModTime)
	}
	return false, nil
}

// setIDBits are the setuid, setgid and sticky bits of a tar mode.
func setIDBits(m int64) fs.FileMode {
	var out fs.FileMode
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}

// setXattrs sets the entry's extended attributes that a container image
// may carry (user.* and file capabilities); others are left out.
func setXattrs(root *os.Root, name string, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		x, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || !(strings.HasPrefix(x, "user.") || x == "security.capability") {
			continue
		}
		f, err := root.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		err = unix.Fsetxattr(int(f.Fd()), x, []byte(v), 0)
		f.Close()
		if err != nil {
			return fmt.Errorf("set %s: %w", x, err)
		}
	}
	return nil
}

// mknodIn makes a node in root at name, without following a symlink at
// its last element.
func mknodIn(root *os.Root, name string, typ uint32, dev int) error {
	dir, err := root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer dir.Close()
	return unix.Mknodat(int(dir.Fd()), path.Base(name), typ|0o600, dev)
}

// whiteout records that name of the layers below is deleted: overlayfs's
// whiteout is a character device 0/0.
func whiteout(root *os.Root, dirName, name string) error {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("bad whiteout %q", name)
	}
	full := path.Join(dirName, name)
	if err := root.MkdirAll(dirName, 0o755); err != nil {
		return err
	}
	if err := root.RemoveAll(full); err != nil {
		return err
	}
	return mknodIn(root, full, unix.S_IFCHR, 0)
}

// setOpaque marks dirName as hiding everything the layers below hold in
// it.
func setOpaque(root *os.Root, dirName string) error {
	if err := root.MkdirAll(dirName, 0o755); err != nil {
		return err
	}
	d, err := root.Open(dirName)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Fsetxattr(int(d.Fd()), opaqueXattr, []byte("y"), 0)
}
