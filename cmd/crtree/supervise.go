package main

import (
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/node"
)

// newSuperviseCmd is the hidden command a node's supervisor runs as.
func newSuperviseCmd(g *globalOptions) *cobra.Command {
	var fromImages, logLevel string
	var tcpEstablished, stream, gate, lazy, lazyArchive bool
	cmd := &cobra.Command{
		Use:    "__supervise ID",
		Hidden: true,
		Args:   exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := g.host()
			if err != nil {
				return err
			}
			var from *node.FromImages
			if fromImages != "" {
				from = &node.FromImages{Dir: fromImages, CriuBin: g.Criu, CriuLogLevel: logLevel, TCPEstablished: tcpEstablished, Stream: stream}
				if gate {
					from.Gate = node.OpenGate()
				}
				if lazy {
					from.LazyPages, from.LazyDone = node.OpenLazy()
				}
				if lazyArchive {
					from.Archive = node.OpenArchive()
				}
			}
			return node.Supervise(h, args[0], from)
		},
	}
	cmd.Flags().StringVar(&fromImages, "from-images", "", "restore the node from the CRIU images in this directory")
	cmd.Flags().StringVar(&logLevel, "criu-log-level", "", "CRIU's log level, 0 to 4")
	cmd.Flags().BoolVar(&tcpEstablished, "tcp-established", false, "restore established TCP connections")
	cmd.Flags().BoolVar(&stream, "stream", false, "CRIU reads the images from the restoring command's image server")
	cmd.Flags().BoolVar(&gate, "gate", false, "hold the restored processes until fd 4 says 'y'")
	cmd.Flags().BoolVar(&lazy, "lazy-pages", false, "restore without memory, fetched from the page server on fd 5; report the end on fd 6")
	cmd.Flags().BoolVar(&lazyArchive, "lazy-archive", false, "restore without memory, served from the archive on fd 7 (restore --lazy)")
	return cmd
}

// newRmStageCmd is the hidden command that removes a staging directory in
// the background (see node.Host.RemoveLater).
func newRmStageCmd(g *globalOptions) *cobra.Command {
	var base string
	cmd := &cobra.Command{
		Use:    "__rmstage DIR",
		Hidden: true,
		Args:   exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return node.RemoveStage(g.Root, base, args[0])
		},
	}
	cmd.Flags().StringVar(&base, "stage-base", "", "the Host.StageBase of the command that staged")
	return cmd
}

// newKeepUffdsCmd is the hidden command that keeps the userfaultfds of a
// post-copy restore for its supervisor (criu.Keep): if the supervisor
// dies before their memory has arrived, it kills the node's processes in
// the cgroup CGROUP first.
func newKeepUffdsCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "__keep-uffds CGROUP",
		Hidden: true,
		Args:   exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn := os.NewFile(3, "keeper")
			return criu.Keep(conn, func() error {
				return cgroup.Group(args[0]).KillWait(10 * time.Second)
			})
		},
	}
}
