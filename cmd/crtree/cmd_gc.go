package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newGCCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Remove what crashed or killed crtree commands left behind",
		Long: `Remove leftovers that no node and no running crtree command owns: staging
directories and partial archives of commands that were killed, storage
directories and cgroups of nodes that are not in the tree. Nodes whose
creation was interrupted are listed by ls as incomplete; remove them with
rm -r -f. Every crtree command already thaws nodes left frozen by a killed
dump; gc reports what it removed.`,
		Example: "  crtree gc",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.scope != nil {
				return fmt.Errorf("gc works on the whole state root and cannot be used inside a node")
			}
			h, err := g.openHost()
			if err != nil {
				return err
			}
			removed, err := h.GC()
			for _, r := range removed {
				fmt.Fprintln(cmd.OutOrStdout(), "removed", r)
			}
			if err == nil && len(removed) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing to remove")
			}
			return err
		},
	}
}
