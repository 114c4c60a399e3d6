package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newPsCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ps PATH",
		Short: "List a node's processes",
		Long: `List the processes of the node PATH: host PID, PID inside the node's PID
namespace, and command line. Processes of child nodes are not included.`,
		Example: "  crtree ps /vserver1/calculate_pi\n  crtree ps --json /vserver1",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, h, err := g.nodeAndHost(args[0])
			if err != nil {
				return err
			}
			procs, err := h.Procs(p)
			if err != nil {
				return err
			}
			if g.JSON {
				return writeJSON(cmd.OutOrStdout(), procs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PID\tNSPID\tCMD")
			for _, pr := range procs {
				fmt.Fprintf(tw, "%d\t%d\t%s\n", pr.PID, pr.NSPid, pr.Cmd)
			}
			return tw.Flush()
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}
