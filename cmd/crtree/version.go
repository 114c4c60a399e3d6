package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/checkpoint"
	"github.com/crtree/crtree/internal/criu"
)

// setVersion gives the root command --version: crtree's version, the
// commit it was built from (when the build recorded it) and the CRIU it
// would use, found only when asked.
func setVersion(cmd *cobra.Command, g *globalOptions) {
	cmd.Version = checkpoint.Version
	cobra.AddTemplateFunc("crtreeBuild", buildInfo)
	cobra.AddTemplateFunc("crtreeCriu", func() string { return criuInfo(g.Criu) })
	cmd.SetVersionTemplate("crtree {{.Version}}{{crtreeBuild}}\nCRIU: {{crtreeCriu}}\n")
}

// buildInfo is " (commit X[, modified])" from the build's VCS stamp.
func buildInfo() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return ""
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		return fmt.Sprintf(" (commit %s, modified)", rev)
	}
	return fmt.Sprintf(" (commit %s)", rev)
}

// criuInfo says which CRIU crtree would run and its version, or why none.
func criuInfo(path string) string {
	bin, err := criu.Find(path)
	if err != nil {
		return err.Error()
	}
	v, err := criu.Version(bin)
	if err != nil {
		return fmt.Sprintf("%s (%v)", bin, err)
	}
	return fmt.Sprintf("%s %s", bin, criu.FormatVersion(v))
}
