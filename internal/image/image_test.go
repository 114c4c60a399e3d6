package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

// entry is one member of a test layer.
type entry struct {
	hdr  tar.Header
	body string
}

func reg(name, body string) entry {
	return entry{tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}, body}
}

func dir(name string) entry {
	return entry{tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}, ""}
}

// layerOf makes a layer of the entries.
func layerOf(t *testing.T, es ...entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testImage is two layers: a base with /etc/os-release, /bin/tool and a
// directory /d with two files; on top, a whiteout of /d/gone and an
// opaque /o.
func testImage(t *testing.T) v1.Image {
	t.Helper()
	base := layerOf(t, dir("etc/"), reg("etc/os-release", "ID=test\n"), dir("bin/"),
		entry{tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 2}, "#!"},
		dir("d/"), reg("d/gone", "x"), reg("d/kept", "y"), dir("o/"), reg("o/hidden", "z"),
		entry{tar.Header{Name: "bin/link", Typeflag: tar.TypeLink, Linkname: "bin/tool"}, ""},
		entry{tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}, ""})
	top := layerOf(t, reg("d/.wh.gone", ""), dir("o/"), reg("o/.wh..wh..opq", ""), reg("o/new", "n"))
	img, err := mutate.AppendLayers(empty.Image, base, top)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Env: []string{"PATH=/bin"}, Cmd: []string{"/bin/tool"}, WorkingDir: "/d"})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeLayout writes img as an OCI layout named ref.
func writeLayout(t *testing.T, img v1.Image, ref string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layout")
	l, err := layout.Write(p, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
		t.Fatal(err)
	}
	return p
}

// An image imports the same from an OCI layout, an OCI archive and a
// docker archive: one ID, its layers unpacked once, its whiteouts and
// opaque directories in overlayfs's form, device nodes left out.
func TestImportFormats(t *testing.T) {
	img := testImage(t)
	s := Open(t.TempDir())
	lay := writeLayout(t, img, "example/test:1")
	im, err := s.Import(lay, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if im.Name != "example/test:1" || len(im.Layers) != 2 || im.Config.WorkingDir != "/d" || im.Config.Cmd[0] != "/bin/tool" {
		t.Fatalf("imported %+v", im)
	}
	want, _ := img.ConfigName()
	if im.ID != want.String() {
		t.Fatalf("ID %s, want the config's digest %s", im.ID, want)
	}
	// The OCI archive: a tar of the layout.
	ociTar := filepath.Join(t.TempDir(), "img.tar")
	if err := tarDir(lay, ociTar); err != nil {
		t.Fatal(err)
	}
	dockerTar := filepath.Join(t.TempDir(), "docker.tar")
	tag, _ := name.NewTag("example/docker:2")
	if err := tarball.WriteToFile(dockerTar, tag, img); err != nil {
		t.Fatal(err)
	}
	for src, wantName := range map[string]string{ociTar: "example/test:1", dockerTar: "example/docker:2"} {
		got, err := s.Import(src, ImportOptions{})
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(src), err)
		}
		if got.ID != im.ID || got.Name != wantName || strings.Join(got.Layers, " ") != strings.Join(im.Layers, " ") {
			t.Errorf("%s: imported %+v, want ID %s and the same layers", filepath.Base(src), got, im.ID)
		}
	}
	ims, _ := s.List()
	if len(ims) != 2 {
		t.Errorf("%d images, want 2 (the OCI archive's replaced the layout's, of the same name)", len(ims))
	}
	base, top := s.LayerDir(im.Layers[0]), s.LayerDir(im.Layers[1])
	if data, _ := os.ReadFile(filepath.Join(base, "etc/os-release")); string(data) != "ID=test\n" {
		t.Errorf("os-release: %q", data)
	}
	if fi, err := os.Stat(filepath.Join(base, "bin/tool")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Errorf("bin/tool: %v %v, want setuid", fi, err)
	}
	var a, b unix.Stat_t
	unix.Stat(filepath.Join(base, "bin/tool"), &a)
	unix.Stat(filepath.Join(base, "bin/link"), &b)
	if a.Ino != b.Ino {
		t.Errorf("bin/link is not a hard link of bin/tool")
	}
	if _, err := os.Lstat(filepath.Join(base, "dev/null")); err == nil {
		t.Errorf("a device node was unpacked")
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(top, "d/gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("d/gone in the top layer: %v, mode %o rdev %d; want a 0/0 whiteout", err, st.Mode, st.Rdev)
	}
	if _, err := os.Lstat(filepath.Join(top, "d/.wh.gone")); err == nil {
		t.Errorf("the OCI whiteout file itself was unpacked")
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(top, "o"), opaqueXattr, buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("o is not opaque: %v", err)
	}
	if lower := s.Lower(im); lower != top+":"+base {
		t.Errorf("Lower = %q", lower)
	}
}

