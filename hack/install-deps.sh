#!/usr/bin/env bash
# Checks (and where possible installs) what `make test` needs on a fresh machine:
# the Rust toolchain with rustfmt and clippy, Go (to build kube-apiserver, etcd, helm and
# kustomize), a C compiler (for the ring crypto crate), lua5.1 (Argo CD's Lua, for the
# health script test), and for `make image` umoci, musl-tools and the rustup target
# x86_64-unknown-linux-musl (a static binary for a FROM scratch image).
# `--release` (what `make release` and `make test`'s release check ask) adds the arm64 cross
# toolchain: Debian's gcc-aarch64-linux-gnu as the linker, the rustup target
# aarch64-unknown-linux-musl, and jq (the image index, the SBOM, the krew manifest).
set -euo pipefail
release=false
[ "${1:-}" != --release ] || release=true

missing=()
command -v cargo >/dev/null || missing+=("cargo (install Rust with rustup)")
command -v go >/dev/null || missing+=("go 1.24+ (https://go.dev/dl/)")
cargo fmt --version >/dev/null 2>&1 || missing+=("rustfmt (rustup component add rustfmt)")
cargo clippy --version >/dev/null 2>&1 || missing+=("clippy (rustup component add clippy)")

# Debian packages, by the command each provides.
apt_wanted=()
command -v cc >/dev/null || apt_wanted+=(build-essential)
command -v lua5.1 >/dev/null || apt_wanted+=(lua5.1)
command -v umoci >/dev/null || apt_wanted+=(umoci)
command -v musl-gcc >/dev/null || apt_wanted+=(musl-tools)
if $release; then
  command -v aarch64-linux-gnu-gcc >/dev/null || apt_wanted+=(gcc-aarch64-linux-gnu)
  command -v jq >/dev/null || apt_wanted+=(jq)
fi
if [ "${#apt_wanted[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_wanted[@]}" >/dev/null
  else
    missing+=("apt-get install ${apt_wanted[*]}")
  fi
fi

musl_targets=(x86_64-unknown-linux-musl)
! $release || musl_targets+=(aarch64-unknown-linux-musl)
for musl in "${musl_targets[@]}"; do
  if command -v rustup >/dev/null; then
    rustup target list --installed | grep -qx "$musl" || rustup target add "$musl"
  else
    missing+=("the Rust target $musl (rustup target add $musl)")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  printf 'install-deps: missing:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
echo "install-deps: toolchain ready ($(cargo --version), $(go version | cut -d' ' -f3))"
