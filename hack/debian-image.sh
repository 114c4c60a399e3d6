#!/usr/bin/env bash
# debian-image.sh builds a minimal Debian bookworm root file system with
# python3, with debootstrap (Debian's own tool), from the first mirror the
# machine's apt sources name, and imports it as an image:
#
#   hack/debian-image.sh [NAME]      # default NAME: debian:bookworm-python
#
# Then: crtree run --image debian:bookworm-python /calc -- python3 -c '...'
# Needs root; installs debootstrap if missing. The root file system is
# built in a temporary directory, removed afterwards.
set -euo pipefail
name=${1:-debian:bookworm-python}
crtree=${CRTREE:-$(dirname "$0")/../bin/crtree}
command -v debootstrap >/dev/null || {
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
dir=$(mktemp -d /var/tmp/crtree-debian.XXXXXX)
trap 'rm -rf "$dir"' EXIT
echo "debian-image: debootstrap bookworm from $mirror (a few minutes)" >&2
debootstrap --variant=minbase --include=python3-minimal bookworm "$dir" "$mirror" >/dev/null
"$crtree" image import "$dir" --name "$name"
