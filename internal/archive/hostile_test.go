package archive

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// raw is one member of a hand-made archive.
type raw struct {
	hdr  tar.Header
	body string
}

// forge builds an archive with the given manifest and members and a
// trailer that matches them, in the form of the manifest's format version
// (version 1: no header digests, no digest of checksums.json), so that
// only their hostility can make a reader refuse it. tweak may change the
// trailer.
func forge(t testing.TB, m *Manifest, members []raw, tweak func(*Checksums)) []byte {
	return forgeIndexed(t, m, members, tweak, 0, m.Version)
}

// forgeIndexed is forge with an index, as a dump to a file writes one,
// if metaAt > 0: the stream is cut into zstd frames where member metaAt
// (members[metaAt-1]: the manifest is member 0) and checksums.json start,
// and ends with the index, which a trailer of version 2 lists. The
// trailer has the form of format version form.
func forgeIndexed(t testing.TB, m *Manifest, members []raw, tweak func(*Checksums), metaAt, form int) []byte {
	t.Helper()
	v1 := form == 1
	var tb bytes.Buffer
	out := &tarOutput{w: &tb, sum: newHeaderSum()}
	tw := tar.NewWriter(out)
	sums := &Checksums{PieceSize: PieceSize}
	var starts []int
	add := func(h tar.Header, body string) {
		h.Format = tar.FormatPAX
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		tw.Flush() // the padding of the member before
		starts = append(starts, tb.Len())
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		header := out.sum.take()
		if v1 {
			header = ""
		}
		out.content = true
		tw.Write([]byte(body))
		out.content = false
		out.sum.endContent(int64(len(body)))
		hashed := body
		if h.Typeflag != tar.TypeReg {
			hashed = h.Linkname
		}
		sums.Members = append(sums.Members, MemberChecksum{Name: h.Name, Type: typeOf(&h), Size: int64(len(body)), SHA256: digestBytes([]byte(hashed)), Header: header})
	}
	mj, _ := json.Marshal(m)
	add(tar.Header{Name: ManifestName, Typeflag: tar.TypeReg, Mode: 0o644}, string(mj))
	for _, r := range members {
		add(r.hdr, r.body)
	}
	tw.Flush()
	sumsAt := tb.Len()
	enc, _ := zstd.NewWriter(nil)
	var frames []byte
	var x Index
	if metaAt > 0 {
		frames = enc.EncodeAll(tb.Bytes()[:starts[metaAt]], nil)
		x.Meta, x.MetaMember = int64(len(frames)), int64(metaAt)
		frames = enc.EncodeAll(tb.Bytes()[starts[metaAt]:sumsAt], frames)
		x.Sums = int64(len(frames))
		if !v1 {
			sums.Index = &x
		}
	}
	if tweak != nil {
		tweak(sums)
	}
	sj, _ := json.Marshal(sums)
	sh := sumsHeader(sj)
	if v1 {
		sh.PAXRecords = nil
	}
	tw.WriteHeader(sh)
	tw.Write(sj)
	tw.Close()
	if metaAt == 0 {
		return enc.EncodeAll(tb.Bytes(), nil)
	}
	return append(enc.EncodeAll(tb.Bytes()[sumsAt:], frames), x.frame()...)
}

func oneNode() *Manifest {
	return &Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "n", Parent: -1, Spec: Spec{Cmd: []string{"x"}}}}}
}

func file(name, body string) raw {
	return raw{tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}, body}
}

