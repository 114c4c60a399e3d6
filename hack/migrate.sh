#!/usr/bin/env bash
# migrate.sh: move a crtree subtree to another host over ssh.
#
#   hack/migrate.sh /vserver1 root@hostB /pool
#
# The subtree is checkpointed into one archive streamed through ssh and
# restored under PARENT on the other host, with every name preserved. The
# other host needs crtree and CRIU, and the same /usr and /etc content the
# nodes use. The source subtree is removed only once the archive was
# written completely; if the restore on the other side fails, the archive
# is kept there (as KEEP below) so that nothing is lost.
#
# Environment: SSH (default ssh), REMOTE_CRTREE (default crtree),
# KEEP (default /var/tmp/crtree-migrate-<name>.crtree on the remote host).
set -euo pipefail
if [[ $# -ne 3 ]]; then
	echo "usage: $0 PATH [user@]HOST PARENT" >&2
	exit 2
fi
path=$1 host=$2 parent=$3
ssh=${SSH:-ssh}
remote=${REMOTE_CRTREE:-crtree}
keep=${KEEP:-/var/tmp/crtree-migrate-$(basename "$path").crtree}

# Write the archive to a file on the remote side first (tee), so that a
# failed restore there still leaves the checkpoint on disk.
# The remote command is plain POSIX sh: a pipeline's status is that of its
# last command, crtree restore.
crtree dump "$path" -o - |
	$ssh "$host" "if tee '$keep.partial' | $remote restore - --parent '$parent'; then rm -f '$keep.partial'; else mv '$keep.partial' '$keep'; echo 'restore failed; what arrived of the archive is kept at $keep' >&2; exit 1; fi"
