#!/usr/bin/env bash
# image-demo.sh: python3 from a Debian image (hack/debian-image.sh builds it
# with debootstrap) computes pi in a node on one state root; the node is
# dumped --with-image and restored on a second state root that has never
# seen the image, where it goes on computing. Cleans up everything it
# started; the image's root file system is built in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x bin/crtree ]] || { echo "image-demo: build first (make build)" >&2; exit 1; }
export PATH=$PWD/bin:$PATH

work=$(mktemp -d /var/tmp/crtree-image-demo.XXXXXX)
export CRTREE_ROOT=$work/hostA
hostB=$work/hostB
cleanup() {
	for r in "$CRTREE_ROOT" "$hostB"; do
		CRTREE_ROOT=$r crtree rm -r -f /calc >/dev/null 2>&1 || true
		CRTREE_ROOT=$r crtree gc >/dev/null 2>&1 || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
on_hostB() { CRTREE_ROOT=$hostB crtree "$@"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; "$@"; }

# Gibbons' unbounded spigot: the digits of pi, ten to a line, one every
# 20 ms, for ever.
pi='import time
q, r, t, k, n, l, line = 1, 0, 1, 1, 3, 3, ""
while True:
    if 4*q + r - t < n*t:
        line += str(n)
        if len(line) == 10:
            print(line, flush=True); line = ""
        time.sleep(0.02)
        q, r, n = 10*q, 10*(r - n*t), (10*(3*q + r))//t - 10*n
    else:
        q, r, t, k, n, l = q*k, (2*q + r)*l, t*l, k + 1, (q*(7*k + 2) + r*l)//(t*l), l + 2'
digits() { echo $(( $("$@" logs /calc | wc -l) * 10 )); }

CRTREE=$PWD/bin/crtree hack/debian-image.sh debian:bookworm-python
step crtree image ls
step crtree run --image debian:bookworm-python /calc -- python3 -c "$pi"
sleep 3
step crtree exec /calc -- sh -c '. /etc/os-release; echo "inside /calc: $PRETTY_NAME, $(python3 --version)"'
echo; echo "digits of pi so far: $(digits crtree)"
step crtree dump --with-image /calc -o "$work/calc.crtree"
step crtree inspect "$work/calc.crtree"
echo; echo "The second state root has no image:"
step on_hostB image ls
step on_hostB restore "$work/calc.crtree"
step on_hostB image ls
sleep 2
echo; echo "digits of pi on the second state root: $(digits on_hostB), still counting:"
on_hostB logs /calc | head -3; echo "..."; on_hostB logs /calc | tail -2
step on_hostB exec /calc -- sh -c '. /etc/os-release; echo "inside /calc: $PRETTY_NAME, $(python3 --version)"'
