package main

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/node"
	"github.com/crtree/crtree/internal/treefs"
)

// treeLogName is the log of the tree's servers, in the state root's logs.
const treeLogName = "tree-mounts.log"

// maxViewsPerNode bounds how many times a node may mount its own view.
const maxViewsPerNode = 4

func newMountCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "mount DIR",
		Short: "Mount the tree as a file system on DIR (ls, find, cat, mv, rm -rf, cp)",
		Long: `Mount the tree of nodes on the directory DIR, served by a crtree process in the
background, and return once it is mounted. crtree umount DIR (or umount(8))
unmounts it, and the server then ends.

Each node is a directory; its children are subdirectories. In each node:

  .state .pid .procs .hostname .memory   read-only facts, made when opened
                                         (their size is 0 until then)
  .checkpoint   opening it starts a dump --leave-running of the node's
                subtree, which reads stream (root only): cp DIR/a/.checkpoint
                a.crtree is crtree dump --leave-running /a -o a.crtree.
                stat, ls -l, find and tar do not open it.

and in the root, .errors: why the last operations were refused or failed.

What the usual tools do:

  ls, find       list nodes (nothing is cached: what crtree ls shows)
  mv A B         crtree mv, within a parent (another parent: refused, EPERM)
  rm -rf A       kills and removes A's whole subtree (crtree rm -r -f);
                 rmdir A does the same; unlinking a node's files does nothing
  cp X.crtree A/ restores the archive under A (crtree restore --parent A),
                 names preserved (cp X.crtree A/NAME: its top node is NAME);
                 close(2) returns once it is restored, or fails with EIO if
                 the restore failed, having made nothing. The written file
                 does not stay. Root only.
  mkdir          refused (EPERM): a node needs a command (crtree run)

Errors are errno values: ENOENT, EEXIST, EBUSY (a subtree another crtree
command holds, such as a dump), EPERM, EACCES, EINVAL (not a node name),
EIO; the reason of each refusal and failure is in the root's .errors and
the state root's logs/` + treeLogName + `.

Every operation goes through the same tree, locks and checks as the crtree
commands. A dump read from .checkpoint is spooled in the state root's tmp
directory (an unnamed file, gone once closed).

Inside a node (root there), crtree mount DIR mounts the node's own view on
an empty directory: its subtree, with itself as the root.`,
		Example: `  crtree mount /run/crtree/tree
  ls /run/crtree/tree/vserver1
  cat /run/crtree/tree/vserver1/.state
  cp /run/crtree/tree/vserver1/.checkpoint v1.crtree
  cp v1.crtree /run/crtree/tree/pool/
  rm -rf /run/crtree/tree/vserver1
  crtree umount /run/crtree/tree`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.needRootInNode("mount"); err != nil {
				return err
			}
			h, err := g.host()
			if err != nil {
				return err
			}
			serverArgs := []string{"--root", h.Store.Root, "__serve-tree"}
			if g.scope != nil {
				// The node's own view, attached inside it by the server
				// (a host process each: a node has a few at most).
				if ms, err := node.TreeMountsIn(g.scope.initPid); err != nil {
					return err
				} else if len(ms) >= maxViewsPerNode {
					return fmt.Errorf("mount: this node has its view of the tree mounted %d times already (%s); crtree umount one first", len(ms), strings.Join(ms, ", "))
				}
				serverArgs = append(serverArgs, "--scope", g.scope.id, "--cwd", g.scope.cwd, args[0])
			} else {
				dir, err := treefs.MountPoint(args[0])
				if err != nil {
					return err
				}
				serverArgs = append(serverArgs, dir)
			}
			logFile, err := openTreeLog(h)
			if err != nil {
				return err
			}
			defer logFile.Close()
			server := exec.Command(node.SelfExe, serverArgs...)
			server.Args[0] = "crtree"
			server.Env = serverEnv(g, h.Store.Root)
			server.Stdout, server.Stderr = logFile, logFile
			return treefs.Start(server)
		},
	}
}

