# crtree: build, test, demo and benchmarks. Every target installs what it
# needs (CRIU via hack/install-criu.sh); run as root.

GO      ?= go
BIN     := bin/crtree
export PATH := $(PATH):/usr/local/go/bin:/usr/local/sbin

.PHONY: all deps build test loops unit e2e demo bench fuzz vet clean

all: build

## deps: make a working CRIU >= 4.2 available (idempotent)
deps:
	@hack/install-criu.sh

## build: build bin/crtree (static: it runs inside nodes, whose image may
## have no C library)
build:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -o $(BIN) ./cmd/crtree

## vet: gofmt, go vet
vet:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

FUZZTIME ?= 10s
# FuzzExtract runs a fixed number of inputs: with a time budget its slow
# inputs (each writes files) can overrun the deadline and fail the run.
FUZZEXTRACT ?= 5000x

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

## fuzz: run each fuzz target for FUZZTIME (default 10s; FuzzExtract: FUZZEXTRACT inputs)
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZTIME) ./internal/api
	$(GO) test -run '^$$' -fuzz '^FuzzScopedPath$$' -fuzztime $(FUZZTIME) ./internal/hier
	$(GO) test -run '^$$' -fuzz '^FuzzManifest$$' -fuzztime $(FUZZTIME) ./internal/archive
	$(GO) test -run '^$$' -fuzz '^FuzzFrames$$' -fuzztime $(FUZZTIME) ./internal/archive
	$(GO) test -run '^$$' -fuzz '^FuzzExtract$$' -fuzztime $(FUZZEXTRACT) ./internal/archive

## unit: the tests that need neither root nor CRIU
unit:
	$(GO) test ./internal/...

## demo: build a small tree, dump it, restore it elsewhere, show it still runs
demo: deps build
	hack/demo.sh

## bench: checkpoint/restore speed against raw CRIU (see docs/PERFORMANCE.md)
bench: deps build
	hack/bench.sh

clean:
	rm -rf bin
