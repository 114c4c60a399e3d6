package e2e

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/hier"
)

// An archive whose manifest says --net none while its CRIU images share
// the dumping host's network (edited, checksums recomputed: they are no
// secret) is restored under a --net none node: its processes must not get
// the host's network, so the restore is refused before they run.
func TestForgedNetNoneStaysOffTheHostNetwork(t *testing.T) {
	h := newHost(t)
	dir := t.TempDir()
	h.must("run", "/s", "--", "sleep", "1e5")
	h.must("dump", "/s", "-o", filepath.Join(dir, "s.crtree"))
	forged := filepath.Join(dir, "forged.crtree")
	repack(t, filepath.Join(dir, "s.crtree"), forged, func(m *archive.Manifest) {
		m.Nodes[0].Spec.Net = hier.NetNone
	})
	h.must("inspect", "--verify", forged)
	h.must("run", "--net", "none", "/nn", "--", "sleep", "1e5")
	_, err := h.run("restore", "--parent", "/nn", "--name", "h", forged)
	if err == nil {
		hostNet, _ := os.Readlink("/proc/self/ns/net")
		nodeNet, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(h.ls()["/nn/h"].Pid), "ns/net"))
		t.Fatalf("the forged archive was restored (network %s, the host's is %s)", nodeNet, hostNet)
	}
	if !strings.Contains(err.Error(), "its images put process") || !strings.Contains(err.Error(), "in this host's net namespace") {
		t.Fatalf("refused for another reason: %v", err)
	}
	if _, ok := h.ls()["/nn/h"]; ok {
		t.Fatal("the refused restore left /nn/h behind")
	}
}

// repack rewrites the archive in as out with its manifest edited, every
// checksum recomputed, as an attacker with the archive in hand would.
func repack(t *testing.T, in, out string, edit func(*archive.Manifest)) {
	t.Helper()
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := archive.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tree := t.TempDir()
	for {
		hdr, body, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		unpack(t, filepath.Join(tree, hdr.Name), hdr, body)
	}
	m := r.Manifest()
	edit(m)
	o, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	w, err := archive.NewWriter(o, zstd.SpeedFastest)
	if err != nil {
		t.Fatal(err)
	}
	check := func(err error) {
		if err != nil {
			t.Helper()
			t.Fatal(err)
		}
	}
	check(w.WriteManifest(m))
	for i := range m.Nodes {
		files, err := archive.Scan(archive.FilesPrefix(i), filepath.Join(tree, archive.FilesPrefix(i)))
		check(err)
		check(w.WriteEntries(files))
	}
	// As crtree writes them: every image but the pages, then the pages.
	check(w.MarkMeta())
	for _, pages := range []bool{false, true} {
		for i := range m.Nodes {
			images, err := archive.ScanFlat(archive.ImagesPrefix(i), filepath.Join(tree, archive.ImagesPrefix(i)))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			check(err)
			for _, e := range images {
				if archive.IsPageImage(e.Name) == pages {
					check(w.WriteEntries([]archive.Entry{e}))
				}
			}
		}
	}
	check(w.Close())
}

// unpack writes one archive member under its name.
func unpack(t *testing.T, name string, hdr *tar.Header, body io.Reader) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	var err error
	switch hdr.Typeflag {
	case tar.TypeDir:
		err = os.MkdirAll(name, os.FileMode(hdr.Mode)&os.ModePerm)
	case tar.TypeSymlink:
		err = os.Symlink(hdr.Linkname, name)
	case tar.TypeReg:
		var f *os.File
		if f, err = os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(hdr.Mode)&os.ModePerm); err == nil {
			_, err = io.Copy(f, body)
			f.Close()
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}
