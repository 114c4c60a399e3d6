package archive

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// A node with many files makes a checksums.json larger than the 16 MiB a
// reader once accepted, which a dump then wrote anyway (and removed the
// node): readers accept what the writer writes, up to MaxSumsSize.
func TestManyFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 100,000 files")
	}
	root := t.TempDir()
	dir := filepath.Join(root, strings.Repeat("d", 100))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const n = 100000
	for i := range n {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("file-with-a-longish-name-%06d", i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	fe, err := Scan(FilesPrefix(0), root)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "many", Parent: -1, Spec: Spec{Cmd: []string{"true"}}}}}
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
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for {
		_, _, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read back: %v", err)
		}
	}
	if got := r.Members(); got < n {
		t.Fatalf("read %d members, want at least %d", got, n)
	}
}
