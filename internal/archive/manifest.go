package archive

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
	"time"
)

// FormatVersion is the version of the archive format this package writes.
// It reads this version and version 1 (see version).
const FormatVersion = 4

// FormatName identifies a crtree archive in its manifest.
const FormatName = "crtree-archive"

// Member names with a fixed meaning.
const (
	ManifestName = "manifest.json"
	SumsName     = "checksums.json"
)

// MaxManifestSize bounds the manifest a reader accepts.
const MaxManifestSize = 16 << 20

// MaxSumsSize bounds the checksums.json a reader accepts, and so a
// writer writes: about 200 bytes a member, so some 600,000 files (fewer
// in very deep trees, whose entries repeat long paths).
const MaxSumsSize = 128 << 20

// Manifest describes an archive: where it came from and the subtree it
// holds. It does not list the members that follow it: checksums.json
// (Checksums) does.
type Manifest struct {
	Format        string    `json:"format"`
	Version       int       `json:"version"`
	CrtreeVersion string    `json:"crtreeVersion"`
	CriuVersion   string    `json:"criuVersion"`
	Kernel        string    `json:"kernel"`
	Arch          string    `json:"arch"`
	Created       time.Time `json:"created"`
	// Nodes lists the subtree, parents before children; Nodes[0] is the
	// node that was dumped. The members that follow are listed, with their
	// types, sizes and checksums, in the trailer (checksums.json): CRIU
	// images are streamed into the archive while CRIU still writes them.
	Nodes []Node `json:"nodes"`
	// PagesLast says that every CRIU image other than page images comes
	// before any page image, and each page image in one member: a reader
	// of a stream may start CRIU before the pages arrive.
	PagesLast bool `json:"pagesLast,omitempty"`
	// TCPEstablished says that the dump ran with --tcp-established: the
	// images may hold established TCP connections, which CRIU restores
	// only with the same option. Absent in archives of earlier versions.
	TCPEstablished bool `json:"tcpEstablished,omitempty"`
	// Images are the images the archive carries (dump --with-image), so
	// that a state root without them can restore the nodes that run on
	// them: each image's config and its layers are members of their own
	// (ConfigMember, LayerMember), after every node's. Format version 3.
	Images []Image `json:"images,omitempty"`
}

// Image is an image an archive carries: the config whose SHA-256 is ID,
// of ConfigSize bytes, and the layers it lists, bottom first.
type Image struct {
	ID         string  `json:"id"`
	Name       string  `json:"name,omitempty"`
	ConfigSize int64   `json:"configSize"`
	Layers     []Layer `json:"layers"`
}

// Layer is an image layer an archive carries: the uncompressed layer (a
// tar stream) whose SHA-256 is Digest, of Size bytes.
type Layer struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// ConfigMember is the member that holds the config of the image id.
func ConfigMember(id string) string { return "images/config/" + strings.TrimPrefix(id, "sha256:") }

// LayerMember is the member that holds the layer with the given digest.
func LayerMember(digest string) string {
	return "images/layers/" + strings.TrimPrefix(digest, "sha256:")
}

// Node is one node of the archived subtree.
type Node struct {
	// Path is the node's path relative to the dumped node: "" for the
	// dumped node itself, "calculate_pi" or "a/b" for its descendants.
	Path string `json:"path"`
	Name string `json:"name"`
	// Parent is the index in Manifest.Nodes of the node's parent, -1 for
	// the dumped node.
	Parent int `json:"parent"`
	// Running is true when the node's processes are in the archive; a
	// node that was not running is carried as configuration and files.
	Running  bool      `json:"running"`
	ExitCode int       `json:"exitCode,omitempty"`
	Spec     Spec      `json:"spec"`
	Hostname string    `json:"hostname"`
	Created  time.Time `json:"created"`
	Procs    []Proc    `json:"procs,omitempty"`
	// Memory is the resident and swapped-out memory of the node's
	// processes when it was dumped, which CRIU's page images hold.
	Memory int64 `json:"memory"`
	// ExtraMemory is what CRIU archives beyond the resident memory of
	// the node's processes: the contents of its tmpfs mounts and of the
	// memfd, shared memory and deleted files they hold. Absent in
	// archives of earlier crtree versions.
	ExtraMemory int64 `json:"extraMemory,omitempty"`
	Files       int64 `json:"files"`
	// ExternalMounts are the node's external mounts as the dump declared
	// them to CRIU. No reader of this crtree acts on them: a restore
	// declares the external mounts of the node it creates, from the
	// restoring host's own layout and the binds the restoring user
	// allows, never from an archive (see ExternalMount). They are
	// carried so that an archive says, without CRIU's images being
	// parsed, what its images expect of the restoring host (`crtree
	// inspect --json` shows them), and because format version 2 has
	// them.
	ExternalMounts []ExternalMount `json:"externals,omitempty"`
	// Addr is the address of a "bridge" node (Spec.Net).
	Addr *Addr `json:"addr,omitempty"`
}

