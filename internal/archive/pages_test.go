package archive

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// makePaged returns an indexed archive whose page image holds random,
// compressible and zero pieces (each kind of frame the writer makes), in
// two parts, the first written from a file and the second from memory;
// and the image. Built once for all the tests (112 MiB): they must not
// change what it returns.
func makePaged(t *testing.T) (archive []byte, pages []byte) {
	t.Helper()
	paged.Do(func() { paged.archive, paged.pages, paged.err = buildPaged() })
	if paged.err != nil {
		t.Fatal(paged.err)
	}
	return paged.archive, paged.pages
}

var paged struct {
	sync.Once
	archive, pages []byte
	err            error
}

func buildPaged() (archive []byte, pages []byte, err error) {
	pages = make([]byte, 3*PieceSize+PieceSize/2)
	rand.New(rand.NewSource(3)).Read(pages[:PieceSize])
	copy(pages[PieceSize:2*PieceSize], bytes.Repeat([]byte("compressible page content "), 2*PieceSize/26))
	rand.New(rand.NewSource(4)).Read(pages[3*PieceSize:])
	src, err := os.MkdirTemp("", "paged-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(src)
	// Each step only if all before it went well.
	do := func(step func() error) {
		if err == nil {
			err = step()
		}
	}
	do(func() error { return os.WriteFile(filepath.Join(src, "pages-1.img"), pages, 0o600) })
	do(func() error { return os.WriteFile(filepath.Join(src, "core-1.img"), []byte("core"), 0o600) })
	m := &Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "top", Parent: -1, Running: true, Memory: int64(len(pages)), Spec: Spec{Cmd: []string{"sleep", "1"}}}}}
	var buf bytes.Buffer
	var w *Writer
	do(func() (err error) { w, err = NewWriter(&buf, zstd.SpeedFastest); return err })
	name := ImagesPrefix(0) + "/pages-1.img"
	do(func() error { return w.WriteManifest(m) })
	do(func() error { return w.WritePart(name, filepath.Join(src, "pages-1.img"), 0, 2*PieceSize) })
	do(func() error { return w.MarkMeta() })
	do(func() error { // the other images
		ie, err := ScanFlat(ImagesPrefix(0), src)
		for _, e := range ie {
			if err == nil && !IsPageImage(e.Name) {
				err = w.WriteEntries([]Entry{e})
			}
		}
		return err
	})
	do(func() error { return w.WritePartBytes(name, pages[2*PieceSize:], func() {}) })
	do(func() error { return w.Close() })
	return buf.Bytes(), pages, err
}

