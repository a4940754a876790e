# Sourced by hack/image.sh and hack/release.sh: static Linux binaries of this workspace for
# each architecture the image and the krew archives ship (amd64, arm64), without a container
# engine. amd64 links with musl-gcc; arm64 cross-links with Debian's aarch64-linux-gnu-gcc
# (Rust's musl targets bring their own C runtime and libc, so the GNU cross driver only
# links; hack/install-deps.sh --release installs it). Both are fully static.

# The Rust target of an image architecture (OCI spelling: amd64, arm64).
musl_target() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    *) echo "musl: unknown architecture $1 (amd64 or arm64)" >&2; return 1 ;;
  esac
}

# musl_build ARCH PROFILE BIN...: builds the binaries with cargo's PROFILE (`dev` or
# `release`) and prints the folder they are in (relative to the workspace root).
musl_build() {
  local arch="$1" profile="$2" target
  shift 2
  target="$(musl_target "$arch")"
  rustup target list --installed 2>/dev/null | grep -qx "$target" \
    || { echo "musl: the Rust target $target is missing: run hack/install-deps.sh --release" >&2; return 1; }
  local cross=()
  case "$arch" in
    amd64) command -v musl-gcc >/dev/null || { echo "musl: musl-gcc is missing: run hack/install-deps.sh" >&2; return 1; } ;;
    arm64)
      command -v aarch64-linux-gnu-gcc >/dev/null \
        || { echo "musl: aarch64-linux-gnu-gcc is missing: run hack/install-deps.sh --release" >&2; return 1; }
      cross=(CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
        CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar)
      ;;
  esac
  local bins=() bin
  for bin in "$@"; do bins+=(--bin "$bin"); done
  env "${cross[@]}" cargo build --profile "$profile" --locked --target "$target" "${bins[@]}" >&2
  echo "${CARGO_TARGET_DIR:-target}/$target/$([ "$profile" = dev ] && echo debug || echo "$profile")"
}