// Spec is how a node was asked to run: what `crtree run` was given. It
// is the archive's own copy of the node's configuration, with the JSON
// names of format version 2, so that the format changes only with this
// package.
type Spec struct {
	// Cmd is the command line of the node's init (never empty).
	Cmd []string `json:"cmd"`
	// Env is the environment of its init, NAME=VALUE.
	Env []string `json:"env,omitempty"`
	// Cwd is the working directory of its init inside the node.
	Cwd string `json:"cwd,omitempty"`
	// Hostname is the node's hostname, "" if none was set (Node.Hostname
	// is the one it had).
	Hostname string `json:"hostname,omitempty"`
	// Binds are the host paths the node had bound into it. A bind's
	// Source is where the dumping host had it: a restore uses it only
	// if the restoring user says so.
	Binds []Bind `json:"binds,omitempty"`
	// Rootfs is the host directory used as the read-only base of the
	// node's root, "" for none.
	Rootfs string `json:"rootfs,omitempty"`
	// Image is the ID of the image whose layers were the read-only base
	// of the node's root (the digest of its config, "sha256:..."), ""
	// for none; ImageName what it was called (format version 3). The
	// node's files are then its overlay upper layer, whiteouts included.
	Image     string `json:"image,omitempty"`
	ImageName string `json:"imageName,omitempty"`
	// User is who the init ran as, "user[:group]" ("" for root; format
	// version 3).
	User string `json:"user,omitempty"`
	// Net is "" for the host's network, "none" for a network namespace
	// of the node's own with only the loopback interface, and "bridge"
	// for one with an address on the restoring state root's bridge.
	Net string `json:"net,omitempty"`
	// Ports are the ports a "bridge" node published on the host.
	Ports []Port `json:"ports,omitempty"`
	// Init says that a minimal init ran at the node's PID 1, with Cmd as
	// its child (`crtree run --init`).
	Init bool `json:"init,omitempty"`
}

// Port is a port a node published: Host on the host forwarded to Node on
// the node's address, for Proto ("tcp" if empty, or "udp").
type Port struct {
	Host  int    `json:"host"`
	Node  int    `json:"node"`
	Proto string `json:"proto,omitempty"`
}

// Addr is where a "bridge" node was on its state root's bridge when it
// was dumped: a restore gives it the same address and MAC if they are
// free there.
type Addr struct {
	IP  string `json:"ip"`
	MAC string `json:"mac,omitempty"`
}

// Bind is a host path (Source) bound into a node at Target, read-only
// if ReadOnly. Bound paths are not the node's own files and are never in
// an archive.
type Bind struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// Proc is a process of a node at the time of the dump.
type Proc struct {
	PID int    `json:"pid"`
	Cmd string `json:"cmd"`
}

// ExternalMount is an external mount of a node: a mount inside the node
// that comes from the host (its /usr and /etc, a bind, crtree's API
// directory), which CRIU leaves out of its images. CRIU recorded the one
// at Mountpoint under Key; HostPath is where the dumping host had it. It
// names a host path of the dumping host, so a reader must not mount it.
type ExternalMount struct {
	Mountpoint string `json:"mountpoint"`
	Key        string `json:"key"`
	HostPath   string `json:"hostPath"`
}

