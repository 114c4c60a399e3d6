package archive

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/klauspost/compress/zstd"
)

// ErrCorrupt wraps every way an archive can be damaged or hostile.
var ErrCorrupt = errors.New("corrupt archive")

// maxDecoderMemory bounds the zstd window a reader accepts.
const maxDecoderMemory = 64 << 20

// maxWindow bounds the zstd window a reader accepts; crtree writes 4 MiB.
const maxWindow = 16 << 20

// decoderOptions are how every archive is decompressed. zstd's own frame
// checksums (xxhash) are not checked: the SHA-256 of every piece is, and
// the decoder would otherwise hash all output a second time.
func decoderOptions() []zstd.DOption {
	return []zstd.DOption{zstd.WithDecoderMaxMemory(maxDecoderMemory), zstd.WithDecoderMaxWindow(maxWindow), zstd.IgnoreChecksum(true)}
}

// Reader reads an archive front to back, verifying it as it goes: each
// member must have an allowed name (inside its node's files or images)
// and type, appear once (only CRIU images may come in several parts), and
// when the trailer arrives, every member must be listed there, in order,
// with its type, size and checksums (and header digest, in a version that
// has them: see version). Only when Next returns io.EOF has the whole
// archive been verified.
type Reader struct {
	zr *frameReader
	tr *tar.Reader
	in *tarInput
	// headers are the header digests of the members read, in order.
	headers  []string
	manifest *Manifest
	// v is the manifest's format version: what its checksums cover.
	v *version
	// pool records every member read, in order, with its digests; the
	// content of a regular file the extractor writes out is hashed from
	// what it wrote (hashElsewhere), any other in memory as it is read.
	pool *hashPool
	seen map[string]string // name -> type, for the once-only rule
	cur  *hashingReader
	skip []byte
	done bool
	// count is the number of members, once the trailer matched; pos the
	// position of the current member (the manifest is 0).
	count int
	pos   int
	// expect, if set, is the trailer read ahead (Expect); sums the
	// trailer, once matched.
	expect *Checksums
	sums   *Checksums
	// content counts the regular members' bytes but those of carried
	// images, which may not exceed limit (ExpansionLimit of the manifest).
	content, limit int64
	// carriedSeen is set once a carried image's member has been read:
	// no node's member may follow.
	carriedSeen bool
}

