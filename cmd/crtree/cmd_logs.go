package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

func newLogsCmd(g *globalOptions) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:     "logs [-f] PATH",
		Short:   "Print a node's output",
		Long:    "Print what the node's init wrote to stdout and stderr. With -f, keep\nprinting new output until the node exits (status 0) or is removed, by a\ndump or otherwise (status 1, with one line that says so).",
		Example: "  crtree logs /vserver1/calculate_pi\n  crtree logs -f /vserver1",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, h, err := g.nodeAndHost(args[0])
			if err != nil {
				return err
			}
			n, _, err := h.Get(p)
			if err != nil {
				return err
			}
			f, err := h.OpenLog(&n)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			defer f.Close()
			w := cmd.OutOrStdout()
			if _, err := io.Copy(w, f); err != nil || !follow {
				return err
			}
			return followLog(w, f, h, n.ID, args[0])
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output until the node exits")
	return cmd
}

// followLog copies what is appended to the log f of node id until the
// node exits (wherever mv puts it meanwhile). A node that is removed,
// by a dump or otherwise, is an error that says so.
func followLog(w io.Writer, f io.Reader, h *node.Host, id, arg string) error {
	held := ""
	for {
		st, op, err := h.Watch(id)
		gone := errors.Is(err, hier.ErrNotFound)
		if err != nil && !gone {
			return err
		}
		if op != "" {
			held = op
		}
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		switch {
		case gone && held == node.BusyDump:
			return fmt.Errorf("logs %s: the node was dumped and removed; its output goes on where its archive is restored", arg)
		case gone:
			return fmt.Errorf("logs %s: the node was removed", arg)
		case st.State != hier.Running:
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}
