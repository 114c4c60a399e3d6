package image

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	ggname "github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

// ImportOptions say how Import names what it imports.
type ImportOptions struct {
	// Name, if set, is the image's name, whatever the source says.
	Name string
}

// Import reads the image at src (see the package doc for what it may be)
// into the store and returns it. Layers the store has already are not
// unpacked again. An image of the same name is replaced (nodes running on
// it keep its layers).
func (s *Store) Import(src string, o ImportOptions) (*Image, error) {
	// One import at a time, and no Remove meanwhile: a layer found here
	// stays until the image that lists it is recorded.
	unlock, err := s.lock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	tmp, err := s.tempDir("import")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	img, name, err := open(src, tmp)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	if o.Name != "" {
		name = o.Name
	}
	if _, err := ggname.ParseReference(name); err != nil || looksLikeID(name) {
		return nil, fmt.Errorf("import %s: %q is not an image name (such as localhost/py:1; not one that reads as an image ID): give one with --name", src, name)
	}
	im, err := s.importImage(img, name, tmp)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	if err := s.saveConfig(im.ID, raw); err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	if err := s.add(*im); err != nil {
		return nil, err
	}
	return im, nil
}

// tempDir makes a directory for one import or receive, named for this
// process so that Prune leaves it alone while the process lives.
func (s *Store) tempDir(kind string) (string, error) {
	base := filepath.Join(s.dir, "tmp")
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(base, fmt.Sprintf("%s-%d-", kind, os.Getpid()))
}

// open finds the image at src and the name it gives it; tmp is for an
// OCI archive's layout.
func open(src, tmp string) (v1.Image, string, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, "", err
	}
	base := filepath.Base(src)
	for _, ext := range []string{".gz", ".tgz", ".zst", ".xz", ".tar"} {
		base = strings.TrimSuffix(base, ext)
	}
	if fi.IsDir() {
		if _, err := os.Stat(filepath.Join(src, "oci-layout")); err == nil {
			return fromLayout(src, base)
		}
		img, err := fromRootfsDir(src, tmp)
		return img, base, err
	}
	switch tarHas(src, "oci-layout", "manifest.json") {
	case "oci-layout":
		dir := filepath.Join(tmp, "layout")
		if err := untarLayout(src, dir); err != nil {
			return nil, "", err
		}
		return fromLayout(dir, base)
	case "manifest.json":
		return fromDockerArchive(src, base)
	}
	layer, err := tarball.LayerFromFile(src)
	if err != nil {
		return nil, "", err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	return img, base, err
}

// tarHas returns the first of names that the tar file at src holds at its
// top level ("" if none, or if src is no tar file).
func tarHas(src string, names ...string) string {
	f, err := os.Open(src)
	if err != nil {
		return ""
	}
	defer f.Close()
	tr := tar.NewReader(f)
	found := map[string]bool{}
	for i := 0; i < 100000; i++ {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		found[strings.TrimPrefix(hdr.Name, "./")] = true
	}
	for _, n := range names {
		if found[n] {
			return n
		}
	}
	return ""
}

// fromLayout returns the image of an OCI layout: its only image, or the
// one for this machine's architecture, named by its ref.name annotation.
func fromLayout(dir, fallback string) (v1.Image, string, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, "", err
	}
	for depth := 0; depth < 4; depth++ {
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, "", err
		}
		var pick *v1.Descriptor
		for i, d := range im.Manifests {
			if d.Platform == nil || d.Platform.Architecture == runtime.GOARCH || len(im.Manifests) == 1 {
				pick = &im.Manifests[i]
				break
			}
		}
		if pick == nil {
			return nil, "", fmt.Errorf("the layout has no image for %s", runtime.GOARCH)
		}
		name := fallback
		for _, k := range []string{"io.containerd.image.name", "org.opencontainers.image.ref.name"} {
			if v := pick.Annotations[k]; v != "" {
				name = v
				break
			}
		}
		if pick.MediaType.IsIndex() {
			if idx, err = idx.ImageIndex(pick.Digest); err != nil {
				return nil, "", err
			}
			continue
		}
		img, err := idx.Image(pick.Digest)
		return img, name, err
	}
	return nil, "", errors.New("image indexes nested too deep")
}

// fromDockerArchive returns the image of a docker archive (docker save),
// named by its first tag.
func fromDockerArchive(src, fallback string) (v1.Image, string, error) {
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(src) })
	if err != nil {
		return nil, "", err
	}
	if len(m) != 1 {
		return nil, "", fmt.Errorf("the archive holds %d images; import one at a time", len(m))
	}
	name := fallback
	if len(m[0].RepoTags) > 0 {
		name = m[0].RepoTags[0]
	}
	img, err := tarball.ImageFromPath(src, nil)
	return img, name, err
}