// NewReader starts reading the archive on r and reads its manifest.
func NewReader(r io.Reader) (*Reader, error) {
	zr := newFrameReader(r)
	in := &tarInput{r: zr, sum: newHeaderSum()}
	ar := &Reader{zr: zr, tr: tar.NewReader(in), in: in, pool: newHashPool(), seen: map[string]string{}}
	hdr, err := ar.nextHeader()
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
	if errors.Is(err, ErrVersion) {
		zr.Close()
		return nil, err
	}
	if err != nil {
		zr.Close()
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	ar.pool.addBytes(ManifestName, "file", int64(len(data)), data)
	ar.in.sum.endContent(hdr.Size)
	ar.manifest = m
	ar.v = versions[m.Version]
	ar.limit = ExpansionLimit(m)
	return ar, nil
}

// nextHeader reads the next member's header, checking the padding
// before it and recording its digest.
func (r *Reader) nextHeader() (*tar.Header, error) {
	r.in.headers = true
	hdr, err := r.tr.Next()
	r.in.headers = false
	if errors.Is(err, errPadding) {
		return nil, corrupt("%v", err)
	}
	if err == nil {
		r.headers = append(r.headers, r.in.sum.take())
	}
	return hdr, err
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

// Close waits until nothing hashes the caller's memory any more (after a
// failure in the middle of a member) and releases the decoder.
func (r *Reader) Close() {
	r.settle()
	r.zr.Close()
}

// settle waits for the hashing of what was read of the current member.
func (r *Reader) settle() {
	if r.cur != nil {
		r.cur.wait()
	}
}

// Next returns the next member and a reader of its content. It returns
// io.EOF once the trailer has been read and every checksum matched.
func (r *Reader) Next() (*tar.Header, io.Reader, error) {
	if r.done {
		return nil, nil, io.EOF
	}
	if err := r.finishCurrent(); err != nil {
		return nil, nil, err
	}
	hdr, err := r.nextHeader()
	if errors.Is(err, ErrCorrupt) {
		return nil, nil, err
	}
	if err != nil {
		return nil, nil, corrupt("%v (no %s trailer)", readErr(err), SumsName)
	}
	if hdr.Name == SumsName {
		return nil, nil, r.verifyTrailer(hdr)
	}
	if err := r.manifest.checkMember(hdr); err != nil {
		return nil, nil, corrupt("%v", err)
	}
	// The images an archive carries come after every node's member.
	carried := IsCarried(hdr.Name)
	if r.carriedSeen && !carried {
		return nil, nil, corrupt("member %q comes after the images the archive carries", hdr.Name)
	}
	r.carriedSeen = r.carriedSeen || carried
	typ := typeOf(hdr)
	switch typ {
	case "file", "dir", "symlink", "hardlink", "fifo":
	case "whiteout":
		if err := r.overlayAllowed(hdr.Name, "a whiteout"); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, corrupt("member %q: %s is not allowed", hdr.Name, typ)
	}
	if prev, dup := r.seen[hdr.Name]; dup {
		// Only a CRIU image may come in parts, which are concatenated.
		if !isImage(hdr.Name) || prev != "file" || typ != "file" {
			return nil, nil, corrupt("member %q appears twice", hdr.Name)
		}
	}
	r.seen[hdr.Name] = typ
	if hdr.Typeflag != tar.TypeReg && hdr.Size != 0 {
		return nil, nil, corrupt("member %q of type %s has content", hdr.Name, typ)
	}
	if hdr.Size < 0 {
		return nil, nil, corrupt("member %q has a negative size", hdr.Name)
	}
	if err := r.v.checkRecords(hdr); err != nil {
		return nil, nil, corrupt("%v", err)
	}
	if _, ok := hdr.PAXRecords[xattrPrefix+opaqueXattr]; ok {
		if err := r.overlayAllowed(hdr.Name, "an opaque directory"); err != nil {
			return nil, nil, err
		}
	}
	// A carried member is exactly the size the manifest gives it.
	if !carried && hdr.Size > r.limit-r.content {
		return nil, nil, corrupt("the archive holds more than the %d bytes its manifest accounts for", r.limit)
	}
	if !carried {
		r.content += hdr.Size
	}
	if hdr.Typeflag != tar.TypeReg {
		r.pool.addBytes(hdr.Name, typ, 0, []byte(hdr.Linkname))
	}
	r.pos++
	if err := r.expected(hdr); err != nil {
		return nil, nil, err
	}
	r.cur = &hashingReader{name: hdr.Name, r: r.tr, left: hdr.Size, size: hdr.Size, hash: hdr.Typeflag == tar.TypeReg, pos: r.pos}
	return hdr, r.cur, nil
}

// expected checks the header just read against the trailer read ahead,
// if any, before the member is used.
func (r *Reader) expected(hdr *tar.Header) error {
	e := r.expect
	if e == nil {
		return nil
	}
	if r.pos >= len(e.Members) {
		return corrupt("member %q is not in %s", hdr.Name, SumsName)
	}
	w := e.Members[r.pos]
	if w.Name != hdr.Name || w.Type != typeOf(hdr) || w.Size != hdr.Size {
		return corrupt("member %d is %s %q of %d bytes, %s lists %s %q of %d bytes", r.pos, typeOf(hdr), hdr.Name, hdr.Size, SumsName, w.Type, w.Name, w.Size)
	}
	if !r.v.headerMatches(w.Header, r.headers[r.pos]) {
		return corrupt("the tar header of %q differs from %s", hdr.Name, SumsName)
	}
	return nil
}

// Expect gives the reader the trailer ahead of time (ReadTrailer): each
// member hashed in memory is then checked against it as soon as it has
// been read, so that damage is found before the member is used, not only
// at the end. The trailer itself is still matched against the whole
// archive at the end.
func (r *Reader) Expect(sums *Checksums) { r.expect = sums }

// hashElsewhere says that the caller hashes the current member's content
// itself (into r.pool), from where it wrote it.
func (r *Reader) hashElsewhere() { r.cur.hash = false }

func typeOf(hdr *tar.Header) string {
	switch flag := hdr.Typeflag; flag {
	case tar.TypeChar:
		if hdr.Devmajor == 0 && hdr.Devminor == 0 {
			return "whiteout"
		}
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
	return fmt.Sprintf("type %q", hdr.Typeflag)
}

// overlayAllowed refuses what (a whiteout, an opaque directory) as member
// name unless the archive's version has them and name is in the files of
// a node whose root is an overlay (an image or a --rootfs base): in any
// other node they would be a device node and an attribute the node could
// not have made.
func (r *Reader) overlayAllowed(name, what string) error {
	if !r.v.overlay {
		return corrupt("member %q: %s is not allowed in format version %d", name, what, r.v.number)
	}
	parts := strings.SplitN(name, "/", 4)
	i, err := strconv.Atoi(parts[1])
	if len(parts) < 4 || parts[2] != "files" || err != nil || i >= len(r.manifest.Nodes) {
		return corrupt("member %q: %s is allowed only among a node's files", name, what)
	}
	if sp := r.manifest.Nodes[i].Spec; sp.Image == "" && sp.Rootfs == "" {
		return corrupt("member %q: %s is allowed only in a node that runs on an image or a --rootfs base", name, what)
	}
	return nil
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
		return corrupt("member %q: archive is truncated", r.cur.name)
	}
	r.in.sum.endContent(r.cur.size)
	if r.cur.hash {
		digests := r.cur.digests()
		r.pool.record(r.cur.name, "file", r.cur.size, digests)
		if e := r.expect; e != nil {
			if r.cur.pos >= len(e.Members) {
				return corrupt("member %q is not in %s", r.cur.name, SumsName)
			}
			w := e.Members[r.cur.pos]
			if w.Name != r.cur.name || w.Type != "file" || w.Size != r.cur.size || !equalDigests(w.SHA256, digests) {
				return corrupt("checksum mismatch for %q", r.cur.name)
			}
		}
	}
	r.cur = nil
	return nil
}

func (r *Reader) verifyTrailer(hdr *tar.Header) error {
	if hdr.Size > MaxSumsSize {
		return corrupt("%s of %d bytes is larger than the %d allowed", SumsName, hdr.Size, MaxSumsSize)
	}
	data, err := io.ReadAll(io.LimitReader(r.tr, hdr.Size))
	if err != nil || int64(len(data)) != hdr.Size {
		return corrupt("read %s: archive is truncated", SumsName)
	}
	if v := trailerVersion(hdr); v.trailer != r.v.trailer {
		return corrupt("%s has the tar header of format version %d, the manifest is of version %d", SumsName, v.trailer, r.v.number)
	}
	want, err := r.v.decodeSums(r.headers[len(r.headers)-1], data)
	if err != nil {
		return err
	}
	if e := r.expect; e != nil && !sameChecksums(e, want) {
		// What was read ahead through the index must be this trailer.
		return corrupt("the index points at a %s that is not the archive's", SumsName)
	}
	got, err := r.pool.wait()
	if err != nil {
		return err
	}
	if err := r.compareMembers(want, got); err != nil {
		return err
	}
	for name := range r.manifest.carriedMembers() {
		if r.seen[name] == "" {
			return corrupt("the manifest carries %s, which the archive lacks", name)
		}
	}
	r.count = len(got.Members)
	r.sums = want
	r.in.sum.endContent(hdr.Size)
	if _, err := r.nextHeader(); err != io.EOF {
		return corrupt("data after %s", SumsName)
	}
	// The zstd stream must end too, with no skippable frame but the
	// index (see version.checkSkipped): trailing garbage is damage.
	var one [1]byte
	if n, err := r.zr.Read(one[:]); n != 0 || err != io.EOF {
		return corrupt("data after the end of the archive")
	}
	if err := r.v.checkSkipped(r.zr, want.Index); err != nil {
		return err
	}
	r.done = true
	return io.EOF
}

// verifyRead checks every member read before the current one against
// the trailer read ahead (Expect), once their digests are all in: what a
// reader that stops before the end has used is then checked.
func (r *Reader) verifyRead() error {
	got, err := r.pool.wait()
	if err != nil {
		return err
	}
	if len(got.Members) != r.pos || r.pos > len(r.expect.Members) {
		return corrupt("%d members read, %d hashed", r.pos, len(got.Members))
	}
	want := *r.expect
	want.Members = want.Members[:r.pos]
	return r.compareMembers(&want, got)
}

// onlyImagesLeft checks that the trailer read ahead lists nothing but
// CRIU images and carried images from the current member on: a reader
// that stops at the first image (ExtractFiles) has then left no node's
// file behind.
func (r *Reader) onlyImagesLeft() error {
	for _, m := range r.expect.Members[min(r.pos, len(r.expect.Members)):] {
		if !IsCarried(m.Name) && !isImageName(m.Name) {
			return corrupt("member %q comes after the CRIU images", m.Name)
		}
	}
	return nil
}

// compareMembers checks the members read (got) against the trailer
// (want): names, types, sizes, header digests and content digests.
func (r *Reader) compareMembers(want, got *Checksums) error {
	if len(want.Members) != len(got.Members) {
		return corrupt("%s lists %d members, the archive has %d", SumsName, len(want.Members), len(got.Members))
	}
	for i, g := range got.Members {
		w := want.Members[i]
		if w.Name != g.Name || w.Type != g.Type || w.Size != g.Size {
			return corrupt("member %d is %s %q of %d bytes, %s lists %s %q of %d bytes", i, g.Type, g.Name, g.Size, SumsName, w.Type, w.Name, w.Size)
		}
		if !r.v.headerMatches(w.Header, r.headers[i]) {
			return corrupt("the tar header of %q differs from %s", g.Name, SumsName)
		}
		if !equalDigests(w.SHA256, g.SHA256) {
			return corrupt("checksum mismatch for %q", g.Name)
		}
	}
	return nil
}

// hashingReader counts what is left of a member and, unless the member is
// hashed elsewhere, hashes it piece by piece. Hashing runs in a goroutine
// of its own, chunk after chunk in order, while the caller goes on reading
// and writing: SHA-256 is the largest cost of reading an archive, and
// would otherwise alternate with decompression on one core. A chunk is
// the caller's memory: a Read that would overwrite a chunk not hashed yet
// first waits for it, and so does wait (finish).
type hashingReader struct {
	name string
	r    io.Reader
	size int64
	left int64
	hash bool
	pos  int
	// hashed by the hasher goroutine; read after wait
	h       hash.Hash
	inPiece int64
	done    []string
	// chunks handed to the hasher, oldest first
	jobs    chan hashJob
	pending []hashJob
}

type hashJob struct {
	b    []byte
	done chan struct{}
}

// hashQueue is how many chunks may wait for the hasher.
const hashQueue = 64

// wait waits until everything read has been hashed.
func (h *hashingReader) wait() {
	if h.jobs != nil {
		close(h.jobs)
		h.jobs = nil
	}
	if n := len(h.pending); n > 0 {
		<-h.pending[n-1].done
		h.pending = nil
	}
}

// waitFor waits until no chunk still to be hashed lies in p's memory.
func (h *hashingReader) waitFor(p []byte) {
	last := -1
	for i, j := range h.pending {
		if overlaps(j.b, p) {
			last = i
		}
	}
	if last >= 0 {
		// The hasher works in order: the chunks before are done too.
		<-h.pending[last].done
		h.pending = h.pending[last+1:]
	}
}

// overlaps reports whether a and b share memory (buffers of the heap or
// mmap'd: they do not move).
func overlaps(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	a0, b0 := uintptr(unsafe.Pointer(unsafe.SliceData(a))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return a0 < b0+uintptr(len(b)) && b0 < a0+uintptr(len(a))
}

func (h *hashingReader) hasher(jobs <-chan hashJob) {
	for j := range jobs {
		h.feed(j.b)
		close(j.done)
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

// digests returns the piece digests of everything read (after wait).
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
	h.waitFor(p)
	n, err := h.r.Read(p)
	if h.hash && n > 0 {
		if h.jobs == nil {
			h.jobs = make(chan hashJob, hashQueue)
			go h.hasher(h.jobs)
		}
		j := hashJob{b: p[:n], done: make(chan struct{})}
		h.pending = append(h.pending, j)
		h.jobs <- j
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

// Members returns how many members the archive had, once Next returned
// io.EOF.
func (r *Reader) Members() int { return r.count }

// Checksums returns the trailer, once Next returned io.EOF (it matched
// every member).
func (r *Reader) Checksums() *Checksums {
	if r.sums == nil {
		return &Checksums{}
	}
	return r.sums
}

// Verify reads the whole archive on r and checks every member. It
// returns the manifest and the number of members.
func Verify(r io.Reader) (*Manifest, int, error) {
	ar, err := NewReader(r)
	if err != nil {
		return nil, 0, err
	}
	defer ar.Close()
	for {
		_, _, err := ar.Next()
		if err == io.EOF {
			return ar.Manifest(), ar.Members(), nil
		}
		if err != nil {
			return ar.Manifest(), 0, err
		}
	}
}

func sameChecksums(a, b *Checksums) bool {
	if a.version != b.version || a.PieceSize != b.PieceSize || len(a.Members) != len(b.Members) {
		return false
	}
	for i := range a.Members {
		if !sameMember(&a.Members[i], &b.Members[i]) {
			return false
		}
	}
	return (a.Index == nil) == (b.Index == nil) && (a.Index == nil || *a.Index == *b.Index) && samePages(a.Pages, b.Pages)
}

func samePages(a, b []PageMember) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Member != b[i].Member || !slices.Equal(a[i].Offsets, b[i].Offsets) {
			return false
		}
	}
	return true
}
