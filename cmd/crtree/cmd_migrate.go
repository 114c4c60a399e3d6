package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/migrate"
	"github.com/crtree/crtree/internal/node"
)

type migrateOptions struct {
	cpOptions
	SSH  string
	Lazy bool
}

func newMigrateCmd(g *globalOptions) *cobra.Command {
	o := &migrateOptions{}
	cmd := &cobra.Command{
		Use:   "migrate PATH TARGET",
		Short: "Move a running subtree to another state root or host",
		Long: `Move the node PATH and every node below it to TARGET while they run
(stop-and-copy): the subtree is frozen and dumped, and the archive is read
as it is written by a crtree restore on the far side, under its parent
there, names preserved. TARGET is

  ssh://[user@]host[:port][/PARENT]   crtree on another host, run through
                                      your own ssh (config, agent), without
                                      prompts: a key, and a host key known
                                      already; the far host needs crtree on
                                      its PATH, and uses its default state
                                      root (/var/lib/crtree)
  local:/STATEROOT[/PARENT]           another state root of this machine
                                      (the longest existing state root of
                                      the path; else a new one, the whole
                                      path)

The source is ended only once the far restore has reported the whole
subtree running. If anything fails before (the far side refuses, the
connection breaks, Ctrl-C while the archive is sent), the far restore
removes what it created and the subtree is thawed and goes on here: a
stop-and-copy migration does not lose the workload. Once the whole
archive is sent, Ctrl-C waits for the far side's answer. If crtree itself
is killed in the moment between the far side's answer and ending the
source, the subtree runs on both sides. The subtree is stopped from the
freeze until the far side runs it; --json reports that (frozen) with the
other phases (downtime; transferred: until everything had arrived). --ssh names a program (a wrapper script for ssh options).

With --lazy (post-copy), the subtree runs on the far side as soon as
everything but its memory has arrived: the downtime does not wait for the
memory to cross. Its memory follows over the same ssh connection (forwarded Unix
sockets, no port opened): pages the processes touch first, the rest in the
background, while the source stays frozen and serves them; once all have
arrived, the source is ended. This has a window plain migration has not:
if the connection breaks, or the source host fails, before the last page
has crossed, the copy there cannot complete. crtree then kills it (none of
its processes ever reads a page that did not come) and removes it, and the
subtree resumes here from the moment it was frozen: what it did there in
the meantime is lost, which the error says; Ctrl-C while the memory is
on its way does the same. Until all the memory has arrived, the far side
refuses commands that would act on the subtree ("is being migrated").
--lazy needs userfaultfd on the far side (crtree check --lazy-pages
there) and, here, pipes of 4 MiB for CRIU's page server (crtree check
says whether). Not with --tcp-established, nor for nodes with a network
of their own.

Established TCP connections move with --tcp-established, if the node
keeps its address on the far side (--net bridge on routed subnets: see the
README).`,
		Example: `  crtree migrate /vserver1 ssh://hostB/pool
  crtree migrate --lazy /vserver1 ssh://hostB/pool
  crtree migrate /vserver1 local:/var/lib/crtree-b/pool
  crtree migrate --name v1 --json /vserver1 ssh://admin@hostB:2222`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := interruptible()
			defer stop()
			if g.scope != nil {
				return usageError{fmt.Errorf("migrate runs ssh or another state root's crtree, which a node cannot: migrate from the host")}
			}
			p, _, err := g.nodePath(args[0])
			if err != nil {
				return err
			}
			target, err := migrate.ParseTarget(args[1], isStateRoot)
			if err != nil {
				return usageError{err}
			}
			if o.Name != "" {
				if err := hier.ValidateName(o.Name); err != nil {
					return usageError{fmt.Errorf("--name: %w", err)}
				}
			}
			h, co, pp, err := o.prepare(g)
			if err != nil {
				return err
			}
			if target.Host == "" && sameDir(target.Root, h.Store.Root) {
				return usageError{fmt.Errorf("migrate: %s is this state root; use crtree mv to move a node within one", target.Root)}
			}
			mo := migrate.Options{Self: node.SelfExe, SSH: o.SSH, Name: o.Name, KeepBinds: o.KeepBinds, Dump: co, Stderr: os.Stderr, Lazy: o.Lazy}
			if o.Lazy && !o.Quiet && !g.JSON {
				mo.Progress = func(sent int64) {
					pp.Done()
					fmt.Fprintf(os.Stderr, "memory: %s sent, the subtree runs there\n", humanBytes(sent))
				}
			}
			rep, err := migrate.Run(ctx, h, p, target, mo)
			pp.Done()
			if err != nil {
				return err
			}
			if g.JSON {
				return writeJSON(cmd.OutOrStdout(), rep)
			}
			if !o.Quiet {
				how := ""
				if rep.Lazy {
					how = fmt.Sprintf(", memory %s after", humanBytes(rep.MemoryBytes))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "migrated %s to %s: %s (downtime %.2fs%s, total %.2fs)\n", g.display(p.String()), rep.Target, rep.Destination, rep.Downtime.Seconds(), how, rep.Total.Seconds())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Name, "name", "", "name of the top node on arrival (default: its name here)")
	f.BoolVar(&o.TCPEstablished, "tcp-established", false, "move established TCP connections too")
	f.StringVar(&o.SSH, "ssh", "ssh", "the ssh command for ssh:// targets")
	f.BoolVar(&o.KeepBinds, "keep-binds", false, "bind the same host paths on the far side (restore --keep-binds)")
	f.BoolVar(&o.Lazy, "lazy", false, "post-copy: run the subtree there before its memory has arrived (see above)")
	f.BoolVarP(&o.Quiet, "quiet", "q", false, "print no progress and no summary")
	addJSONFlag(cmd, g)
	return cmd
}

// sameDir reports whether a and b are one directory (through symlinks,
// say).
func sameDir(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		return a == b
	}
	return os.SameFile(fa, fb)
}

// isStateRoot reports whether dir is a crtree state root (has a tree).
func isStateRoot(dir string) bool {
	_, err := os.Stat(dir + "/tree.json")
	return err == nil
}
