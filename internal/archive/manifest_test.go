package archive

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// The manifests of the known-good archives read and write back byte for
// byte.
func TestGoodArchiveManifests(t *testing.T) {
	files, _ := filepath.Glob("../../testdata/archives/good-*.crtree")
	if len(files) == 0 {
		t.Fatal("no known-good archive in testdata/archives")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			zr, err := zstd.NewReader(f, decoderOptions()...)
			if err != nil {
				t.Fatal(err)
			}
			defer zr.Close()
			tr := tar.NewReader(zr)
			if hdr, err := tr.Next(); err != nil || hdr.Name != ManifestName {
				t.Fatalf("first member: %v %v", hdr, err)
			}
			var stored bytes.Buffer
			if _, err := stored.ReadFrom(tr); err != nil {
				t.Fatal(err)
			}
			m, err := decodeManifest(stored.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Nodes[0].ExternalMounts) == 0 {
				t.Error("no external mounts read")
			}
			got, err := encodeManifest(m)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, stored.Bytes()) {
				t.Errorf("manifest read and written again:\n%s\nstored:\n%s", got, stored.Bytes())
			}
		})
	}
}
