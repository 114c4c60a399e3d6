package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	ggname "github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// Blob is a file of the store that an archive carries: an image's config
// or one of its layers (uncompressed), named by its digest.
type Blob struct {
	Digest string
	Path   string
	Size   int64
}

// Carried is what an archive must hold for a restore to import the image
// (dump --with-image): its record, its config and its layers, bottom
// first.
type Carried struct {
	Image  Image
	Config Blob
	Layers []Blob
}

// Carry returns the files an archive needs to carry the image whose ID is
// id. An image imported before crtree kept configs has none to carry:
// importing it again gives it one.
func (s *Store) Carry(id string) (*Carried, error) {
	im, err := s.GetID(id)
	if err != nil {
		return nil, err
	}
	c := &Carried{Image: *im, Config: Blob{Digest: im.ID, Path: s.configFile(im.ID)}}
	fi, err := os.Stat(c.Config.Path)
	if err != nil {
		return nil, fmt.Errorf("image %s has no config in the store (imported by an earlier crtree): import it again to carry it", im.Ref())
	}
	c.Config.Size = fi.Size()
	for _, l := range im.Layers {
		size, ok := s.hasLayer(l)
		if !ok {
			return nil, fmt.Errorf("image %s: layer %s is missing from the store", im.Ref(), l)
		}
		c.Layers = append(c.Layers, Blob{Digest: l, Path: s.layerBlob(l), Size: size})
	}
	return c, nil
}

// CheckRoom refuses layers (their sizes by digest) that the store lacks
// and has no room for: each takes about twice its size (kept as received,
// and unpacked). A hostile archive could otherwise say a layer is large,
// carry it in a few compressed bytes, and fill the disk before its digest
// is found wrong.
func (s *Store) CheckRoom(layers map[string]int64) error {
	var need int64
	for d, size := range layers {
		if _, ok := s.hasLayer(d); !ok {
			need += 2 * size
		}
	}
	if need == 0 {
		return nil
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.dir, &st); err != nil {
		return err
	}
	if free := int64(st.Bavail) * st.Bsize; need > free {
		return fmt.Errorf("the image layers to import take about %d MiB, and the state root has %d MiB free", need>>20, free>>20)
	}
	return nil
}

// maxConfigSize bounds an image config a Receiver takes (as the archive
// format does).
const maxConfigSize = 4 << 20

// Receiver takes the images an archive carries into the store: the
// configs and layers of the images wanted, as the archive delivers them,
// each verified against its digest and unpacked into a directory of its
// own (Dir), and the images recorded only by Commit, once the whole
// archive has been verified. Close removes what Commit did not take.
type Receiver struct {
	s     *Store
	dir   string
	wants []Want
	// wanted are the configs and layers of the images wanted: nothing
	// else is taken.
	wanted  map[string]bool
	configs map[string][]byte // by image ID
	layers  map[string]int64  // received, by digest: their size
	// Took is how long receiving took: unpacking and checking layers.
	Took time.Duration
}

// Want is an image a Receiver is to take: its ID, the name the archive
// gives it, and the digests of its layers, bottom first.
type Want struct {
	ID     string
	Name   string
	Layers []string
}

// Receive starts receiving the images wants. Layers the store has
// already are not received again.
func (s *Store) Receive(wants []Want) (*Receiver, error) {
	dir, err := s.tempDir("receive")
	if err != nil {
		return nil, fmt.Errorf("receive images: %w", err)
	}
	r := &Receiver{s: s, dir: dir, wants: wants, wanted: map[string]bool{}, configs: map[string][]byte{}, layers: map[string]int64{}}
	for _, w := range wants {
		if err := s.checkLayerCount(len(w.Layers)); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("image %s: %w", w.ID, err)
		}
		r.wanted[w.ID] = true
		for _, l := range w.Layers {
			r.wanted[l] = true
		}
	}
	return r, nil
}

// Dir is where the receiver unpacks: a crash recovery may remove it.
func (r *Receiver) Dir() string { return r.dir }

// Config takes the config of the image whose ID is id, if it is wanted,
// checking that it has that digest.
func (r *Receiver) Config(id string, body io.Reader) error {
	if !r.wanted[id] {
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(body, maxConfigSize+1))
	if err != nil {
		return fmt.Errorf("image %s: config: %w", id, err)
	}
	if len(data) > maxConfigSize {
		return fmt.Errorf("image %s: config larger than %d bytes", id, maxConfigSize)
	}
	sum := sha256.Sum256(data)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != id {
		return fmt.Errorf("image %s: config does not match the image's ID (got %s)", id, got)
	}
	r.configs[id] = data
	return nil
}

