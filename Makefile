# etcdbake: `make demo` runs the main job on the built-in example; `make test` runs all tests.
GO      ?= go
CACHE   ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/etcdbake
DEMO    ?= out/demo
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
export ETCDBAKE_TEST_CACHE ?= $(CACHE)/test-binaries

.PHONY: build setup test fuzz bench demo demo-down clean

build:
	$(GO) build -trimpath -ldflags='-X main.version=$(VERSION)' -o bin/etcdbake ./cmd/etcdbake
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o bin/etcd-firstboot ./cmd/etcd-firstboot
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o bin/etcdbake-installer ./cmd/etcdbake-installer

# Debian packages and test tools (ignition-apply), idempotent, cached outside the repo.
setup:
	bash scripts/setup.sh

test: setup build
	bash scripts/check-tracked.sh
	$(GO) vet ./...
	ETCDBAKE_MAKE_TEST=1 $(GO) test -count=1 -timeout 80m ./...
	$(MAKE) fuzz

fuzz:
# -fuzzminimizetime bounds the shrinking of each new input: with the default (60 s) a
# fuzz run can end while it shrinks a mis-indented spec and fail with
# "context deadline exceeded".
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 15s -fuzzminimizetime 10x ./spec

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./pki ./spec ./ignition
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m -p 1 ./imagebuild ./test/qemu

# The whole job on the built-in example: spec, binaries, PKI, Ignition, images, then the
# three nodes booted as QEMU VMs (`etcdbake up`), ending in the healthy status table.
# `make demo-down` stops them.
demo: setup build
	mkdir -p $(DEMO)
	test -f $(DEMO)/cluster.yaml || bin/etcdbake init -f $(DEMO)/cluster.yaml
	bin/etcdbake validate -f $(DEMO)/cluster.yaml
	bin/etcdbake fetch -f $(DEMO)/cluster.yaml
	bin/etcdbake pki -f $(DEMO)/cluster.yaml --out $(DEMO)
	bin/etcdbake pki check -f $(DEMO)/cluster.yaml --out $(DEMO)
	bin/etcdbake ignition -f $(DEMO)/cluster.yaml --out $(DEMO) --binaries-url http://10.88.0.1:8080/binaries
	bin/etcdbake kubeadm -f $(DEMO)/cluster.yaml --out $(DEMO)
	bin/etcdbake image -f $(DEMO)/cluster.yaml --out $(DEMO)
	bin/etcdbake up -f $(DEMO)/cluster.yaml --out $(DEMO)

demo-down: build
	bin/etcdbake down -f $(DEMO)/cluster.yaml --out $(DEMO) --purge

clean:
	rm -rf bin out