// pagedSums reads the trailer of an archive through its index.
func pagedSums(t *testing.T, data []byte) *Checksums {
	t.Helper()
	ra := bytes.NewReader(data)
	x, err := ReadIndex(ra, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	sums, err := ReadTrailer(ra, int64(len(data)), x)
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

// Each piece of a page image is read alone, from its own offset, and is
// the image's bytes at its place.
func TestPagePieces(t *testing.T) {
	data, pages := makePaged(t)
	sums := pagedSums(t, data)
	parts, err := sums.PageParts(0)
	if err != nil {
		t.Fatal(err)
	}
	refs := parts["pages-1.img"]
	if len(parts) != 1 || len(refs) != 4 {
		t.Fatalf("page parts %v, want 4 pieces of pages-1.img", parts)
	}
	buf := make([]byte, PieceSize)
	var off int64
	// In reverse: no piece depends on what was read before it.
	for k := len(refs) - 1; k >= 0; k-- {
		got, err := ReadPiece(bytes.NewReader(data), int64(len(data)), refs[k], buf)
		if err != nil {
			t.Fatalf("piece %d: %v", k, err)
		}
		want := pages[int64(k)*PieceSize : min(int64(len(pages)), int64(k+1)*PieceSize)]
		if !bytes.Equal(got, want) {
			t.Fatalf("piece %d differs from the image's bytes there", k)
		}
		off += int64(len(got))
	}
	if off != int64(len(pages)) {
		t.Fatalf("pieces hold %d bytes, the image %d", off, len(pages))
	}
	// The whole archive still reads front to back, and verifies.
	if _, _, err := Verify(bytes.NewReader(data)); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

// A byte changed in a piece is found when that piece is read, and only
// then: the others still read.
func TestPagePieceDamaged(t *testing.T) {
	data, _ := makePaged(t)
	sums := pagedSums(t, data)
	parts, _ := sums.PageParts(0)
	refs := parts["pages-1.img"]
	bad := bytes.Clone(data)
	bad[refs[3].Offset+4096] ^= 1 // in a raw block of the random last piece
	buf := make([]byte, PieceSize)
	_, err := ReadPiece(bytes.NewReader(bad), int64(len(bad)), refs[3], buf)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "does not match its checksum") {
		t.Fatalf("damaged piece read: %v, want a checksum mismatch", err)
	}
	if _, err := ReadPiece(bytes.NewReader(bad), int64(len(bad)), refs[0], buf); err != nil {
		t.Fatalf("an intact piece of a damaged archive: %v", err)
	}
	// An offset that is not its piece's frame does not pass either.
	moved := refs[1]
	moved.Offset = refs[0].Offset
	if _, err := ReadPiece(bytes.NewReader(data), int64(len(data)), moved, buf); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("piece read from another piece's offset: %v, want refused", err)
	}
}

// The page table is refused where it cannot be, each time for its own
// reason: in a version before 4, out of order, pointing at a member that
// is not a page image (a name that climbs out of the node included:
// restore --lazy makes files of these names), or not matching the
// member's pieces.
func TestPageTableChecked(t *testing.T) {
	data, _ := makePaged(t)
	sums := pagedSums(t, data)
	if err := versions[3].checkPages(sums); err == nil || !strings.Contains(err.Error(), "format version 3 has a page table") {
		t.Errorf("page table in version 3: %v, want refused as such", err)
	}
	for name, c := range map[string]struct {
		edit func(c *Checksums)
		want string
	}{
		"offsets out of order": {func(c *Checksums) {
			o := c.Pages[0].Offsets
			o[0], o[1] = o[1], o[0]
		}, "offset"},
		"past checksums":     {func(c *Checksums) { c.Pages[1].Offsets[0] = c.Index.Sums }, "out of order or range"},
		"not a page image":   {func(c *Checksums) { c.Pages[0].Member = 0 }, "not a page image"},
		"member twice":       {func(c *Checksums) { c.Pages[1].Member = c.Pages[0].Member }, "out of order or range"},
		"a piece missing":    {func(c *Checksums) { c.Pages[0].Offsets = c.Pages[0].Offsets[:1] }, "1 offsets and 2 digests"},
		"a digest missing":   {func(c *Checksums) { c.Members[c.Pages[0].Member].SHA256 = c.Members[c.Pages[0].Member].SHA256[:1] }, "1 digests"},
		"a negative size":    {func(c *Checksums) { c.Members[c.Pages[0].Member].Size = -1 }, "of -1 bytes"},
		"a short name":       {func(c *Checksums) { c.Members[c.Pages[0].Member].Name = "nodes/pages-1.img" }, "not a page image"},
		"a name that climbs": {func(c *Checksums) { c.Members[c.Pages[0].Member].Name = "nodes/0/criu/../../../../tmp/pages-9.img" }, "not a page image"},
		"a node like 00":     {func(c *Checksums) { c.Members[c.Pages[0].Member].Name = "nodes/00/criu/pages-1.img" }, "not a page image"},
	} {
		cc := *sums
		cc.Members = append([]MemberChecksum(nil), sums.Members...)
		for i := range cc.Members {
			cc.Members[i].SHA256 = append([]string(nil), sums.Members[i].SHA256...)
		}
		cc.Pages = nil
		for _, p := range sums.Pages {
			cc.Pages = append(cc.Pages, PageMember{p.Member, append([]int64(nil), p.Offsets...)})
		}
		c.edit(&cc)
		err := checkPages(&cc)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want refused for %q", name, err, c.want)
		}
	}
	c := *sums
	c.Pages = sums.Pages[:1]
	if _, err := c.PageParts(0); err == nil || !strings.Contains(err.Error(), "lacks") {
		t.Errorf("a part missing from the table: %v, want refused", err)
	}
}

// A piece whose offset leads into a run of empty frames is refused after
// a bounded number of them, not decoded for hours.
func TestPieceOfEmptyFrames(t *testing.T) {
	var b bytes.Buffer
	for range 100000 {
		b.Write(rawFrameHeader)
		b.Write([]byte{1, 0, 0}) // the last block, raw, empty
	}
	_, err := ReadPiece(bytes.NewReader(b.Bytes()), int64(b.Len()), PieceRef{Offset: 0, Size: 4096, SHA256: "x"}, make([]byte, 4096))
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "zstd frames and blocks") {
		t.Fatalf("a piece of empty frames: %v, want refused for their number", err)
	}
}

