package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// globalOptions are the flags every command shares.
type globalOptions struct {
	Root string
	Criu string
	JSON bool
	// env is what the environment asks for beyond the flags.
	env tuning
	// scope is set inside a node (see scope.go).
	scope *scope
}

// tuning is what crtree takes from the environment besides CRTREE_ROOT
// and CRTREE_CRIU: switches for measuring and working around, read here
// once and passed down as options.
type tuning struct {
	// NoStream (CRTREE_NO_STREAM=1) stages CRIU's images in files on dump
	// and restore instead of streaming them.
	NoStream bool
	// NoDirect (CRTREE_NO_DIRECT=1) reads and writes archives through the
	// page cache, never with O_DIRECT.
	NoDirect bool
	// StageDir (CRTREE_STAGE_DIR) is where staged images go, instead of
	// the state root's choice.
	StageDir string
	// CriuLogLevel (CRTREE_CRIU_LOG_LEVEL=0..4) is CRIU's -v level; ""
	// (or anything else) keeps crtree's default.
	CriuLogLevel string
}

// readTuning reads the tuning variables.
func readTuning() tuning {
	t := tuning{
		NoStream: os.Getenv("CRTREE_NO_STREAM") != "",
		NoDirect: os.Getenv("CRTREE_NO_DIRECT") != "",
		StageDir: os.Getenv("CRTREE_STAGE_DIR"),
	}
	if v := os.Getenv("CRTREE_CRIU_LOG_LEVEL"); v != "" {
		if _, err := criu.ParseLogLevel(v); err == nil {
			t.CriuLogLevel = v
		}
	}
	return t
}

// host opens the state root, first undoing what crtree commands killed
// mid-way left behind (frozen nodes, staging, partial archives).
func (o *globalOptions) host() (*node.Host, error) {
	h, err := o.openHost()
	if err != nil {
		return nil, err
	}
	h.Recover()
	return h, nil
}

// openHost opens the state root with the options of this command.
func (o *globalOptions) openHost() (*node.Host, error) {
	h, err := node.NewHost(o.Root)
	if err != nil {
		return nil, err
	}
	h.StageBase, h.Env = o.env.StageDir, os.Environ()
	return h, nil
}

func newRootCmd() *cobra.Command {
	g := &globalOptions{env: readTuning()}
	cmd := &cobra.Command{
		Use:   "crtree",
		Short: "A named tree of containers, checkpointed and restored with CRIU",
		Long: `crtree keeps a named hierarchy of containers, like a file system:
/vserver1, /vserver1/calculate_pi, /vserver2/calculate_pi. A node is a set of
Linux namespaces (PID, mount, UTS, IPC; network optional) and its processes.

Exit status: 0 on success, 1 when the command failed, 2 when it was called
wrongly; crtree exec exits with the status of the command it ran.`,
		Example: `  crtree run /vserver1 -- sleep infinity
  crtree run /vserver1/calculate_pi -- sh -c 'while :; do sleep 1; done'
  crtree tree
  crtree kill -r -s KILL /vserver1`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// Errors are one line; --help lists the commands.
		DisableSuggestions: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return g.loadScope(cmd)
		},
	}
	errorScrubber = g.scrub
	setVersion(cmd, g)
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	def := os.Getenv("CRTREE_ROOT")
	if def == "" {
		def = hier.DefaultRoot
	}
	criu := os.Getenv("CRTREE_CRIU")
	cmd.PersistentFlags().StringVar(&g.Root, "root", def, "state root directory (env CRTREE_ROOT)")
	cmd.PersistentFlags().StringVar(&g.Criu, "criu", criu, "path of the criu binary (env CRTREE_CRIU; default: criu on PATH)")
	cmd.AddCommand(
		newRunCmd(g), newLsCmd(g), newTreeCmd(g), newPsCmd(g), newExecCmd(g),
		newLogsCmd(g), newKillCmd(g), newRmCmd(g), newMvCmd(g), newCheckCmd(g),
		newDumpCmd(g), newRestoreCmd(g), newMigrateCmd(g), newInspectCmd(g), newGCCmd(g),
		newImageCmd(g), newMountCmd(g), newUmountCmd(g),
		newSuperviseCmd(g), newRmStageCmd(g), newKeepUffdsCmd(), newServeTreeCmd(g),
	)
	return cmd
}

// addJSONFlag adds --json to a command whose output is a table.
func addJSONFlag(cmd *cobra.Command, g *globalOptions) {
	cmd.Flags().BoolVar(&g.JSON, "json", false, "print JSON instead of a table")
}

// parseNodePath parses a path argument; a bad one is a usage error.
func parseNodePath(s string) (hier.Path, bool, error) {
	p, dir, err := hier.ParsePath(s)
	if err != nil {
		return nil, false, usageError{err}
	}
	return p, dir, nil
}

// exactArgs is cobra.ExactArgs with usage errors.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func rangeArgs(min, max int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.RangeArgs(min, max)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
