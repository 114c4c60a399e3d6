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

type dirs struct{ files, images []string }

func (d dirs) FilesDir(i int) string  { return d.files[i] }
func (d dirs) ImagesDir(i int) string { return d.images[i] }

// randomImage, if set, adds an image of that many mostly random bytes.
var randomImage int

// makeArchive builds an archive of a small node tree: files with a
// symlink, a hard link and a FIFO, and a fake CRIU image.
func makeArchive(t testing.TB) []byte {
	t.Helper()
	src := t.TempDir()
	files := filepath.Join(src, "files")
	images := filepath.Join(src, "images")
	os.MkdirAll(filepath.Join(files, "tmp", "deep"), 0o755)
	os.WriteFile(filepath.Join(files, "tmp", "deep", "a.txt"), []byte("hello"), 0o640)
	os.Link(filepath.Join(files, "tmp", "deep", "a.txt"), filepath.Join(files, "tmp", "hard"))
	os.Symlink("/etc/passwd", filepath.Join(files, "tmp", "link"))
	os.MkdirAll(images, 0o755)
	os.WriteFile(filepath.Join(images, "pages-1.img"), bytes.Repeat([]byte{7}, 100000), 0o600)
	if randomImage > 0 {
		rnd := make([]byte, randomImage)
		rand.New(rand.NewSource(1)).Read(rnd)
		// Random, then compressible, then random again: raw and zstd frames mix.
		copy(rnd[randomImage/3:], bytes.Repeat([]byte{0}, randomImage/3))
		os.WriteFile(filepath.Join(images, "pages-2.img"), rnd, 0o600)
	}
	fe, err := Scan(FilesPrefix(0), files)
	if err != nil {
		t.Fatal(err)
	}
	ie, err := ScanFlat(ImagesPrefix(0), images)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "top", Parent: -1, Running: true, Spec: Spec{Cmd: []string{"sleep", "1"}}}}}
	var buf bytes.Buffer
	w, err := NewWriter(&buf, zstd.SpeedFastest)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteManifest(m); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEntries(fe); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEntries(ie); err != nil {
		t.Fatal(err)
	}
	// An image in two parts, as a dump writes one that CRIU still grows.
	part := filepath.Join(images, "pages-1.img")
	if err := w.WritePart(ImagesPrefix(0)+"/pages-9.img", part, 0, 60000); err != nil {
		t.Fatal(err)
	}
	if err := w.WritePart(ImagesPrefix(0)+"/pages-9.img", part, 60000, 40000); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func extractTo(t testing.TB, data []byte) (dirs, error) {
	d := dirs{files: []string{t.TempDir()}, images: []string{t.TempDir()}}
	r, err := NewReader(bytes.NewReader(data))
	if err != nil {
		return d, err
	}
	defer r.Close()
	return d, Extract(r, d, nil)
}

func TestRoundTrip(t *testing.T) {
	data := makeArchive(t)
	d, err := extractTo(t, data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(d.files[0], "tmp", "deep", "a.txt"))
	if err != nil || string(got) != "hello" {
		t.Fatalf("a.txt = %q, %v", got, err)
	}
	fi, _ := os.Stat(filepath.Join(d.files[0], "tmp", "deep", "a.txt"))
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode = %v", fi.Mode())
	}
	if l, _ := os.Readlink(filepath.Join(d.files[0], "tmp", "link")); l != "/etc/passwd" {
		t.Errorf("symlink = %q", l)
	}
	hard, _ := os.Stat(filepath.Join(d.files[0], "tmp", "hard"))
	if !os.SameFile(fi, hard) {
		t.Errorf("hard link not restored as a link")
	}
	img, _ := os.ReadFile(filepath.Join(d.images[0], "pages-1.img"))
	if len(img) != 100000 {
		t.Errorf("image has %d bytes", len(img))
	}
	parts, _ := os.ReadFile(filepath.Join(d.images[0], "pages-9.img"))
	if !bytes.Equal(parts, img) {
		t.Errorf("image written in two parts came back as %d bytes", len(parts))
	}
	if _, n, err := Verify(bytes.NewReader(data)); err != nil || n < 8 {
		t.Errorf("Verify: %d members, %v", n, err)
	}
}

// TestTruncated cuts the archive at many points: every cut is refused.
func TestTruncated(t *testing.T) {
	data := makeArchive(t)
	for cut := 0; cut < len(data); cut += 1 + len(data)/97 {
		if _, _, err := Verify(bytes.NewReader(data[:cut])); err == nil {
			t.Fatalf("archive cut at %d of %d bytes verified", cut, len(data))
		}
	}
}

