package archive

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzManifest feeds the manifest decoder arbitrary JSON: it must never
// panic, and what it accepts must satisfy Validate's promises.
func FuzzManifest(f *testing.F) {
	good, _ := json.Marshal(&Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "a", Parent: -1, Spec: Spec{Cmd: []string{"x"}}}, {Name: "b", Path: "b", Parent: 0, Spec: Spec{Cmd: []string{"x"}}}}})
	f.Add(good)
	f.Add([]byte(`{"format":"crtree-archive","version":1,"nodes":[{"name":"a","parent":-1,"spec":{"cmd":["x"]}}],"members":[{"name":"nodes/0/files/../../x","type":"file"}]}`))
	f.Add([]byte(`{"format":"crtree-archive","version":2}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeManifest(data)
		if err != nil {
			return
		}
		for i, n := range m.Nodes {
			if i > 0 && (n.Parent < 0 || n.Parent >= i) {
				t.Fatalf("accepted parent %d for node %d", n.Parent, i)
			}
		}
	})
}

// FuzzExtract feeds arbitrary bytes to the reader and extractor: they
// must never panic, and never change anything outside the destination.
// Beside the destination is a directory, outside/, that the seeds aim at
// (symlinks, hard links and ".." names, by relative and by absolute
// path); after every input, outside/ must be as it was, and nothing may
// have appeared beside the nodes' directories.
func FuzzExtract(f *testing.F) {
	top := f.TempDir()
	outside := filepath.Join(top, "outside")
	if err := os.MkdirAll(filepath.Join(outside, "sub"), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "canary"), []byte("canary"), 0o644); err != nil {
		f.Fatal(err)
	}
	f.Add(makeArchive(f))
	f.Add([]byte("not an archive"))
	for _, seed := range escapeSeeds(f, outside) {
		f.Add(seed)
	}
	// Keep each run small: a fuzzed archive may claim large members, which
	// the limit refuses early instead of writing them out.
	metadataAllowance = 1 << 20
	defer func() { metadataAllowance = 160 << 20 }()
	want := describeTree(f, top, "dest")
	f.Fuzz(func(t *testing.T, data []byte) {
		// dest/N/files and dest/N/criu for two nodes; from a node's
		// directory, ../../../outside is outside/.
		dest := filepath.Join(top, "dest")
		if err := os.RemoveAll(dest); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dest)
		d := dirs{}
		for _, n := range []string{"0", "1"} {
			d.files = append(d.files, filepath.Join(dest, n, "files"))
			d.images = append(d.images, filepath.Join(dest, n, "criu"))
		}
		for _, dir := range append(d.files, d.images...) {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if r, err := NewReader(bytes.NewReader(data)); err == nil {
			Extract(r, d, nil)
			r.Close()
		}
		if got := describeTree(t, top, "dest"); !maps.Equal(got, want) {
			t.Fatalf("changed outside the destination:\n%s", treeDiff(want, got))
		}
		for dir, names := range map[string]string{dest: "0 1", filepath.Join(dest, "0"): "criu files", filepath.Join(dest, "1"): "criu files"} {
			if got, _ := readDir(dir); strings.Join(got, " ") != names {
				t.Fatalf("%s holds %v, want %s", dir, got, names)
			}
		}
	})
}

// escapeSeeds are archives whose members aim at outside, the directory
// beside the destination of FuzzExtract: by a relative path from a node's
// directory (../../../outside) and by its absolute path, through
// symlinks, hard links and ".." names, for files, directories, FIFOs and
// CRIU images, of the first node and of the second.
func escapeSeeds(t testing.TB, outside string) [][]byte {
	const f, f1, c = "nodes/0/files", "nodes/1/files", "nodes/0/criu"
	rel := "../../../outside"
	m := &Manifest{Format: FormatName, Version: FormatVersion, Nodes: []Node{
		{Name: "n", Parent: -1, Spec: Spec{Cmd: []string{"x"}}},
		{Name: "c", Path: "c", Parent: 0, Spec: Spec{Cmd: []string{"x"}}}}}
	dir := func(name string) raw { return raw{tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o777}, ""} }
	link := func(name, target string) raw {
		return raw{tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}, ""}
	}
	hard := func(name, target string) raw {
		return raw{tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}, ""}
	}
	fifo := func(name string) raw { return raw{tar.Header{Name: name, Typeflag: tar.TypeFifo, Mode: 0o666}, ""} }
	var seeds [][]byte
	for _, members := range [][]raw{
		// A symlink to outside, then members through it.
		{dir(f), link(f+"/up", rel), file(f+"/up/pwned", "x")},
		{dir(f), link(f+"/up", outside), file(f+"/up/pwned", "x")},
		{dir(f), dir(f + "/a"), link(f+"/a/up", "../"+rel), file(f+"/a/up/pwned", "x")},
		{dir(f), link(f+"/up", rel), dir(f + "/up/newdir")},
		{dir(f), link(f+"/up", outside), dir(f + "/up/sub")},
		{dir(f), link(f+"/up", rel), fifo(f + "/up/fifo")},
		{dir(f), link(f+"/up", rel), hard(f+"/h", f+"/up/canary")},
		{dir(f), link(f+"/up", rel), dir(f + "/up")},
		{dir(f), link(f+"/canary", rel+"/canary"), file(f+"/canary", "x")},
		{dir(f1), link(f1+"/up", rel), file(f1+"/up/pwned", "x")},
		// CRIU images: a symlink, then an image of the same name.
		{link(c+"/pages-1.img", rel+"/canary"), file(c+"/pages-1.img", "x")},
		// Hard links straight at outside's file.
		{dir(f), hard(f+"/h", outside+"/canary")},
		{dir(f), hard(f+"/h", rel+"/canary")},
		{dir(f), hard(f+"/h", f+"/"+rel+"/canary")},
		{dir(f), hard(f+"/h", f+"/..")},
		{dir(f), hard(f+"/h", "canary")},
		// Names that climb out, or are absolute.
		{file(f+"/"+rel+"/pwned", "x")},
		{file(outside+"/pwned", "x")},
		{dir(f + "/" + rel + "/sub")},
	} {
		seeds = append(seeds, forge(t, m, members, nil))
	}
	return seeds
}

// describeTree describes every file under dir but skip (a name in dir), dir
// itself left out: type and permissions, owner, size, link count, times,
// symlink target and content.
func describeTree(t testing.TB, dir, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		if p == filepath.Join(dir, skip) {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode %o uid %d gid %d size %d nlink %d mtime %d.%09d", st.Mode, st.Uid, st.Gid, st.Size, st.Nlink, st.Mtim.Sec, st.Mtim.Nsec)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		case unix.S_IFREG:
			data, _ := os.ReadFile(p)
			desc += fmt.Sprintf(" content %q", data)
		}
		out[p] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// treeDiff says how two descriptions of describeTree differ.
func treeDiff(want, got map[string]string) string {
	var lines []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			lines = append(lines, "gone: "+p)
		} else if g != w {
			lines = append(lines, fmt.Sprintf("changed: %s: %s, was %s", p, g, w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			lines = append(lines, "new: "+p+": "+got[p])
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// FuzzFrames feeds the frame reader arbitrary bytes after a valid mix of
// frames: it must never panic or hang, and never decode more than the
// input's blocks can say.
func FuzzFrames(f *testing.F) {
	var raw bytes.Buffer
	writeRawFrame(&raw, bytes.Repeat([]byte{1, 2, 3}, 50000))
	writeZeroFrame(&raw, 300000)
	f.Add(raw.Bytes())
	f.Add(Index{Meta: 1, MetaMember: 1, Sums: 2}.frame())
	f.Add(append(bytes.Clone(rawFrameHeader), 0xff, 0xff, 0xff))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := newFrameReader(bytes.NewReader(data))
		defer fr.Close()
		// An RLE block is 4 bytes for up to 128 KiB; read at most 16 MiB.
		limit := min(int64(len(data))*(rawBlockMax/4+1)+1, 16<<20)
		n, _ := io.Copy(io.Discard, io.LimitReader(fr, limit+1))
		if n > limit && limit < 16<<20 {
			t.Fatalf("%d input bytes decoded into more than %d", len(data), limit)
		}
	})
}
