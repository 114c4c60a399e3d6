package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/crtree/crtree/internal/checkpoint"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/migrate"
	"github.com/crtree/crtree/internal/node"
)

type cpOptions struct {
	Output         string
	LeaveRunning   bool
	TCPEstablished bool
	Quiet          bool
	Parent         string
	Name           string
	Binds          []string
	KeepBinds      bool
	KeepPorts      bool
	GhostLimit     sizeValue
	WithImage      bool
	// LazyPagesFrom is where the far side of a post-copy migration
	// fetches memory (restore's hidden --lazy-pages-from).
	LazyPagesFrom string
	// Lazy is restore --lazy: memory fed from the archive file while
	// the nodes run.
	Lazy bool
}

// maxGhostLimit is the largest --ghost-limit (what CRIU's RPC carries).
const maxGhostLimit = 4 << 30

// sizeValue is a flag's size in bytes, given as a number of bytes or with
// a binary unit: 512K, 64M, 1G (also 64MiB, 64MB, lowercase).
type sizeValue int64

func (v *sizeValue) String() string { return humanBytes(int64(*v)) }
func (v *sizeValue) Type() string   { return "SIZE" }

func (v *sizeValue) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*v = sizeValue(n)
	return nil
}

// parseSize reads a positive size: digits and an optional unit K, M, G
// or T (powers of 1024), which may be followed by iB or B.
func parseSize(s string) (int64, error) {
	bad := fmt.Errorf("want a size such as 64M or 1G")
	m := sizeRE.FindStringSubmatch(strings.ToUpper(s))
	if m == nil {
		return 0, bad
	}
	sh := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m[2]]
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64>>sh {
		return 0, bad
	}
	return n << sh, nil
}

var sizeRE = regexp.MustCompile(`^([0-9]+)(?:([KMGT])(?:I?B)?|B?)$`)

// restoreTarget builds where and how a restore puts the subtree.
func (o *cpOptions) restoreTarget(g *globalOptions, parent hier.Path) (checkpoint.RestoreTarget, error) {
	t := checkpoint.RestoreTarget{Parent: parent, Name: o.Name, KeepBinds: o.KeepBinds, KeepPorts: o.KeepPorts, InNode: g.scope != nil}
	if g.scope != nil && (len(o.Binds) > 0 || o.KeepBinds) {
		return t, usageError{fmt.Errorf("--bind and --keep-binds name host paths and cannot be used inside a node")}
	}
	if g.scope != nil && o.KeepPorts {
		return t, usageError{fmt.Errorf("--keep-ports opens the host's ports and cannot be used inside a node")}
	}
	if o.Name != "" {
		if err := hier.ValidateName(o.Name); err != nil {
			return t, usageError{fmt.Errorf("restore: --name: %w", err)}
		}
	}
	for _, arg := range o.Binds {
		b, err := parseBind(arg, false)
		if err != nil {
			return t, usageError{err}
		}
		t.Binds = append(t.Binds, b)
	}
	return t, nil
}

// prepare finds CRIU, opens the state root and builds the checkpoint
// options, with a progress line on stderr when it is a terminal (and not
// --quiet).
func (o *cpOptions) prepare(g *globalOptions) (*node.Host, checkpoint.Options, *progressPrinter, error) {
	bin, err := criu.Find(g.Criu)
	if err != nil {
		return nil, checkpoint.Options{}, nil, err
	}
	h, err := g.host()
	if err != nil {
		return nil, checkpoint.Options{}, nil, err
	}
	co := checkpoint.Options{CriuBin: bin, LeaveRunning: o.LeaveRunning, TCPEstablished: o.TCPEstablished, InNode: g.scope != nil, GhostLimit: int64(o.GhostLimit),
		WithImage: o.WithImage, NoStream: g.env.NoStream, NoDirect: g.env.NoDirect, CriuLogLevel: g.env.CriuLogLevel}
	var pp *progressPrinter
	if !o.Quiet && term.IsTerminal(int(os.Stderr.Fd())) {
		pp = newProgressPrinter(os.Stderr)
		co.Progress = pp.Update
	}
	return h, co, pp, nil
}

