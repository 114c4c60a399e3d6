package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotFound is returned for an image the store does not hold.
var ErrNotFound = errors.New("no such image")

// ErrInUse is what Remove's error for an image a node runs on is (errors.Is).
var ErrInUse = errors.New("image in use")

// inUseError is Remove's refusal of an image a node runs on, naming them.
type inUseError string

func (e inUseError) Error() string        { return string(e) }
func (e inUseError) Is(target error) bool { return target == ErrInUse }

// Image is an imported image.
type Image struct {
	// Name is what users call it (localhost/py:latest, or the file's
	// name when the image names none).
	Name string `json:"name"`
	// ID is the digest of the image's config ("sha256:..."), the same
	// whichever format it came in: nodes refer to their image by it.
	ID string `json:"id"`
	// Layers are the digests of the uncompressed layers, bottom first.
	Layers []string `json:"layers"`
	Config Config   `json:"config"`
	// Size is the layers' uncompressed size, in bytes.
	Size     int64     `json:"size"`
	Imported time.Time `json:"imported"`
}

// Config is what crtree honours of an image's config.
type Config struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"workingDir,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	User       string   `json:"user,omitempty"`
}

// ShortID is the first 12 hex digits of the ID, as tables show it.
func (im *Image) ShortID() string {
	h := strings.TrimPrefix(im.ID, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

// Store is the image store of a state root.
type Store struct {
	dir string
}

// Open returns the image store of the state root at root, which it does
// not create until something is imported.
func Open(root string) *Store { return &Store{dir: filepath.Join(root, "images")} }

func (s *Store) indexFile() string { return filepath.Join(s.dir, "images.json") }

// LayerDir is where the layer with the given digest is unpacked: an
// overlayfs lower directory.
func (s *Store) LayerDir(digest string) string {
	return filepath.Join(s.dir, "layers", strings.TrimPrefix(digest, "sha256:"), "root")
}

// layerBlob is the layer as imported, uncompressed.
func (s *Store) layerBlob(digest string) string {
	return filepath.Join(s.dir, "layers", strings.TrimPrefix(digest, "sha256:"), "layer.tar")
}

// configFile is where the image config whose digest is id is kept, as
// imported: its SHA-256 is the image's ID, so an archive that carries it
// (dump --with-image) carries what proves the ID.
func (s *Store) configFile(id string) string {
	return filepath.Join(s.dir, "configs", strings.TrimPrefix(id, "sha256:")+".json")
}

// saveConfig keeps an image's config. The caller holds the lock.
func (s *Store) saveConfig(id string, raw []byte) error {
	if err := os.MkdirAll(filepath.Dir(s.configFile(id)), 0o700); err != nil {
		return err
	}
	tmp := s.configFile(id) + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.configFile(id))
}

// Lower returns the overlayfs lowerdir option of im: its layers, top
// first.
func (s *Store) Lower(im *Image) string {
	dirs := make([]string, len(im.Layers))
	for i, l := range im.Layers {
		dirs[len(im.Layers)-1-i] = s.LayerDir(l)
	}
	return strings.Join(dirs, ":")
}

// lock takes the store's lock (shared or exclusive) for a change of
// images.json or the layers.
func (s *Store) lock(how int) (func(), error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// Shared holds off Remove (and the removal of layers) until unlock: a
// command that makes nodes on images holds it from finding their images
// until the nodes are in the tree, where Remove's inUse sees them.
func (s *Store) Shared() (unlock func(), err error) { return s.lock(unix.LOCK_SH) }

// List returns the imported images.
func (s *Store) List() ([]Image, error) {
	data, err := os.ReadFile(s.indexFile())
	if errors.Is(err, os.ErrNotExist) {
		return []Image{}, nil
	}
	if err != nil {
		return nil, err
	}
	var ims []Image
	if err := json.Unmarshal(data, &ims); err != nil {
		return nil, fmt.Errorf("%s: %w", s.indexFile(), err)
	}
	return ims, nil
}

// Get returns the image called ref: by name (NAME meaning NAME:latest
// if no image is called NAME), by ID, or by a prefix of at least 12 hex
// digits of its ID that no other image's ID has.
func (s *Store) Get(ref string) (*Image, error) {
	ims, err := s.List()
	if err != nil {
		return nil, err
	}
	for _, r := range []string{ref, ref + ":latest"} {
		if r != ref && (strings.Contains(path.Base(ref), ":") || strings.Contains(ref, "@")) {
			break
		}
		for i := range ims {
			if ims[i].Name != "" && ims[i].Name == r {
				return &ims[i], nil
			}
		}
	}
	var found *Image
	for i := range ims {
		if ims[i].matches(ref) {
			if found != nil && found.ID != ims[i].ID {
				return nil, fmt.Errorf("image %s: the prefix names more than one image; give more of the ID", ref)
			}
			found = &ims[i]
		}
	}
	if found == nil {
		return nil, notFound(ref)
	}
	return found, nil
}

// maxLowerLen is how long the overlayfs lowerdir option of an image may
// be: the mount's options (upper and work directories too) must fit in a
// page.
const maxLowerLen = 3500

// checkLayerCount refuses an image of so many layers that overlayfs could
// not mount it here.
func (s *Store) checkLayerCount(n int) error {
	if per := len(s.LayerDir("sha256:"+strings.Repeat("0", 64))) + 1; n*per > maxLowerLen {
		return fmt.Errorf("the image has %d layers, more than overlayfs can mount from this state root (about %d): flatten it (podman build --squash, say)", n, maxLowerLen/per)
	}
	return nil
}

// notFound is the error for an image ref names none.
func notFound(ref string) error {
	return fmt.Errorf("image %s: %w (crtree image ls lists them; crtree image import FILE adds one)", ref, ErrNotFound)
}

// GetID returns the image whose ID is exactly id (what a node and an
// archive record).
func (s *Store) GetID(id string) (*Image, error) {
	ims, err := s.List()
	if err != nil {
		return nil, err
	}
	if im := find(ims, id); im != nil {
		return im, nil
	}
	return nil, fmt.Errorf("image %s: %w", id, ErrNotFound)
}

// Missing returns those of ids (image IDs) the store lacks, reading the
// store once.
func (s *Store) Missing(ids []string) ([]string, error) {
	ims, err := s.List()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		if find(ims, id) == nil {
			out = append(out, id)
		}
	}
	return out, nil
}

// find returns the image of ims whose ID is exactly id, nil if none.
func find(ims []Image, id string) *Image {
	for i := range ims {
		if ims[i].ID == id {
			return &ims[i]
		}
	}
	return nil
}

// matches reports whether ref names im.
func (im *Image) matches(ref string) bool {
	if ref != "" && ref == im.Name || ref == im.ID {
		return true
	}
	hex := strings.TrimPrefix(ref, "sha256:")
	return len(hex) >= 12 && strings.HasPrefix(strings.TrimPrefix(im.ID, "sha256:"), hex)
}

// save writes the images' list, through a temporary name. The caller
// holds the lock.
func (s *Store) save(ims []Image) error {
	data, err := json.MarshalIndent(ims, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.indexFile() + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.indexFile())
}

// add records im, which takes its name from an image of the same name:
// that one stays, untagged (named only by its ID), for the nodes that may
// run on it, until Remove or Prune. The caller holds the lock.
func (s *Store) add(im Image) error {
	ims, err := s.List()
	if err != nil {
		return err
	}
	out := []Image{}
	for _, o := range ims {
		if o.ID == im.ID && (o.Name == im.Name || o.Name == "") {
			continue // the same image, (re)named
		}
		if o.Name == im.Name {
			o.Name = ""
		}
		out = append(out, o)
	}
	return s.save(append(out, im))
}

// Remove removes the image called ref, and the layers no other image
// uses. inUse says which nodes run on an image ID; an image in use is
// refused, naming them.
func (s *Store) Remove(ref string, inUse func(id string) []string) error {
	unlock, err := s.lock(unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	ims, err := s.List()
	if err != nil {
		return err
	}
	var im *Image
	for i := range ims {
		if ims[i].matches(ref) {
			im = &ims[i]
			break
		}
	}
	if im == nil {
		return notFound(ref)
	}
	others := 0 // other names of the same image
	for _, o := range ims {
		if o.ID == im.ID && o.Name != im.Name {
			others++
		}
	}
	if users := inUse(im.ID); len(users) > 0 && others == 0 {
		return inUseError(fmt.Sprintf("image %s is used by %s; remove those nodes first", im.Ref(), strings.Join(users, ", ")))
	}
	return s.removeLocked(func(o *Image) bool { return o.ID == im.ID && o.Name == im.Name })
}

// Prune removes the untagged images (replaced by a newer import of their
// name, or received by a restore that died) that no node runs on, and
// layers no image lists, and the leftovers of imports and receives whose
// process is gone. It returns what it removed. It does nothing while an
// import runs.
func (s *Store) Prune(inUse func(id string) []string) ([]string, error) {
	if _, err := os.Stat(s.dir); err != nil {
		return nil, nil
	}
	unlock, err := s.lock(unix.LOCK_EX | unix.LOCK_NB)
	if err != nil {
		return nil, nil // an import holds the store
	}
	defer unlock()
	var removed []string
	err = s.removeLocked(func(o *Image) bool {
		if o.Name == "" && len(inUse(o.ID)) == 0 {
			removed = append(removed, "image "+o.ID)
			return true
		}
		return false
	})
	if err != nil {
		return removed, err
	}
	ims, _ := s.List()
	listed := map[string]bool{}
	for _, im := range ims {
		for _, l := range im.Layers {
			listed[strings.TrimPrefix(l, "sha256:")] = true
		}
	}
	des, _ := os.ReadDir(filepath.Join(s.dir, "layers"))
	for _, d := range des {
		if !listed[d.Name()] && os.RemoveAll(filepath.Join(s.dir, "layers", d.Name())) == nil {
			removed = append(removed, "layer sha256:"+d.Name())
		}
	}
	des, _ = os.ReadDir(filepath.Join(s.dir, "tmp"))
	for _, d := range des {
		if !ownerAlive(d.Name()) && os.RemoveAll(filepath.Join(s.dir, "tmp", d.Name())) == nil {
			removed = append(removed, "an unfinished import")
		}
	}
	return removed, nil
}

// ownerAlive reports whether the process that made the temporary
// directory called name (tempDir: KIND-PID-RANDOM) still runs: a restore
// receives the images an archive carries there without holding the lock.
func ownerAlive(name string) bool {
	parts := strings.Split(name, "-")
	if len(parts) != 3 {
		return false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil || pid <= 0 {
		return false
	}
	return unix.Kill(pid, 0) == nil
}

// removeLocked removes the images drop says to, and the layers no image
// left lists. The caller holds the lock.
func (s *Store) removeLocked(drop func(*Image) bool) error {
	ims, err := s.List()
	if err != nil {
		return err
	}
	out := []Image{}
	var gone []string
	kept := map[string]bool{}
	for i := range ims {
		if drop(&ims[i]) {
			gone = append(gone, ims[i].Layers...)
			continue
		}
		out = append(out, ims[i])
		for _, l := range ims[i].Layers {
			kept[l] = true
		}
	}
	if err := s.save(out); err != nil {
		return err
	}
	for _, l := range gone {
		if !kept[l] {
			os.RemoveAll(filepath.Dir(s.LayerDir(l)))
		}
	}
	s.removeConfigs(out)
	return nil
}

// removeConfigs removes the configs of images not in ims. The caller
// holds the lock.
func (s *Store) removeConfigs(ims []Image) {
	des, _ := os.ReadDir(filepath.Join(s.dir, "configs"))
	for _, d := range des {
		if find(ims, "sha256:"+strings.TrimSuffix(d.Name(), ".json")) == nil {
			os.Remove(filepath.Join(s.dir, "configs", d.Name()))
		}
	}
}

// Ref is how messages name im: its name, or its ID if it has none.
func (im *Image) Ref() string {
	if im.Name == "" {
		return im.ID
	}
	return im.Name
}
