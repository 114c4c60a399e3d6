package archive

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// Format version 1 is read with the checks it has (content digests per
// piece, every member listed in order with its type and size, nothing
// after checksums.json), and every rule against hostile archives, as
// version 2 is (TestHostileArchives runs each forged archive in both).

// testArchive reads a file of testdata/archives.
func testArchive(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "testdata", "archives", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// decodeAll returns the tar stream of an archive.
func decodeAll(t testing.TB, data []byte) []byte {
	t.Helper()
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	raw, err := dec.DecodeAll(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// format1Greeting is the content of data/greeting in format1-exited.crtree,
// the bytes format1-flipped.crtree changes.
const format1Greeting = "hello\n"

// format1Cut is where format1-truncated.crtree ends: three quarters into
// format1-exited.crtree, in its last zstd frame (checksums.json), so that
// every member before is read, and checked, before the stream ends.
func format1Cut(data []byte) int { return len(data) - len(data)/4 }

// TestFormat1Testdata: the known-good archive of format version 1,
// written by a crtree of that version, verifies and restores its files;
// the damaged vectors made from it (rewritten with -update) are refused
// for their reason, by the verification and the restore alike.
func TestFormat1Testdata(t *testing.T) {
	good := testArchive(t, "format1-exited.crtree")
	raw := decodeAll(t, good)
	if *update {
		if strings.Count(string(raw), format1Greeting) != 1 {
			t.Fatalf("%q is not once in the archive", format1Greeting)
		}
		flipped := bytes.Clone(raw)
		flipped[strings.Index(string(raw), format1Greeting)] ^= 0x20
		enc, _ := zstd.NewWriter(nil)
		dir := filepath.Join("..", "..", "testdata", "archives")
		if err := os.WriteFile(filepath.Join(dir, "format1-flipped.crtree"), enc.EncodeAll(flipped, nil), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "format1-truncated.crtree"), good[:format1Cut(good)], 0o644); err != nil {
			t.Fatal(err)
		}
	}

	m, members, err := Verify(bytes.NewReader(good))
	if err != nil {
		t.Fatalf("format1-exited.crtree: %v", err)
	}
	if err := verifyLike(good); err != nil {
		t.Fatalf("format1-exited.crtree, verified as inspect does: %v", err)
	}
	if m.Version != 1 || members != 20 || m.Unchecked() == "" || m.Nodes[0].Name != "good" {
		t.Fatalf("format1-exited.crtree: version %d, %d members, unchecked %q, node %q", m.Version, members, m.Unchecked(), m.Nodes[0].Name)
	}
	d, err := restoreInto(t, good)
	if err != nil {
		t.Fatalf("restore format1-exited.crtree: %v", err)
	}
	files := d.files[0]
	if b, err := os.ReadFile(filepath.Join(files, "data", "greeting")); string(b) != format1Greeting {
		t.Errorf("data/greeting = %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(files, "data", "link")); l != "greeting" {
		t.Errorf("data/link -> %q, %v", l, err)
	}
	fi, err := os.Stat(filepath.Join(files, "data", "sub", "n"))
	if b, _ := os.ReadFile(filepath.Join(files, "data", "sub", "n")); err != nil || fi.Mode() != 0o640 || string(b) != "12345" {
		t.Errorf("data/sub/n: %v %q, %v", fi.Mode(), b, err)
	}

	// The damaged vectors are what they say they are.
	flipped := testArchive(t, "format1-flipped.crtree")
	fraw := decodeAll(t, flipped)
	diff := -1
	for i := range raw {
		if i < len(fraw) && raw[i] != fraw[i] {
			if diff >= 0 {
				t.Fatal("format1-flipped.crtree differs from format1-exited.crtree in more than one byte")
			}
			diff = i
		}
	}
	if len(fraw) != len(raw) || diff < 0 || !strings.HasPrefix(string(raw[diff:]), format1Greeting) {
		t.Fatal("format1-flipped.crtree does not differ from format1-exited.crtree in the first byte of data/greeting only")
	}
	truncated := testArchive(t, "format1-truncated.crtree")
	if !bytes.Equal(truncated, good[:format1Cut(good)]) {
		t.Fatal("format1-truncated.crtree is not format1-exited.crtree cut three quarters in")
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"format1-flipped.crtree":   {flipped, `^corrupt archive: checksum mismatch for "nodes/0/files/data/greeting"$`},
		"format1-truncated.crtree": {truncated, `^corrupt archive: archive is truncated \(no checksums.json trailer\)$`},
	} {
		verr := verifyLike(tc.data)
		_, rerr := restoreInto(t, tc.data)
		for what, err := range map[string]error{"verify": verr, "restore": rerr} {
			if err == nil || !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Errorf("%s of %s: %v, want %s", what, name, err, tc.want)
			}
		}
	}
}

// contents describes the files under dir by what format version 1
// covers: name, type, content and link target (not modes, owners or
// times).
func contents(t testing.TB, dir string) string {
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(&b, "%s %v", rel, d.Type())
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			fmt.Fprintf(&b, " -> %s", l)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %q", data)
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestFormat1EveryByteFlipped flips every byte of the known-good archive
// of format version 1, one at a time: a flip the verification refuses,
// the restore refuses too, and one that is restored restores the same
// files with the same contents and link targets. (Version 1 does not
// cover modes, owners and times: a flip there may restore them changed,
// or fail where the change cannot be applied.)
func TestFormat1EveryByteFlipped(t *testing.T) {
	data := testArchive(t, "format1-exited.crtree")
	d, err := restoreInto(t, data)
	if err != nil {
		t.Fatal(err)
	}
	want := contents(t, d.files[0])
	wantAll := snapshot(t, d.files[0], true)
	bad, metadata, refused := 0, 0, 0
	for pos := range data {
		for _, mask := range []byte{0xff, 0x01} {
			flipped := bytes.Clone(data)
			flipped[pos] ^= mask
			verr := verifyLike(flipped)
			d, rerr := restoreInto(t, flipped)
			switch {
			case verr != nil && rerr == nil:
				t.Errorf("flip %#02x at %d: verify says %v, restore accepts it", mask, pos, verr)
			case rerr == nil && contents(t, d.files[0]) != want:
				t.Errorf("flip %#02x at %d: accepted, and restored%s", mask, pos, lineDiff(want, contents(t, d.files[0])))
			case verr == nil && rerr != nil:
				t.Logf("flip %#02x at %d: verified, restore fails: %v", mask, pos, rerr)
				continue
			default:
				if rerr == nil && snapshot(t, d.files[0], true) != wantAll {
					metadata++
				} else if rerr != nil {
					refused++
				}
				continue
			}
			if bad++; bad > 20 {
				t.Fatal("too many")
			}
		}
	}
	t.Logf("%d flips: %d refused, %d restored with other modes, owners or times", 2*len(data), refused, metadata)
}

// TestFormat1Truncated cuts the known-good archive of format version 1
// at every byte: every cut is refused.
func TestFormat1Truncated(t *testing.T) {
	data := testArchive(t, "format1-exited.crtree")
	for cut := 0; cut < len(data); cut++ {
		if err := verifyLike(data[:cut]); err == nil {
			t.Fatalf("archive cut at %d of %d bytes verified", cut, len(data))
		}
	}
}

// TestFormat1HeaderEdit: what format version 1 does not check. A tar
// header of a version 1 archive edited to make a file setuid and owned by
// another user is restored so (the same edit in version 2 is refused:
// TestHeaderEdit), and inspect --verify says that modes, owners and times
// are not checksummed.
func TestFormat1HeaderEdit(t *testing.T) {
	raw := decodeAll(t, testArchive(t, "format1-exited.crtree"))
	const name = "nodes/0/files/data/greeting"
	i := bytes.Index(raw, []byte(name+"\x00"))
	if i < 0 || i%512 != 0 {
		t.Fatalf("no ustar header for %s", name)
	}
	blk := raw[i : i+512]
	copy(blk[100:108], "0004777\x00") // mode
	copy(blk[108:116], "0001750\x00") // uid 1000
	copy(blk[148:156], "        ")
	sum := 0
	for _, c := range blk {
		sum += int(c)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
	enc, _ := zstd.NewWriter(nil)
	edited := enc.EncodeAll(raw, nil)
	m, _, err := Verify(bytes.NewReader(edited))
	if err != nil {
		t.Fatalf("verify of the edited header: %v", err)
	}
	if got := m.Unchecked(); got != "file modes, owners and times are not checksummed" {
		t.Errorf("Unchecked() = %q", got)
	}
	d, err := restoreInto(t, edited)
	if err != nil {
		t.Fatalf("restore of the edited header: %v", err)
	}
	fi, err := os.Stat(filepath.Join(d.files[0], "data", "greeting"))
	if err != nil || fi.Mode() != 0o777|os.ModeSetuid || fi.Sys().(*syscall.Stat_t).Uid != 1000 {
		t.Fatalf("edited greeting restored as %v, %v", fi.Mode(), err)
	}
}

// format1Node is the layout of a dump of a running node to a file, for
// forgeIndexed: files, a page image part, (the index's meta offset) the
// other images, the rest of the page image.
func format1Node(core raw) (*Manifest, []raw, int) {
	const f = "nodes/0/files"
	m := oneNode()
	m.Version = 1
	m.Nodes[0].Running = true
	pages := ImagesPrefix(0) + "/pages-1.img"
	return m, []raw{{tar.Header{Name: f, Typeflag: tar.TypeDir, Mode: 0o755}, ""},
		file(f+"/a", "hello"),
		{tar.Header{Name: pages, Typeflag: tar.TypeReg, Mode: 0o600}, "first part"},
		core,
		{tar.Header{Name: pages, Typeflag: tar.TypeReg, Mode: 0o600}, "second part"},
	}, 4
}

// TestFormat1Index: an archive of format version 1 written to a file ends
// with an index that its checksums.json does not list. A restore reads
// through it as through a version 2 index, with the same checks on what
// it reads: the images after it are the ones listed, with their content
// digests, and nothing a version 1 member cannot carry; the trailer must
// be of the manifest's version. The stream may hold no skippable frame
// but that index, last.
func TestFormat1Index(t *testing.T) {
	core := ImagesPrefix(0) + "/core-1.img"
	m, members, metaAt := format1Node(raw{tar.Header{Name: core, Typeflag: tar.TypeReg, Mode: 0o600}, "core"})
	data := forgeIndexed(t, m, members, nil, metaAt, 1)
	x, err := ReadIndex(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("the forged archive has no index: %v", err)
	}
	if err := verifyLike(data); err != nil {
		t.Fatalf("verify: %v", err)
	}
	d, err := restoreInto(t, data)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	for rel, want := range map[string]string{"images/core-1.img": "core", "images/pages-1.img": "first partsecond part", "files/a": "hello"} {
		dir := d.files[0]
		if strings.HasPrefix(rel, "images/") {
			dir = d.images[0]
		}
		if b, err := os.ReadFile(filepath.Join(dir, filepath.Base(rel))); string(b) != want {
			t.Errorf("%s = %q, %v", rel, b, err)
		}
	}

	withXattr := raw{tar.Header{Name: core, Typeflag: tar.TypeReg, Mode: 0o600, PAXRecords: map[string]string{xattrPrefix + "user.x": "1"}}, "core"}
	sparse := raw{tar.Header{Name: core, Typeflag: tar.TypeReg, Mode: 0o600, PAXRecords: map[string]string{sparseMapKey: "0,4", sparseSizeKey: "8"}}, "core"}
	outside := raw{tar.Header{Name: ImagesPrefix(0) + "/../files/core", Typeflag: tar.TypeReg, Mode: 0o600}, "core"}
	v2 := oneNode()
	v2.Version = 2
	v2.Nodes[0].Running = true
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"an image after the index with an extended attribute": {
			forgeIndexed(t, m, replace(members, metaAt, withXattr), nil, metaAt, 1),
			`record "SCHILY.xattr.user.x" is not allowed in format version 1`},
		"a sparse image after the index": {
			forgeIndexed(t, m, replace(members, metaAt, sparse), nil, metaAt, 1),
			`record "CRTREE.sparse.(map|size)" is not allowed in format version 1`},
		"an image after the index outside the images": {
			forgeIndexed(t, m, replace(members, metaAt, outside), nil, metaAt, 1),
			`not a clean relative path`},
		"an image after the index with another content": {
			forgeIndexed(t, m, members, func(c *Checksums) { c.Members[metaAt].SHA256 = digestBytes([]byte("CORE")) }, metaAt, 1),
			`checksum mismatch for "nodes/0/criu/core-1.img"`},
		"an image after the index of another size": {
			forgeIndexed(t, m, members, func(c *Checksums) { c.Members[metaAt].Size = 5 }, metaAt, 1),
			`member "nodes/0/criu/core-1.img" after the index is not what checksums.json lists|checksums.json lists file "nodes/0/criu/core-1.img" of 5 bytes`},
		"a skippable frame after the index": {
			append(bytes.Clone(data), skippable("not an index")...),
			`a skippable frame that is not an index at the end of the archive`},
		"a skippable frame before the index": {
			append(append(bytes.Clone(data[:len(data)-indexFrameSize]), skippable("not an index")...), data[len(data)-indexFrameSize:]...),
			`a skippable frame that is not an index at the end of the archive`},
		"a trailer of version 1 in an archive of version 2": {
			forgeIndexed(t, v2, members, nil, metaAt, 1),
			`format version 1, the manifest (is )?of version 2`},
		"a trailer of version 2 in an archive of version 1": {
			forgeIndexed(t, m, members, nil, metaAt, 2),
			`format version 2, the manifest (is )?of version 1`},
		"a trailer of version 1 with header digests": {
			forgeIndexed(t, m, members, func(c *Checksums) { c.Members[1].Header = strings.Repeat("0", 64) }, metaAt, 1),
			`checksums.json of format version 1 has header digests`},
		"a trailer of version 1 that lists an index": {
			forgeIndexed(t, m, members, func(c *Checksums) { c.Index = x }, metaAt, 1),
			`checksums.json of format version 1 lists an index`},
	} {
		verr := verifyLike(tc.data)
		_, rerr := restoreInto(t, tc.data)
		for what, err := range map[string]error{"verify": verr, "restore": rerr} {
			if err == nil || !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Errorf("%s, %s: %v, want %s", name, what, err, tc.want)
			}
		}
	}
	// Without an index too, the trailer must be of the manifest's version.
	for _, form := range []int{1, 2} {
		m := oneNode()
		m.Version = 3 - form
		data := forgeIndexed(t, m, nil, nil, 0, form)
		if _, _, err := Verify(bytes.NewReader(data)); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("checksums.json has the tar header of format version %d, the manifest is of version %d", form, m.Version)) {
			t.Errorf("a trailer of version %d in an archive of version %d: %v", form, m.Version, err)
		}
	}
}

// replace returns members with members[at-1] (member at: the manifest is
// member 0) replaced by r.
func replace(members []raw, at int, r raw) []raw {
	out := append([]raw(nil), members...)
	out[at-1] = r
	return out
}

// skippable is a zstd skippable frame holding s.
func skippable(s string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, skippableMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}
