package criu

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// entry is a pagemap entry as CRIU 4.2 writes it: compat_nr_pages 0,
// the count in nr_pages (field 5, unknown to go-criu).
func entry(t *testing.T, vaddr, n uint64, flags *uint32) *pagemap.PagemapEntry {
	t.Helper()
	b, err := proto.Marshal(&pagemap.PagemapEntry{Vaddr: proto.Uint64(vaddr), NrPages: proto.Uint32(0), Flags: flags})
	if err != nil {
		t.Fatal(err)
	}
	b = protowire.AppendVarint(protowire.AppendTag(b, 5, protowire.VarintType), n)
	e := &pagemap.PagemapEntry{}
	if err := proto.Unmarshal(b, e); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestPageCount(t *testing.T) {
	if n, err := pageCount(entry(t, 0x1000, 1<<33, nil)); err != nil || n != 1<<33 {
		t.Fatalf("nr_pages: %d, %v", n, err)
	}
	if n, err := pageCount(&pagemap.PagemapEntry{NrPages: proto.Uint32(7)}); err != nil || n != 7 {
		t.Fatalf("compat_nr_pages: %d, %v", n, err)
	}
	b, _ := proto.Marshal(entry(t, 0, 1, nil))
	b = protowire.AppendVarint(protowire.AppendTag(b, 9, protowire.VarintType), 1)
	e := &pagemap.PagemapEntry{}
	proto.Unmarshal(b, e)
	if _, err := pageCount(e); err == nil || !strings.Contains(err.Error(), "field 9") {
		t.Fatalf("an unknown field: %v", err)
	}
}

// writePagemap writes a pagemap image of entries for pages image 1.
func writePagemap(t *testing.T, path string, entries ...*pagemap.PagemapEntry) {
	t.Helper()
	img := &crit.CriuImage{Magic: "PAGEMAP", Entries: []*crit.CriuEntry{{Message: &pagemap.PagemapHead{PagesId: proto.Uint32(1)}}}}
	for _, e := range entries {
		img.Entries = append(img.Entries, &crit.CriuEntry{Message: e})
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := crit.New(nil, f, "", false, false).Encode(img); err != nil {
		t.Fatal(err)
	}
}

// Offsets in the pages image count every present entry, lazy or not,
// and no entry that is not present; requests may start inside a run and
// span adjacent ones, and nothing else.
func TestLazyIndexOffsets(t *testing.T) {
	dir := t.TempDir()
	present, lazy, none := proto.Uint32(pagePresent), proto.Uint32(pagePresent|pageLazy), proto.Uint32(0)
	pm := filepath.Join(dir, "pagemap-7.img")
	writePagemap(t, pm,
		entry(t, 0x10000, 2, present), // pages 0-1 of the image
		entry(t, 0x20000, 3, lazy),    // 2-4
		entry(t, 0x23000, 1, lazy),    // 5, just after the run before
		entry(t, 0x30000, 4, none),    // not in the image
		entry(t, 0x40000, 1, nil),     // 6: no flags is present
		entry(t, 0x50000, 2, lazy),    // 7-8
	)
	lp, err := indexProcess(dir, pm)
	if err != nil {
		t.Fatal(err)
	}
	want := []lazyRun{{0x20000, 3, 2 * pageSize}, {0x23000, 1, 5 * pageSize}, {0x50000, 2, 7 * pageSize}}
	if len(lp.runs) != len(want) {
		t.Fatalf("runs %+v, want %+v", lp.runs, want)
	}
	for i := range want {
		if lp.runs[i] != want[i] {
			t.Fatalf("runs %+v, want %+v", lp.runs, want)
		}
	}

	x := &LazyIndex{procs: map[uint64]*lazyProc{7: lp}}
	image := make([]byte, 9*pageSize)
	for i := range image {
		image[i] = byte(i / pageSize)
	}
	os.WriteFile(lp.src, image, 0o600)
	parts, err := x.locate(7, 0x21000, 3) // pages 3, 4, 5 of the image
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := x.send(&got, 7, parts, make([]byte, 100), &ImageFiles{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), image[3*pageSize:6*pageSize]) {
		t.Fatal("the pages sent are not the image's pages 3 to 5")
	}
	for _, bad := range []struct {
		vaddr, n uint64
		why      string
	}{
		{0x10000, 1, "page 0x10000 is not a lazy page"},            // present, not lazy
		{0x23000, 2, "page 0x24000 is not a lazy page"},            // runs past the lazy pages
		{0x20001, 1, "a request for 1 pages at 0x20001"},           // not page-aligned
		{0x20000, 0, "a request for 0 pages"},                      // no pages
		{0x20000, 1 << 52, "a request for 4503599627370496 pages"}, // too many
		{^uint64(0) &^ 0xfff, 2, "a request for 2 pages"},          // wraps around
	} {
		if _, err := x.locate(7, bad.vaddr, bad.n); err == nil || !strings.Contains(err.Error(), bad.why) {
			t.Fatalf("%d pages at %#x: %v, want %q", bad.n, bad.vaddr, err, bad.why)
		}
	}
	if _, err := x.locate(8, 0x20000, 1); err == nil || !strings.Contains(err.Error(), "process 8, which has no lazy pages") {
		t.Fatalf("another process's pages: %v", err)
	}
}

// Lazy pages that are not in the images (a post-copy dump's) and
// parent pages are refused, not skipped.
func TestLazyIndexRefuses(t *testing.T) {
	dir := t.TempDir()
	for flags, why := range map[uint32]string{
		pageLazy:                 "lazy pages not in the images",
		pageParent | pagePresent: "pages in a parent dump",
	} {
		pm := filepath.Join(dir, "pagemap-1.img")
		writePagemap(t, pm, entry(t, 0x10000, 1, proto.Uint32(flags)))
		if _, err := indexProcess(dir, pm); err == nil || !strings.Contains(err.Error(), why) {
			t.Fatalf("flags %#x: %v, want %q", flags, err, why)
		}
	}
}

// A pagemap whose pages would lie beyond any pages image (offsets that
// would overflow, where the restore reads the eager pages) is refused.
func TestLazyIndexRefusesHugeOffsets(t *testing.T) {
	dir := t.TempDir()
	pm := filepath.Join(dir, "pagemap-1.img")
	var entries []*pagemap.PagemapEntry
	for i := uint64(0); i < 40000; i++ {
		entries = append(entries, entry(t, (i<<36)*pageSize, 1<<36-1, proto.Uint32(pagePresent)))
	}
	writePagemap(t, pm, entries...)
	if _, err := indexProcess(dir, pm); err == nil || !strings.Contains(err.Error(), "bytes into the pages image") {
		t.Fatalf("a pagemap of 40000 runs of 2^36 pages: %v, want refused", err)
	}
}
