package archive

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/zstd"
)

// ErrCorrupt wraps every way an archive can be damaged or hostile.
var ErrCorrupt = errors.New("corrupt archive")

// maxDecoderMemory bounds the zstd window a reader accepts.
const maxDecoderMemory = 64 << 20

// maxWindow bounds the zstd window a reader accepts; crtree writes 4 MiB.
const maxWindow = 16 << 20

// Reader reads an archive front to back, verifying it as it goes: each
// member must be listed in the manifest, appear once, have the listed
// type and size, and, when the SHA256SUMS trailer arrives, the checksum
// recorded there. Only when Next returns io.EOF has the whole archive been
// verified.
type Reader struct {
	zr       *zstd.Decoder
	tr       *tar.Reader
	manifest *Manifest
	members  map[string]Member
	// seen holds the piece digests of the members read so far; with an
	// external pool (Extract) those of regular files are computed there.
	seen     map[string][]string
	external *hashPool
	cur      *hashingReader
	curName  string
	skip     []byte
	done     bool
}

// NewReader starts reading the archive on r and reads its manifest.
func NewReader(r io.Reader) (*Reader, error) {
	zr, err := zstd.NewReader(bufio.NewReaderSize(r, 1<<20), zstd.WithDecoderMaxMemory(maxDecoderMemory), zstd.WithDecoderMaxWindow(maxWindow))
	if err != nil {
		return nil, err
	}
	ar := &Reader{zr: zr, tr: tar.NewReader(zr), seen: map[string][]string{}}
	hdr, err := ar.tr.Next()
	if err != nil {
		zr.Close()
		return nil, corrupt("no manifest: %v", readErr(err))
	}
	if hdr.Name != ManifestName || hdr.Typeflag != tar.TypeReg {
		zr.Close()
		return nil, corrupt("first member is %q, not %s", hdr.Name, ManifestName)
	}
	if hdr.Size > MaxManifestSize {
		zr.Close()
		return nil, corrupt("manifest of %d bytes is larger than the %d allowed", hdr.Size, MaxManifestSize)
	}
	data, err := io.ReadAll(io.LimitReader(ar.tr, hdr.Size))
	if err == nil && int64(len(data)) != hdr.Size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		zr.Close()
		return nil, corrupt("read manifest: %v", readErr(err))
	}
	m, err := decodeManifest(data)
	if err != nil {
		zr.Close()
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	ar.seen[ManifestName] = digestBytes(data)
	ar.manifest = m
	ar.members = map[string]Member{}
	for _, mem := range m.Members {
		ar.members[mem.Name] = mem
	}
	return ar, nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

func readErr(err error) error {
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("archive is truncated")
	}
	return err
}

// Manifest returns the archive's manifest (validated, not yet checked
// against the trailer's checksum).
func (r *Reader) Manifest() *Manifest { return r.manifest }

// Close releases the decoder.
func (r *Reader) Close() { r.zr.Close() }

