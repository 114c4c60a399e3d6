package main

import (
	"errors"
	"io"
	"io/fs"
	"time"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/hier"
)

func newLogsCmd(g *globalOptions) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:     "logs [-f] PATH",
		Short:   "Print a node's output",
		Long:    "Print what the node's init wrote to stdout and stderr. With -f, keep\nprinting new output until the node exits.",
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
			for {
				_, st, err := h.Get(p)
				running := err == nil && st.State == hier.Running
				if _, err := io.Copy(w, f); err != nil {
					return err
				}
				if !running {
					return nil
				}
				time.Sleep(200 * time.Millisecond)
			}
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output until the node exits")
	return cmd
}
