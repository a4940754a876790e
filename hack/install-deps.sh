#!/usr/bin/env bash
# Checks (and where possible installs) what `make test` needs on a fresh machine:
# the Rust toolchain with rustfmt and clippy, Go (to build kube-apiserver, etcd and helm)
# and a C compiler (for the ring crypto crate).
set -euo pipefail

missing=()
command -v cargo >/dev/null || missing+=("cargo (install Rust with rustup)")
command -v go >/dev/null || missing+=("go 1.24+ (https://go.dev/dl/)")
cargo fmt --version >/dev/null 2>&1 || missing+=("rustfmt (rustup component add rustfmt)")
cargo clippy --version >/dev/null 2>&1 || missing+=("clippy (rustup component add clippy)")

if ! command -v cc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
  else
    missing+=("a C compiler (apt-get install build-essential)")
  fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
  printf 'install-deps: missing:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
echo "install-deps: toolchain ready ($(cargo --version), $(go version | cut -d' ' -f3))"