// TestHostileArchives: each hostile archive is refused for its own
// reason (a case refused for another reason would hide that its own
// hostility passes), in each format version a reader accepts (the rules
// do not depend on the version), and nothing appears in outside/, the
// directory its symlinks and hard links aim at, beside the destination.
func TestHostileArchives(t *testing.T) {
	// Where version 1 refuses a case for a reason of its own: it carries
	// no extended attributes or sparse maps at all.
	version1Reasons := map[string]string{
		"extended attribute of another namespace": `record "SCHILY.xattr.trusted.x" is not allowed in format version 1`,
		"sparse CRIU image":                       "is not allowed in format version 1",
	}
	const f = "nodes/0/files"
	dir := raw{tar.Header{Name: f, Typeflag: tar.TypeDir, Mode: 0o755}, ""}
	// Each case extracts node N into top/CASE/files/N and
	// top/CASE/images/N, from which ../../../OUTSIDE is top/OUTSIDE.
	top := t.TempDir()
	outside := filepath.Join(top, "OUTSIDE")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	twoNodes := &Manifest{Format: FormatName, Version: FormatVersion, Nodes: append(oneNode().Nodes,
		Node{Name: "c", Path: "c", Parent: 0, Spec: Spec{Cmd: []string{"x"}}})}
	for name, tc := range map[string]struct {
		m       *Manifest
		members []raw
		tweak   func(*Checksums)
		// want is in the error, which wraps is (if set).
		want string
		is   error
	}{
		"symlink out, then a file through it": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/out", Typeflag: tar.TypeSymlink, Linkname: outside}, ""},
			file(f+"/out/pwned", "x")}, nil,
			"extract nodes/0/files/out/pwned: openat out/pwned: path escapes from parent", nil},
		"relative symlink out, then a file through it": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/up", Typeflag: tar.TypeSymlink, Linkname: "../../../OUTSIDE"}, ""},
			file(f+"/up/pwned", "x")}, nil,
			"extract nodes/0/files/up/pwned: openat up/pwned: path escapes from parent", nil},
		"relative symlink out, then a directory through it": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/up", Typeflag: tar.TypeSymlink, Linkname: "../../../OUTSIDE"}, ""},
			{tar.Header{Name: f + "/up/d", Typeflag: tar.TypeDir, Mode: 0o755}, ""}}, nil,
			"extract nodes/0/files/up/d: mkdirat up/d: path escapes from parent", nil},
		"hard link to a host file": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/pw", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}, ""}}, nil,
			`extract nodes/0/files/pw: hard link to "/etc/passwd" leaves the node's files`, nil},
		"hard link to a name outside nodes/": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/pw", Typeflag: tar.TypeLink, Linkname: "passwd"}, ""}}, nil,
			`extract nodes/0/files/pw: hard link to "passwd" leaves the node's files`, nil},
		"hard link climbing out of the node": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/pw", Typeflag: tar.TypeLink, Linkname: f + "/../../../OUTSIDE/x"}, ""}}, nil,
			`extract nodes/0/files/pw: hard link to "nodes/0/files/../../../OUTSIDE/x" leaves the node's files`, nil},
		"hard link to another node's file": {twoNodes, []raw{
			{tar.Header{Name: "nodes/1/files", Typeflag: tar.TypeDir, Mode: 0o755}, ""},
			file("nodes/1/files/x", "x"), dir,
			{tar.Header{Name: f + "/pw", Typeflag: tar.TypeLink, Linkname: "nodes/1/files/x"}, ""}}, nil,
			`extract nodes/0/files/pw: hard link to "nodes/1/files/x" leaves the node's files`, nil},
		"dot-dot path": {oneNode(), []raw{file("nodes/0/files/../../OUTSIDE/pwned", "x")}, nil,
			`member "nodes/0/files/../../OUTSIDE/pwned": not a clean relative path`, ErrCorrupt},
		"absolute path": {oneNode(), []raw{file(outside+"/pwned", "x")}, nil,
			`member "` + outside + `/pwned": not a clean relative path`, ErrCorrupt},
		"device node": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}, ""}}, nil,
			`member "nodes/0/files/null": type '3' is not allowed`, ErrCorrupt},
		"member not listed": {oneNode(), []raw{dir, file(f+"/a", "x")}, func(c *Checksums) {
			c.Members = c.Members[:len(c.Members)-1]
		}, "checksums.json lists 2 members, the archive has 3", ErrCorrupt},
		"member listed but missing": {oneNode(), []raw{dir}, func(c *Checksums) {
			c.Members = append(c.Members, MemberChecksum{Name: f + "/ghost", Type: "file", Size: 1, SHA256: digestBytes([]byte("x"))})
		}, "checksums.json lists 3 members, the archive has 2", ErrCorrupt},
		"file twice": {oneNode(), []raw{dir, file(f+"/a", "x"), file(f+"/a", "y")}, nil,
			`member "nodes/0/files/a" appears twice`, ErrCorrupt},
		"unknown version": {&Manifest{Format: FormatName, Version: 99, Nodes: oneNode().Nodes}, nil, nil,
			"format version 99 (this crtree reads versions 1 to 4)", ErrVersion},
		"node named twice": {&Manifest{Format: FormatName, Version: FormatVersion, Nodes: append(oneNode().Nodes,
			Node{Name: "c", Path: "c", Parent: 0, Spec: Spec{Cmd: []string{"x"}}},
			Node{Name: "c", Path: "c", Parent: 0, Spec: Spec{Cmd: []string{"x"}}})}, nil, nil,
			`manifest names node "c" twice`, ErrCorrupt},
		"member of a node that does not exist": {oneNode(), []raw{file("nodes/3/files/a", "x")}, nil,
			`member "nodes/3/files/a": names no node of the manifest`, ErrCorrupt},
		"fifo used as a directory": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/p", Typeflag: tar.TypeFifo, Mode: 0o600}, ""},
			{tar.Header{Name: f + "/p/q", Typeflag: tar.TypeFifo, Mode: 0o600}, ""}}, nil,
			"extract nodes/0/files/p/q: openat p: not a directory", syscall.ENOTDIR},
		"wrong checksum": {oneNode(), []raw{dir, file(f+"/a", "x")}, func(c *Checksums) {
			c.Members[len(c.Members)-1].SHA256 = digestBytes([]byte("y"))
		}, `checksum mismatch for "nodes/0/files/a"`, ErrCorrupt},
		"extended attribute of another namespace": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/a", Typeflag: tar.TypeReg, Mode: 0o644, PAXRecords: map[string]string{xattrPrefix + "trusted.x": "1"}}, ""}}, nil,
			`extended attribute "trusted.x" is not allowed`, ErrCorrupt},
		"sparse CRIU image": {oneNode(), []raw{
			{tar.Header{Name: "nodes/0/criu/core-1.img", Typeflag: tar.TypeReg, Mode: 0o600, PAXRecords: map[string]string{sparseMapKey: "0,1", sparseSizeKey: "1"}}, "x"}}, nil,
			"a CRIU image cannot be sparse", ErrCorrupt},
	} {
		for _, v := range []int{1, 2} {
			m := *tc.m
			if m.Version == 99 && v == 1 {
				continue // of no version
			}
			if m.Version != 99 {
				m.Version = v
			}
			want := tc.want
			if v1, ok := version1Reasons[name]; ok && v == 1 {
				want = v1
			}
			t.Run(fmt.Sprintf("%s/version %d", name, v), func(t *testing.T) {
				data := forge(t, &m, tc.members, tc.tweak)
				base := filepath.Join(top, fmt.Sprintf("%s_v%d", strings.ReplaceAll(name, " ", "_"), v))
				d := dirs{}
				for i := range m.Nodes {
					d.files = append(d.files, filepath.Join(base, "files", strconv.Itoa(i)))
					d.images = append(d.images, filepath.Join(base, "images", strconv.Itoa(i)))
				}
				for _, dir := range append(d.files, d.images...) {
					os.MkdirAll(dir, 0o755)
				}
				r, err := NewReader(bytes.NewReader(data))
				if err == nil {
					err = Extract(r, d, nil)
					r.Close()
				}
				if err == nil {
					t.Fatal("hostile archive accepted")
				}
				if !strings.Contains(err.Error(), want) || tc.is != nil && !errors.Is(err, tc.is) {
					t.Errorf("refused with %q, want %q (is %v)", err, want, tc.is)
				}
				if got, _ := readDir(outside); len(got) != 0 {
					t.Fatalf("wrote outside the destination: %v", got)
				}
				if got, _ := readDir(base); strings.Join(got, " ") != "files images" {
					t.Fatalf("wrote beside the destination: %v", got)
				}
			})
		}
	}
	// The forger itself makes acceptable archives, of either version.
	for _, v := range []int{1, 2} {
		m := oneNode()
		m.Version = v
		good := forge(t, m, []raw{dir, file(f+"/a", "hello")}, nil)
		if _, _, err := Verify(bytes.NewReader(good)); err != nil {
			t.Fatalf("forged good archive of version %d refused: %v", v, err)
		}
	}
}

