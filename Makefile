# Two commands do everything: `make demo` and `make test`. See README.md.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test testbin cluster-up cluster-down lint fmt-check clippy manifests manifests-check demo bench clean

all: build

build:
	$(CARGO) build --workspace --bins

## bin/: kube-apiserver, etcd and helm built from their Go modules (rebuilt when a pinned version changes)
testbin:
	bash hack/testbin.sh

## a local control plane for humans and the demo; kubeconfig in .cluster/kubeconfig
cluster-up: testbin
	$(CARGO) run -q -p cyclr-testenv --bin control-plane -- up --dir .cluster

cluster-down:
	$(CARGO) run -q -p cyclr-testenv --bin control-plane -- down --dir .cluster

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint: fmt-check clippy

test: testbin lint
	$(CARGO) test --workspace --no-fail-fast

clean:
	$(CARGO) clean
	rm -rf bin .cluster