func newDumpCmd(g *globalOptions) *cobra.Command {
	o := &cpOptions{}
	cmd := &cobra.Command{
		Use:   "dump PATH -o FILE|-",
		Short: "Checkpoint a node and all its descendants into one archive",
		Long: `Checkpoint the node PATH and every node below it into one zstd-compressed
archive: the subtree is frozen at one instant, each running node is dumped by
CRIU (in parallel), each node's own files are packed while still frozen, and
the archive is written to FILE (an unnamed file that takes the name when
complete) or to stdout with -o -. As with tar, a symlink FILE is followed,
and an existing FIFO or character device is written to, not replaced; a
socket, block device or directory is refused.

Only once the archive is complete are the subtree's processes killed and its
nodes removed; with --leave-running the subtree is thawed and goes on. If
anything fails, or Ctrl-C (SIGINT) or SIGTERM stops the dump before the
archive is complete, the subtree is thawed and keeps running, no archive is
left under FILE, and crtree exits 1 (130 or 143 when stopped).

Refused up front, with the reason, and nothing touched: a subtree another
crtree command holds (being dumped or restored), a node with a crtree exec
still attached, and inside a node the node itself (dump its children, or
dump it from outside) and nodes with binds (a restore from there could not
provide them) unless --leave-running.

A node on an image (run --image) is archived as its own changes to the
image (what it wrote and deleted) with the image's ID: a restore needs that
image on the restoring state root (crtree image import), unless the dump
ran with --with-image. That carries the images the subtree's nodes run on
(their layers, uncompressed before the archive's compression, each once
however many nodes share it) after everything else, so that one file
restores on a state root or host that never saw them; it costs the layers'
size, and with --leave-running no frozen time (the workload runs again
before they are written).

With --tcp-established, CRIU dumps established TCP connections too. Without
--leave-running, CRIU then kills the processes itself once the archive is
complete: the peers get neither FIN nor RST, the connections stay locked
(nftables table "inet CRIU-...") until restore --tcp-established lifts the
lock, here or on a state root of this machine; if the dump fails, the lock
is lifted and the connections go on.

A file the processes hold open after it was deleted (a temporary file) is
carried in the archive if it is at most --ghost-limit (default 1G); a larger
one fails the dump, and the subtree goes on.

CRIU hands the memory pages to crtree, which archives them as they come
(nothing is staged). With --leave-running, CRIU writes them to a staging
directory in memory first, so that the subtree is frozen no longer than
CRIU takes. CRTREE_NO_STREAM=1 stages them in every case.`,
		Example: `  crtree dump /vserver1 -o v1.crtree
  crtree dump --leave-running /vserver1/calculate_pi -o pi.crtree
  crtree dump --with-image /calc -o calc.crtree     # restores where the image is not
  crtree dump /a -o - | ssh hostB crtree restore - --parent /b`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// From the start: a Ctrl-C undoes what was done so far.
			ctx, stop := interruptible()
			defer stop()
			p, _, err := g.nodePath(args[0])
			if err != nil {
				return err
			}
			if g.isSelf(p) {
				// CRIU cannot dump this command's own connection to
				// crtree, and a dump that removed the node would end
				// the command that asked for it.
				return fmt.Errorf("dump %s: cannot dump the node this command runs in; dump it from outside (its parent or the host), or dump its children", args[0])
			}
			if o.Output == "" {
				return usageError{fmt.Errorf("dump needs -o FILE (or -o - for stdout)")}
			}
			if o.GhostLimit > maxGhostLimit {
				return usageError{fmt.Errorf("dump --ghost-limit %s: at most 4G (CRIU's limit)", o.GhostLimit.String())}
			}
			h, co, pp, err := o.prepare(g)
			if err != nil {
				return err
			}
			var out checkpoint.Output
			if o.Output == "-" {
				if term.IsTerminal(int(os.Stdout.Fd())) {
					return usageError{fmt.Errorf("refusing to write an archive to a terminal; redirect stdout or use -o FILE")}
				}
				out = checkpoint.StreamOutput{W: os.Stdout}
			} else {
				fo, err := g.createOutput(o.Output)
				if err != nil {
					return err
				}
				out = fo
			}
			rep, err := checkpoint.Dump(ctx, h, p, out, co)
			pp.Done()
			if err != nil {
				out.Abort()
				return err
			}
			return printReport(reportWriter(o.Output), g, o.Quiet, "dumped", rep)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.Output, "output", "o", "", "archive file, or - for stdout")
	f.BoolVar(&o.LeaveRunning, "leave-running", false, "keep the subtree running after the dump")
	f.BoolVar(&o.TCPEstablished, "tcp-established", false, "checkpoint established TCP connections too (locked until restored)")
	o.GhostLimit = checkpoint.DefaultGhostLimit
	f.Var(&o.GhostLimit, "ghost-limit", "largest deleted-but-open file carried in the archive, such as 64M or 2G (at most 4G)")
	f.BoolVar(&o.WithImage, "with-image", false, "carry the images the nodes run on, so that a state root without them can restore the archive")
	f.BoolVarP(&o.Quiet, "quiet", "q", false, "print no progress and no summary")
	addJSONFlag(cmd, g)
	return cmd
}

