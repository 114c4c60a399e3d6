package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func newKillCmd(g *globalOptions) *cobra.Command {
	var sig string
	var recursive bool
	cmd := &cobra.Command{
		Use:   "kill [-s SIGNAL] [-r] PATH",
		Short: "Signal a node's processes (with -r its whole subtree)",
		Long: `Send SIGNAL (default TERM) to every process of the node PATH, and with -r to
every process of its subtree. KILL goes through the cgroup, so that no
process survives, including ones that double-forked or left their session;
crtree kill -s KILL returns once they are gone.`,
		Example: "  crtree kill /vserver1/calculate_pi\n  crtree kill -r -s KILL /vserver1",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, _, err := g.nodePath(args[0])
			if err != nil {
				return err
			}
			s, err := parseSignal(sig)
			if err != nil {
				return usageError{err}
			}
			if g.isSelf(p) && !recursive {
				return errors.New("kill /: a node stops itself only with its whole subtree (kill -r /)")
			}
			h, err := g.host()
			if err != nil {
				return err
			}
			return h.Signal(p, s, recursive)
		},
	}
	cmd.Flags().StringVarP(&sig, "signal", "s", "TERM", "signal name or number")
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "signal the whole subtree")
	return cmd
}

// parseSignal accepts KILL, SIGKILL, kill or 9.
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

func newRmCmd(g *globalOptions) *cobra.Command {
	var recursive, force bool
	cmd := &cobra.Command{
		Use:   "rm [-r] [-f] PATH",
		Short: "Remove a node that is not running",
		Long: `Remove the node PATH with its storage and cgroup. A running node is refused
unless -f, which kills it first; a node with children is refused unless -r,
which removes its whole subtree.`,
		Example: "  crtree rm /vserver1/unnamed1\n  crtree rm -r -f /vserver1",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, _, err := g.nodePath(args[0])
			if err != nil {
				return err
			}
			if g.isSelf(p) {
				return errors.New("rm /: a node cannot remove itself")
			}
			h, err := g.host()
			if err != nil {
				return err
			}
			return h.Remove(p, recursive, force)
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "remove the whole subtree")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill running nodes first")
	return cmd
}

func newMvCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "mv PATH NEWPATH",
		Short: "Rename a node (within its parent), even while it runs",
		Long: `Rename the node PATH to NEWPATH, atomically; the node keeps running and its
children move with it. NEWPATH must have the same parent.`,
		Example: "  crtree mv /vserver1/unnamed1 /vserver1/sergeprivhome",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			from, _, err := g.nodePath(args[0])
			if err != nil {
				return err
			}
			to, _, err := g.nodePath(args[1])
			if err != nil {
				return err
			}
			if g.isSelf(from) || g.isSelf(to) {
				return errors.New("mv: a node cannot rename itself")
			}
			h, err := g.host()
			if err != nil {
				return err
			}
			return h.Rename(from, to)
		},
	}
}
