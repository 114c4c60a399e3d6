# crtree: build, test, demo and benchmarks. Every target installs what it
# needs (CRIU via hack/install-criu.sh); run as root.

GO      ?= go
BIN     := bin/crtree
export PATH := $(PATH):/usr/local/go/bin:/usr/local/sbin

.PHONY: all deps build test loops unit e2e demo image-demo bench fuzz vet clean

all: build

## deps: make a working CRIU >= 4.2 available, the CNI plugins for
## --net bridge and FUSE for crtree mount (idempotent)
deps:
	@hack/install-criu.sh
	@hack/install-net.sh
	@hack/install-fuse.sh

## build: build bin/crtree (static: it runs inside nodes, whose image may
## have no C library)
build:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -o $(BIN) ./cmd/crtree

## vet: gofmt, go vet
vet:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# Each fuzz target runs a fixed number of inputs (about 5-10 s each here),
# not a time budget: with a deadline, Go's fuzzer can report its own
# "context deadline exceeded" as a failure while it handles a slow input.
# FUZZN scales them all (FUZZN=10 for a longer run).
FUZZN ?= 1
## test: everything, as root, with the real CRIU, then each fuzz target briefly
test: deps vet
	@hack/install-test-deps.sh
	CRTREE_E2E=1 $(GO) test -count=1 -timeout 20m ./...
	$(MAKE) fuzz

## loops: the restore loops at full length: 50 restores of each --net none
## case (make test runs 10 of each)
loops: deps
	@hack/install-test-deps.sh
	CRTREE_E2E=1 CRTREE_NETNONE_RUNS=50 $(GO) test -count=1 -timeout 60m -run '^TestNetNoneRestores$$' -v ./e2e

## fuzz: run each fuzz target for a fixed number of inputs (times FUZZN)
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $$((100000*$(FUZZN)))x ./internal/api
	$(GO) test -run '^$$' -fuzz '^FuzzScopedPath$$' -fuzztime $$((300000*$(FUZZN)))x ./internal/hier
	$(GO) test -run '^$$' -fuzz '^FuzzManifest$$' -fuzztime $$((200000*$(FUZZN)))x ./internal/archive
	$(GO) test -run '^$$' -fuzz '^FuzzFrames$$' -fuzztime $$((60000*$(FUZZN)))x ./internal/archive
	$(GO) test -run '^$$' -fuzz '^FuzzExtract$$' -fuzztime $$((5000*$(FUZZN)))x ./internal/archive

## unit: the tests that need neither root nor CRIU
unit:
	$(GO) test ./internal/...

## demo: build a small tree, dump it, restore it elsewhere, show it still runs
demo: deps build
	hack/demo.sh

## image-demo: python3 from a Debian image (debootstrap, a few minutes)
## computes pi in a node, dumped --with-image and restored on a second
## state root that never saw the image
image-demo: deps build
	hack/image-demo.sh

## bench: checkpoint/restore speed against raw CRIU (see docs/PERFORMANCE.md)
bench: deps build
	hack/bench.sh

clean:
	rm -rf bin
