package archive

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// islands are the bytes written into the sparse file, by offset.
var islands = map[int64]string{0: "head", 300 << 20: "middle island", 1<<30 - 5: "tail!"}

// TestSparseAndXattrs: a 1 GiB sparse file with a few written islands is
// archived as its data only and comes back with its holes; extended
// attributes (user.* and security.capability) of files and directories
// come back, covered by the checksums.
func TestSparseAndXattrs(t *testing.T) {
	src := t.TempDir()
	sp := filepath.Join(src, "sp")
	f, err := os.Create(sp)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	for off, s := range islands {
		if _, err := f.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	caps := []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // cap_net_bind_service+ep
	bin := filepath.Join(src, "bin")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	os.Mkdir(filepath.Join(src, "d"), 0o755)
	for p, xs := range map[string]map[string][]byte{
		bin:                      {"user.foo": []byte("bar"), "security.capability": caps},
		filepath.Join(src, "d"):  {"user.dir": []byte("x\x00y")},
		filepath.Join(src, "sp"): {"user.sparse": []byte("1")},
	} {
		for k, v := range xs {
			if err := unix.Lsetxattr(p, k, v, 0); err != nil {
				t.Skipf("setxattr %s on %s: %v", k, p, err)
			}
		}
	}
	want := xattrList(bin) + xattrList(filepath.Join(src, "d")) + xattrList(sp)

	fe, err := Scan(FilesPrefix(0), src)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "top", Parent: -1, Spec: Spec{Cmd: []string{"x"}}, Files: sumSizes(fe)}}}
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, zstd.SpeedFastest)
	if err := w.WriteManifest(m); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEntries(fe); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Content() > 1<<20 {
		t.Errorf("archive holds %d bytes of content for a file of %d data bytes", w.Content(), 22)
	}
	d, err := extractTo(t, buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	out := d.files[0]
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(out, "sp"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 1<<30 || st.Blocks > 1024 {
		t.Errorf("restored sparse file: size %d, %d blocks", st.Size, st.Blocks)
	}
	g, _ := os.Open(filepath.Join(out, "sp"))
	defer g.Close()
	for off, s := range islands {
		b := make([]byte, len(s)+2)
		n, _ := g.ReadAt(b, off-1)
		if off == 0 {
			n, _ = g.ReadAt(b[1:], 0)
			n++
		}
		if got := string(b[1 : 1+len(s)]); got != s || (off > 0 && b[0] != 0) {
			t.Errorf("island at %d: %q (%d bytes)", off, b[:n], n)
		}
	}
	got := xattrList(filepath.Join(out, "bin")) + xattrList(filepath.Join(out, "d")) + xattrList(filepath.Join(out, "sp"))
	if got != want || !strings.Contains(got, "security.capability") {
		t.Errorf("extended attributes:\n got %q\nwant %q", got, want)
	}
}

// sumSizes adds up the content sizes of entries.
func sumSizes(es []Entry) int64 {
	var n int64
	for _, e := range es {
		n += e.Size
	}
	return n
}

// xattrList lists the extended attributes of p, sorted, with values.
func xattrList(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		v := make([]byte, 64<<10)
		k, _ := unix.Lgetxattr(p, name, v)
		b.WriteString(" " + name + "=" + string(v[:max(k, 0)]))
	}
	return b.String()
}

// TestDeepTree: a tree deeper than PATH_MAX (40 nested directories of
// 200-character names) is archived and extracted: every step works
// relative to open directories.
func TestDeepTree(t *testing.T) {
	src := t.TempDir()
	name := strings.Repeat("d", 200)
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	leaf, err := unix.Openat(fd, "leaf", unix.O_WRONLY|unix.O_CREAT, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(leaf, []byte("deep"))
	unix.Close(leaf)
	unix.Close(fd)
	defer os.RemoveAll(src) // t.TempDir's cleanup may not reach that deep

	fe, err := Scan(FilesPrefix(0), src)
	if err != nil {
		t.Fatalf("scan: %.200v", err)
	}
	if len(fe) != 42 {
		t.Fatalf("%d entries", len(fe))
	}
	m := &Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "top", Parent: -1, Spec: Spec{Cmd: []string{"x"}}, Files: sumSizes(fe)}}}
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, zstd.SpeedFastest)
	w.WriteManifest(m)
	if err := w.WriteEntries(fe); err != nil {
		t.Fatalf("write: %.200v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("close: %.200v", err)
	}
	d, err := extractTo(t, buf.Bytes())
	defer os.RemoveAll(d.files[0])
	if err != nil {
		t.Fatalf("extract: %.200v", err)
	}
	f, err := openDeep(d.files[0] + strings.Repeat("/"+name, 40) + "/leaf")
	if err != nil {
		t.Fatalf("open the extracted leaf: %.200v", err)
	}
	defer f.Close()
	if b, _ := io.ReadAll(f); string(b) != "deep" {
		t.Fatalf("leaf = %q", b)
	}
}
