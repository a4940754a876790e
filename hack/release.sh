#!/usr/bin/env bash
# `make release`: everything a release publishes, into dist/ (tests/release.rs checks each):
#   cyclr-operator-<version>.oci.tar        the image for linux/amd64 and linux/arm64 under one
#                                          OCI image index tagged <version> (hack/image.sh)
#   cyclr-operator-<chart version>.tgz      the Helm chart (`helm package`)
#   kubectl-cyclr-v<version>-<target>.tar.gz  the krew archives (static; amd64 and arm64)
#   krew-cyclr.yaml                        deploy/krew/cyclr.yaml with their real sha256 sums
#   cyclr-operator-<version>.cdx.json      the SBOM (CycloneDX 1.5) of the operator's crates
#   SHA256SUMS                             the sha256 of every file above (`sha256sum -c`)
# RELEASE_PROFILE=dev builds debug binaries (the packaging check of `make test`; never for a
# published release). RELEASE_URL is where the krew archives will be downloaded from (the
# release workflow sets it; default: this dist/ folder as a file:// URL).
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/musl.sh

profile="${RELEASE_PROFILE:-release}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
dist=dist
rm -rf "$dist"
mkdir -p "$dist"
release_url="${RELEASE_URL:-file://$PWD/$dist}"
archs=(amd64 arm64)

# The image, both architectures under one index.
IMAGE_ARCHS="${archs[*]}" IMAGE_PROFILE="$profile" IMAGE_OUT="$dist" bash hack/image.sh

# The chart, its appVersion (and so its default image tag) already <version> (`make manifests`).
bin/helm package charts/cyclr-operator --destination "$dist" >&2

# The krew archives: kubectl-cyclr and LICENSE at the root, reproducible (sorted names, fixed
# owner and time, no gzip timestamp) so a rebuild of the same commit gives the same sum.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for arch in "${archs[@]}"; do
  dir="$(musl_build "$arch" "$profile" kubectl-cyclr)"
  name="kubectl-cyclr-v$version-$(musl_target "$arch").tar.gz"
  rm -rf "${scratch:?}"/*
  install -m 0755 "$dir/kubectl-cyclr" "$scratch/kubectl-cyclr"
  install -m 0644 LICENSE "$scratch/LICENSE"
  tar -C "$scratch" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - kubectl-cyclr LICENSE \
    | gzip -n -9 > "$dist/$name"
done

# The krew manifest: each platform's sha256 is that of the archive its uri names.
awk -v url="$release_url" -v dist="$dist" '
  /uri: RELEASE_URL\// {
    file = $0; sub(/.*RELEASE_URL\//, "", file)
    cmd = "sha256sum " dist "/" file; cmd | getline sum; close(cmd); split(sum, f, " ")
    if (f[1] == "") { print "release: no archive " file > "/dev/stderr"; exit 1 }
    sub(/RELEASE_URL/, url)
  }
  /sha256: / && f[1] != "" { sub(/"[0-9a-f]+"/, "\"" f[1] "\""); f[1] = "" }
  { print }' deploy/krew/cyclr.yaml > "$dist/krew-cyclr.yaml"
if grep -q '"0\{64\}"' "$dist/krew-cyclr.yaml"; then
  echo "release: a krew platform has no archive" >&2
  exit 1
fi

# The SBOM: every crate the operator's binaries are built from (normal dependencies reachable
# from the root package, for the image's target), from `cargo metadata`, as CycloneDX 1.5.
cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-musl \
  | jq --arg serial "urn:uuid:$(cat /proc/sys/kernel/random/uuid)" --arg now "$(date -u +%Y-%m-%dT%H:%M:%SZ)" '
    (.packages | map({key: .id, value: .}) | from_entries) as $pkgs
    | (.resolve.nodes | map({key: .id, value: [.deps[] | select(any(.dep_kinds[]; .kind == null)) | .pkg]})
       | from_entries) as $deps
    | (.packages[] | select(.name == "cyclr-operator") | .id) as $root
    | ({seen: [], todo: [$root]}
       | until(.todo == []; .todo[0] as $n | .todo |= .[1:]
           | if any(.seen[]; . == $n) then . else .seen += [$n] | .todo += $deps[$n] end)
       | .seen) as $used
    | def purl: "pkg:cargo/\(.name)@\(.version)";
    def component: {type: "library", "bom-ref": purl, name, version, purl: purl,
        licenses: (if .license then [{expression: .license}] else [] end)};
    {bomFormat: "CycloneDX", specVersion: "1.5", serialNumber: $serial, version: 1,
     metadata: {timestamp: $now, component: ($pkgs[$root] | component | .type = "application")},
     components: [$used[1:][] | $pkgs[.] | component],
     dependencies: [$used[] | {ref: ($pkgs[.] | purl), dependsOn: [$deps[.][] | $pkgs[.] | purl]}]}' \
    > "$dist/cyclr-operator-$version.cdx.json"

(cd "$dist" && sha256sum -- * > SHA256SUMS)
echo "release: $dist/ ($profile profile):" >&2
(cd "$dist" && ls -l) >&2
