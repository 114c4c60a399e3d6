package archive

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"
)

// Entry is a file on disk planned as an archive member.
type Entry struct {
	Member
	// Path is the file on disk (empty for directories made up by the
	// writer).
	Path   string
	header *tar.Header
}

// Scan plans the members for the tree at dir, named prefix/<relative
// path>: directories, regular files, symlinks, FIFOs, and hard links to
// files seen earlier. Sockets and device nodes are skipped. Entries come
// in a stable order, each directory before what it holds.
func Scan(prefix, dir string) ([]Entry, error) {
	var out []Entry
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		name := prefix
		if rel != "." {
			name = prefix + "/" + filepath.ToSlash(rel)
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return nil // a socket or another type tar cannot hold
		}
		hdr.Name = name
		hdr.Uname, hdr.Gname = "", ""
		e := Entry{Path: p, header: hdr, Member: Member{Name: name}}
		switch hdr.Typeflag {
		case tar.TypeDir:
			e.Type = "dir"
		case tar.TypeSymlink:
			e.Type = "symlink"
		case tar.TypeFifo:
			e.Type = "fifo"
		case tar.TypeReg:
			e.Type = "file"
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
				key := [2]uint64{st.Dev, st.Ino}
				if first, ok := links[key]; ok {
					hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
					e.Type = "hardlink"
					break
				}
				links[key] = name
			}
			e.Size = hdr.Size
		default:
			return nil // device nodes are never archived
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	return out, nil
}

// ScanFlat plans the regular files directly in dir (CRIU's images) as
// prefix/<name>, sorted by name.
func ScanFlat(prefix, dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, d := range des {
		if !d.Type().IsRegular() {
			continue
		}
		fi, err := d.Info()
		if err != nil {
			return nil, err
		}
		hdr, _ := tar.FileInfoHeader(fi, "")
		hdr.Name = prefix + "/" + d.Name()
		hdr.Uname, hdr.Gname = "", ""
		out = append(out, Entry{Path: filepath.Join(dir, d.Name()), header: hdr, Member: Member{Name: hdr.Name, Type: "file", Size: fi.Size()}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Writer writes an archive stream.
type Writer struct {
	zw   *zstd.Encoder
	tw   *tar.Writer
	sums strings.Builder
	// Progress, if set, is called with the number of uncompressed bytes
	// written so far.
	Progress func(n int64)
	written  int64
	buf      []byte
}

// NewWriter starts an archive on w. level is a zstd level
// (zstd.SpeedFastest is what crtree uses: CRIU's pages are often random).
func NewWriter(w io.Writer, level zstd.EncoderLevel) (*Writer, error) {
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(level), zstd.WithWindowSize(4<<20), zstd.WithEncoderConcurrency(runtime.NumCPU()))
	if err != nil {
		return nil, err
	}
	return &Writer{zw: zw, tw: tar.NewWriter(zw), buf: make([]byte, 1<<20)}, nil
}

// WriteManifest writes m as the first member.
func (w *Writer) WriteManifest(m *Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return w.writeBytes(ManifestName, data)
}

func (w *Writer) writeBytes(name string, data []byte) error {
	hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.MultiWriter(w.tw, h).Write(data); err != nil {
		return err
	}
	w.addSum(name, h.Sum(nil))
	return nil
}

func (w *Writer) addSum(name string, sum []byte) {
	fmt.Fprintf(&w.sums, "%s  %s\n", hex.EncodeToString(sum), name)
}

// WriteEntries writes the planned entries, reading regular files from
// disk. A file whose size changed since Scan is an error: the archive
// would not match its manifest.
func (w *Writer) WriteEntries(entries []Entry) error {
	for _, e := range entries {
		hdr := *e.header
		hdr.Format = tar.FormatPAX
		if err := w.tw.WriteHeader(&hdr); err != nil {
			return fmt.Errorf("write %s: %w", e.Name, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			w.addSum(e.Name, sha256.New().Sum(nil))
			continue
		}
		f, err := os.Open(e.Path)
		if err != nil {
			return fmt.Errorf("write %s: %w", e.Name, err)
		}
		h := sha256.New()
		n, err := io.CopyBuffer(io.MultiWriter(w.tw, h, progressWriter{w}), io.LimitReader(f, hdr.Size), w.buf)
		f.Close()
		if err == nil && n != hdr.Size {
			err = fmt.Errorf("file shrank while archiving")
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", e.Name, err)
		}
		w.addSum(e.Name, h.Sum(nil))
	}
	return nil
}

type progressWriter struct{ w *Writer }

func (p progressWriter) Write(b []byte) (int, error) {
	p.w.written += int64(len(b))
	if p.w.Progress != nil {
		p.w.Progress(p.w.written)
	}
	return len(b), nil
}

// Close writes the checksums and ends the tar and zstd streams. It does
// not close the underlying writer.
func (w *Writer) Close() error {
	sums := w.sums.String()
	hdr := &tar.Header{Name: SumsName, Mode: 0o644, Size: int64(len(sums)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return err
	}
	if _, err := io.WriteString(w.tw, sums); err != nil {
		return err
	}
	if err := w.tw.Close(); err != nil {
		return err
	}
	return w.zw.Close()
}

// Members returns the manifest members for entries.
func Members(entries []Entry) []Member {
	out := make([]Member, len(entries))
	for i, e := range entries {
		out[i] = e.Member
	}
	return out
}
