package checkpoint

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// names lists what stands in dir.
func names(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}
	return out
}

// openIn is OpenOutputIn on a fresh root of dir.
func openIn(t *testing.T, dir, name string) Output {
	t.Helper()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := OpenOutputIn(r, name, OutputOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// While an archive is written, nothing new stands in its directory (a
// crtree killed then leaves nothing); Commit puts it under its name,
// replacing an older file there; Abort leaves the directory as it was.
func TestFileOutputLeavesNothingUntilCommit(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	old := filepath.Join(dir, "sub", "a.crtree")
	os.WriteFile(old, []byte("old"), 0o600)
	data := bytes.Repeat([]byte("archive "), 1<<20) // 8 MiB: direct writes too

	out := openIn(t, dir, "sub/a.crtree")
	if _, err := out.Write(data); err != nil {
		t.Fatal(err)
	}
	if got := names(t, filepath.Join(dir, "sub")); len(got) != 1 || got[0] != "a.crtree" {
		t.Fatalf("while writing, the directory holds %v; want only the old a.crtree", got)
	}
	if p := out.(*FileOutput).PartialPath(); p != "" {
		t.Errorf("an unnamed file has a partial path %q", p)
	}
	if err := out.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(old); !bytes.Equal(got, data) {
		t.Fatalf("after Commit a.crtree holds %d bytes, want %d", len(got), len(data))
	}
	if got := names(t, filepath.Join(dir, "sub")); len(got) != 1 {
		t.Fatalf("after Commit the directory holds %v", got)
	}

	out = openIn(t, dir, "new.crtree")
	out.Write(data[:100])
	out.Abort()
	out.Abort()
	if got := names(t, dir); len(got) != 1 || got[0] != "sub" {
		t.Fatalf("after Abort the directory holds %v", got)
	}
}

// Where the file system has no unnamed files, the archive is written
// under a hidden name that the op marker records, and renamed.
func TestFileOutputNamedFallback(t *testing.T) {
	dir := t.TempDir()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Open(".")
	if err != nil {
		t.Fatal(err)
	}
	o := &FileOutput{root: r, name: "b.crtree", dir: d, base: "b.crtree"}
	if o.f, o.tmp, err = o.createNamed(); err != nil {
		t.Fatal(err)
	}
	if p := o.PartialPath(); p != filepath.Join(dir, o.tmp) {
		t.Fatalf("partial path %q, want %q", p, filepath.Join(dir, o.tmp))
	}
	if _, err := os.Stat(o.PartialPath()); err != nil {
		t.Fatal(err)
	}
	o.Write([]byte("x"))
	if err := o.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := names(t, dir); len(got) != 1 || got[0] != "b.crtree" {
		t.Fatalf("after Commit the directory holds %v", got)
	}
}