// Layer takes the layer with the given digest (uncompressed), if an
// image wanted lists it, unless the store or this receiver has it: else
// it reads nothing.
func (r *Receiver) Layer(digest string, body io.Reader) error {
	if err := checkDigest(digest); err != nil {
		return err
	}
	if _, ok := r.layers[digest]; ok || !r.wanted[digest] {
		return nil
	}
	if _, ok := r.s.hasLayer(digest); ok {
		return nil
	}
	start := time.Now()
	defer func() { r.Took += time.Since(start) }()
	work := filepath.Join(r.dir, strings.TrimPrefix(digest, "sha256:"))
	if err := os.Mkdir(work, 0o700); err != nil {
		return fmt.Errorf("layer %s: %w", digest, err)
	}
	size, err := unpackLayer(body, digest, work)
	if err != nil {
		return fmt.Errorf("layer %s: %w", digest, err)
	}
	r.layers[digest] = size
	return nil
}

// Commit records the images wanted that the store lacks, from the
// configs and layers received, and returns their IDs. They have no name
// yet (Name gives them theirs once the nodes on them are in the tree):
// until then, gc removes them if the process dies.
func (r *Receiver) Commit() ([]string, error) {
	start := time.Now()
	defer func() { r.Took += time.Since(start) }()
	unlock, err := r.s.lock(unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("receive images: %w", err)
	}
	defer unlock()
	var added []string
	for _, w := range r.wants {
		ims, err := r.s.List()
		if err != nil {
			return added, fmt.Errorf("receive images: %w", err)
		}
		if find(ims, w.ID) != nil {
			continue
		}
		im, err := r.image(w)
		if err != nil {
			return added, err
		}
		if err := r.place(im); err != nil {
			return added, fmt.Errorf("receive image %s: %w", w.ID, err)
		}
		if err := r.s.add(*im); err != nil {
			return added, fmt.Errorf("receive image %s: %w", w.ID, err)
		}
		added = append(added, im.ID)
	}
	return added, nil
}

// image is the record of the image w, without a name, from its received
// config, which must list w's layers.
func (r *Receiver) image(w Want) (*Image, error) {
	raw, ok := r.configs[w.ID]
	if !ok {
		return nil, fmt.Errorf("image %s: the archive lacks its config", w.ID)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", w.ID, err)
	}
	var diffIDs []string
	for _, d := range cfg.RootFS.DiffIDs {
		diffIDs = append(diffIDs, d.String())
	}
	if !slices.Equal(diffIDs, w.Layers) {
		return nil, fmt.Errorf("image %s: its config lists other layers than the archive", w.ID)
	}

	im := &Image{ID: w.ID, Layers: w.Layers, Imported: time.Now().UTC(), Config: Config{
		Env: cfg.Config.Env, WorkingDir: cfg.Config.WorkingDir,
		Entrypoint: cfg.Config.Entrypoint, Cmd: cfg.Config.Cmd, User: cfg.Config.User,
	}}
	for _, l := range w.Layers {
		size, ok := r.layers[l]
		if !ok {
			if size, ok = r.s.hasLayer(l); !ok {
				return nil, fmt.Errorf("image %s: the archive lacks layer %s", w.ID, l)
			}
		}
		im.Size += size
	}
	return im, nil
}

// Name gives the image id, which has no name, the name given if that
// is free: an image name (not an ID or a prefix of one) that no image of
// the store is known by. It returns the name given, "" if none: an
// archive never changes what a name means here.
func (s *Store) Name(id, name string) (string, error) {
	unlock, err := s.lock(unix.LOCK_EX)
	if err != nil {
		return "", err
	}
	defer unlock()
	ims, err := s.List()
	if err != nil {
		return "", err
	}
	im := find(ims, id)
	if im == nil || im.Name != "" || !freeName(name, ims) {
		return "", nil
	}
	im.Name = name
	return name, s.save(ims)
}

// freeName reports whether name may name an image of the store ims: it
// is an image name, not something Get would take for an ID, and no image
// answers to it.
func freeName(name string, ims []Image) bool {
	if _, err := ggname.ParseReference(name); err != nil || looksLikeID(name) {
		return false
	}
	for i := range ims {
		if ims[i].matches(name) {
			return false
		}
	}
	return true
}

// looksLikeID reports whether ref would be read as an image ID or a
// prefix of one.
func looksLikeID(ref string) bool {
	hex := strings.TrimPrefix(ref, "sha256:")
	return hex != ref || len(hex) >= 12 && strings.Trim(hex, "0123456789abcdef") == ""
}

// place moves im's received layers and its config into the store. The
// caller holds the lock.
func (r *Receiver) place(im *Image) error {
	for _, l := range im.Layers {
		if _, ok := r.s.hasLayer(l); ok {
			continue
		}
		if err := r.s.placeLayer(filepath.Join(r.dir, strings.TrimPrefix(l, "sha256:")), l); err != nil {
			return err
		}
	}
	return r.s.saveConfig(im.ID, r.configs[im.ID])
}

// Close removes what was received and not committed.
func (r *Receiver) Close() error {
	err := os.RemoveAll(r.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
