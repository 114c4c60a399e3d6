package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/image"
)

func newImageCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Import, list and remove the images nodes run on",
		Long: `Images give a node its own root file system (crtree run --image): an image's
layers are unpacked once under the state root, checked against their
digests, and shared read-only by every node that runs on it; each node
writes to a layer of its own above them.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageError{fmt.Errorf("crtree image needs a subcommand: import, ls or rm (see crtree image --help)")}
		},
	}
	cmd.AddCommand(newImageImportCmd(g), newImageLsCmd(g), newImageRmCmd(g))
	return cmd
}

func newImageImportCmd(g *globalOptions) *cobra.Command {
	var o image.ImportOptions
	cmd := &cobra.Command{
		Use:   "import FILE|DIR [--name NAME]",
		Short: "Import an image from an OCI layout or archive, a docker archive or a root file system",
		Long: `Import the image at FILE or DIR, which may be an OCI image layout (a
directory), an OCI archive (podman save --format oci-archive), a docker
archive (docker save, podman save) or a plain root file system (a tarball,
compressed or not, or a directory such as debootstrap makes). The image is
named as its source names it (its tag), else after the file; --name
overrides. An image of the same name is replaced; nodes running on the old
one keep its layers. Prints the image's name and ID (its config's digest).

Device nodes in the image are left out (a node has its own /dev); an entry
that would leave the image's directory, or a layer whose content does not
match its digest, refuses the import.`,
		Example: `  podman save --format oci-archive -o py.tar localhost/py && crtree image import py.tar
  debootstrap --variant=minbase bookworm /tmp/deb && crtree image import /tmp/deb --name debian:bookworm`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.scope != nil {
				return usageError{fmt.Errorf("image import reads host files and cannot be used inside a node")}
			}
			h, err := g.host()
			if err != nil {
				return err
			}
			im, err := h.Images.Import(args[0], o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", im.Name, im.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Name, "name", "", "name the image NAME")
	return cmd
}

// imageEntry is one image as image ls shows it.
type imageEntry struct {
	image.Image
	Nodes []string `json:"nodes"`
}

func newImageLsCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the imported images and the nodes that run on them",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := g.host()
			if err != nil {
				return err
			}
			ims, err := h.Images.List()
			if err != nil {
				return err
			}
			out := []imageEntry{}
			for _, im := range ims {
				out = append(out, imageEntry{im, append([]string{}, h.NodesOnImage(im.ID)...)})
			}
			w := cmd.OutOrStdout()
			if g.JSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tSIZE\tLAYERS\tIMPORTED\tNODES")
			for _, e := range out {
				name := e.Name
				if name == "" {
					name = "<none>" // replaced by a newer import of its name
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", name, e.ShortID(), humanBytes(e.Size), len(e.Layers),
					humanAge(time.Since(e.Imported)), strings.Join(e.Nodes, ","))
			}
			return tw.Flush()
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func newImageRmCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME|ID",
		Short: "Remove an image no node runs on",
		Long: `Remove the image NAME (or ID, or at least 12 digits of it) and the layers no
other image uses. An image a node runs on is refused, naming the nodes.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.scope != nil {
				return usageError{fmt.Errorf("image rm works on the host's images and cannot be used inside a node")}
			}
			h, err := g.host()
			if err != nil {
				return err
			}
			return h.Images.Remove(args[0], h.NodesOnImage)
		},
	}
}