// TestHugeManifest: a manifest over the limit is refused before it is read.
func TestHugeManifest(t *testing.T) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: ManifestName, Typeflag: tar.TypeReg, Size: MaxManifestSize + 1})
	tw.Write(bytes.Repeat([]byte(" "), MaxManifestSize+1))
	tw.Close()
	enc, _ := zstd.NewWriter(nil)
	_, err := NewReader(bytes.NewReader(enc.EncodeAll(tb.Bytes(), nil)))
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("huge manifest: %v", err)
	}
}

// TestExpansionBomb: a small archive whose members expand far beyond what
// its manifest accounts for is refused before the content is written, in
// either format version.
func TestExpansionBomb(t *testing.T) {
	metadataAllowance = 1 << 20
	defer func() { metadataAllowance = 160 << 20 }()
	const f = "nodes/0/files"
	for _, v := range []int{1, 2} {
		m := oneNode()
		m.Version = v
		data := forge(t, m, []raw{{tar.Header{Name: f, Typeflag: tar.TypeDir, Mode: 0o755}, ""},
			file(f+"/bomb", strings.Repeat("\x00", 8<<20))}, nil)
		if len(data) > 64<<10 {
			t.Fatalf("bomb is %d bytes compressed", len(data))
		}
		d := dirs{files: []string{t.TempDir()}, images: []string{t.TempDir()}}
		r, err := NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		err = Extract(r, d, nil)
		r.Close()
		if err == nil || !strings.Contains(err.Error(), "manifest accounts for") {
			t.Fatalf("bomb of version %d: %v", v, err)
		}
		if fi, err := os.Stat(filepath.Join(d.files[0], "bomb")); err == nil && fi.Size() > 0 {
			t.Fatalf("bomb of version %d: content written: %d bytes", v, fi.Size())
		}
	}
}