// FilesPrefix returns where node i's own files live in the archive.
func FilesPrefix(i int) string { return "nodes/" + strconv.Itoa(i) + "/files" }

// ImagesPrefix returns where node i's CRIU images live in the archive.
func ImagesPrefix(i int) string { return "nodes/" + strconv.Itoa(i) + "/criu" }

// ErrVersion is returned for an archive of a format version this crtree
// does not read.
var ErrVersion = errors.New("unsupported archive")

// Validate checks what a reader must be able to rely on: the format and
// version, a well-formed subtree, and member names that stay inside the
// archive's own layout.
func (m *Manifest) Validate() error {
	if m.Format != FormatName {
		return fmt.Errorf("not a crtree archive (format %q)", m.Format)
	}
	if versions[m.Version] == nil {
		return fmt.Errorf("%w: format version %d (this crtree reads versions 1 to %d)", ErrVersion, m.Version, FormatVersion)
	}
	if len(m.Nodes) == 0 {
		return fmt.Errorf("manifest lists no node")
	}
	paths := map[string]bool{}
	for i, n := range m.Nodes {
		if err := checkName(n.Name); err != nil {
			return fmt.Errorf("manifest node %d: %w", i, err)
		}
		if i == 0 {
			if n.Parent != -1 || n.Path != "" {
				return fmt.Errorf("manifest node 0 must be the dumped node")
			}
		} else {
			if n.Parent < 0 || n.Parent >= i {
				return fmt.Errorf("manifest node %d: parent %d does not come before it", i, n.Parent)
			}
			want := path.Join(m.Nodes[n.Parent].Path, n.Name)
			if n.Path != want {
				return fmt.Errorf("manifest node %d: path %q does not match its parent and name", i, n.Path)
			}
		}
		if paths[n.Path] {
			return fmt.Errorf("manifest names node %q twice", n.Path)
		}
		paths[n.Path] = true
		if len(n.Spec.Cmd) == 0 {
			return fmt.Errorf("manifest node %q has no command", n.Path)
		}
		if err := m.checkImage(n.Spec); err != nil {
			return fmt.Errorf("manifest node %q: %w", n.Path, err)
		}
		if err := checkNet(n); err != nil {
			return fmt.Errorf("manifest node %q: %w", n.Path, err)
		}
	}
	return m.checkImages()
}

// Bounds on the images an archive carries: what one config or layer may
// say it holds, how many images and layers it may carry, and the configs'
// total (a restore holds those it imports in memory).
const (
	maxConfigSize    = 4 << 20
	maxLayerSize     = 1 << 40
	maxCarriedImages = 64
	maxImageLayers   = 256
	maxConfigsSize   = 16 << 20
)

// checkImages refuses carried images that are not well formed, not of
// version 3, that no node runs on, or that disagree about a layer's
// size.
func (m *Manifest) checkImages() error {
	if len(m.Images) > 0 && m.Version < 3 {
		return fmt.Errorf("images are carried from format version 3 on, not %d", m.Version)
	}
	if len(m.Images) > maxCarriedImages {
		return fmt.Errorf("manifest carries %d images, more than the %d allowed", len(m.Images), maxCarriedImages)
	}
	used := map[string]bool{}
	for _, n := range m.Nodes {
		used[n.Spec.Image] = true
	}
	seen := map[string]bool{}
	sizes := map[string]int64{}
	var configs int64
	for _, im := range m.Images {
		switch {
		case !isDigest(im.ID):
			return fmt.Errorf("manifest image %q is not an image ID (sha256: and 64 hex digits)", im.ID)
		case seen[im.ID]:
			return fmt.Errorf("manifest carries image %s twice", im.ID)
		case !used[im.ID]:
			return fmt.Errorf("manifest carries image %s, which no node runs on", im.ID)
		case len(im.Name) > 255 || strings.ContainsFunc(im.Name, func(r rune) bool { return r < ' ' || r == 0x7f }):
			return fmt.Errorf("manifest image %s: malformed name", im.ID)
		case im.ConfigSize < 0 || im.ConfigSize > maxConfigSize:
			return fmt.Errorf("manifest image %s: config size %d out of range", im.ID, im.ConfigSize)
		case len(im.Layers) == 0 || len(im.Layers) > maxImageLayers:
			return fmt.Errorf("manifest image %s has %d layers (1 to %d allowed)", im.ID, len(im.Layers), maxImageLayers)
		}
		if configs += im.ConfigSize; configs > maxConfigsSize {
			return fmt.Errorf("manifest carries more than %d bytes of image configs", maxConfigsSize)
		}
		seen[im.ID] = true
		for _, l := range im.Layers {
			if !isDigest(l.Digest) || l.Size < 0 || l.Size > maxLayerSize {
				return fmt.Errorf("manifest image %s: malformed layer %q of %d bytes", im.ID, l.Digest, l.Size)
			}
			if size, ok := sizes[l.Digest]; ok && size != l.Size {
				return fmt.Errorf("manifest gives layer %s two sizes", l.Digest)
			}
			sizes[l.Digest] = l.Size
		}
	}
	return nil
}

