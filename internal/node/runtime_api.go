package node

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/api"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
)

// Scope environment of a crtree run on behalf of a node: the node's ID,
// which is the root of everything the command may name, and the caller's
// working directory inside the node.
const (
	EnvScope    = "CRTREE_SCOPE"
	EnvScopeCwd = "CRTREE_SCOPE_CWD"
)

// APIDir returns the host directory bound at /run/crtree in node id: it
// holds the node's socket and a mount point for the crtree binary.
func (h *Host) APIDir(id string) string { return filepath.Join(h.Store.NodeDir(id), "api") }

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

// serveAPI serves node id's socket until stop is closed: each request runs
// `crtree ARGS` on the host, scoped to the node, with the caller's stdio.
func (h *Host) serveAPI(id string) (stop func(), err error) {
	sock := filepath.Join(h.APIDir(id), api.SocketName)
	srv, err := api.Listen(sock, func(req *api.Request, stdio [3]*os.File, done <-chan struct{}) int {
		return h.runScoped(id, req, stdio, done)
	})
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	return func() { srv.Close(); os.Remove(sock) }, nil
}

func (h *Host) runScoped(id string, req *api.Request, stdio [3]*os.File, done <-chan struct{}) int {
	cmd := exec.Command(SelfExe, req.Args...)
	cmd.Args[0] = "crtree"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio[0], stdio[1], stdio[2]
	cmd.Env = []string{
		"PATH=" + lookupEnv(h.Env, "PATH"),
		"CRTREE_ROOT=" + h.Store.Root,
		EnvScope + "=" + id,
		EnvScopeCwd + "=" + req.Cwd,
	}
	if v := lookupEnv(h.Env, "CRTREE_CRIU"); v != "" {
		cmd.Env = append(cmd.Env, "CRTREE_CRIU="+v)
	}
	if req.Term != "" {
		cmd.Env = append(cmd.Env, "TERM="+req.Term)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 125
	}
	finished := make(chan struct{})
	go func() {
		select {
		case <-done:
			unix.Kill(-cmd.Process.Pid, unix.SIGTERM)
		case <-finished:
		}
	}()
	err := cmd.Wait()
	close(finished)
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() >= 0 {
			return ee.ExitCode()
		}
		return 1
	}
	return 0
}

// lookupEnv returns the value of key in env, "" if it has none.
func lookupEnv(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}
