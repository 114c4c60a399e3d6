package image

import (
	"archive/tar"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// fromRootfsDir makes a one-layer image of the root file system in dir
// (debootstrap's output, say), through a tar of it in tmp.
func fromRootfsDir(dir, tmp string) (v1.Image, error) {
	layerFile := filepath.Join(tmp, "rootfs.tar")
	if err := tarDir(dir, layerFile); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromFile(layerFile)
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(empty.Image, layer)
}

// tarDir writes the tree at dir as a tar file: directories, files (hard
// links as links), symlinks and FIFOs with their owners, modes, times and
// the extended attributes a layer may carry (user.*, file
// capabilities); device nodes and sockets are left out, as a layer's
// would be, and so are other file systems mounted below dir (a /proc).
func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	t := &dirTar{tw: tar.NewWriter(f), dir: dir, seen: map[[2]uint64]string{}}
	if err := syscall.Stat(dir, &t.top); err != nil {
		return err
	}
	if err := filepath.WalkDir(dir, t.add); err != nil {
		return err
	}
	if err := t.tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// dirTar is a tar of a directory being written (tarDir).
type dirTar struct {
	tw   *tar.Writer
	dir  string
	top  syscall.Stat_t       // dir's, to stay on its file system
	seen map[[2]uint64]string // files with several links, by inode
}

// add writes the entry at p (a filepath.WalkDirFunc).
func (t *dirTar) add(p string, d fs.DirEntry, err error) error {
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(t.dir, p)
	if err != nil || rel == "." {
		return err
	}
	fi, err := d.Info()
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	switch {
	case st.Dev != t.top.Dev && fi.IsDir():
		return filepath.SkipDir
	case st.Dev != t.top.Dev, fi.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeSocket) != 0:
		return nil
	}
	hdr, err := t.header(p, rel, fi, st)
	if err != nil {
		return err
	}
	if err := t.tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	src, err := os.Open(p)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = io.Copy(t.tw, src)
	return err
}

// header is the tar header of the entry at p: a second link to a file
// is a hard link to the first.
func (t *dirTar) header(p, rel string, fi fs.FileInfo, st *syscall.Stat_t) (*tar.Header, error) {
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		var err error
		if link, err = os.Readlink(p); err != nil {
			return nil, err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return nil, err
	}
	hdr.Name, hdr.Uname, hdr.Gname = filepath.ToSlash(rel), "", ""
	if fi.IsDir() {
		hdr.Name += "/"
	}
	if fi.Mode().IsRegular() || fi.IsDir() {
		hdr.PAXRecords = layerXattrs(p)
	}
	if fi.Mode().IsRegular() && st.Nlink > 1 {
		key := [2]uint64{st.Dev, st.Ino}
		if first, ok := t.seen[key]; ok {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
		} else {
			t.seen[key] = hdr.Name
		}
	}
	return hdr, nil
}

// layerXattrs returns the extended attributes of p that a layer carries,
// as PAX records (nil if none).
func layerXattrs(p string) map[string]string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return nil
	}
	var out map[string]string
	for _, x := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if !strings.HasPrefix(x, "user.") && x != "security.capability" {
			continue
		}
		v := make([]byte, 64<<10)
		k, err := unix.Lgetxattr(p, x, v)
		if err != nil {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out["SCHILY.xattr."+x] = string(v[:k])
	}
	return out
}
