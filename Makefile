# Two commands do everything: `make demo` and `make test`. See README.md.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build deps test testbin cluster-up cluster-down lint fmt-check clippy manifests image demo bench chaos clean release release-deps release-dry-run

all: build

build:
	$(CARGO) build --workspace --bins

## what a fresh machine lacks (Debian packages, the musl target), or a message naming it;
## a second run only checks (under a second), so every target that needs them starts here
deps:
	bash hack/install-deps.sh

## bin/: kube-apiserver, etcd, helm, kustomize and kstatus built from their Go modules (rebuilt when a pinned version changes)
testbin: deps
	bash hack/testbin.sh

## a local control plane for humans and the demo; kubeconfig in .cluster/kubeconfig
cluster-up: testbin
	$(CARGO) run -q -p cyclr-testenv --bin control-plane -- up --dir .cluster

cluster-down:
	$(CARGO) run -q -p cyclr-testenv --bin control-plane -- down --dir .cluster

## a control plane, cyclr-sim, the operator and examples/, then a status table (DEMO_ONCE=1 to exit when Ready)
demo: deps
	bash hack/demo.sh

## regenerate crds/, the chart's CRDs and deploy/ from their sources (a test fails when they differ)
manifests:
	bash hack/render-manifests.sh

## the container image as an OCI archive in target/image/, without a container engine (see Dockerfile)
image: deps
	bash hack/image.sh

## what a release adds (the arm64 cross linker, the aarch64 musl target, jq); only release asks
release-deps: deps
	bash hack/install-deps.sh --release

## everything a release publishes, into dist/: the image for amd64 and arm64 as one OCI image
## index, the chart package, the krew archives and manifest, the SBOM and SHA256SUMS
## (RELEASE_PROFILE=dev for debug binaries, RELEASE_URL for the krew download URL)
release: release-deps
	bash hack/testbin.sh helm
	bash hack/release.sh

## the release workflow's steps up to the push: `make release`, then tests/release.rs on
## dist/ and on .github/workflows/release.yaml
release-dry-run: release
	$(CARGO) test --test release

## N CyclrAccounts onboarded by the release operator and by the floor, at 10 and 1000 req/s,
## on a Partner API and a v1.0 partner (DIALECTS=Partner,V1)
## (N=1000 by default; N=300 make bench for a quicker run; FLOOR=0 skips the floor, FLOOR_ONLY=W runs
## it alone with W writes per account); PEER=1 adds Crossplane's
## provider-http doing the same job (built into bin/ only then); CYCLES=3 adds three
## CyclrCycles per account on the V1 runs. See docs/performance.md.
bench: testbin
	case "$${PEER:-0}" in 0|n|no|f|false|off) ;; *) bash hack/testbin.sh provider-http ;; esac
	$(CARGO) build --release -p cyclr-operator -p cyclr-bench --bin cyclr-operator --bin cyclr-bench
	"$${CARGO_TARGET_DIR:-target}/release/cyclr-bench"

## the release operator killed, Cyclr failing, the leader killed, kube-apiserver restarted and
## status wiped while 300 accounts and 100 installs (and on v1.0 100 cycles) roll out; nothing
## may be lost (SEED, ACCOUNTS, INSTALLS, CYCLES, SCENARIOS=1,2,3,4,5, DIALECTS=Partner,V1, KILLS, PAGE_SIZE, RESYNC_INTERVAL);
## on v1.0 one account in ten is deleted too. See docs/reliability.md.
chaos: testbin
	$(CARGO) build --release -p cyclr-operator -p cyclr-bench --bin cyclr-operator --bin cyclr-chaos
	"$${CARGO_TARGET_DIR:-target}/release/cyclr-chaos"

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint: fmt-check clippy

## lint, the image, a dev-profile release and every test (hack/test.sh: bin/ builds while Rust
## builds, test binaries run TEST_JOBS at a time, default the number of cores; output and
## durations in target/test-logs/; tests/quickstart.rs uses the kubectl on PATH, or one built
## into bin/)
test: deps release-deps
	bash hack/test.sh

clean: cluster-down
	$(CARGO) clean
	rm -rf bin .cluster .demo