// A layer is refused when its content does not match its digest, or
// when an entry would leave the layer's directory; nothing is recorded.
func TestImportRefusals(t *testing.T) {
	outside := t.TempDir()
	for why, es := range map[string][]entry{
		"leaves the layer": {reg("../escape", "x")},
		"path escapes":     {entry{tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: outside}, ""}, reg("up/pwned", "x")},
		"bad whiteout":     {reg(".wh...", "")},
	} {
		img, err := mutate.AppendLayers(empty.Image, layerOf(t, es...))
		if err != nil {
			t.Fatal(err)
		}
		s := Open(t.TempDir())
		_, err = s.Import(writeLayout(t, img, "bad"), ImportOptions{})
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v", why, err)
		}
		if ims, _ := s.List(); len(ims) != 0 {
			t.Errorf("%s: recorded %v", why, ims)
		}
		if des, _ := os.ReadDir(outside); len(des) != 0 {
			t.Fatalf("%s: wrote outside: %v", why, des)
		}
	}
	// An image whose config gives a layer another digest than its
	// content has. (A layer the store has already is taken from the
	// store, verified when it came: the content that claims its digest
	// is not used at all.)
	img := testImage(t)
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.RootFS.DiffIDs[0] = cfg.RootFS.DiffIDs[1]
	bad, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := Open(t.TempDir())
	if _, err := s.Import(writeLayout(t, bad, "lying"), ImportOptions{}); err == nil || !strings.Contains(err.Error(), "layer 1") || !strings.Contains(err.Error(), "does not match its digest") {
		t.Errorf("a layer that is not what the config says: %v", err)
	}
	if ims, _ := s.List(); len(ims) != 0 {
		t.Errorf("recorded %v", ims)
	}
}

// Remove refuses the last name of an image in use, and removes only
// layers no other image uses; a newer import of a name leaves the older
// image untagged for the nodes on it, until Prune finds none.
func TestRemove(t *testing.T) {
	s := Open(t.TempDir())
	lay := writeLayout(t, testImage(t), "a")
	im, err := s.Import(lay, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(lay, ImportOptions{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	used := func(id string) []string { return []string{"/n1"} }
	none := func(string) []string { return nil }
	if err := s.Remove("a", used); err != nil {
		t.Fatalf("remove of one of two names of a used image: %v", err)
	}
	err = s.Remove("b", used)
	if err == nil || !strings.Contains(err.Error(), "image b is used by /n1") {
		t.Fatalf("remove of the last name of a used image: %v", err)
	}
	// Another image under the name b: the first stays, untagged.
	other, err := mutate.Config(testImage(t), v1.Config{Cmd: []string{"/other"}})
	if err != nil {
		t.Fatal(err)
	}
	im2, err := s.Import(writeLayout(t, other, "b"), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetID(im.ID); err != nil || got.Name != "" {
		t.Fatalf("the replaced image: %+v, %v; want it kept, untagged", got, err)
	}
	if removed, _ := s.Prune(used); len(removed) != 0 {
		t.Fatalf("Prune removed %v of an image in use", removed)
	}
	if removed, _ := s.Prune(func(id string) []string {
		if id == im2.ID {
			return []string{"/n2"}
		}
		return nil
	}); len(removed) != 1 || removed[0] != "image "+im.ID {
		t.Fatalf("Prune removed %v, want the untagged image only", removed)
	}
	if _, err := os.Stat(s.LayerDir(im.Layers[0])); err != nil {
		t.Fatalf("a layer b still uses was removed: %v", err)
	}
	if err := s.Remove(im2.ShortID(), none); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.LayerDir(im.Layers[0])); err == nil {
		t.Fatalf("a layer no image uses was kept")
	}
	if ims, _ := s.List(); len(ims) != 0 {
		t.Fatalf("left %v", ims)
	}
}

// An image without layers (no files at all) is refused at import: a node
// on it would have nothing but what crtree mounts.
func TestImportNoLayers(t *testing.T) {
	s := Open(t.TempDir())
	_, err := s.Import(writeLayout(t, empty.Image, "none"), ImportOptions{})
	if err == nil || !strings.Contains(err.Error(), "the image has no layers") {
		t.Fatalf("import of an image without layers: %v", err)
	}
}

// A root file system directory imports with its files' extended
// attributes (user.*, capabilities) and without other file systems
// mounted in it.
func TestImportRootfsDir(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.WriteFile(filepath.Join(root, "bin/tool"), []byte("x"), 0o755)
	if err := unix.Setxattr(filepath.Join(root, "bin/tool"), "user.mark", []byte("kept"), 0); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "proc"), 0o555)
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(filepath.Join(root, "proc"), unix.MNT_DETACH)
	s := Open(t.TempDir())
	im, err := s.Import(root, ImportOptions{Name: "dir"})
	if err != nil {
		t.Fatal(err)
	}
	l := s.LayerDir(im.Layers[0])
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(l, "bin/tool"), "user.mark", buf); err != nil || string(buf[:n]) != "kept" {
		t.Errorf("user.mark: %q, %v", buf[:max(n, 0)], err)
	}
	if des, _ := os.ReadDir(filepath.Join(l, "proc")); len(des) != 0 {
		t.Errorf("the mounted /proc was imported: %d entries", len(des))
	}
}

