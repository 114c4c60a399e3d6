package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/hier"
)

type runOptions struct {
	Env      []string
	Cwd      string
	Hostname string
	Binds    []string
	Rootfs   string
	Image    string
	User     string
	Net      string
	Ports    []string
	Init     bool
}

func newRunCmd(g *globalOptions) *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run PATH [flags] -- CMD [ARGS...]",
		Short: "Create a node and start a command as its PID 1",
		Long: `Create the node PATH and start CMD as PID 1 of new PID, mount, UTS and IPC
namespaces, with the node's name as hostname. The parent of PATH must exist.
A PATH ending in / creates a child named unnamedN (the smallest free N).

The node sees its own writable root, the host's /usr and /etc read-only, a
minimal /dev, a fresh /proc and a writable /tmp. Its output goes to its log
(crtree logs). The new node's path is printed on stdout.

With --image NAME (crtree image import adds images), the node runs on that
image instead: its root is the image's files with the node's own writable
layer above them, it sees nothing of the host's files but its --binds, and
the image's config applies: its environment (under --env), working
directory and user (unless --cwd or --user), and its entrypoint, followed
by CMD or, without CMD, the image's command. Use the host mode (the
default) for software the host has, as in a vserver; use an image to run
software the host lacks, and so that an archive restores on a host that is
not a twin of this one (crtree dump --help).

A PID 1 reaps the orphans of the node; a command that never waits (sleep,
most servers) leaves them zombies, which stay until the node ends (a dump
carries them). With --init, PID 1 is a minimal init (crtree-init, the crtree
binary bound in the node) that runs CMD as its child, reaps every orphan,
passes every signal it gets on to CMD and ends the node with CMD's exit
status. A node run with --init restores only with the same crtree binary.

With --net bridge, the node has a network namespace of its own with an
address on the state root's bridge (CNI plugins: crtree ls --json shows
it); -p HOST:NODE publishes its port NODE on the host's addresses at HOST
(not on 127.0.0.1). See the README, "A node's own network".

A node never gets more than its parent has: under a --net none node, a child
has its own empty network too, and --net host or bridge is refused; under a
--net bridge node, a child has its own address on the bridge, and --net
host is refused.`,
		Example: `  crtree run /vserver1 -- sleep infinity
  crtree run --image localhost/py /calc -- python3 pi.py
  crtree run /vserver1/ -- sh -c 'echo hello'      # prints /vserver1/unnamed1
  crtree run --net none --env N=4 /calc -- python3 -c 'print(1)'
  crtree run --init /web -- python3 -m http.server
  crtree run --net bridge -p 8080:80 /web -- python3 -m http.server 80   # its own address; host port 8080`,
		Args: func(cmd *cobra.Command, args []string) error {
			image, _ := cmd.Flags().GetString("image")
			if image != "" && len(args) == 1 && cmd.ArgsLenAtDash() == -1 {
				return nil // the image's command
			}
			if cmd.ArgsLenAtDash() != 1 || len(args) < 2 {
				return usageError{errors.New("usage: crtree run PATH [flags] -- CMD [ARGS...] (CMD may be left out with --image)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRun(cmd, g, o, args)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.Env, "env", "e", nil, "set an environment variable K=V (repeatable)")
	f.StringVarP(&o.Cwd, "cwd", "w", "", "working directory inside the node (default /)")
	f.StringVar(&o.Hostname, "hostname", "", "hostname of the node (default: its name)")
	f.StringArrayVar(&o.Binds, "bind", nil, "bind a host path into the node, SRC:DST[:ro] (repeatable; never archived)")
	f.StringVar(&o.Rootfs, "rootfs", "", "use DIR as the read-only base of the node's root (overlay), with the host's /usr and /etc")
	f.StringVar(&o.Image, "image", "", "run on the image NAME (or ID): its files, not the host's (see crtree image)")
	f.StringVarP(&o.User, "user", "u", "", "run CMD as USER[:GROUP], by name or number (default: the image's user, or root)")
	f.StringVar(&o.Net, "net", "", "network: host (share the host's), none (own namespace, loopback only) or bridge (own namespace and address on the state root's bridge); default: host, or the parent's kind under a none or bridge parent")
	f.StringArrayVarP(&o.Ports, "publish", "p", nil, "publish a port of a --net bridge node on the host, HOST:NODE[/udp] (repeatable)")
	f.BoolVar(&o.Init, "init", false, "run CMD under a minimal init that reaps orphans and passes signals on")
	return cmd
}

func (o *runOptions) spec(argv []string) (hier.Spec, error) {
	s := hier.Spec{Cmd: argv, Env: o.Env, Cwd: o.Cwd, Hostname: o.Hostname, Rootfs: o.Rootfs, ImageName: o.Image, User: o.User, Net: o.Net, Init: o.Init}
	if o.Image != "" && o.Rootfs != "" {
		return s, errors.New("--image and --rootfs are two ways of giving a node its files: use one")
	}
	for _, kv := range o.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return s, fmt.Errorf("--env %q: want K=V", kv)
		}
	}
	if o.Cwd != "" && !strings.HasPrefix(o.Cwd, "/") {
		return s, fmt.Errorf("--cwd %q: must be an absolute path", o.Cwd)
	}
	if o.Hostname != "" {
		if err := hier.ValidateName(o.Hostname); err != nil {
			return s, fmt.Errorf("--hostname: %w", err)
		}
	}
	switch o.Net {
	case "", hier.NetHost, hier.NetNone, hier.NetBridge:
	default:
		return s, fmt.Errorf("--net %q: want host, none or bridge", o.Net)
	}
	for _, arg := range o.Ports {
		p, err := parsePort(arg)
		if err != nil {
			return s, err
		}
		s.Ports = append(s.Ports, p)
	}
	if len(s.Ports) > 0 && o.Net != hier.NetBridge {
		return s, errors.New("--publish needs --net bridge (given, even under a bridge parent): a node on the host's network listens on the host already")
	}
	for _, arg := range o.Binds {
		b, err := parseBind(arg, true)
		if err != nil {
			return s, err
		}
		s.Binds = append(s.Binds, b)
	}
	return s, nil
}

// parsePort parses a --publish argument, HOST:NODE or HOST:NODE/udp.
func parsePort(arg string) (hier.Port, error) {
	spec, proto, _ := strings.Cut(arg, "/")
	h, n, ok := strings.Cut(spec, ":")
	hp, err1 := strconv.Atoi(h)
	np, err2 := strconv.Atoi(n)
	switch {
	case !ok || err1 != nil || err2 != nil || hp < 1 || hp > 65535 || np < 1 || np > 65535:
		return hier.Port{}, fmt.Errorf("--publish %q: want HOST:NODE ports (1-65535), such as 8080:80", arg)
	case proto != "" && proto != "tcp" && proto != "udp":
		return hier.Port{}, fmt.Errorf("--publish %q: the protocol is tcp or udp", arg)
	}
	if proto == "tcp" {
		proto = ""
	}
	return hier.Port{Host: hp, Node: np, Proto: proto}, nil
}

// parseBind parses a --bind argument, /SRC:/DST, or /SRC:/DST:ro where
// withMode.
func parseBind(arg string, withMode bool) (hier.Bind, error) {
	parts := strings.Split(arg, ":")
	ro := len(parts) == 3 && parts[2] == "ro" && withMode
	if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && !ro) ||
		!strings.HasPrefix(parts[0], "/") || !strings.HasPrefix(parts[1], "/") {
		if withMode {
			return hier.Bind{}, fmt.Errorf("--bind %q: want /SRC:/DST or /SRC:/DST:ro", arg)
		}
		return hier.Bind{}, fmt.Errorf("--bind %q: want /SRC:/DST (the bind keeps the mode it was dumped with)", arg)
	}
	return hier.Bind{Source: parts[0], Target: parts[1], ReadOnly: ro}, nil
}

func runRun(cmd *cobra.Command, g *globalOptions, o *runOptions, args []string) error {
	p, dir, err := g.nodePath(args[0])
	if err != nil {
		return err
	}
	spec, err := o.spec(args[1:])
	if err != nil {
		return usageError{err}
	}
	if g.scope != nil && (len(spec.Binds) > 0 || spec.Rootfs != "") {
		return usageError{fmt.Errorf("--bind and --rootfs name host paths and cannot be used inside a node")}
	}
	if g.scope != nil && len(spec.Ports) > 0 {
		return usageError{fmt.Errorf("--publish opens the host's ports and cannot be used inside a node")}
	}
	h, err := g.host()
	if err != nil {
		return err
	}
	path, err := h.Run(p, dir, spec)
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), g.display(path.String()))
	return nil
}