// checkNet refuses a network other than the host's, "none" and
// "bridge", ports that are not ports or on a node without a bridge, and
// an address on one without a bridge or that is not an IPv4 address.
func checkNet(n Node) error {
	switch n.Spec.Net {
	case "", "none", "bridge":
	default:
		return fmt.Errorf("unknown network %q", n.Spec.Net)
	}
	if (len(n.Spec.Ports) > 0 || n.Addr != nil) && n.Spec.Net != "bridge" {
		return errors.New("published ports or an address, but no bridge network")
	}
	for _, p := range n.Spec.Ports {
		if p.Host < 1 || p.Host > 65535 || p.Node < 1 || p.Node > 65535 || (p.Proto != "" && p.Proto != "udp") {
			return fmt.Errorf("bad published port %d:%d/%q", p.Host, p.Node, p.Proto)
		}
	}
	if a := n.Addr; a != nil {
		if ip := net.ParseIP(a.IP); ip == nil || ip.To4() == nil {
			return fmt.Errorf("address %q is not an IPv4 address", a.IP)
		}
		if hw, err := net.ParseMAC(a.MAC); a.MAC != "" && (err != nil || len(hw) != 6 || hw[0]&1 != 0) {
			return fmt.Errorf("MAC %q is not a unicast Ethernet address", a.MAC)
		}
	}
	return nil
}

// isDigest reports whether d is "sha256:" and 64 lowercase hex digits.
func isDigest(d string) bool {
	hex, ok := strings.CutPrefix(d, "sha256:")
	return ok && len(hex) == 64 && strings.Trim(hex, "0123456789abcdef") == ""
}

// carriedMember is a member of a carried image: its config (Digest the
// image's ID) or a layer.
type carriedMember struct {
	Config bool
	Digest string
	Size   int64
}

// carried returns the carried member the manifest lists under name
// (ConfigMember, LayerMember), and whether it lists one.
func (m *Manifest) carried(name string) (carriedMember, bool) {
	for _, im := range m.Images {
		if name == ConfigMember(im.ID) {
			return carriedMember{Config: true, Digest: im.ID, Size: im.ConfigSize}, true
		}
		for _, l := range im.Layers {
			if name == LayerMember(l.Digest) {
				return carriedMember{Digest: l.Digest, Size: l.Size}, true
			}
		}
	}
	return carriedMember{}, false
}

// CarriedImage returns the image with the given ID that the archive
// carries, nil if it carries none.
func (m *Manifest) CarriedImage(id string) *Image {
	for i := range m.Images {
		if m.Images[i].ID == id {
			return &m.Images[i]
		}
	}
	return nil
}

// carriedMembers returns every member the manifest's images need, each
// once, with its size: the configs, then the layers not listed before.
func (m *Manifest) carriedMembers() map[string]int64 {
	out := map[string]int64{}
	for _, im := range m.Images {
		out[ConfigMember(im.ID)] = im.ConfigSize
		for _, l := range im.Layers {
			out[LayerMember(l.Digest)] = l.Size
		}
	}
	return out
}