// TestVerifyAppliesBound: inspect --verify refuses what restore refuses,
// an archive whose content exceeds what its manifest accounts for, in
// either format version.
func TestVerifyAppliesBound(t *testing.T) {
	metadataAllowance = 1 << 20
	defer func() { metadataAllowance = 160 << 20 }()
	const f = "nodes/0/files"
	for _, v := range []int{1, 2} {
		m := oneNode()
		m.Version = v
		data := forge(t, m, []raw{{tar.Header{Name: f, Typeflag: tar.TypeDir, Mode: 0o755}, ""},
			file(f+"/bomb", strings.Repeat("\x00", 8<<20))}, nil)
		_, _, err := Verify(bytes.NewReader(data))
		if err == nil || !strings.Contains(err.Error(), "manifest accounts for") {
			t.Fatalf("verify of a bomb of version %d: %v", v, err)
		}
	}
}

// TestBoundCountsExtraMemory: what a node held beyond its resident memory
// (tmpfs contents, memfd files), recorded in the manifest, is part of the
// bound: restore and verify accept such an archive, and refuse a byte more
// than the bound.
func TestBoundCountsExtraMemory(t *testing.T) {
	metadataAllowance = 1 << 20
	defer func() { metadataAllowance = 160 << 20 }()
	const img = "nodes/0/criu/tmpfs-dev-1.tar.gz.img"
	m := oneNode()
	m.Nodes[0].ExtraMemory = 4 << 20
	if got, want := ExpansionLimit(m), int64(1<<20+2*(4<<20)); got != want {
		t.Fatalf("limit %d, want %d", got, want)
	}
	for _, tc := range []struct {
		size int
		ok   bool
	}{{9 << 20, true}, {9<<20 + 1, false}} {
		data := forge(t, m, []raw{file(img, strings.Repeat("\x00", tc.size))}, nil)
		_, _, verr := Verify(bytes.NewReader(data))
		r, err := NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		err = Extract(r, dirs{files: []string{t.TempDir()}, images: []string{t.TempDir()}}, nil)
		r.Close()
		for what, err := range map[string]error{"verify": verr, "extract": err} {
			if tc.ok && err != nil || !tc.ok && (err == nil || !strings.Contains(err.Error(), "manifest accounts for")) {
				t.Errorf("%s of %d bytes against a limit of %d: %v", what, tc.size, ExpansionLimit(m), err)
			}
		}
	}
}

