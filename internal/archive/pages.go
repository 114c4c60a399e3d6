package archive

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// From format version 4 on, every piece of a page image member starts a
// zstd frame, and checksums.json lists where (Checksums.Pages). A reader
// that can seek then reads any piece alone: it decodes from that offset
// exactly the piece's bytes and checks them against the piece's digest
// before using any of them (ReadPiece). This is what restore --lazy feeds
// a node's memory from while the node runs.

// checkPages checks the page table's structure against the members it
// lists: each entry a page image file member (nodes/N/criu/pages-*.img,
// a clean flat name: restore --lazy makes files of these names without
// reading the members' own headers) of non-zero size with one digest per
// piece, listed once and in order, with one offset per piece, offsets
// rising through the table and before checksums.json (index.Sums) when
// the archive has an index.
func checkPages(c *Checksums) error {
	last, lastOff := -1, int64(0)
	for _, p := range c.Pages {
		if p.Member <= last || p.Member >= len(c.Members) {
			return fmt.Errorf("%s: page table entry for member %d out of order or range", SumsName, p.Member)
		}
		last = p.Member
		m := &c.Members[p.Member]
		if err := pageMemberName(m.Name); m.Type != "file" || err != nil {
			return fmt.Errorf("%s: page table lists member %d (%q), not a page image", SumsName, p.Member, m.Name)
		}
		if m.Size <= 0 || len(m.SHA256) != pieces(m.Size) || len(p.Offsets) != pieces(m.Size) {
			return fmt.Errorf("%s: page table gives member %d of %d bytes %d offsets and %d digests", SumsName, p.Member, m.Size, len(p.Offsets), len(m.SHA256))
		}
		for _, off := range p.Offsets {
			if off <= lastOff || c.Index != nil && off >= c.Index.Sums {
				return fmt.Errorf("%s: page table offset %d of member %d out of order or range", SumsName, off, p.Member)
			}
			lastOff = off
		}
	}
	return nil
}

// pageMemberName checks that name is nodes/N/criu/pages-*.img, N a
// number as the writer writes it, and nothing else.
func pageMemberName(name string) error {
	parts := strings.Split(name, "/")
	if len(parts) != 4 || parts[0] != "nodes" || parts[2] != "criu" || !IsPageImage(parts[3]) {
		return errors.New("not a page image")
	}
	if n, err := strconv.Atoi(parts[1]); err != nil || n < 0 || strconv.Itoa(n) != parts[1] {
		return errors.New("not a node's")
	}
	if name != path.Clean(name) || strings.Contains(parts[3], "\x00") {
		return errors.New("not a clean name")
	}
	return nil
}

// PieceRef is one piece of a page image member, as the page table and
// the member's checksums give it.
type PieceRef struct {
	// Offset is where its frame starts in the archive, Size its length.
	Offset int64 `json:"offset"`
	Size   int64 `json:"size"`
	// SHA256 is its digest, in hex.
	SHA256 string `json:"sha256"`
}

// ErrNoPageTable means an archive cannot be read piece by piece: it was
// written by a crtree before format version 4 (or has no index).
var ErrNoPageTable = errors.New("the archive has no page table (it was written by a crtree before format version 4)")

// PageParts returns, for each page image of node n, its pieces in
// order: the image's content is their concatenation.
func (c *Checksums) PageParts(n int) (map[string][]PieceRef, error) {
	if c.Index == nil || c.Pages == nil {
		return nil, ErrNoPageTable
	}
	prefix := fmt.Sprintf("nodes/%d/criu/", n)
	images := map[string][]PieceRef{}
	sizes := map[string]int64{}
	for _, m := range c.Members {
		if name, found := strings.CutPrefix(m.Name, prefix); found && IsPageImage(name) {
			sizes[name] += m.Size
		}
	}
	for _, p := range c.Pages {
		m := &c.Members[p.Member]
		name, found := strings.CutPrefix(m.Name, prefix)
		if !found {
			continue
		}
		for k, off := range p.Offsets {
			size := min(PieceSize, m.Size-int64(k)*PieceSize)
			images[name] = append(images[name], PieceRef{Offset: off, Size: size, SHA256: m.SHA256[k]})
			sizes[name] -= size
		}
	}
	for name, left := range sizes {
		if left != 0 {
			return nil, corrupt("the page table lacks %d bytes of node %d's %s", left, n, name)
		}
	}
	return images, nil
}