// PagePieces reads any range of a page image, across pieces, and refuses
// a range whose piece is damaged without handing out any of it.
func TestPagePiecesRanges(t *testing.T) {
	data, pages := makePaged(t)
	sums := pagedSums(t, data)
	parts, _ := sums.PageParts(0)
	bad := bytes.Clone(data)
	bad[parts["pages-1.img"][3].Offset+4096] ^= 1
	p := NewPagePieces(bytes.NewReader(bad), int64(len(bad)), parts)
	for _, r := range []struct{ off, n int64 }{
		{0, 4096}, {PieceSize - 4096, 3 * 4096}, {2*PieceSize - 8192, PieceSize}, {4096, 4096},
	} {
		b := make([]byte, r.n)
		if err := p.ReadPages("/x/pages-1.img", b, r.off); err != nil {
			t.Fatalf("read %d at %d: %v", r.n, r.off, err)
		}
		if !bytes.Equal(b, pages[r.off:r.off+r.n]) {
			t.Fatalf("read %d at %d: other bytes than the image's", r.n, r.off)
		}
	}
	b := bytes.Repeat([]byte{0xAA}, 8192)
	err := p.ReadPages("pages-1.img", b, 3*PieceSize-4096)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "does not match its checksum") {
		t.Fatalf("read into the damaged piece: %v, want a checksum mismatch", err)
	}
	if err := p.ReadPages("pages-2.img", b, 0); err == nil || !strings.Contains(err.Error(), "no page image pages-2.img") {
		t.Fatalf("an image the archive lacks: %v", err)
	}
	if err := p.ReadPages("pages-1.img", b, int64(len(pages))-4096); err == nil || !strings.Contains(err.Error(), "ends before") {
		t.Fatalf("a read past the image's end: %v", err)
	}
}

// ReadPieceRanges keeps the ranges asked for, across its buffer's
// boundaries, and gives none of them from a damaged piece.
func TestReadPieceRanges(t *testing.T) {
	data, pages := makePaged(t)
	sums := pagedSums(t, data)
	parts, _ := sums.PageParts(0)
	refs := parts["pages-1.img"]
	ranges := [][2]int64{{0, 4096}, {rawBlockMax - 100, 300}, {3 * rawBlockMax, 2 * rawBlockMax}, {PieceSize - 4096, 4096}}
	for _, k := range []int{0, 1, 3} { // random, compressible, random
		size := refs[k].Size
		var rs [][2]int64
		for _, r := range ranges {
			if r[0]+r[1] <= size {
				rs = append(rs, r)
			}
		}
		got, err := ReadPieceRanges(bytes.NewReader(data), int64(len(data)), refs[k], rs)
		if err != nil {
			t.Fatalf("piece %d: %v", k, err)
		}
		for i, r := range rs {
			at := int64(k)*PieceSize + r[0]
			if !bytes.Equal(got[i], pages[at:at+r[1]]) {
				t.Fatalf("piece %d, range %v: other bytes than the image's", k, r)
			}
		}
	}
	bad := bytes.Clone(data)
	bad[refs[3].Offset+4096] ^= 1
	got, err := ReadPieceRanges(bytes.NewReader(bad), int64(len(bad)), refs[3], ranges[:1])
	if got != nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "does not match its checksum") {
		t.Fatalf("ranges of a damaged piece: %d ranges, %v", len(got), err)
	}
	if _, err := ReadPieceRanges(bytes.NewReader(data), int64(len(data)), refs[0], [][2]int64{{4096, 10}, {0, 10}}); err == nil || !strings.Contains(err.Error(), "out of order") {
		t.Fatalf("ranges out of order: %v", err)
	}
}

// The same with another writer's frame: its blocks are counted too, and
// the bytes read for a piece are bounded.
func TestPieceOfEmptyBlocks(t *testing.T) {
	var b bytes.Buffer
	b.Write([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x04, 7 << 3}) // a frame with a checksum: not crtree's own
	for range 1000000 {
		b.Write([]byte{0, 0, 0}) // a raw block, empty, not the last
	}
	b.Write([]byte{1, 0, 0})
	_, err := ReadPiece(bytes.NewReader(b.Bytes()), int64(b.Len()), PieceRef{Offset: 0, Size: 4096, SHA256: "x"}, make([]byte, 4096))
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "zstd frames and blocks") {
		t.Fatalf("a piece of empty blocks: %v, want refused for their number", err)
	}
}

// A range whose end would overflow is refused, not looped over.
func TestPagePiecesOverflow(t *testing.T) {
	p := NewPagePieces(bytes.NewReader(nil), 0, map[string][]PieceRef{"pages-1.img": {{Offset: 1, Size: 4096, SHA256: "x"}}})
	err := p.Pieces("pages-1.img", 1<<63-1<<48+4096, 1<<48, func(int, int64, int64) { t.Fatal("a piece for an impossible range") })
	if err == nil || !strings.Contains(err.Error(), "ends before") {
		t.Fatalf("an overflowing range: %v", err)
	}
}