// A name that is no image reference (a newline would forge a row of
// image ls) is refused.
func TestImportBadName(t *testing.T) {
	s := Open(t.TempDir())
	lay := writeLayout(t, testImage(t), "ok")
	// Names that Get would read as an ID or a prefix of one, too.
	for _, n := range []string{"evil\nNAME  ID", "bad name", "UPPER", "95979cb3318f", "sha256:0000", "0123456789abcdef0123"} {
		if _, err := s.Import(lay, ImportOptions{Name: n}); err == nil || !strings.Contains(err.Error(), "is not an image name") {
			t.Errorf("name %q: %v", n, err)
		}
	}
}

// Get takes NAME for NAME:latest when no image is called NAME, and
// refuses an ID prefix two images share.
func TestGet(t *testing.T) {
	s := Open(t.TempDir())
	im, err := s.Import(writeLayout(t, testImage(t), "localhost/py:latest"), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"localhost/py", "localhost/py:latest", im.ID, im.ShortID()} {
		if got, err := s.Get(ref); err != nil || got.ID != im.ID {
			t.Errorf("Get(%q): %v, %v", ref, got, err)
		}
	}
	if _, err := s.Get("localhost/py:2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of another tag: %v", err)
	}
	// Two IDs with the same first 12 digits (written by hand: finding
	// such a pair takes 2^24 imports).
	ims, _ := s.List()
	twin := ims[0]
	twin.Name, twin.ID = "other:1", im.ID[:len(im.ID)-1]+"x"
	if err := s.save(append(ims, twin)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(im.ShortID()); err == nil || !strings.Contains(err.Error(), "names more than one image") {
		t.Errorf("Get of a shared prefix: %v", err)
	}
}

// An image of more layers than overlayfs can mount from the state root
// is refused at import, with what to do.
func TestImportTooManyLayers(t *testing.T) {
	var layers []v1.Layer
	for i := 0; i < 60; i++ {
		layers = append(layers, layerOf(t, reg(fmt.Sprintf("f%d", i), "x")))
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	s := Open(t.TempDir())
	if _, err := s.Import(writeLayout(t, img, "many:60"), ImportOptions{}); err == nil || !strings.Contains(err.Error(), "the image has 60 layers, more than overlayfs can mount from this state root") {
		t.Fatalf("import of 60 layers: %v", err)
	}
}

// receive carries the image c into store s through a Receiver, as a
// restore does, after change has had its way with the blobs; it returns
// what Commit returned.
func receive(t *testing.T, s *Store, c *Carried, name string, change func(config []byte, layers [][]byte)) ([]string, error) {
	t.Helper()
	config, err := os.ReadFile(c.Config.Path)
	if err != nil {
		t.Fatal(err)
	}
	var layers [][]byte
	want := Want{ID: c.Image.ID, Name: name}
	for _, l := range c.Layers {
		b, err := os.ReadFile(l.Path)
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, b)
		want.Layers = append(want.Layers, l.Digest)
	}
	if change != nil {
		change(config, layers)
	}
	r, err := s.Receive([]Want{want})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		r.Close()
		if des, _ := os.ReadDir(filepath.Join(s.dir, "tmp")); len(des) != 0 {
			t.Errorf("the receiver left %d entries in the store's tmp", len(des))
		}
	}()
	if err := r.Config(c.Image.ID, bytes.NewReader(config)); err != nil {
		return nil, err
	}
	for i, l := range c.Layers {
		if err := r.Layer(l.Digest, bytes.NewReader(layers[i])); err != nil {
			return nil, err
		}
	}
	added, err := r.Commit()
	for _, id := range added {
		if im, _ := s.GetID(id); im == nil || im.Name != "" {
			t.Fatalf("Commit recorded %+v: named before Name", im)
		}
		if _, err := s.Name(id, name); err != nil {
			t.Fatal(err)
		}
	}
	return added, err
}

