#!/usr/bin/env bash
# install-test-deps.sh installs what the end-to-end tests use besides CRIU:
# python3 (workloads inside nodes) and zstd (archive compatibility check).
# Quiet and idempotent; needs root only when something is missing.
set -euo pipefail
missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v zstd >/dev/null || missing+=(zstd)
command -v nsenter >/dev/null || missing+=(util-linux)
((${#missing[@]} == 0)) && exit 0
echo "install-test-deps: installing ${missing[*]}" >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