// untarLayout extracts an OCI archive (a tar of an OCI layout: regular
// files and directories only) into dir.
func untarLayout(src, dir string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = root.MkdirAll(name, 0o700)
		case tar.TypeReg, tar.TypeRegA:
			err = copyInto(root, name, tr)
		default:
			err = fmt.Errorf("OCI archive entry %q: type %q is not allowed", hdr.Name, hdr.Typeflag)
		}
		if err != nil {
			return err
		}
	}
}

func copyInto(root *os.Root, name string, r io.Reader) error {
	if err := root.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return err
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// importImage unpacks img's layers that the store lacks and returns the
// record of it.
func (s *Store) importImage(img v1.Image, name, tmp string) (*Image, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	id, err := img.ConfigName()
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	if len(layers) == 0 {
		return nil, errors.New("the image has no layers, so no files")
	}
	if len(layers) != len(cfg.RootFS.DiffIDs) {
		return nil, fmt.Errorf("the image has %d layers and its config lists %d", len(layers), len(cfg.RootFS.DiffIDs))
	}
	if err := s.checkLayerCount(len(layers)); err != nil {
		return nil, err
	}
	im := &Image{Name: name, ID: id.String(), Imported: time.Now().UTC(), Config: Config{
		Env: cfg.Config.Env, WorkingDir: cfg.Config.WorkingDir,
		Entrypoint: cfg.Config.Entrypoint, Cmd: cfg.Config.Cmd, User: cfg.Config.User,
	}}
	for i, l := range layers {
		want := cfg.RootFS.DiffIDs[i]
		size, err := s.importLayer(l, want, tmp)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, want, err)
		}
		im.Layers = append(im.Layers, want.String())
		im.Size += size
	}
	return im, nil
}

// importLayer unpacks one layer, unless the store has it, checking that
// its uncompressed content has the digest want, and returns its size.
func (s *Store) importLayer(l v1.Layer, want v1.Hash, tmp string) (int64, error) {
	if err := checkDigest(want.String()); err != nil {
		return 0, err
	}
	if size, ok := s.hasLayer(want.String()); ok {
		return size, nil
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	work, err := os.MkdirTemp(tmp, "layer-")
	if err != nil {
		return 0, err
	}
	size, err := unpackLayer(rc, want.String(), work)
	if err != nil {
		return 0, err
	}
	return size, s.placeLayer(work, want.String())
}

// hasLayer reports whether the store has the layer with the given digest,
// and its size.
func (s *Store) hasLayer(digest string) (int64, bool) {
	fi, err := os.Stat(s.layerBlob(digest))
	if err != nil {
		return 0, false
	}
	return fi.Size(), true
}

// checkDigest refuses a digest that is not "sha256:" and 64 hex digits
// (what a layer's directory is named by).
func checkDigest(d string) error {
	hex, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return fmt.Errorf("unsupported digest %s", d)
	}
	return nil
}

// unpackLayer unpacks the uncompressed layer read from r into work (an
// empty directory): work/root, the overlay lower dir, and work/layer.tar,
// the layer as read. It checks that the content has the digest want and
// returns its size.
func unpackLayer(r io.Reader, want, work string) (int64, error) {
	if err := os.Mkdir(filepath.Join(work, "root"), 0o755); err != nil {
		return 0, err
	}
	blob, err := os.Create(filepath.Join(work, "layer.tar"))
	if err != nil {
		return 0, err
	}
	defer blob.Close()
	sum := sha256.New()
	counted := &countingReader{r: io.TeeReader(r, io.MultiWriter(blob, sum))}
	if _, err := unpack(counted, filepath.Join(work, "root")); err != nil {
		return 0, err
	}
	// What tar does not read (padding, the end) counts too.
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return 0, err
	}
	if got := "sha256:" + hex.EncodeToString(sum.Sum(nil)); got != want {
		return 0, fmt.Errorf("content does not match its digest (got %s)", got)
	}
	return counted.n, blob.Sync()
}

// placeLayer moves a layer unpacked into work (unpackLayer) to its place
// in the store. The caller holds the lock.
func (s *Store) placeLayer(work, digest string) error {
	final := filepath.Dir(s.LayerDir(digest))
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return err
	}
	// Another import may have unpacked the same layer meanwhile.
	if err := os.Rename(work, final); err != nil && !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOTEMPTY) {
		return err
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
