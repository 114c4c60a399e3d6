package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/checkpoint"
)

func newInspectCmd(g *globalOptions) *cobra.Command {
	var verify bool
	cmd := &cobra.Command{
		Use:   "inspect FILE|- [--json] [--verify]",
		Short: "Show what an archive holds, without restoring it",
		Long: `Show the subtree an archive holds: each node with its processes, memory and
sizes, and the versions and time of the checkpoint. --verify reads the whole
archive and applies every check a restore applies: every checksum, and that
the content stays within what the manifest accounts for. Needs no root and
restores nothing.`,
		Example: "  crtree inspect v1.crtree\n  crtree inspect --verify --json v1.crtree",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, closeIn, err := g.openInput(args[0])
			if err != nil {
				return err
			}
			defer closeIn()
			var m *archive.Manifest
			members := 0
			if verify {
				pre := checkpoint.Prefetch(in, !g.env.NoDirect)
				m, members, err = archive.Verify(pre)
				pre.Close()
				if err == nil {
					err = verifyIndex(in, m)
				}
			} else {
				var r *archive.Reader
				if r, err = archive.NewReader(in); err == nil {
					m = r.Manifest()
					r.Close()
				}
			}
			if err != nil {
				return fmt.Errorf("inspect %s: %w", args[0], err)
			}
			if g.JSON {
				return writeJSON(cmd.OutOrStdout(), struct {
					*archive.Manifest
					Verified bool `json:"verified"`
					Members  int  `json:"verifiedMembers,omitempty"`
				}{m, verify, members})
			}
			printManifest(cmd.OutOrStdout(), m, verify, members)
			return nil
		},
	}
	cmd.Flags().BoolVar(&verify, "verify", false, "read the whole archive and check every checksum")
	addJSONFlag(cmd, g)
	return cmd
}

// verifyIndex checks the index of an archive file as a restore uses it
// (an archive read from a pipe has none to use). The file is opened
// again: the first descriptor may read with O_DIRECT.
func verifyIndex(in io.Reader, m *archive.Manifest) error {
	f, ok := in.(*os.File)
	if !ok {
		return nil
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	again, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return err
	}
	defer again.Close()
	return archive.VerifyIndex(again, fi.Size(), m)
}

// imageWhere says where a restore of m finds the image id.
func imageWhere(m *archive.Manifest, id string) string {
	if im := m.CarriedImage(id); im != nil {
		var size int64
		for _, l := range im.Layers {
			size += l.Size
		}
		return fmt.Sprintf("carried in the archive (%s of layers)", humanBytes(size))
	}
	return "the restoring state root needs it (crtree image import, or dump --with-image)"
}

func printManifest(w io.Writer, m *archive.Manifest, verified bool, members int) {
	fmt.Fprintf(w, "crtree archive, format %d, created %s\n", m.Version, m.Created.Format("2006-01-02 15:04:05 MST"))
	fmt.Fprintf(w, "crtree %s, CRIU %s, kernel %s, %s\n", m.CrtreeVersion, m.CriuVersion, m.Kernel, m.Arch)
	for i, n := range m.Nodes {
		depth := 0
		for p := n.Parent; p >= 0; p = m.Nodes[p].Parent {
			depth++
		}
		state := "running"
		if !n.Running {
			state = fmt.Sprintf("exited(%d)", n.ExitCode)
		}
		indent := strings.Repeat("    ", depth)
		mem := humanBytes(n.Memory)
		if n.ExtraMemory > 0 {
			mem += " (+" + humanBytes(n.ExtraMemory) + " tmpfs and shared)"
		}
		fmt.Fprintf(w, "%s%s  [%s] hostname %s, memory %s, files %s\n", indent, nodeLabel(m, i), state, n.Hostname, mem, humanBytes(n.Files))
		if n.Spec.Image != "" {
			fmt.Fprintf(w, "%s    image %s (%s): %s\n", indent, n.Spec.ImageName, n.Spec.Image, imageWhere(m, n.Spec.Image))
		}
		if n.Spec.Rootfs != "" {
			fmt.Fprintf(w, "%s    rootfs %s, a host directory (restore with --keep-binds)\n", indent, n.Spec.Rootfs)
		}
		if n.Spec.User != "" {
			fmt.Fprintf(w, "%s    user %s\n", indent, n.Spec.User)
		}
		for _, b := range n.Spec.Binds {
			fmt.Fprintf(w, "%s    bind %s at %s (restore with --bind SRC:%s or --keep-binds)\n", indent, b.Source, b.Target, b.Target)
		}
		for _, p := range n.Procs {
			fmt.Fprintf(w, "%s    pid %d: %s\n", indent, p.PID, p.Cmd)
		}
	}
	if m.TCPEstablished {
		fmt.Fprintln(w, "established TCP connections: dumped with --tcp-established (restore applies it)")
	}
	if verified {
		note := ""
		if u := m.Unchecked(); u != "" {
			note = fmt.Sprintf(" (format version %d: %s)", m.Version, u)
		}
		fmt.Fprintf(w, "verified: %d members, every checksum matches%s\n", members, note)
	}
}

func nodeLabel(m *archive.Manifest, i int) string {
	if i == 0 {
		return "/" + m.Nodes[0].Name
	}
	return m.Nodes[i].Name
}
