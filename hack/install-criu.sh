#!/usr/bin/env bash
# install-criu.sh makes a working CRIU >= 4.2 available as `criu` on PATH.
#
# If the `criu` already on PATH is 4.2 or newer and `criu check` passes, it
# is used as is and nothing is installed. Otherwise Debian testing's CRIU
# (the versions pinned in hack/criu-forky.lock) and its library closure are
# downloaded from the Debian mirror the system already uses, unpacked into a
# private prefix, and started through that prefix's own dynamic loader, so
# the host's glibc and the host's apt state are left untouched.
#
# Environment:
#   CRIU_PREFIX   where the private CRIU lives   (default /opt/crtree-criu)
#   CRIU_BINDIR   where the `criu` wrapper goes (default /usr/local/sbin)
#   CRIU_SUITE    the Debian suite to take it from (default forky)
#
# Usage: hack/install-criu.sh            install if needed (idempotent, quiet)
#        hack/install-criu.sh --relock   re-resolve the closure and rewrite the lock file
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
lock="$here/criu-forky.lock"
prefix=${CRIU_PREFIX:-/opt/crtree-criu}
bindir=${CRIU_BINDIR:-/usr/local/sbin}
suite=${CRIU_SUITE:-forky}
min_major=4 min_minor=2

die() { echo "install-criu: $*" >&2; exit 1; }

# criu_ok CMD: true when CMD is CRIU >= 4.2 and `criu check` passes.
criu_ok() {
	local v
	v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *//p') || return 1
	[[ -n "$v" ]] || return 1
	local major=${v%%.*} rest=${v#*.}
	local minor=${rest%%.*}
	(( major > min_major || (major == min_major && minor >= min_minor) )) || return 1
	"$1" check >/dev/null 2>&1
}

relock=0
[[ "${1:-}" == "--relock" ]] && relock=1

if (( ! relock )); then
	if c=$(command -v criu) && criu_ok "$c"; then
		exit 0
	fi
fi
[[ $(id -u) == 0 ]] || die "must run as root to install CRIU (try: sudo $0)"
[[ $(dpkg --print-architecture) == amd64 ]] || die "only amd64 is supported by this installer; install CRIU >= 4.2 from your distribution"

# The mirror the system already uses, so that no new host is contacted.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
	sed -nE 's/^(URIs:|deb(-src)?( \[[^]]*\])?)[[:space:]]+(https?:\/\/[^ ]+\/debian\/?)([[:space:]].*)?$/\4/p' | head -n1 || true)
[[ -n "$mirror" ]] || die "no Debian mirror found in /etc/apt/sources.list or sources.list.d; configure one, or install CRIU >= 4.2 yourself"
mirror=${mirror%/}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$work/sources.list"
apt_opts=(
	-oDir::Etc::SourceList="$work/sources.list" -oDir::Etc::SourceParts=/dev/null
	-oDir::State::Lists="$work/lists" -oDir::Cache="$work/cache"
	-oDir::State::status=/dev/null -oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
	-oAPT::Sandbox::User=root -qq
)
echo "install-criu: fetching CRIU from Debian $suite into $prefix" >&2
apt-get "${apt_opts[@]}" update >/dev/null 2>&1 || true
compgen -G "$work/lists/*_Packages*" >/dev/null || die "could not read the package index of Debian $suite from $mirror (no network to the mirror?)"

if (( relock )); then
	apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances criu | grep -E '^[a-z0-9]' | sort -u |
		while read -r p; do
			echo "$p $(apt-cache "${apt_opts[@]}" show --no-all-versions "$p" | sed -n 's/^Version: //p' | head -n1)"
		done >"$lock"
	echo "install-criu: wrote $lock" >&2
fi

pkgs=()
while read -r name version; do
	[[ -z "$name" || "$name" == \#* ]] && continue
	pkgs+=("$name=$version")
done <"$lock"
(cd "$work/debs" && apt-get "${apt_opts[@]}" download "${pkgs[@]}" >/dev/null 2>"$work/download.err") ||
	die "the mirror no longer has the pinned CRIU packages ($(grep -m1 -o 'E: .*' "$work/download.err" || echo unknown error)); run '$0 --relock' to pin the suite's current versions"

rm -rf "$prefix.new"
mkdir -p "$prefix.new"
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$prefix.new"; done
rm -rf "$prefix"
mv "$prefix.new" "$prefix"

libdir="$prefix/usr/lib/x86_64-linux-gnu"
mkdir -p "$bindir"
cat >"$bindir/criu.new" <<WRAP
#!/bin/sh
# CRIU $(grep '^criu ' "$lock" | cut -d' ' -f2) from Debian $suite, run with its own loader and libraries (installed by crtree's hack/install-criu.sh).
exec $libdir/ld-linux-x86-64.so.2 --library-path $libdir $prefix/usr/sbin/criu "\$@"
WRAP
chmod 755 "$bindir/criu.new"
mv "$bindir/criu.new" "$bindir/criu"

criu_ok "$bindir/criu" || die "installed $bindir/criu but 'criu check' fails: $("$bindir/criu" check 2>&1 | tail -n1)"
echo "install-criu: $("$bindir/criu" --version | head -n1) ready at $bindir/criu" >&2