// openTreeLog opens the log of the tree's servers for appending.
func openTreeLog(h *node.Host) (*os.File, error) {
	if err := os.MkdirAll(h.LogDir(), 0o700); err != nil {
		return nil, err
	}
	return os.OpenFile(filepath.Join(h.LogDir(), treeLogName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
}

// serverEnv is the environment of a tree's server and of the crtree
// commands it runs: the caller's, with the state root and CRIU chosen.
func serverEnv(g *globalOptions, root string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != "CRTREE_ROOT" && k != "CRTREE_CRIU" && k != node.EnvScope && k != node.EnvScopeCwd {
			env = append(env, kv)
		}
	}
	env = append(env, "CRTREE_ROOT="+root)
	if g.Criu != "" {
		env = append(env, "CRTREE_CRIU="+g.Criu)
	}
	return env
}

func newUmountCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "umount DIR",
		Short: "Unmount the tree mounted on DIR (crtree mount)",
		Long: `Unmount the tree that crtree mount mounted on DIR; its server then ends. A
tree with a file or directory still open in it (a copy going on, a shell's
working directory) is refused; umount -l DIR detaches it at once, and its
server ends when the last one is closed. Inside a node, it unmounts the
node's own view (root in the node only).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.scope == nil {
				return treefs.Unmount(args[0])
			}
			if err := g.needRootInNode("umount"); err != nil {
				return err
			}
			dir := treefs.InNodePath(g.scope.cwd, args[0])
			mounted, err := treefs.MountedIn(g.scope.initPid, dir)
			if err != nil {
				return err
			}
			if !mounted {
				return fmt.Errorf("umount %s: no crtree tree is mounted there", args[0])
			}
			h, err := g.host()
			if err != nil {
				return err
			}
			helper, done, err := h.HelperCommand(g.scope.id, treefs.AttachArg, "--umount", dir)
			if err != nil {
				return fmt.Errorf("umount %s: %w", args[0], err)
			}
			defer done()
			return treefs.RunHelper(helper)
		},
	}
}

// newServeTreeCmd is the hidden command that serves a mounted tree.
// With --scope it serves node ID's own view, attached in the node on DIR
// (as the node names it from --cwd).
func newServeTreeCmd(g *globalOptions) *cobra.Command {
	var scope, cwd string
	cmd := &cobra.Command{
		Use:    "__serve-tree DIR",
		Hidden: true,
		Args:   exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// A daemon: it must not keep its caller's directory busy.
			os.Chdir("/")
			srv, logger, err := serveTree(g, scope, cwd, args[0])
			treefs.Ready(err)
			if err != nil {
				return err
			}
			// Unmounted by umount; SIGTERM and SIGINT unmount it too (a
			// node's view: ends it, the node then sees a dead mount).
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
			signal.Ignore(syscall.SIGHUP)
			go func() {
				for range sigs {
					if scope != "" {
						srv.Stop()
						logger.Printf("stopped")
						os.Exit(0)
					}
					if err := srv.Unmount(); err != nil {
						logger.Printf("unmount: %v", err)
					}
				}
			}()
			srv.Wait()
			logger.Printf("unmounted")
			return nil
		},
	}
	cmd.Flags().StringVar(&scope, "scope", "", "serve this node's own view, attached inside it")
	cmd.Flags().StringVar(&cwd, "cwd", "/", "the directory, inside the node, that DIR is relative to")
	return cmd
}

// serveTree mounts the tree on dir (with scope: the node's view, in the
// node) and returns its server and log.
func serveTree(g *globalOptions, scope, cwd, dir string) (*treefs.Server, *log.Logger, error) {
	h, err := g.host()
	if err != nil {
		return nil, nil, err
	}
	where := dir
	if scope != "" {
		where = "node " + scope + ": " + treefs.InNodePath(cwd, dir)
	}
	logger := log.New(os.Stderr, fmt.Sprintf("crtree tree %s [%d]: ", where, os.Getpid()), log.LstdFlags)
	opts := treefs.Options{Host: h, Scope: scope, Exe: node.SelfExe, Env: os.Environ(), Log: logger}
	if scope == "" {
		srv, err := treefs.Mount(dir, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("mount on %s: %w", dir, err)
		}
		logger.Printf("mounted")
		return srv, logger, nil
	}
	helper, done, err := h.HelperCommand(scope, treefs.AttachArg, "--cwd="+cwd, dir)
	if err != nil {
		return nil, nil, fmt.Errorf("mount on %s: %w", dir, err)
	}
	defer done()
	srv, detached, err := treefs.MountDetached(h.TmpDir(), opts)
	if err != nil {
		return nil, nil, fmt.Errorf("mount on %s: %w", dir, err)
	}
	err = treefs.RunHelper(helper, detached)
	// Once attached, the node's mount holds the file system; if not, it
	// ends here, and so does the server.
	detached.Close()
	if err != nil {
		return nil, nil, err
	}
	logger.Printf("mounted")
	return srv, logger, nil
}

// needRootInNode refuses what changes a node's mounts to a caller that is
// not root inside it, as mount(8) would.
func (g *globalOptions) needRootInNode(what string) error {
	if g.scope != nil && g.scope.uid != 0 {
		return fmt.Errorf("%s: only root inside the node may change its mounts", what)
	}
	return nil
}
