package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

func newLsCmd(g *globalOptions) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "ls [-r] [PATH]",
		Short: "List the children of a node (default /)",
		Long: `List the children of PATH (default /), or with -r all its descendants.
Columns: path, state (running, exited(N), exited(?) when the exit code was
lost), host PID of the node's init, number of processes, memory, age.`,
		Example: `  crtree ls
  crtree ls -r /vserver1
  crtree ls --json /`,
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, entries, err := g.list(args, recursive)
			if err != nil {
				return err
			}
			if g.JSON {
				return writeJSON(cmd.OutOrStdout(), entries)
			}
			return printEntries(cmd.OutOrStdout(), entries)
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "list all descendants")
	addJSONFlag(cmd, g)
	return cmd
}

// list lists the node named by the optional argument (default /), with
// paths as the caller sees them.
func (g *globalOptions) list(args []string, recursive bool) (hier.Path, []node.Entry, error) {
	arg := "/"
	if len(args) == 1 {
		arg = args[0]
	}
	p, h, err := g.nodeAndHost(arg)
	if err != nil {
		return nil, nil, err
	}
	entries, err := h.List(p, recursive)
	for i := range entries {
		entries[i].Path = g.display(entries[i].Path)
	}
	return p, entries, err
}

// printEntries prints ls's table; an ADDRESS column when a node has an
// address of its own (--net bridge).
func printEntries(w io.Writer, entries []node.Entry) error {
	addrs := slices.ContainsFunc(entries, func(e node.Entry) bool { return e.IP != "" })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "PATH\tSTATE\tPID\tPROCS\tMEMORY\tAGE"
	if addrs {
		head += "\tADDRESS"
	}
	fmt.Fprintln(tw, head)
	for _, e := range entries {
		pid, procs, mem := "-", "-", "-"
		if e.Pid > 0 {
			pid, procs, mem = fmt.Sprint(e.Pid), fmt.Sprint(e.Procs), humanBytes(e.Memory)
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", e.Path, e.Display, pid, procs, mem, humanAge(time.Since(e.Created)))
		if addrs {
			addr := "-"
			if e.IP != "" {
				addr = e.IP
			}
			line += "\t" + addr
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func newTreeCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "tree [PATH]",
		Short:   "Draw a subtree (default /)",
		Example: "  crtree tree /vserver1",
		Args:    rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, entries, err := g.list(args, true)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintln(w, g.display(p.String()))
			drawTree(w, entries)
			return nil
		},
	}
}

// drawTree prints entries (depth first, with depths) with box-drawing
// branches.
func drawTree(w io.Writer, entries []node.Entry) {
	for i, e := range entries {
		var b strings.Builder
		for d := 0; d < e.Depth; d++ {
			if ancestorHasNext(entries, i, d) {
				b.WriteString("│   ")
			} else {
				b.WriteString("    ")
			}
		}
		if hasNextSibling(entries, i) {
			b.WriteString("├── ")
		} else {
			b.WriteString("└── ")
		}
		fmt.Fprintf(w, "%s%s  [%s]\n", b.String(), e.Name, e.Display)
	}
}

// hasNextSibling reports whether another entry at the same depth follows
// entry i before the tree climbs above it.
func hasNextSibling(entries []node.Entry, i int) bool {
	for j := i + 1; j < len(entries); j++ {
		if entries[j].Depth < entries[i].Depth {
			return false
		}
		if entries[j].Depth == entries[i].Depth {
			return true
		}
	}
	return false
}

// ancestorHasNext reports whether the ancestor of entry i at depth d has a
// later sibling, which needs a vertical bar in that column.
func ancestorHasNext(entries []node.Entry, i, d int) bool {
	for j := i; j >= 0; j-- {
		if entries[j].Depth == d {
			return hasNextSibling(entries, j)
		}
	}
	return false
}