// An image carried from one store to another arrives the same (ID,
// layers, config, files), keeps its name unless the store gives it to
// another image, and is refused for a config that is not its ID's or a
// layer that is not its digest's, leaving nothing.
func TestReceive(t *testing.T) {
	src := Open(t.TempDir())
	im, err := src.Import(writeLayout(t, testImage(t), "test/img:1"), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := src.Carry(im.ID)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		change func(config []byte, layers [][]byte)
		want   string
	}{
		"config not the ID's":    {func(c []byte, _ [][]byte) { c[len(c)-2] ^= 1 }, "config does not match the image's ID"},
		"layer not its digest's": {func(_ []byte, ls [][]byte) { ls[0][bytes.Index(ls[0], []byte("ID=test"))] ^= 1 }, "content does not match its digest"},
	} {
		dst := Open(t.TempDir())
		if _, err := receive(t, dst, c, "test/img:1", tc.change); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
		if ims, _ := dst.List(); len(ims) != 0 {
			t.Errorf("%s: the store has %v", name, ims)
		}
	}

	dst := Open(t.TempDir())
	added, err := receive(t, dst, c, "test/img:1", nil)
	if err != nil || len(added) != 1 || added[0] != im.ID {
		t.Fatalf("receive: %v, %v", added, err)
	}
	got, err := dst.Get("test/img:1")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != im.ID || strings.Join(got.Layers, ",") != strings.Join(im.Layers, ",") || got.Size != im.Size || strings.Join(got.Config.Cmd, " ") != strings.Join(im.Config.Cmd, " ") {
		t.Fatalf("received %+v, imported %+v", got, im)
	}
	if b, err := os.ReadFile(filepath.Join(dst.LayerDir(im.Layers[0]), "etc/os-release")); err != nil || string(b) != "ID=test\n" {
		t.Fatalf("received layer: %q, %v", b, err)
	}
	// Carried again: it has it, and takes nothing.
	if added, err := receive(t, dst, c, "test/img:1", nil); err != nil || len(added) != 0 {
		t.Fatalf("second receive: %v, %v", added, err)
	}

	// A store whose test/img:1 is another image keeps it so.
	other := Open(t.TempDir())
	img2, _ := mutate.Config(testImage(t), v1.Config{Cmd: []string{"other"}})
	mine, err := other.Import(writeLayout(t, img2, "test/img:1"), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := receive(t, other, c, "test/img:1", nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := other.Get("test/img:1"); got.ID != mine.ID {
		t.Fatalf("the received image took the name test/img:1")
	}
	if got, err := other.GetID(im.ID); err != nil || got.Name != "" {
		t.Fatalf("the received image: %+v, %v", got, err)
	}
	// Nor does an archive's image take a name Get reads as an ID.
	for _, name := range []string{mine.ID, mine.ShortID(), "0123456789abcdef"} {
		third := Open(t.TempDir())
		third.Import(writeLayout(t, img2, "test/other:1"), ImportOptions{})
		if _, err := receive(t, third, c, name, nil); err != nil {
			t.Fatal(err)
		}
		if got, _ := third.GetID(im.ID); got.Name != "" {
			t.Errorf("the received image took the name %q", name)
		}
	}
}

// A sparse file in a layer, which Go's tar reader would hand over as its
// whole size of zeros, is refused in both of GNU tar's forms: a 10 KiB
// layer of a TiB file must not fill the disk.
func TestUnpackRefusesSparse(t *testing.T) {
	work := t.TempDir()
	big := filepath.Join(work, "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20) // a TiB just as well
	f.Close()
	for format, why := range map[string]string{"posix": "sparse files are not supported in a layer", "gnu": "type 'S' is not allowed in a layer"} {
		layer := filepath.Join(work, format+".tar")
		if out, err := exec.Command("tar", "--sparse", "--format="+format, "-C", work, "-cf", layer, "big").CombinedOutput(); err != nil {
			t.Fatalf("GNU tar: %v: %s", err, out)
		}
		in, err := os.Open(layer)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		_, err = unpack(in, dir)
		in.Close()
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%s sparse layer: %v, want %q", format, err, why)
		}
		if fi, err := os.Stat(filepath.Join(dir, "big")); err == nil {
			t.Errorf("%s sparse layer: unpacked a file of %d bytes", format, fi.Size())
		}
	}
}

// CheckRoom refuses layers the store has no room for (a hostile archive
// can say a layer is huge and carry it as a few compressed bytes), and
// counts only those it lacks.
func TestCheckRoom(t *testing.T) {
	s := Open(t.TempDir())
	im, err := s.Import(writeLayout(t, testImage(t), "test/img:1"), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	huge := "sha256:" + strings.Repeat("7", 64)
	if err := s.CheckRoom(map[string]int64{huge: 1 << 50}); err == nil || !strings.Contains(err.Error(), "the image layers to import take about 2147483648 MiB, and the state root has") {
		t.Errorf("a 1 PiB layer: %v", err)
	}
	if err := s.CheckRoom(map[string]int64{im.Layers[0]: 1 << 50, huge: 4096}); err != nil {
		t.Errorf("a layer the store has counted: %v", err)
	}
}
