#!/usr/bin/env bash
# `make image`: the container image of the Dockerfile, built without a container engine.
# A static musl binary, the CA bundle and nothing else, packed with umoci into an OCI
# layout and archived as target/image/cyclr-operator-<version>.oci.tar (the
# `oci-archive:` format skopeo, podman and buildah read). tests/image.rs inspects it.
# Keep the Dockerfile's user, entrypoint and files the same (the test checks both).
#
# IMAGE_ARCHS="amd64 arm64" (what `make release` asks, with IMAGE_OUT=dist) builds one image
# per architecture and archives them under one OCI image index, tagged <version>, so a
# registry serves each node its own; tests/release.rs inspects that one.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/musl.sh

command -v umoci >/dev/null || { echo "image: umoci is missing: run hack/install-deps.sh" >&2; exit 1; }
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "image: $ca is missing (apt-get install ca-certificates)" >&2; exit 1; }

# The root package's version: the first `version =` line of the root Cargo.toml.
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
# IMAGE_PROFILE=dev packs a debug build instead: same image, much faster to compile cold
# (for a quick check of the packaging; never for a published image).
profile="${IMAGE_PROFILE:-release}"
read -r -a archs <<<"${IMAGE_ARCHS:-amd64}"

out="${IMAGE_OUT:-target/image}"
layout="$out/layout"
archive="$out/cyclr-operator-$version.oci.tar"
rm -rf "$layout" "$archive"
mkdir -p "$out"
umoci init --layout "$layout"
for arch in "${archs[@]}"; do
  binary="$(musl_build "$arch" "$profile" cyclr-operator)/cyclr-operator"
  # One architecture: the image itself is tagged <version>; several: <version>-<arch>,
  # gathered under the index below.
  tag="$version"
  [ "${#archs[@]}" = 1 ] || tag="$version-$arch"
  image="$layout:$tag"
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
    --os linux --architecture "$arch" \
    --config.user 65532:65532 \
    --config.entrypoint /cyclr-operator --config.cmd run \
    --config.exposedports 8080/tcp \
    --config.label "org.opencontainers.image.title=cyclr-operator" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0"
done
umoci gc --layout "$layout"

if [ "${#archs[@]}" -gt 1 ]; then
  command -v jq >/dev/null || { echo "image: jq is missing: run hack/install-deps.sh --release" >&2; exit 1; }
  # The image index (OCI image-spec, image-index.md): each manifest with its platform, read
  # from the `<version>-<arch>` tags umoci wrote; the layout's index.json then names only
  # the index, tagged <version> (what `skopeo copy --all` pushes as one multi-arch tag).
  jq -c --arg v "$version" '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [.manifests[] | {mediaType, digest, size,
        platform: {os: "linux", architecture: (.annotations["org.opencontainers.image.ref.name"] | ltrimstr($v + "-"))}}]}' \
    "$layout/index.json" > "$out/image-index.json"
  digest="$(sha256sum "$out/image-index.json" | cut -d' ' -f1)"
  size="$(stat -c %s "$out/image-index.json")"
  mv "$out/image-index.json" "$layout/blobs/sha256/$digest"
  jq -n -c --arg d "sha256:$digest" --argjson s "$size" --arg v "$version" \
    '{schemaVersion: 2, manifests: [{mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s,
      annotations: {"org.opencontainers.image.ref.name": $v}}]}' > "$layout/index.json"
fi
tar -C "$layout" -cf "$archive" .
rm -rf "$layout"
echo "image: wrote $archive (${archs[*]}, $(du -h "$archive" | cut -f1))" >&2
