package archive

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	"github.com/klauspost/compress/zstd"
)

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
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		out = append(out, Entry{Path: filepath.Join(dir, d.Name()), header: hdr, Name: hdr.Name, Type: "file", Size: fi.Size()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Writer writes an archive stream.
type Writer struct {
	sw *switchWriter
	tw *tar.Writer
	// tout sees what tw writes; headers are the header digests of the
	// members written, in order.
	tout    *tarOutput
	headers []string
	// Progress, if set, is called with the number of uncompressed bytes
	// written so far.
	Progress func(n int64)
	written  int64
	hashes   *hashPool
	buf      []byte
	out      *counter
	index    Index // Meta set by MarkMeta
	pages    pageTable
}

// counter counts the bytes written to the archive's destination.
type counter struct {
	w io.Writer
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// chunkSize is the unit in which file content is read, sampled and
// written.
const chunkSize = 1 << 20

// NewWriter starts an archive on w. level is a zstd level
// (zstd.SpeedFastest is what crtree uses); incompressible content is
// stored raw whatever the level. Frames carry no zstd checksum: the
// trailer's SHA-256 covers every byte.
func NewWriter(w io.Writer, level zstd.EncoderLevel) (*Writer, error) {
	zw, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithWindowSize(4<<20), zstd.WithEncoderConcurrency(runtime.NumCPU()), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	out := &counter{w: w}
	sw := &switchWriter{out: out, zw: zw, sampler: newSampler()}
	tout := &tarOutput{w: sw, sum: newHeaderSum()}
	return &Writer{sw: sw, tw: tar.NewWriter(tout), tout: tout, hashes: newHashPool(), buf: make([]byte, chunkSize), out: out, pages: pageTable{member: -1}}, nil
}

// Content returns the bytes of member content written so far, the
// manifest aside: what a reader counts against ExpansionLimit.
func (w *Writer) Content() int64 { return w.written }

// WriteManifest writes m as the first member.
func (w *Writer) WriteManifest(m *Manifest) error {
	data, err := encodeManifest(m)
	if err != nil {
		return err
	}
	return w.writeBytes(ManifestName, data)
}

// encodeManifest is the content of manifest.json for m.
func encodeManifest(m *Manifest) ([]byte, error) {
	return json.MarshalIndent(m, "", "  ")
}

func (w *Writer) writeBytes(name string, data []byte) error {
	hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := w.writeHeader(hdr); err != nil {
		return err
	}
	if _, err := w.tw.Write(data); err != nil {
		return err
	}
	w.endContent(hdr.Size)
	w.hashes.addBytes(name, "file", int64(len(data)), data)
	return nil
}

// writeHeader writes a member's header and records its digest; what is
// written next is the member's content, up to endContent.
func (w *Writer) writeHeader(hdr *tar.Header) error {
	if err := w.tw.WriteHeader(hdr); err != nil {
		return err
	}
	w.headers = append(w.headers, w.tout.sum.take())
	w.tout.content = true
	w.startPageMember(hdr.Name)
	return nil
}

// endContent ends the content of the current member, of size bytes.
func (w *Writer) endContent(size int64) {
	w.tout.content = false
	w.tout.sum.endContent(size)
	w.pages.member = -1
}

// WriteEntries writes the planned entries, reading regular files from
// disk. Their checksums are computed from the same files, in parallel;
// the files must not change until Close (a file that changes size is an
// error, and any other change makes the archive fail verification, never
// restore wrong data).
func (w *Writer) WriteEntries(entries []Entry) error {
	for _, e := range entries {
		hdr := *e.header
		hdr.Format = tar.FormatPAX
		w.sw.raw, w.sw.zero = false, false
		if err := w.writeHeader(&hdr); err != nil {
			return fmt.Errorf("write %s: %w", e.Name, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			w.endContent(0)
			w.hashes.addBytes(e.Name, e.Type, 0, []byte(hdr.Linkname))
			continue
		}
		spans := e.Spans
		if spans == nil {
			spans = []Span{{0, hdr.Size}}
		}
		w.hashes.addFile(e.Name, e.Path, spans)
		if err := w.copyFile(e.Path, spans); err != nil {
			return fmt.Errorf("write %s: %w", e.Name, err)
		}
		w.endContent(hdr.Size)
	}
	w.sw.raw, w.sw.zero = false, false
	return nil
}

// WritePart writes size bytes at offset off of the file at path as one
// member called name: a CRIU image still being written is archived in
// parts, which a reader concatenates. The range must not change.
func (w *Writer) WritePart(name, path string, off, size int64) error {
	hdr := &tar.Header{Name: name, Mode: 0o600, Size: size, Typeflag: tar.TypeReg, Format: tar.FormatPAX, ModTime: time.Now()}
	w.sw.raw, w.sw.zero = false, false
	if err := w.writeHeader(hdr); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	w.hashes.addFile(name, path, []Span{{off, size}})
	if err := w.copyFile(path, []Span{{off, size}}); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	w.endContent(size)
	w.sw.raw, w.sw.zero = false, false
	return nil
}

// WritePartBytes writes data as one member called name, a part of a CRIU
// image that arrives through a pipe rather than a file. data is hashed in
// the background; done is called once nothing reads it any more.
func (w *Writer) WritePartBytes(name string, data []byte, done func()) error {
	hdr := &tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX, ModTime: time.Now()}
	w.sw.raw, w.sw.zero = false, false
	if err := w.writeHeader(hdr); err != nil {
		done()
		return fmt.Errorf("write %s: %w", name, err)
	}
	for off := 0; off < len(data); off += chunkSize {
		chunk := data[off:min(len(data), off+chunkSize)]
		w.sw.zero = allZero(chunk)
		w.sw.raw = !w.sw.zero && w.sw.sampler.incompressible(chunk)
		if err := w.pageChunk(len(chunk)); err != nil {
			done()
			return fmt.Errorf("write %s: %w", name, err)
		}
		if _, err := w.tw.Write(chunk); err != nil {
			done()
			return fmt.Errorf("write %s: %w", name, err)
		}
		w.written += int64(len(chunk))
		if w.Progress != nil {
			w.Progress(w.written)
		}
	}
	w.endContent(int64(len(data)))
	w.sw.raw, w.sw.zero = false, false
	w.hashes.addBuffer(name, data, done)
	return nil
}

// copyFile streams the spans of the file at path into the archive in
// chunks, each stored raw or compressed as its sample says.
func (w *Writer) copyFile(path string, spans []Span) error {
	f, err := openDeep(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, size := spansReader(f, spans)
	var copied int64
	for copied < size {
		n, err := io.ReadFull(r, w.buf[:min(int64(len(w.buf)), size-copied)])
		if n > 0 {
			chunk := w.buf[:n]
			w.sw.zero = allZero(chunk)
			w.sw.raw = !w.sw.zero && w.sw.sampler.incompressible(chunk)
			if err := w.pageChunk(n); err != nil {
				return err
			}
			if _, werr := w.tw.Write(chunk); werr != nil {
				return werr
			}
			copied += int64(n)
			w.written += int64(n)
			if w.Progress != nil {
				w.Progress(w.written)
			}
		}
		if err != nil {
			if copied < size {
				return fmt.Errorf("file shrank while archiving")
			}
			break
		}
	}
	return nil
}

// boundary ends the current zstd frame, so that the next member starts
// both a frame and a tar header, and returns the archive's size so far.
func (w *Writer) boundary() (int64, error) {
	if err := w.tw.Flush(); err != nil {
		return 0, err
	}
	if err := w.sw.close(); err != nil {
		return 0, err
	}
	return w.out.n, nil
}

// MarkMeta records that the members from here on, up to the first page
// image, are the CRIU images written once CRIU finished: the index at the
// end of the archive points here (see Index). Called at most once.
func (w *Writer) MarkMeta() error {
	off, err := w.boundary()
	if err != nil {
		return err
	}
	w.hashes.mu.Lock()
	w.index.MetaMember = int64(len(w.hashes.members))
	w.hashes.mu.Unlock()
	w.index.Meta = off
	return nil
}

// Close writes the checksums and ends the tar and zstd streams, then the
// index if MarkMeta was called. It does not close the underlying writer.
func (w *Writer) Close() error {
	sums, err := w.hashes.wait()
	if err != nil {
		return err
	}
	if len(sums.Members) != len(w.headers) {
		return fmt.Errorf("write %s: %d members, %d headers", SumsName, len(sums.Members), len(w.headers))
	}
	for i := range sums.Members {
		sums.Members[i].Header = w.headers[i]
	}
	w.sw.raw, w.sw.zero = false, false
	if w.index.Sums, err = w.boundary(); err != nil {
		return err
	}
	if w.index.Meta != 0 {
		x := w.index
		sums.Index = &x
	}
	sums.Pages = w.pages.entries
	data, err := json.Marshal(sums)
	if err != nil {
		return err
	}
	// An archive no reader accepts must not be written: the dump would
	// remove what it cannot give back.
	if len(data) > MaxSumsSize {
		return fmt.Errorf("the archive would list %d members in %d bytes of %s, more than the %d a reader accepts: too many files (or too deep a tree) to archive", len(sums.Members), len(data), SumsName, MaxSumsSize)
	}
	if err := w.tw.WriteHeader(sumsHeader(data)); err != nil {
		return err
	}
	if _, err := w.tw.Write(data); err != nil {
		return err
	}
	if err := w.tw.Close(); err != nil {
		return err
	}
	if err := w.sw.close(); err != nil {
		return err
	}
	if w.index.Meta == 0 {
		return nil
	}
	_, err = w.out.Write(w.index.frame())
	return err
}