// TestFlippedBytes flips one bit at many points of the uncompressed tar
// stream (recompressed, so that zstd's own checksum does not hide the
// archive's): every flip is refused, in padding and unused header fields
// too.
func TestFlippedBytes(t *testing.T) {
	dec, _ := zstd.NewReader(nil)
	raw, err := dec.DecodeAll(makeArchive(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil)
	flips := 0
	for pos := 0; pos < len(raw); pos += 1 + len(raw)/211 {
		bad := append([]byte(nil), raw...)
		bad[pos] ^= 0x20
		if _, _, err := Verify(bytes.NewReader(enc.EncodeAll(bad, nil))); err == nil {
			t.Errorf("flip at %d verified", pos)
		}
		flips++
	}
	if flips < 100 {
		t.Fatalf("only %d flips tested", flips)
	}
}

// TestHostileManifests: a manifest that breaks the rules is refused, in
// either format version.
func TestHostileManifests(t *testing.T) {
	for _, v := range []int{1, 2} {
		good := func() *Manifest {
			return &Manifest{Format: FormatName, Version: v,
				Nodes: []Node{{Name: "top", Parent: -1, Spec: Spec{Cmd: []string{"x"}}}, {Name: "c", Path: "c", Parent: 0, Spec: Spec{Cmd: []string{"x"}}}}}
		}
		for name, tc := range map[string]struct {
			mutate func(m *Manifest)
			want   string // in the error
		}{
			"version":         {func(m *Manifest) { m.Version = 99 }, "unsupported archive: format version 99"},
			"version 0":       {func(m *Manifest) { m.Version = 0 }, "unsupported archive: format version 0"},
			"format":          {func(m *Manifest) { m.Format = "tar" }, `not a crtree archive (format "tar")`},
			"no nodes":        {func(m *Manifest) { m.Nodes = nil }, "manifest lists no node"},
			"twice":           {func(m *Manifest) { m.Nodes = append(m.Nodes, m.Nodes[1]) }, `manifest names node "c" twice`},
			"bad name":        {func(m *Manifest) { m.Nodes[1].Name, m.Nodes[1].Path = "..", ".." }, `manifest node 1: invalid name ".."`},
			"forward parent":  {func(m *Manifest) { m.Nodes[1].Parent = 1 }, "manifest node 1: parent 1 does not come before it"},
			"no command":      {func(m *Manifest) { m.Nodes[1].Spec.Cmd = nil }, `manifest node "c" has no command`},
			"image not an ID": {func(m *Manifest) { m.Version, m.Nodes[1].Spec.Image = 3, "localhost/py" }, `image "localhost/py" is not an image ID`},
			"image before v3": {func(m *Manifest) { m.Nodes[1].Spec.Image = "sha256:" + strings.Repeat("ab", 32) }, "fields of format version 3"},
		} {
			m := good()
			tc.mutate(m)
			if err := m.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("version %d, %s: %v, want %q", v, name, err, tc.want)
			}
		}
		if err := good().Validate(); err != nil {
			t.Errorf("good manifest of version %d refused: %v", v, err)
		}
	}
}

func TestNotAnArchive(t *testing.T) {
	for _, data := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte{0}, 4096)} {
		if _, _, err := Verify(bytes.NewReader(data)); err == nil {
			t.Errorf("%q verified", data)
		}
	}
	_, _, err := Verify(strings.NewReader(""))
	if err == nil || errors.Is(err, io.EOF) {
		t.Errorf("empty input: %v", err)
	}
}

func readDir(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	var names []string
	for _, d := range des {
		names = append(names, d.Name())
	}
	return names, err
}

// TestRawFrames checks that incompressible content stored as raw zstd
// frames, and zero chunks stored as RLE frames, round-trip, and that the zstd command line tool reads the
// archive too (it is plain zstd).
func TestRawFrames(t *testing.T) {
	randomImage = 5 << 20
	defer func() { randomImage = 0 }()
	data := makeArchive(t)
	if len(data) < 3<<20 {
		t.Fatalf("archive of %d bytes: random content was compressed away?", len(data))
	}
	d, err := extractTo(t, data)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(d.images[0], "pages-2.img"))
	want := make([]byte, randomImage)
	rand.New(rand.NewSource(1)).Read(want)
	copy(want[randomImage/3:], bytes.Repeat([]byte{0}, randomImage/3))
	if !bytes.Equal(got, want) {
		t.Fatalf("pages-2.img (random, zero and random again) did not come back: %d bytes", len(got))
	}
	if _, err := exec.LookPath("zstd"); err == nil {
		cmd := exec.Command("sh", "-c", "zstd -d -c | tar -t")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("pages-2.img")) {
			t.Fatalf("zstd | tar: %v\n%s", err, out)
		}
	}
}

func TestMemberNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"nodes/0/files":                true,
		"nodes/0/files/tmp/x":          true,
		"nodes/1/criu/pages-1.img":     true,
		"nodes/0/files/../../../etc/x": false,
		"/etc/passwd":                  false,
		"nodes/5/files/x":              false,
		"nodes/01/files/x":             false,
		"nodes/0/criu/a/b":             false,
		"nodes/0/other/x":              false,
		"manifest.json":                false,
		"nodes/0/files/a//b":           false,
		"nodes/0/files/./x":            false,
	} {
		if err := checkMemberName(name, 2); (err == nil) != ok {
			t.Errorf("checkMemberName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}