// importedName is how the restore's summary names an image it imported.
func importedName(im checkpoint.Imported) string {
	switch {
	case im.Named:
		return im.Name + " (" + im.ID + ")"
	case im.Name != "":
		return im.ID + " (without its name " + im.Name + ": another image has it here, or the restore ran inside a node)"
	}
	return im.ID
}

// reportWriter is where a summary goes: stderr when stdout carries the
// archive.
func reportWriter(output string) io.Writer {
	if output == "-" {
		return os.Stderr
	}
	return os.Stdout
}

func printReport(w io.Writer, g *globalOptions, quiet bool, verb string, rep *checkpoint.Report) error {
	rep.Path = g.display(rep.Path)
	for i := range rep.Nodes {
		rep.Nodes[i].Path = g.display(rep.Nodes[i].Path)
	}
	if g.JSON {
		return writeJSON(w, rep)
	}
	if quiet {
		return nil
	}
	fmt.Fprintf(w, "%s %s: %d node(s), %s of images and %s of files", verb, rep.Path, len(rep.Nodes), humanBytes(rep.ImageBytes), humanBytes(rep.FileBytes))
	if rep.CarriedBytes > 0 {
		fmt.Fprintf(w, ", %s of container images", humanBytes(rep.CarriedBytes))
	}
	if rep.ArchiveBytes > 0 {
		fmt.Fprintf(w, " in a %s archive", humanBytes(rep.ArchiveBytes))
	}
	fmt.Fprintf(w, " (%.2fs", rep.Total.Seconds())
	if rep.Frozen > 0 {
		fmt.Fprintf(w, ", frozen %.2fs", rep.Frozen.Seconds())
	}
	fmt.Fprintln(w, ")")
	return nil
}

