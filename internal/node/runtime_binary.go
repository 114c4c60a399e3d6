package node

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/crtree/crtree/internal/api"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
)

// What a node is given from the host besides its spec's mounts: the
// crtree binary (a copy that stays) and its API directory, and the list
// of every such external mount a dump declares to CRIU.

// StableBinary returns a copy of the running crtree binary that is never
// replaced: bin/crtree-<hash> under the state root. Nodes bind this copy,
// not the installed binary, so that upgrading crtree while nodes run does
// not leave them holding a deleted file (which CRIU cannot restore).
//
// The binary is hashed once per process: a dump asks for every node.
func (h *Host) StableBinary() (string, error) {
	h.binMu.Lock()
	defer h.binMu.Unlock()
	if h.binary == "" {
		bin, err := h.copyBinary()
		if err != nil {
			return "", err
		}
		h.binary = bin
	}
	return h.binary, nil
}

func (h *Host) copyBinary() (string, error) {
	self, err := os.Open(SelfExe)
	if err != nil {
		return "", err
	}
	defer self.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, self); err != nil {
		return "", err
	}
	dir := filepath.Join(h.Store.Root, "bin")
	dst := filepath.Join(dir, "crtree-"+hex.EncodeToString(sum.Sum(nil))[:16])
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if _, err := self.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".crtree-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, self); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return dst, os.Rename(tmp.Name(), dst)
}

// ExternalMountsFor returns every external mount of node n, for CRIU: its
// spec's (host /usr, /etc, binds) and the crtree API directory and binary.
func (h *Host) ExternalMountsFor(n *hier.Node) ([]criu.ExternalMount, error) {
	bin, err := h.StableBinary()
	if err != nil {
		return nil, fmt.Errorf("copy the crtree binary: %w", err)
	}
	out := specExternalMounts(n.Spec)
	return append(out,
		criu.ExternalMount{Mountpoint: api.MountPoint, Key: api.MountPoint, HostPath: h.APIDir(n.ID)},
		criu.ExternalMount{Mountpoint: api.MountPoint + "/" + api.BinaryName, Key: api.MountPoint + "/" + api.BinaryName, HostPath: bin},
	), nil
}
