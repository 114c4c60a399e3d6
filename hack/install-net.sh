#!/usr/bin/env bash
# install-net.sh installs what `crtree run --net bridge` uses: the standard
# CNI plugins (Debian's containernetworking-plugins: bridge, host-local,
# portmap) and iptables, which the bridge (ipMasq) and portmap plugins
# drive. Quiet and idempotent; needs root only when something is missing.
set -euo pipefail
missing=()
[[ -x /usr/lib/cni/bridge || -x /opt/cni/bin/bridge ]] || missing+=(containernetworking-plugins)
command -v iptables >/dev/null || missing+=(iptables)
((${#missing[@]} == 0)) && exit 0
echo "install-net: installing ${missing[*]}" >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