// ReadPiece reads the piece p of an archive file of size bytes into buf
// (of at least p.Size bytes) and checks it against its digest: the bytes
// are returned only if they match. A mismatch, or a frame that does not
// decode, is an ErrCorrupt error.
func ReadPiece(ra io.ReaderAt, size int64, p PieceRef, buf []byte) ([]byte, error) {
	if err := p.inside(size); err != nil || int64(len(buf)) < p.Size {
		return nil, corrupt("page piece at %d of %d bytes is outside the archive", p.Offset, p.Size)
	}
	f := pieceReader(ra, size, p)
	defer f.Close()
	buf = buf[:p.Size]
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, corrupt("page piece at %d: %v", p.Offset, readErr(err))
	}
	sum := sha256.Sum256(buf)
	if hex.EncodeToString(sum[:]) != p.SHA256 {
		return nil, corrupt("page piece at %d does not match its checksum", p.Offset)
	}
	return buf, nil
}

// inside checks that p can be a piece of an archive of size bytes.
func (p PieceRef) inside(size int64) error {
	if p.Offset < 0 || p.Offset >= size || p.Size < 0 || p.Size > PieceSize {
		return corrupt("page piece at %d of %d bytes is outside the archive", p.Offset, p.Size)
	}
	return nil
}

// maxPieceSteps bounds the frames and raw blocks a piece is read from:
// crtree writes a piece as a frame per MiB at most, of 128 KiB blocks.
const maxPieceSteps = 4 * PieceSize / rawBlockMax

// pieceReader decodes the archive from piece p's offset on, reading at
// most what crtree could have written for it: its bytes, a header for
// each of its blocks and frames, and the last block, which may go on past
// the piece.
func pieceReader(ra io.ReaderAt, size int64, p PieceRef) *frameReader {
	most := p.Size + maxPieceSteps*18 + 2*rawBlockMax
	f := newFrameReader(io.NewSectionReader(ra, p.Offset, min(size-p.Offset, most)))
	f.maxSteps = maxPieceSteps
	return f
}

// ReadPieceRanges reads piece p of an archive file of size bytes through
// a small buffer, hashing it, and keeps only the given ranges of it
// (offset and length in the piece, in order, not overlapping): their
// bytes are returned only if the whole piece matches its digest. It
// takes far less memory than ReadPiece when little of a piece is needed.
func ReadPieceRanges(ra io.ReaderAt, size int64, p PieceRef, ranges [][2]int64) ([][]byte, error) {
	if err := p.inside(size); err != nil {
		return nil, err
	}
	out := make([][]byte, len(ranges))
	for i, r := range ranges {
		if r[0] < 0 || r[1] < 0 || r[0]+r[1] > p.Size || i > 0 && r[0] < ranges[i-1][0]+ranges[i-1][1] {
			return nil, fmt.Errorf("range %d of page piece at %d is outside it or out of order", i, p.Offset)
		}
		out[i] = make([]byte, 0, r[1])
	}
	f := pieceReader(ra, size, p)
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, rawBlockMax)
	next := 0 // the first range not wholly read
	for at := int64(0); at < p.Size; {
		n, err := io.ReadFull(f, buf[:min(int64(len(buf)), p.Size-at)])
		if err != nil {
			return nil, corrupt("page piece at %d: %v", p.Offset, readErr(err))
		}
		h.Write(buf[:n])
		for i := next; i < len(ranges) && ranges[i][0] < at+int64(n); i++ {
			from := max(ranges[i][0], at)
			to := min(ranges[i][0]+ranges[i][1], at+int64(n))
			if from < to {
				out[i] = append(out[i], buf[from-at:to-at]...)
			}
			if to == ranges[i][0]+ranges[i][1] {
				next = i + 1
			}
		}
		at += int64(n)
	}
	if hex.EncodeToString(h.Sum(nil)) != p.SHA256 {
		return nil, corrupt("page piece at %d does not match its checksum", p.Offset)
	}
	return out, nil
}

