#!/usr/bin/env bash
# bench.sh: build crtree, the memhog workload and the benchmark, then run
# it (as root). Arguments go to the benchmark: hack/bench.sh -mib 1024 -reps 5
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin:/usr/local/sbin
command -v zstd >/dev/null || apt-get install -y -qq zstd >/dev/null
CGO_ENABLED=0 go build -o bin/crtree ./cmd/crtree
CGO_ENABLED=0 go build -o bin/memhog ./testdata/memhog
go build -o bin/bench ./hack/bench
exec bin/bench "$@"
