#!/usr/bin/env bash
# install-fuse.sh makes what `crtree mount` uses available: the kernel's
# FUSE device (/dev/fuse, module fuse) and Debian's fuse3, whose
# fusermount3 unmounts a tree as well as umount(8) and crtree umount do.
# Quiet and idempotent; needs root only when something is missing.
set -euo pipefail
[[ -c /dev/fuse ]] || modprobe fuse 2>/dev/null || true
if [[ ! -c /dev/fuse ]]; then
	echo "install-fuse: /dev/fuse is missing and the fuse module could not be loaded: crtree mount needs FUSE" >&2
	exit 1
fi
command -v fusermount3 >/dev/null && exit 0
echo "install-fuse: installing fuse3" >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