func newRestoreCmd(g *globalOptions) *cobra.Command {
	o := &cpOptions{}
	cmd := &cobra.Command{
		Use:   "restore FILE|- [--parent PATH] [--name NAME]",
		Short: "Restore an archived subtree under a parent, names preserved",
		Long: `Recreate the subtree archived in FILE (or read from stdin with -) under
PATH (default /), with its top node named NAME if given and every other name
as it was. Parents are restored before children, and the processes continue
from where they were checkpointed. The same archive can be restored any
number of times (--name for clones side by side), here or on another host
with the same /usr and /etc.

Binds (run --bind) are host paths, which an archive may not choose: a node
that had binds is restored only with --bind SRC:DST for each of its mount
points (any host path) or --keep-binds (the host paths the archive names,
which crtree inspect lists). From inside a node, neither is allowed and an
archive with binds is refused.

A name that is already taken is refused before anything is created; if the
restore fails at any point, or Ctrl-C (SIGINT) or SIGTERM stops it, every
node it created is removed (exit status 1, or 130 or 143 when stopped). No restored
process runs before the whole archive has been verified (with --lazy: before
all it uses has been, below). From a file, CRIU
starts at once and reads the memory pages as they come off the disk; from
stdin, the archive is unpacked first. CRTREE_NO_STREAM=1 unpacks files
first too.

A --net bridge node gets the address and MAC it had on this state root's
bridge if they are free (a restore after the original is gone, as
--tcp-established needs), else new ones (a clone beside its original);
then sockets bound to the old address come back but get no traffic, and
restore warns. The ports it published are published again only with
--keep-ports (not from inside a node): the host's ports are the restoring
side's to open.

A node on an image needs that image on this state root (crtree image ls):
the archive's own copy if it carries it (dump --with-image), which is then
imported (each layer checked against its digest; an image name already
used here is not taken over: the image is then known by its ID only), or
one imported before. Otherwise the restore is refused, naming the image.
An archive that brings an image this state root lacks is unpacked first,
then restored; a restore from inside a node imports images without names.

--lazy (from a file, not stdin, nor with CRTREE_NO_STREAM=1; an archive
of format version 4, which has a page table) restores post-copy: the subtree runs as soon as all but
its memory is restored, and each node's supervisor then feeds the node's
memory from the archive while it runs, faulted in on first touch and
pushed in the background. Each 32 MiB piece of memory is checked against
the archive's checksums before any page of it is used; a piece found
damaged kills its node (what ran before had seen verified pages only; the
node's supervisor.log says why). Until its memory has all arrived a node
shows "(memory arriving)" in ls and may not be dumped, entered (exec),
renamed or given children; kill and rm end it as usual. The archive file
is kept open until then.`,
		Example: `  crtree restore v1.crtree --parent /pool
  crtree restore v1.crtree --name v1clone
  crtree restore --bind /srv/data:/data web.crtree     # its bind at /data, from /srv/data
  crtree restore --lazy big.crtree                      # runs at once, memory fed from the file
  ssh hostA crtree dump /a -o - | crtree restore - --parent /b`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// From the start: a Ctrl-C undoes what was done so far.
			ctx, stop := interruptible()
			defer stop()
			parent, _, err := g.nodePath(o.Parent)
			if err != nil {
				return err
			}
			target, err := o.restoreTarget(g, parent)
			if err != nil {
				return err
			}
			h, co, pp, err := o.prepare(g)
			if err != nil {
				return err
			}
			in, closeIn, err := g.openInput(args[0])
			if err != nil {
				return err
			}
			defer closeIn()
			if o.Lazy {
				switch {
				case o.LazyPagesFrom != "":
					return usageError{fmt.Errorf("restore: --lazy and --lazy-pages-from: the memory comes from one or the other")}
				case args[0] == "-":
					return usageError{fmt.Errorf("restore: %w", checkpoint.ErrLazyNeedsFile)}
				}
				co.LazyFromFile = true
			}
			if o.LazyPagesFrom != "" {
				if g.scope != nil {
					return usageError{fmt.Errorf("--lazy-pages-from: not inside a node")}
				}
				co.Lazy = migrate.NewPageDialer(o.LazyPagesFrom)
				defer migrate.RemoveForwardedSocket(o.LazyPagesFrom)
			}
			rep, err := checkpoint.Restore(ctx, h, in, target, co)
			pp.Done()
			if err != nil {
				return err
			}
			if !g.JSON && !o.Quiet {
				for _, n := range rep.Nodes {
					if n.Warning != "" {
						fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s: %s\n", g.display(n.Path), n.Warning)
					}
				}
				for _, im := range rep.Imported {
					fmt.Fprintf(cmd.ErrOrStderr(), "imported image %s from the archive (%.2fs)\n", importedName(im), rep.ImportTime.Seconds())
				}
			}
			if rep.Transfer != nil {
				return awaitMemory(cmd, g, rep)
			}
			if !g.JSON && !o.Quiet {
				fmt.Fprintln(cmd.OutOrStdout(), g.display(rep.Path))
				if o.Lazy {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s runs; its memory is read from %s meanwhile (ls says \"memory arriving\" until it has all arrived)\n", g.display(rep.Path), args[0])
				}
				return nil
			}
			return printReport(cmd.OutOrStdout(), g, o.Quiet, "restored", rep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Parent, "parent", "/", "parent to restore under")
	f.StringVar(&o.Name, "name", "", "name of the restored top node (default: its archived name)")
	f.BoolVar(&o.TCPEstablished, "tcp-established", false, "restore established TCP connections (and lift the dump's lock); applied by itself to an archive dumped with it")
	f.StringArrayVar(&o.Binds, "bind", nil, "provide archived binds at DST from host path SRC, SRC:DST (repeatable)")
	f.BoolVar(&o.KeepBinds, "keep-binds", false, "bind the host paths the archive names again (crtree inspect lists them)")
	f.BoolVar(&o.KeepPorts, "keep-ports", false, "publish the ports the archive's --net bridge nodes published again (by default they are restored unpublished)")
	f.BoolVarP(&o.Quiet, "quiet", "q", false, "print no progress")
	f.BoolVar(&o.Lazy, "lazy", false, "post-copy: run the subtree at once and feed its memory from FILE meanwhile, each piece verified before use")
	f.StringVar(&o.LazyPagesFrom, "lazy-pages-from", "", "post-copy: fetch the memory from the migrating crtree's page relay at this socket (used by crtree migrate --lazy)")
	f.MarkHidden("lazy-pages-from")
	addJSONFlag(cmd, g)
	return cmd
}

// awaitMemory is the rest of the far side of a post-copy migration: it
// says where the subtree runs (the migrating side's signal that it runs
// here), then waits for its memory, through a broken connection or a
// hangup too (the subtree must be killed if its memory cannot all come).
func awaitMemory(cmd *cobra.Command, g *globalOptions, rep *checkpoint.Report) error {
	fmt.Fprintln(cmd.OutOrStdout(), g.display(rep.Path))
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE, syscall.SIGINT, syscall.SIGTERM)
	if err := rep.Transfer.Wait(); err != nil {
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "the memory of %s arrived (%.2fs after the restore began)\n", g.display(rep.Path), rep.Memory.Seconds())
	return nil
}
