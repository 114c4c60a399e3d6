#!/usr/bin/env bash
# install-test-deps.sh installs what the end-to-end tests use besides CRIU:
# python3 (workloads inside nodes), zstd (archive compatibility check),
# nsenter and nft (to check and lift CRIU's TCP network locks), a static
# busybox (the shell and tools of the images the tests build), OpenSSH's
# server and client (crtree migrate over ssh, to an sshd the test starts).
# Quiet and idempotent; needs root only when something is missing.
set -euo pipefail
missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v zstd >/dev/null || missing+=(zstd)
command -v nsenter >/dev/null || missing+=(util-linux)
command -v nft >/dev/null || missing+=(nftables)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
((${#missing[@]} == 0)) && exit 0
echo "install-test-deps: installing ${missing[*]}" >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
