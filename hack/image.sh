#!/usr/bin/env bash
# `make image`: the container image of the Dockerfile, built without a container engine.
# A static musl binary, the CA bundle and nothing else, packed with umoci into an OCI
# layout and archived as target/image/cyclr-operator-<version>.oci.tar (the
# `oci-archive:` format skopeo, podman and buildah read). tests/image.rs inspects it.
# Keep the Dockerfile's user, entrypoint and files the same (the test checks both).
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
for tool in umoci musl-gcc; do
  command -v "$tool" >/dev/null || { echo "image: $tool is missing: run hack/install-deps.sh" >&2; exit 1; }
done
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "image: $ca is missing (apt-get install ca-certificates)" >&2; exit 1; }

# The root package's version: the first `version =` line of the root Cargo.toml.
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
# IMAGE_PROFILE=dev packs a debug build instead: same image, much faster to compile cold
# (for a quick check of the packaging; never for a published image).
profile="${IMAGE_PROFILE:-release}"
cargo build --profile "$profile" --locked --target "$target" --bin cyclr-operator
binary="target/$target/$([ "$profile" = dev ] && echo debug || echo "$profile")/cyclr-operator"

out=target/image
layout="$out/layout"
archive="$out/cyclr-operator-$version.oci.tar"
rm -rf "$layout" "$archive"
mkdir -p "$out"
image="$layout:$version"
umoci init --layout "$layout"
umoci new --image "$image"
# unpack + repack rather than `umoci insert`, whose layers (0.4.7) lack the tar trailer.
bundle="$out/bundle"
rm -rf "$bundle"
umoci unpack --image "$image" "$bundle"
install -D -m 0755 "$binary" "$bundle/rootfs/cyclr-operator"
install -D -m 0644 "$ca" "$bundle/rootfs/etc/ssl/certs/ca-certificates.crt"
umoci repack --image "$image" "$bundle"
rm -rf "$bundle"
umoci config --image "$image" \
  --os linux --architecture amd64 \
  --config.user 65532:65532 \
  --config.entrypoint /cyclr-operator --config.cmd run \
  --config.exposedports 8080/tcp \
  --config.label "org.opencontainers.image.title=cyclr-operator" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.licenses=Apache-2.0"
umoci gc --layout "$layout"
tar -C "$layout" -cf "$archive" .
echo "image: wrote $archive ($(du -h "$archive" | cut -f1))"
