package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/cgroup"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/network"
	"github.com/crtree/crtree/internal/node"
	"github.com/crtree/crtree/internal/treefs"
)

func newCheckCmd(g *globalOptions) *cobra.Command {
	var lazy bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that this machine can run crtree",
		Long: `Check, one line each, what crtree needs: CRIU and its version (4.2 or
newer), CRIU's own kernel check, a cgroup2 mount with freeze and kill, PID,
mount, UTS, IPC and network namespaces, nsenter, and soft-dirty memory
tracking (only needed for iterative migration). Exits 1 if crtree cannot
work here.`,
		Example: "  crtree check\n  crtree --criu /opt/criu/sbin/criu check",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if lazy {
				return checkLazy(cmd.OutOrStdout(), g)
			}
			if !runChecks(cmd.OutOrStdout(), g) {
				return errors.New("this machine cannot run crtree (see the lines marked missing)")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&lazy, "lazy-pages", false, "check only what a post-copy restore needs (userfaultfd through CRIU); exits 1 without it")
	return cmd
}

// checkLazy checks that CRIU can restore lazily here (migrate --lazy asks
// the far side this before it freezes anything).
func checkLazy(w io.Writer, g *globalOptions) error {
	bin, err := criu.Find(g.Criu)
	if err != nil {
		return err
	}
	f, err := criu.CheckFeatures(bin)
	if err != nil {
		return err
	}
	if !f.LazyPages {
		return errors.New("this machine cannot restore post-copy: CRIU finds no usable userfaultfd (a kernel with CONFIG_USERFAULTFD, and vm.unprivileged_userfaultfd or root)")
	}
	fmt.Fprintln(w, "ok       userfaultfd lazy pages (for post-copy restore)")
	return nil
}

// runChecks prints one line per requirement and reports whether all the
// essential ones are met.
func runChecks(w io.Writer, g *globalOptions) bool {
	good := true
	line := func(ok, essential bool, what string, args ...any) {
		mark := "ok"
		if !ok {
			mark = "missing"
			if !essential {
				mark = "warning"
			}
			good = good && !essential
		}
		fmt.Fprintf(w, "%-8s %s\n", mark, fmt.Sprintf(what, args...))
	}
	bin, err := criu.Find(g.Criu)
	if err != nil {
		line(false, true, "criu: %v", err)
	} else if v, err := criu.Version(bin); err != nil {
		line(false, true, "criu: %s: %v", bin, err)
	} else {
		line(v >= criu.MinVersion, false, "criu: %s, version %s (4.2 or newer needed for TCP/UDP sockets)", bin, criu.FormatVersion(v))
		err := criu.Check(bin)
		line(err == nil, true, "criu check: %s", okOr(err, "looks good"))
		f, err := criu.CheckFeatures(bin)
		line(err == nil && f.MemTrack, false, "soft-dirty memory tracking (for iterative migration): %s", okOrBool(err, f.MemTrack))
		line(err == nil && f.LazyPages, false, "userfaultfd lazy pages (for post-copy restore): %s", okOrBool(err, f.LazyPages))
		lerr := criu.CheckLazyDump(node.HasCapSysResource())
		line(lerr == nil, false, "post-copy page server (migrate --lazy from here): %s", okOr(lerr, "pipes large enough"))
	}
	mnt, err := cgroup.Mountpoint()
	if err != nil {
		line(false, true, "cgroup2: %v", err)
	} else {
		h, herr := g.host()
		feat := "freeze, kill"
		if herr != nil {
			feat = herr.Error()
		} else {
			existed := h.CgroupBase.Exists()
			if err := h.CgroupBase.Mkdir(); err != nil {
				feat = err.Error()
			} else {
				for _, f := range []string{"cgroup.freeze", "cgroup.kill"} {
					if _, err := os.Stat(filepath.Join(h.CgroupBase.Path(), f)); err != nil {
						feat = "no " + f + " (kernel 5.14 or newer needed)"
					}
				}
				if !existed {
					// A check leaves nothing behind.
					h.CgroupBase.Remove()
				}
			}
		}
		line(feat == "freeze, kill", true, "cgroup2: %s (%s)", mnt, feat)
	}
	var missing []string
	for _, ns := range []string{"pid", "mnt", "uts", "ipc", "net"} {
		if _, err := os.Stat("/proc/self/ns/" + ns); err != nil {
			missing = append(missing, ns)
		}
	}
	line(len(missing) == 0, true, "namespaces: pid, mnt, uts, ipc, net%s", listMissing(missing))
	p, err := exec.LookPath("nsenter")
	line(err == nil, true, "nsenter (util-linux, for crtree exec): %s", okOr(err, p))
	line(os.Geteuid() == 0, true, "running as root")
	line(node.HasCapSysResource(), false, "CAP_SYS_RESOURCE (CRIU needs it to dump nodes that run as another user, run --user)")
	plugins, err := network.Plugins(nil)
	line(err == nil, false, "CNI plugins (for run --net bridge): %s", okOr(err, plugins))
	line(treefs.Available() == nil, false, "FUSE (for crtree mount): %s", okOr(treefs.Available(), "/dev/fuse"))
	return good
}

func okOr(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

func okOrBool(err error, b bool) string {
	switch {
	case err != nil:
		return err.Error()
	case b:
		return "supported"
	}
	return "not supported by this kernel"
}

func listMissing(m []string) string {
	if len(m) == 0 {
		return ""
	}
	return fmt.Sprintf(" (missing: %v)", m)
}
