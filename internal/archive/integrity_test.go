package archive

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// makeSmall builds a small archive laid out as a dump to a file writes
// it, index included: a directory tree with a file, a symlink, a hard
// link, a FIFO and an empty file, a page image part, then (after
// MarkMeta) the other images and the rest of the page image.
func makeSmall(t testing.TB) []byte {
	t.Helper()
	src := t.TempDir()
	files, images := filepath.Join(src, "files"), filepath.Join(src, "images")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(files, "etc", "app"), 0o755))
	must(os.WriteFile(filepath.Join(files, "etc", "app", "conf"), []byte("key=value\n"), 0o640))
	must(os.Link(filepath.Join(files, "etc", "app", "conf"), filepath.Join(files, "etc", "hard")))
	must(os.Symlink("app/conf", filepath.Join(files, "etc", "link")))
	must(syscall.Mkfifo(filepath.Join(files, "etc", "fifo"), 0o600))
	must(os.WriteFile(filepath.Join(files, "empty"), nil, 0o600))
	must(os.Chmod(filepath.Join(files, "etc"), 0o1777))
	must(os.Lchown(filepath.Join(files, "empty"), 1000, 1001))
	// A sparse file (a hole, data, a hole) and extended attributes.
	sp, err := os.Create(filepath.Join(files, "sparse"))
	must(err)
	must(sp.Truncate(3 << 20))
	_, err = sp.WriteAt([]byte("island"), 1<<20)
	must(err)
	sp.Close()
	must(unix.Lsetxattr(filepath.Join(files, "etc", "app", "conf"), "user.note", []byte("kept"), 0))
	must(unix.Lsetxattr(filepath.Join(files, "etc"), "user.dir", []byte("d"), 0))
	when := time.Unix(1700000000, 123456789)
	for _, p := range []string{"etc/app/conf", "empty", "sparse", "etc/app", "etc", "."} {
		must(os.Chtimes(filepath.Join(files, p), when, when))
	}
	must(os.MkdirAll(images, 0o755))
	must(os.WriteFile(filepath.Join(images, "pages-1.img"), bytes.Repeat([]byte("page"), 300), 0o600))
	must(os.WriteFile(filepath.Join(images, "core-1.img"), []byte("core"), 0o600))
	m := &Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "top", Parent: -1, Running: true, Memory: 1200, Spec: Spec{Cmd: []string{"sleep", "1"}}}}}
	fe, err := Scan(FilesPrefix(0), files)
	must(err)
	var buf bytes.Buffer
	w, err := NewWriter(&buf, zstd.SpeedFastest)
	must(err)
	must(w.WriteManifest(m))
	must(w.WriteEntries(fe))
	pages := ImagesPrefix(0) + "/pages-1.img"
	must(w.WritePart(pages, filepath.Join(images, "pages-1.img"), 0, 700))
	must(w.MarkMeta())
	must(w.WriteEntries([]Entry{mustFlat(t, images, "core-1.img")}))
	must(w.WritePart(pages, filepath.Join(images, "pages-1.img"), 700, 500))
	must(w.Close())
	return buf.Bytes()
}

func mustFlat(t testing.TB, dir, name string) Entry {
	es, err := ScanFlat(ImagesPrefix(0), dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if strings.HasSuffix(e.Name, "/"+name) {
			return e
		}
	}
	t.Fatalf("no %s in %s", name, dir)
	return Entry{}
}

// metaSink stands for restore's feeder: the images ExtractMeta wrote are
// not written again, page images are extracted.
type metaSink struct {
	dirs
	indexed bool
}

func (s metaSink) Image(node int, name string, size int64, body io.Reader) error {
	if s.indexed && !IsPageImage(name) {
		return nil
	}
	return ErrExtractImage
}

// restoreLike reads data as crtree restore does: through the index, if
// there is one, then front to back. It returns a description of every
// node extracted, or the refusal.
func restoreLike(t testing.TB, data []byte) (string, error) {
	d, err := restoreInto(t, data)
	if err != nil {
		return "", err
	}
	return snapshot(t, d.files[0], true) + snapshot(t, d.images[0], false), nil
}

// restoreInto is restoreLike, returning where it extracted the node.
func restoreInto(t testing.TB, data []byte) (dirs, error) {
	d := metaSink{dirs: dirs{files: []string{t.TempDir()}, images: []string{t.TempDir()}}}
	ra := bytes.NewReader(data)
	size := int64(len(data))
	x, err := ReadIndex(ra, size)
	var sums *Checksums
	if err == nil {
		sums, err = ReadTrailer(ra, size, x)
	}
	if err != nil && !errors.Is(err, ErrNoIndex) {
		return d.dirs, err
	}
	ar, err := NewReader(bytes.NewReader(data))
	if err != nil {
		return d.dirs, err
	}
	defer ar.Close()
	if sums != nil {
		if err := ExtractMeta(ra, size, x, ar.Manifest(), sums, d); err != nil {
			return d.dirs, err
		}
		ar.Expect(sums)
		d.indexed = true
	}
	return d.dirs, Extract(ar, d, nil)
}

