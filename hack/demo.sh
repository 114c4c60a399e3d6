#!/usr/bin/env bash
# demo.sh: a small tour of crtree on this machine, in a throw-away state
# root. It builds a tree, enters a node, renames one, dumps the tree into
# one archive, restores it under another parent and as a clone, migrates
# it to a second state root (another "host"), shows the counters going on,
# mounts the tree as a file system and uses it with cp, rm -rf and find,
# and cleans up everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x bin/crtree ]] || { echo "demo: build first (make build)" >&2; exit 1; }
export PATH=$PWD/bin:$PATH
crtree=crtree

work=$(mktemp -d /tmp/crtree-demo.XXXXXX)
export CRTREE_ROOT=$work/hostA
hostB=$work/hostB
cleanup() {
	umount -l "$work/tree" 2>/dev/null || true
	for r in "$CRTREE_ROOT" "$hostB"; do
		for top in $(CRTREE_ROOT=$r "$crtree" ls --json 2>/dev/null | sed -n 's/^ *"path": "\(\/[^/"]*\)",$/\1/p'); do
			CRTREE_ROOT=$r "$crtree" rm -r -f "$top" || true
		done
		CRTREE_ROOT=$r "$crtree" gc >/dev/null 2>&1 || true
	done
	rm -rf "$work" 2>/dev/null || { sleep 1; rm -rf "$work"; }
}
trap cleanup EXIT
# on_hostB runs crtree against the second state root, as on another host.
on_hostB() { CRTREE_ROOT=$hostB crtree "$@"; }

step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; "$@"; }
counter='i=0; while :; do i=$((i+1)); echo "count $i"; sleep 0.5; done'

step "$crtree" check
step "$crtree" run /vserver1 -- sleep infinity
step "$crtree" run /vserver1/calculate_pi -- sh -c "$counter"
step "$crtree" run /vserver1/backup -- sh -c "$counter"
step "$crtree" run /vserver1/ -- sleep infinity
step "$crtree" mv /vserver1/unnamed1 /vserver1/sergeprivhome
step "$crtree" tree
step "$crtree" exec /vserver1/calculate_pi -- sh -c 'echo "inside: hostname=$(hostname), my command is PID 1: $(cat /proc/1/cmdline | tr "\0" " ")"'
step "$crtree" ps /vserver1/calculate_pi
sleep 2
echo; echo "calculate_pi has been counting:"
step "$crtree" logs /vserver1/calculate_pi | tail -n 2

step "$crtree" dump /vserver1 -o "$work/v1.crtree"
step "$crtree" inspect "$work/v1.crtree"
step "$crtree" run /pool -- sleep infinity
step "$crtree" restore "$work/v1.crtree" --parent /pool
step "$crtree" restore "$work/v1.crtree" --name vserver1-clone
step "$crtree" tree
sleep 2
echo; echo "The restored counter went on from where it was dumped (no restart at 1):"
step "$crtree" logs /pool/vserver1/calculate_pi | tail -n 4

echo; echo "Migrate /pool/vserver1 to another state root, as to another host:"
printf '\n\033[1m$ crtree dump /pool/vserver1 -o - | CRTREE_ROOT=hostB crtree restore - --parent /\033[0m\n' >&2
"$crtree" dump /pool/vserver1 -o - | on_hostB restore - --parent /
step on_hostB tree
sleep 1.5
step on_hostB logs /vserver1/calculate_pi | tail -n 3

echo; echo "The tree as a file system:"
mkdir "$work/tree"
step "$crtree" mount "$work/tree"
step ls "$work/tree" "$work/tree/pool"
step cat "$work/tree/vserver1-clone/calculate_pi/.state"
step cp "$work/tree/vserver1-clone/.checkpoint" "$work/clone.crtree"
step cp "$work/clone.crtree" "$work/tree/pool/clone2"
step rm -rf "$work/tree/vserver1-clone"
step find "$work/tree" -type d
step "$crtree" umount "$work/tree"

step "$crtree" ls -r
echo; echo "demo: done; cleaning up"