// TestOldManifestBound: a manifest without extraMemory (archives of
// earlier crtree versions) is bounded as before.
func TestOldManifestBound(t *testing.T) {
	m, err := decodeManifest([]byte(`{"format":"crtree-archive","version":2,"nodes":[{"name":"n","parent":-1,"spec":{"cmd":["x"]},"memory":1000,"files":10}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ExpansionLimit(m), metadataAllowance+2*1010; got != want {
		t.Fatalf("limit %d, want %d", got, want)
	}
}

var update = flag.Bool("update", false, "rewrite the hostile archives of testdata/archives")

// TestHostileTestdata checks the hand-made hostile archives the end-to-end
// tests restore (rewritten with -update): each is refused, for its reason.
func TestHostileTestdata(t *testing.T) {
	const f = "nodes/0/files"
	dir := raw{tar.Header{Name: f, Typeflag: tar.TypeDir, Mode: 0o755}, ""}
	for name, tc := range map[string]struct {
		m       *Manifest
		members []raw
		want    string
	}{
		"escape-symlink.crtree": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/out", Typeflag: tar.TypeSymlink, Linkname: "/proc/self/cwd"}, ""},
			file(f+"/out/pwned", "x")}, "extract nodes/0/files/out/pwned: openat out/pwned: path escapes from parent"},
		"device-node.crtree": {oneNode(), []raw{dir,
			{tar.Header{Name: f + "/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}, ""}}, `member "nodes/0/files/null": type '3' is not allowed`},
		"unknown-version.crtree": {&Manifest{Format: FormatName, Version: 99, Nodes: oneNode().Nodes}, nil, "format version 99 (this crtree reads versions 1 to 4)"},
	} {
		path := filepath.Join("..", "..", "testdata", "archives", name)
		if *update {
			if err := os.WriteFile(path, forge(t, tc.m, tc.members, nil), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = extractTo(t, data)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

// Overlayfs's whiteouts (character devices 0/0) and opaque directories
// are allowed only in the files of a node whose root is an overlay, in
// format version 3; everywhere else they are refused for that reason, and
// a whiteout where allowed is extracted as one.
func TestOverlayMembers(t *testing.T) {
	const f = "nodes/0/files"
	dir := raw{tar.Header{Name: f, Typeflag: tar.TypeDir, Mode: 0o755}, ""}
	whiteout := raw{tar.Header{Name: f + "/gone", Typeflag: tar.TypeChar, Mode: 0o600}, ""}
	opaque := raw{tar.Header{Name: f + "/o", Typeflag: tar.TypeDir, Mode: 0o755, PAXRecords: map[string]string{xattrPrefix + opaqueXattr: "y"}}, ""}
	imageNode := func(v int) *Manifest {
		m := oneNode()
		m.Version = v
		if v >= 3 {
			m.Nodes[0].Spec.Image = "sha256:" + strings.Repeat("ab", 32)
		} else {
			m.Nodes[0].Spec.Rootfs = "/base" // version 2 has no images
		}
		return m
	}
	for name, tc := range map[string]struct {
		m       *Manifest
		members []raw
		want    string // "" for accepted
	}{
		"whiteout in an image node":         {imageNode(3), []raw{dir, whiteout}, ""},
		"opaque directory in an image node": {imageNode(3), []raw{dir, opaque}, ""},
		"whiteout in a host node":           {oneNode(), []raw{dir, whiteout}, `member "nodes/0/files/gone": a whiteout is allowed only in a node that runs on an image or a --rootfs base`},
		"opaque directory in a host node":   {oneNode(), []raw{dir, opaque}, `member "nodes/0/files/o": an opaque directory is allowed only in a node that runs on an image or a --rootfs base`},
		"whiteout in format version 2":      {imageNode(2), []raw{dir, whiteout}, `member "nodes/0/files/gone": a whiteout is not allowed in format version 2`},
		"whiteout among CRIU images":        {imageNode(3), []raw{{tar.Header{Name: "nodes/0/criu/x", Typeflag: tar.TypeChar, Mode: 0o600}, ""}}, `member "nodes/0/criu/x": a whiteout is allowed only among a node's files`},
		"device other than a whiteout":      {imageNode(3), []raw{dir, {tar.Header{Name: f + "/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}, ""}}, `member "nodes/0/files/null": type '3' is not allowed`},
		"opaque attribute on a file":        {imageNode(3), []raw{dir, {tar.Header{Name: f + "/x", Typeflag: tar.TypeReg, Mode: 0o644, PAXRecords: map[string]string{xattrPrefix + opaqueXattr: "y"}}, ""}}, `extended attribute "trusted.overlay.opaque" is not allowed`},
	} {
		t.Run(name, func(t *testing.T) {
			data := forge(t, tc.m, tc.members, nil)
			base := t.TempDir()
			d := dirs{files: []string{filepath.Join(base, "files")}, images: []string{filepath.Join(base, "images")}}
			os.MkdirAll(d.files[0], 0o755)
			os.MkdirAll(d.images[0], 0o755)
			r, err := NewReader(bytes.NewReader(data))
			if err == nil {
				err = Extract(r, d, nil)
				r.Close()
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want %q", err, tc.want)
			case tc.want == "" && name == "whiteout in an image node":
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(d.files[0], "gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
					t.Fatalf("extracted whiteout: %v, mode %o, rdev %d", err, st.Mode, st.Rdev)
				}
			}
		})
	}
}

// carrySink records the carried members a Destination is handed.
type carrySink struct {
	dirs
	got []string
}

func (c *carrySink) ImageConfig(id string, body io.Reader) error {
	b, _ := io.ReadAll(body)
	c.got = append(c.got, "config "+id+" "+string(b))
	return nil
}

func (c *carrySink) ImageLayer(digest string, body io.Reader) error {
	b, _ := io.ReadAll(body)
	c.got = append(c.got, "layer "+digest+" "+string(b))
	return nil
}

// The images an archive carries are members under images/ that its
// manifest lists, with their sizes; a reader hands them to a
// CarriedSink and refuses any other member there, one of another size
// or type or with crtree's records, one missing, and manifests that
// carry what no node runs on or of a version before 3.
func TestCarriedMembers(t *testing.T) {
	id := "sha256:" + strings.Repeat("ab", 32)
	l1, l2 := "sha256:"+strings.Repeat("01", 32), "sha256:"+strings.Repeat("02", 32)
	carrying := func(mod func(*Manifest)) *Manifest {
		m := oneNode()
		m.Version = 3
		m.Nodes[0].Spec.Image = id
		m.Images = []Image{{ID: id, Name: "test/x:1", ConfigSize: 2, Layers: []Layer{{l1, 3}, {l2, 4}}}}
		if mod != nil {
			mod(m)
		}
		return m
	}
	file := func(name, body string) raw {
		return raw{tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600}, body}
	}
	dir := raw{tar.Header{Name: "nodes/0/files", Typeflag: tar.TypeDir, Mode: 0o755}, ""}
	good := []raw{dir, file(ConfigMember(id), "{}"), file(LayerMember(l1), "one"), file(LayerMember(l2), "twoo")}
	for name, tc := range map[string]struct {
		m       *Manifest
		members []raw
		want    string // "" for accepted
	}{
		"carried":                {carrying(nil), good, ""},
		"member not listed":      {carrying(nil), append(good[:4:4], file("images/layers/"+strings.Repeat("03", 32), "x")), `the manifest carries no such image config or layer`},
		"other section":          {carrying(nil), append(good[:4:4], file("images/x", "x")), `the manifest carries no such image config or layer`},
		"wrong size":             {carrying(nil), []raw{dir, file(ConfigMember(id), "{}"), file(LayerMember(l1), "one!"), file(LayerMember(l2), "twoo")}, `holds 4 bytes, the manifest says 3`},
		"layer missing":          {carrying(nil), good[:3], `the manifest carries images/layers/` + strings.Repeat("02", 32) + `, which the archive lacks`},
		"layer twice":            {carrying(nil), append(good[:4:4], file(LayerMember(l1), "one")), `appears twice`},
		"a symlink":              {carrying(nil), []raw{dir, file(ConfigMember(id), "{}"), {tar.Header{Name: LayerMember(l1), Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}, ""}, file(LayerMember(l2), "twoo")}, `must be a file`},
		"sparse layer":           {carrying(nil), []raw{dir, file(ConfigMember(id), "{}"), {tar.Header{Name: LayerMember(l1), Typeflag: tar.TypeReg, Mode: 0o600, PAXRecords: map[string]string{sparseMapKey: "0,3", sparseSizeKey: "3"}}, "one"}, file(LayerMember(l2), "twoo")}, `is not allowed on an image config or layer`},
		"image no node runs on":  {carrying(func(m *Manifest) { m.Nodes[0].Spec.Image = "" }), good, `carries image ` + id + `, which no node runs on`},
		"image ID malformed":     {carrying(func(m *Manifest) { m.Images[0].ID = "sha256:../../x" }), good, `is not an image ID`},
		"layer size disagrees":   {carrying(func(m *Manifest) { m.Images[0].Layers = append(m.Images[0].Layers, Layer{l1, 5}) }), good, `gives layer ` + l1 + ` two sizes`},
		"in format version 2":    {carrying(func(m *Manifest) { m.Version = 2; m.Nodes[0].Spec.Image = ""; m.Nodes[0].Spec.Rootfs = "/b" }), good, `images are carried from format version 3 on, not 2`},
		"config larger than 4M":  {carrying(func(m *Manifest) { m.Images[0].ConfigSize = 5 << 20 }), good, `config size 5242880 out of range`},
		"image carried twice":    {carrying(func(m *Manifest) { m.Images = append(m.Images, m.Images[0]) }), good, `carries image ` + id + ` twice`},
		"node member after them": {carrying(nil), append(good[:4:4], file("nodes/0/files/late", "x")), `member "nodes/0/files/late" comes after the images the archive carries`},
	} {
		t.Run(name, func(t *testing.T) {
			data := forge(t, tc.m, tc.members, nil)
			base := t.TempDir()
			d := &carrySink{dirs: dirs{files: []string{filepath.Join(base, "files")}, images: []string{filepath.Join(base, "images")}}}
			os.MkdirAll(d.files[0], 0o755)
			os.MkdirAll(d.images[0], 0o755)
			r, err := NewReader(bytes.NewReader(data))
			if err == nil {
				err = Extract(r, d, nil)
				r.Close()
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want %q", err, tc.want)
			case tc.want == "":
				want := []string{"config " + id + " {}", "layer " + l1 + " one", "layer " + l2 + " twoo"}
				if strings.Join(d.got, "|") != strings.Join(want, "|") {
					t.Fatalf("sink got %q, want %q", d.got, want)
				}
			}
		})
	}
}

// The sizes a manifest gives carried layers do not raise the bound on
// the nodes' members: a manifest that says it carries a 1 TiB layer
// cannot let a node's file expand beyond what the node accounts for.
func TestCarriedDoNotRaiseBound(t *testing.T) {
	metadataAllowance = 1 << 20
	defer func() { metadataAllowance = 160 << 20 }()
	const f = "nodes/0/files"
	id, l := "sha256:"+strings.Repeat("ab", 32), "sha256:"+strings.Repeat("01", 32)
	m := oneNode()
	m.Version = 3
	m.Nodes[0].Spec.Image = id
	m.Images = []Image{{ID: id, ConfigSize: 2, Layers: []Layer{{l, 1 << 40}}}}
	data := forge(t, m, []raw{{tar.Header{Name: f, Typeflag: tar.TypeDir, Mode: 0o755}, ""},
		file(f+"/bomb", strings.Repeat("\x00", 8<<20))}, nil)
	d := dirs{files: []string{t.TempDir()}, images: []string{t.TempDir()}}
	r, err := NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	err = Extract(r, d, nil)
	r.Close()
	if err == nil || !strings.Contains(err.Error(), "manifest accounts for") {
		t.Fatalf("bomb beside a carried 1 TiB layer: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(d.files[0], "bomb")); err == nil && fi.Size() > 0 {
		t.Fatalf("content written: %d bytes", fi.Size())
	}
}
