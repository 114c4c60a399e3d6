package node

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/api"
)

// Scope environment of a crtree run on behalf of a node: the node's ID,
// which is the root of everything the command may name, and the caller's
// working directory inside the node.
const (
	EnvScope    = "CRTREE_SCOPE"
	EnvScopeCwd = "CRTREE_SCOPE_CWD"
	// EnvScopeUid is the caller's user ID (inside the node, which has no
	// user namespace of its own: the host's), -1 if unknown.
	EnvScopeUid = "CRTREE_SCOPE_UID"
)

// APIDir returns the host directory bound at /run/crtree in node id: it
// holds the node's socket and a mount point for the crtree binary.
func (h *Host) APIDir(id string) string { return filepath.Join(h.Store.NodeDir(id), "api") }

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
		EnvScopeUid + "=" + strconv.Itoa(req.Uid),
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