// verifyLike checks data as crtree inspect --verify does.
func verifyLike(data []byte) error {
	m, _, err := Verify(bytes.NewReader(data))
	if err == nil {
		err = VerifyIndex(bytes.NewReader(data), int64(len(data)), m)
	}
	return err
}

// snapshot describes every file under dir: type and mode, owner, time,
// link target, content and extended attributes; the time of dir itself
// if it is a member (rootTime).
func snapshot(t testing.TB, dir string, rootTime bool) string {
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(&b, "%s %v %d:%d", rel, fi.Mode(), st.Uid, st.Gid)
		if !fi.IsDir() && fi.Mode()&fs.ModeSymlink == 0 {
			// crtree does not restore the times of symlinks.
			fmt.Fprintf(&b, " %d nlink=%d", fi.ModTime().UnixNano(), st.Nlink)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			fmt.Fprintf(&b, " -> %s", l)
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " size=%d blocks=%d sha=%x", fi.Size(), st.Blocks, sha256.Sum256(data))
		}
		b.WriteString(xattrList(p))
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Directory times are set last, once their contents are in place.
	var times []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && (rootTime || p != dir) {
			fi, _ := os.Lstat(p)
			times = append(times, strconv.FormatInt(fi.ModTime().UnixNano(), 10))
		}
		return nil
	})
	sort.Strings(times)
	return b.String() + strings.Join(times, " ") + "\n"
}

// TestEveryByteFlipped flips every byte of a small archive, one at a
// time: each flip must be refused by both the verification and the
// restore, or restore exactly what the intact archive restores.
func TestEveryByteFlipped(t *testing.T) {
	data := makeSmall(t)
	want, err := restoreLike(t, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyLike(data); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadIndex(bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("the test archive has no index: %v", err)
	}
	for _, s := range []string{" size=3145728 blocks=8 ", "user.note=kept", "user.dir=d"} {
		if !strings.Contains(want, s) {
			t.Fatalf("the test archive does not restore %q", s)
		}
	}
	t.Logf("%d bytes:\n%s", len(data), want)
	bad := 0
	for pos := range data {
		for _, mask := range []byte{0xff, 0x01} {
			flipped := bytes.Clone(data)
			flipped[pos] ^= mask
			verr := verifyLike(flipped)
			got, rerr := restoreLike(t, flipped)
			switch {
			case (verr == nil) != (rerr == nil):
				t.Errorf("flip %#02x at %d: verify says %v, restore says %v", mask, pos, verr, rerr)
			case rerr == nil && got != want:
				t.Errorf("flip %#02x at %d: accepted, and restored%s", mask, pos, lineDiff(want, got))
			default:
				continue
			}
			if bad++; bad > 20 {
				t.Fatal("too many")
			}
		}
	}
}

// TestHeaderEdit: a tar header edited to make a file setuid and owned by
// another user, recompressed, is refused: the checksums cover metadata.
func TestHeaderEdit(t *testing.T) {
	dec, _ := zstd.NewReader(nil)
	raw, err := dec.DecodeAll(makeSmall(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	const name = "nodes/0/files/etc/app/conf"
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
	hdr, err := tar.NewReader(bytes.NewReader(blk)).Next()
	if err != nil && err != io.EOF || hdr == nil || hdr.Mode != 0o4777 || hdr.Uid != 1000 {
		t.Fatalf("edit failed: %+v %v", hdr, err)
	}
	enc, _ := zstd.NewWriter(nil)
	edited := enc.EncodeAll(raw, nil)
	if err := verifyLike(edited); err == nil || !strings.Contains(err.Error(), "tar header of \""+name+"\" differs") {
		t.Errorf("verify of the edited header: %v", err)
	}
	if _, err := restoreLike(t, edited); err == nil || !strings.Contains(err.Error(), "tar header of \""+name+"\" differs") {
		t.Errorf("restore of the edited header: %v", err)
	}
}

// lineDiff returns the lines of got that are not in want.
func lineDiff(want, got string) string {
	have := map[string]bool{}
	for _, l := range strings.Split(want, "\n") {
		have[l] = true
	}
	var out []string
	for _, l := range strings.Split(got, "\n") {
		if !have[l] {
			out = append(out, "\n\t"+l)
		}
	}
	return strings.Join(out, "")
}