// pageTable records, while an archive is written, where the pieces of
// its page image members start.
type pageTable struct {
	entries []PageMember
	// member is the position of the page member being written, -1 if
	// none; done its content bytes written so far.
	member int
	done   int64
}

// startPageMember is called once a member's header is written: the
// pieces of a page image's content will each start a frame.
func (w *Writer) startPageMember(name string) {
	w.pages.member = -1
	if pageMemberName(name) == nil {
		w.pages.member, w.pages.done = len(w.headers)-1, 0
	}
}

// pageChunk is called before each chunk of n bytes of content is
// written: a chunk that starts a piece of a page member starts a frame
// (chunkSize divides PieceSize, so a piece always starts a chunk). An
// empty member is not in the table.
func (w *Writer) pageChunk(n int) error {
	t := &w.pages
	if t.member < 0 || n == 0 {
		return nil
	}
	if t.done%PieceSize == 0 {
		if t.done == 0 {
			t.entries = append(t.entries, PageMember{Member: t.member})
		}
		if err := w.sw.close(); err != nil {
			return err
		}
		e := &t.entries[len(t.entries)-1]
		e.Offsets = append(e.Offsets, w.out.n)
	}
	t.done += int64(n)
	return nil
}

// PagePieces reads the page images of one node from an archive file, a
// piece at a time, each checked against its digest before any byte of it
// is handed out (ReadPiece): what restore --lazy feeds a running node's
// memory from. It keeps the last pieces read (up to cachedBytes), as the
// pages of a piece are asked for a few at a time, and reads the piece
// after the one asked for ahead, in the background: the lazy-pages
// daemon asks for a node's memory in order, one request at a time. Safe
// for concurrent use.
type PagePieces struct {
	ra     io.ReaderAt
	size   int64
	images map[string]*pagedImage

	mu     sync.Mutex
	cache  []*cachedPiece // most recently used last
	cached int64
	// free are the buffers of pieces dropped from the cache, used again:
	// fresh memory costs a page fault per page.
	free [][]byte
}

// pagedImage is one page image: its pieces, and where each starts in it.
type pagedImage struct {
	refs   []PieceRef
	starts []int64
	size   int64
}

// cachedPiece is a piece read, or being read until ready is closed.
type cachedPiece struct {
	image *pagedImage
	k     int
	ready chan struct{}
	data  []byte
	err   error
	// dropped: no longer in the cache, its buffer given to another.
	dropped bool
}

// cachedBytes bounds the pieces PagePieces keeps.
const cachedBytes = 4 * PieceSize

// NewPagePieces reads the page images given (by file name, as PageParts
// returns them) from the archive file ra of size bytes.
func NewPagePieces(ra io.ReaderAt, size int64, images map[string][]PieceRef) *PagePieces {
	p := &PagePieces{ra: ra, size: size, images: map[string]*pagedImage{}}
	for name, refs := range images {
		im := &pagedImage{refs: refs}
		for _, r := range refs {
			im.starts = append(im.starts, im.size)
			im.size += r.Size
		}
		p.images[name] = im
	}
	return p
}

// image returns the page image named by path's last element, checking
// that length bytes at off are in it.
func (p *PagePieces) image(path string, off, length int64) (*pagedImage, error) {
	name := filepath.Base(path)
	im := p.images[name]
	if im == nil {
		return nil, fmt.Errorf("the archive has no page image %s", name)
	}
	if off < 0 || length < 0 || off > im.size || length > im.size-off {
		return nil, fmt.Errorf("%s ends before its pages at %d", name, off)
	}
	return im, nil
}

// pieceAt is the index of the piece of im that holds offset off.
func (im *pagedImage) pieceAt(off int64) int {
	return sort.Search(len(im.starts), func(i int) bool { return im.starts[i] > off }) - 1
}