// checkMember refuses a member name that is neither a node's
// (checkMemberName) nor a carried image's that the manifest lists, as a
// plain file of the size it gives, without PAX records of crtree's.
func (m *Manifest) checkMember(hdr *tar.Header) error {
	if !IsCarried(hdr.Name) {
		return checkMemberName(hdr.Name, len(m.Nodes))
	}
	c, ok := m.carried(hdr.Name)
	switch {
	case !ok:
		return fmt.Errorf("member %q: the manifest carries no such image config or layer", hdr.Name)
	case hdr.Typeflag != tar.TypeReg:
		return fmt.Errorf("member %q: an image config or layer must be a file", hdr.Name)
	case hdr.Size != c.Size:
		return fmt.Errorf("member %q holds %d bytes, the manifest says %d", hdr.Name, hdr.Size, c.Size)
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, xattrPrefix) || strings.HasPrefix(k, "CRTREE.") {
			return fmt.Errorf("member %q: PAX record %q is not allowed on an image config or layer", hdr.Name, k)
		}
	}
	return nil
}

// IsCarried reports whether a member name is under images/: a config
// or layer of a carried image (valid only if the manifest lists it).
func IsCarried(name string) bool { return strings.HasPrefix(name, "images/") }

// MaxNameLen is the longest name a node of an archive may have.
const MaxNameLen = 64

// checkName applies the format's rule for node names: 1 to MaxNameLen
// characters of [A-Za-z0-9_.-], starting with a letter or digit. (It is
// crtree's rule for node names, stated here so that it changes with the
// format only.)
func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("invalid name: empty name")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("invalid name %.20q...: longer than %d characters", name, MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("invalid name %q: must start with a letter or digit", name)
		}
		if !alnum && c != '_' && c != '.' && c != '-' {
			return fmt.Errorf("invalid name %q: only letters, digits, '_', '.' and '-' are allowed", name)
		}
	}
	return nil
}

// isImage reports whether a (valid) member name is a CRIU image.
func isImage(name string) bool { return strings.Split(name, "/")[2] == "criu" }

// isImageName is isImage for a name that may not have been checked.
func isImageName(name string) bool {
	parts := strings.Split(name, "/")
	return len(parts) == 4 && parts[0] == "nodes" && parts[2] == "criu"
}

// checkMemberName accepts only nodes/N/files[/rel] and nodes/N/criu/NAME
// with N < nodes and a clean relative rel.
func checkMemberName(name string, nodes int) error {
	bad := func(why string) error { return fmt.Errorf("member %q: %s", name, why) }
	if name != path.Clean(name) || strings.HasPrefix(name, "/") || strings.Contains(name, "\x00") {
		return bad("not a clean relative path")
	}
	parts := strings.Split(name, "/")
	if len(parts) < 3 || parts[0] != "nodes" {
		return bad("outside nodes/")
	}
	i, err := strconv.Atoi(parts[1])
	if err != nil || i < 0 || i >= nodes || strconv.Itoa(i) != parts[1] {
		return bad("names no node of the manifest")
	}
	for _, p := range parts {
		if p == ".." || p == "." || p == "" {
			return bad("has a '..' or empty element")
		}
	}
	switch parts[2] {
	case "files":
	case "criu":
		if len(parts) != 4 {
			return bad("CRIU images are flat")
		}
	default:
		return bad("unknown section " + parts[2])
	}
	return nil
}

// decodeManifest parses and validates a manifest.
func decodeManifest(data []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("malformed manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// checkImage refuses an image field that is not an image ID
// ("sha256:" and 64 hex digits: a restore looks the image up by exactly
// that), or fields of format version 3 in an earlier version.
func (m *Manifest) checkImage(s Spec) error {
	if m.Version < 3 && (s.Image != "" || s.ImageName != "" || s.User != "") {
		return fmt.Errorf("image, imageName and user are fields of format version 3, not %d", m.Version)
	}
	if s.Image == "" {
		return nil
	}
	if !isDigest(s.Image) {
		return fmt.Errorf("image %q is not an image ID (sha256: and 64 hex digits)", s.Image)
	}
	if s.Rootfs != "" {
		return fmt.Errorf("both an image and a rootfs")
	}
	return nil
}