// Next returns the next member and a reader of its content. It returns
// io.EOF once the trailer has been read and every checksum matched.
func (r *Reader) Next() (*tar.Header, io.Reader, error) {
	if r.done {
		return nil, nil, io.EOF
	}
	if err := r.finishCurrent(); err != nil {
		return nil, nil, err
	}
	hdr, err := r.tr.Next()
	if err != nil {
		return nil, nil, corrupt("%v (no %s trailer)", readErr(err), SumsName)
	}
	if hdr.Name == SumsName {
		return nil, nil, r.verifyTrailer(hdr)
	}
	mem, ok := r.members[hdr.Name]
	if !ok {
		return nil, nil, corrupt("member %q is not listed in the manifest", hdr.Name)
	}
	if _, dup := r.seen[hdr.Name]; dup {
		return nil, nil, corrupt("member %q appears twice", hdr.Name)
	}
	if typeOf(hdr.Typeflag) != mem.Type {
		return nil, nil, corrupt("member %q is a %s, the manifest says %s", hdr.Name, typeOf(hdr.Typeflag), mem.Type)
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size != mem.Size {
		return nil, nil, corrupt("member %q has %d bytes, the manifest says %d", hdr.Name, hdr.Size, mem.Size)
	}
	if hdr.Typeflag != tar.TypeReg && hdr.Size != 0 {
		return nil, nil, corrupt("member %q of type %s has content", hdr.Name, mem.Type)
	}
	if hdr.Typeflag != tar.TypeReg {
		r.seen[hdr.Name] = digestBytes([]byte(hdr.Linkname))
	}
	r.cur = &hashingReader{name: hdr.Name, r: r.tr, left: hdr.Size, hash: r.external == nil && hdr.Typeflag == tar.TypeReg}
	r.curName = hdr.Name
	return hdr, r.cur, nil
}

func typeOf(flag byte) string {
	switch flag {
	case tar.TypeReg:
		return "file"
	case tar.TypeDir:
		return "dir"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hardlink"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type %q", flag)
}

// finishCurrent reads what the caller left of the current member and
// records its checksum.
func (r *Reader) finishCurrent() error {
	if r.cur == nil {
		return nil
	}
	// Read the rest with a buffer of our own: the chunk being hashed must
	// not be handed to anyone else before the hash is done.
	if r.skip == nil {
		r.skip = make([]byte, 1<<20)
	}
	for {
		_, err := r.cur.Read(r.skip)
		if err == io.EOF {
			break
		}
		if err != nil {
			r.cur.wait()
			return err
		}
	}
	r.cur.wait()
	if r.cur.left != 0 {
		return corrupt("member %q: archive is truncated", r.curName)
	}
	if r.cur.hash {
		r.seen[r.curName] = r.cur.digests()
	}
	r.cur = nil
	return nil
}

func (r *Reader) verifyTrailer(hdr *tar.Header) error {
	if hdr.Size > MaxManifestSize {
		return corrupt("%s is too large", SumsName)
	}
	data, err := io.ReadAll(io.LimitReader(r.tr, hdr.Size))
	if err != nil || int64(len(data)) != hdr.Size {
		return corrupt("read %s: archive is truncated", SumsName)
	}
	sums, err := decodeChecksums(data)
	if err != nil {
		return corrupt("%v", err)
	}
	if r.external != nil {
		ext, err := r.external.wait()
		if err != nil {
			return err
		}
		for _, m := range ext.Members {
			r.seen[m.Name] = m.SHA256
		}
	}
	want := map[string][]string{}
	for _, m := range sums.Members {
		if _, dup := want[m.Name]; dup {
			return corrupt("%s lists %q twice", SumsName, m.Name)
		}
		want[m.Name] = m.SHA256
	}
	for name, got := range r.seen {
		w, ok := want[name]
		if !ok || len(w) != len(got) {
			return corrupt("checksum mismatch for %q", name)
		}
		for i := range got {
			if w[i] != got[i] {
				return corrupt("checksum mismatch for %q", name)
			}
		}
	}
	for name := range r.members {
		if _, ok := r.seen[name]; !ok {
			return corrupt("member %q listed in the manifest is missing", name)
		}
	}
	if len(want) != len(r.seen) {
		return corrupt("%s lists members that are not in the archive", SumsName)
	}
	if _, err := r.tr.Next(); err != io.EOF {
		return corrupt("data after %s", SumsName)
	}
	// The zstd stream must end too: trailing garbage is damage.
	var one [1]byte
	if n, _ := r.zr.Read(one[:]); n != 0 {
		return corrupt("data after the end of the archive")
	}
	r.done = true
	return io.EOF
}

// hashingReader counts what is left of a member and, unless the member is
// hashed elsewhere, hashes it piece by piece. A large chunk is hashed in a
// goroutine while the caller writes it out; the next Read (or finish)
// waits for it, so the caller must leave p untouched until then
// (io.CopyBuffer does).
type hashingReader struct {
	name    string
	r       io.Reader
	left    int64
	hash    bool
	h       hash.Hash
	inPiece int64
	done    []string
	pending chan struct{}
}

// asyncHashMin is the smallest chunk worth hashing in a goroutine.
const asyncHashMin = 64 << 10

func (h *hashingReader) wait() {
	if h.pending != nil {
		<-h.pending
		h.pending = nil
	}
}

// feed hashes b, closing a piece every PieceSize bytes.
func (h *hashingReader) feed(b []byte) {
	for len(b) > 0 {
		if h.h == nil {
			h.h, h.inPiece = sha256.New(), 0
		}
		n := min(int64(len(b)), PieceSize-h.inPiece)
		h.h.Write(b[:n])
		h.inPiece += n
		b = b[n:]
		if h.inPiece == PieceSize {
			h.done = append(h.done, hex.EncodeToString(h.h.Sum(nil)))
			h.h = nil
		}
	}
}

// digests returns the piece digests of everything read.
func (h *hashingReader) digests() []string {
	if h.h != nil || len(h.done) == 0 {
		if h.h == nil {
			h.h = sha256.New()
		}
		h.done = append(h.done, hex.EncodeToString(h.h.Sum(nil)))
		h.h = nil
	}
	return h.done
}

func (h *hashingReader) Read(p []byte) (int, error) {
	h.wait()
	n, err := h.r.Read(p)
	if h.hash {
		if n >= asyncHashMin {
			chunk, done := p[:n], make(chan struct{})
			h.pending = done
			go func() {
				h.feed(chunk)
				close(done)
			}()
		} else {
			h.feed(p[:n])
		}
	}
	h.left -= int64(n)
	if err == io.EOF && h.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err != nil && err != io.EOF {
		err = corrupt("member %q: %v", h.name, readErr(err))
	}
	return n, err
}

// Verify reads the whole archive on r and checks every member.
func Verify(r io.Reader) (*Manifest, error) {
	ar, err := NewReader(r)
	if err != nil {
		return nil, err
	}
	defer ar.Close()
	for {
		_, _, err := ar.Next()
		if err == io.EOF {
			return ar.Manifest(), nil
		}
		if err != nil {
			return ar.Manifest(), err
		}
	}
}