// ReadPages reads len(b) bytes at off of the page image named by path's
// last element.
func (p *PagePieces) ReadPages(path string, b []byte, off int64) error {
	im, err := p.image(path, off, int64(len(b)))
	if err != nil {
		return err
	}
	for len(b) > 0 {
		k := im.pieceAt(off)
		c := p.get(im, k)
		if k+1 < len(im.refs) {
			p.get(im, k+1) // ahead
		}
		<-c.ready
		p.mu.Lock()
		if c.err != nil {
			p.mu.Unlock()
			return fmt.Errorf("%s: %w", filepath.Base(path), c.err)
		}
		if c.dropped {
			p.mu.Unlock()
			continue // dropped meanwhile: read again
		}
		n := copy(b, c.data[off-im.starts[k]:])
		p.mu.Unlock()
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// get returns piece k of im from the cache, or starts reading it.
func (p *PagePieces) get(im *pagedImage, k int) *cachedPiece {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, c := range p.cache {
		if c.image == im && c.k == k {
			p.cache = append(append(p.cache[:i:i], p.cache[i+1:]...), c)
			return c
		}
	}
	size := im.refs[k].Size
	p.makeRoom(size)
	c := &cachedPiece{image: im, k: k, ready: make(chan struct{})}
	p.cache = append(p.cache, c)
	p.cached += size
	buf := p.buffer(size)
	go func() {
		var data []byte
		var err error
		defer func() {
			// A panic would end the supervisor, and the copies of the
			// userfaultfds with it: the read fails instead.
			if r := recover(); r != nil {
				err = fmt.Errorf("reading piece %d: panic: %v", k, r)
			}
			p.mu.Lock()
			c.data, c.err = data, err
			p.mu.Unlock()
			close(c.ready)
		}()
		data, err = ReadPiece(p.ra, p.size, im.refs[k], buf)
	}()
	return c
}

// makeRoom drops the least recently used pieces read until size more
// bytes fit (pieces still being read stay). The caller holds p.mu.
func (p *PagePieces) makeRoom(size int64) {
	kept := p.cache[:0]
	for i, c := range p.cache {
		select {
		case <-c.ready:
			if p.cached+size > cachedBytes {
				p.cached -= c.image.refs[c.k].Size
				c.dropped = true
				if c.err == nil && len(p.free) < 4 {
					p.free = append(p.free, c.data)
				}
				continue
			}
		default:
		}
		kept = append(kept, p.cache[i])
	}
	p.cache = kept
}

// buffer returns a buffer of size bytes, one freed before if it fits.
// The caller holds p.mu.
func (p *PagePieces) buffer(size int64) []byte {
	for i, b := range p.free {
		if int64(cap(b)) >= size {
			p.free = append(p.free[:i], p.free[i+1:]...)
			return b[:size]
		}
	}
	return make([]byte, size)
}

// Pieces calls f with each piece of the page image named by path's last
// element that holds part of the length bytes at off: its index, and
// that part (image offset and length).
func (p *PagePieces) Pieces(path string, off, length int64, f func(k int, off, length int64)) error {
	im, err := p.image(path, off, length)
	if err != nil {
		return err
	}
	for length > 0 {
		k := im.pieceAt(off)
		n := min(length, im.starts[k]+im.refs[k].Size-off)
		if n <= 0 {
			return fmt.Errorf("%s: no piece holds offset %d", filepath.Base(path), off)
		}
		f(k, off, n)
		off, length = off+n, length-n
	}
	return nil
}

// ReadRanges reads piece k of the page image named by path's last element
// (ReadPieceRanges), keeping the given ranges (image offsets and lengths,
// in order, in the piece). Safe to call from several goroutines at once.
func (p *PagePieces) ReadRanges(path string, k int, ranges [][2]int64) ([][]byte, error) {
	im := p.images[filepath.Base(path)]
	if im == nil || k < 0 || k >= len(im.refs) {
		return nil, fmt.Errorf("the archive has no piece %d of page image %s", k, filepath.Base(path))
	}
	rel := make([][2]int64, len(ranges))
	for i, r := range ranges {
		rel[i] = [2]int64{r[0] - im.starts[k], r[1]}
	}
	out, err := ReadPieceRanges(p.ra, p.size, im.refs[k], rel)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return out, nil
}
