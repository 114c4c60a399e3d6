package archive

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// makeIndexed builds an archive laid out as a dump writes it: a page
// image part, then (after MarkMeta) the other images, then the rest of
// the page image, and the index at the end.
func makeIndexed(t *testing.T) ([]byte, []byte) {
	t.Helper()
	src := t.TempDir()
	pages := make([]byte, 3*PieceSize/2)
	rand.New(rand.NewSource(2)).Read(pages)
	os.WriteFile(filepath.Join(src, "pages-1.img"), pages, 0o600)
	os.WriteFile(filepath.Join(src, "core-1.img"), []byte("core"), 0o600)
	os.WriteFile(filepath.Join(src, "inventory.img"), bytes.Repeat([]byte("inv"), 1000), 0o600)
	m := &Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "top", Parent: -1, Running: true, Memory: int64(len(pages)), Spec: Spec{Cmd: []string{"sleep", "1"}}}}}
	var buf bytes.Buffer
	w, err := NewWriter(&buf, zstd.SpeedFastest)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.WriteManifest(m))
	name := ImagesPrefix(0) + "/pages-1.img"
	must(w.WritePart(name, filepath.Join(src, "pages-1.img"), 0, PieceSize))
	must(w.MarkMeta())
	ie, err := ScanFlat(ImagesPrefix(0), src)
	must(err)
	for _, e := range ie {
		if !IsPageImage(e.Name) {
			must(w.WriteEntries([]Entry{e}))
		}
	}
	must(w.WritePart(name, filepath.Join(src, "pages-1.img"), PieceSize, int64(len(pages))-PieceSize))
	must(w.Close())
	return buf.Bytes(), pages
}

// pageSink collects page images and checks the metadata images are there.
type pageSink struct {
	dirs
	pages map[string]*bytes.Buffer
}

func (s *pageSink) Image(node int, name string, size int64, body io.Reader) error {
	if !IsPageImage(name) {
		return nil // extracted by ExtractMeta
	}
	if s.pages[name] == nil {
		s.pages[name] = &bytes.Buffer{}
	}
	_, err := io.Copy(s.pages[name], body)
	return err
}

func TestIndexedArchive(t *testing.T) {
	data, pages := makeIndexed(t)
	ra := bytes.NewReader(data)
	x, err := ReadIndex(ra, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	sums, err := ReadTrailer(ra, int64(len(data)), x)
	if err != nil {
		t.Fatal(err)
	}
	if got := sums.Members[x.MetaMember].Name; got != ImagesPrefix(0)+"/core-1.img" {
		t.Fatalf("index points at %s", got)
	}
	out := t.TempDir()
	d := &pageSink{dirs: dirs{files: []string{t.TempDir()}, images: []string{out}}, pages: map[string]*bytes.Buffer{}}
	ar, err := NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if err := ExtractMeta(ra, int64(len(data)), x, ar.Manifest(), sums, d); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "core-1.img")); string(b) != "core" {
		t.Fatalf("core-1.img = %q", b)
	}
	if _, err := os.Stat(filepath.Join(out, "pages-1.img")); err == nil {
		t.Fatal("ExtractMeta extracted a page image")
	}
	ar.Expect(sums)
	if err := Extract(ar, d, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.pages["pages-1.img"].Bytes(), pages) {
		t.Fatal("page image differs")
	}
	// The index is invisible to readers that do not seek, crtree's own
	// and zstd's.
	if _, _, err := Verify(bytes.NewReader(data)); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if _, err := exec.LookPath("zstd"); err == nil {
		cmd := exec.Command("sh", "-c", "zstd -d | tar -t")
		cmd.Stdin = bytes.NewReader(data)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("zstd -d | tar -t: %v\n%s", err, out)
		}
	}
}

func TestIndexedArchiveDamage(t *testing.T) {
	data, _ := makeIndexed(t)
	x, err := ReadIndex(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	// A flipped bit in the second page part is found as that part is
	// read, before the trailer.
	bad := bytes.Clone(data)
	bad[x.Meta+PieceSize/4+12345] ^= 1
	sums, err := ReadTrailer(bytes.NewReader(bad), int64(len(bad)), x)
	if err != nil {
		t.Fatal(err)
	}
	ar, err := NewReader(bytes.NewReader(bad))
	if err != nil {
		t.Fatal(err)
	}
	ar.Expect(sums)
	d := &pageSink{dirs: dirs{files: []string{t.TempDir()}, images: []string{t.TempDir()}}, pages: map[string]*bytes.Buffer{}}
	if err := Extract(ar, d, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged page part: %v, want ErrCorrupt", err)
	}

	// A trailer read ahead that differs from the archive's own (here in
	// the manifest's entry, which is not checked as it is read) is
	// refused at the end.
	sums, err = ReadTrailer(bytes.NewReader(data), int64(len(data)), x)
	if err != nil {
		t.Fatal(err)
	}
	sums.Members[0].SHA256 = []string{"00"}
	ar, err = NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	ar.Expect(sums)
	d = &pageSink{dirs: dirs{files: []string{t.TempDir()}, images: []string{t.TempDir()}}, pages: map[string]*bytes.Buffer{}}
	if err := Extract(ar, d, nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "not the archive's") {
		t.Fatalf("other trailer: %v", err)
	}

	// An index that points elsewhere is refused or leads nowhere.
	for _, x := range []Index{
		{Meta: 1, MetaMember: 1, Sums: int64(len(data)) - 100},
		{Meta: x.Meta, MetaMember: 1, Sums: x.Sums},
		{Meta: x.Meta, MetaMember: 1 << 40, Sums: x.Sums},
	} {
		forged := append(bytes.Clone(data[:len(data)-indexFrameSize]), x.frame()...)
		ra := bytes.NewReader(forged)
		got, err := ReadIndex(ra, int64(len(forged)))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("forged index %+v: %v", x, err)
			}
			continue
		}
		sums, err := ReadTrailer(ra, int64(len(forged)), got)
		if err == nil {
			err = ExtractMeta(ra, int64(len(forged)), got, &Manifest{Version: FormatVersion, Nodes: []Node{{}}}, sums, dirs{files: []string{t.TempDir()}, images: []string{t.TempDir()}})
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("forged index %+v: %v, want ErrCorrupt", x, err)
		}
	}

	// No index: a stream written without MarkMeta, or cut short.
	if _, err := ReadIndex(bytes.NewReader(data[:len(data)-1]), int64(len(data)-1)); !errors.Is(err, ErrNoIndex) {
		t.Fatalf("truncated: %v, want ErrNoIndex", err)
	}
}
