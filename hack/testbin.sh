#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, etcd, helm, kustomize and promtool from their
# official Go modules into bin/,
# and bin/kstatus (hack/kstatus/main.go) on the kstatus library of sigs.k8s.io/cli-utils.
# Each binary is rebuilt only when its pinned version changes (a stamp file per binary).
# `hack/testbin.sh kubectl` builds kubectl (only `make demo` asks for it, when none is on PATH).
# `hack/testbin.sh provider-http` (only `PEER=1 make bench` asks for it) also builds Crossplane's
# provider-http, with its CRDs from the same module version in bin/provider-http-crds/.
# `hack/testbin.sh kube-apiserver-floor` builds bin/kube-apiserver-<minor> at the chart's
# kubeVersion floor, for tests/admission.rs (docs/versioning.md).
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CLI_UTILS_VERSION="${CLI_UTILS_VERSION:-v0.37.2}"
# kustomize renders deploy/ for the `kubectl apply -k` test; it is much cheaper to build
# than kubectl, and the test applies what it renders server-side from Rust.
KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.1}"
# promtool, for the alert rules' tests (deploy/prometheus/alerts_test.yaml).
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
# The newest provider-http release the Go module proxy serves (several older tags are refused).
PROVIDER_HTTP_VERSION="${PROVIDER_HTTP_VERSION:-v1.0.14}"

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/bin"
work="$bin/.build"
mkdir -p "$bin" "$work"

command -v go >/dev/null || { echo "testbin: Go is required to build kube-apiserver, etcd, helm, kustomize and kstatus (install Go 1.24+)" >&2; exit 1; }

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

up_to_date() { [ -x "$bin/$1" ] && [ "$(cat "$bin/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$bin/.$1.version"; }

# A command of k8s.io/kubernetes (kube-apiserver; kube-controller-manager, for the tests that
# need a namespace controller and garbage collector; kubectl for `make demo` on a machine
# without one), at the pinned version.
build_kubernetes_cmd() { # name
  local name="$1" v="$KUBERNETES_VERSION" minor
  up_to_date "$name" "$v" && return
  echo "testbin: building $name $v (cold: several minutes)"
  minor="$(echo "$v" | cut -d. -f2)"
  local dir="$work/$name"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  cat > go.mod <<MOD
module local/$name-build

go 1.24
MOD
  cat > tools.go <<GO
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/$name"
GO
  go mod download -json "k8s.io/kubernetes@$v" >/dev/null
  # The kubernetes go.mod maps each staging module to ./staging; replace each with its
  # published v0.Y.Z tag, the list taken from the pinned go.mod itself.
  local modfile
  modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$v.mod"
  local staging_version="v0.${v#v1.}"
  {
    echo "require k8s.io/kubernetes $v"
    echo "replace ("
    grep -E '^\s*k8s\.io/[a-z0-9-]+\s+=>\s+\./staging/' "$modfile" \
      | awk -v sv="$staging_version" '{print "\t" $1 " => " $1 " " sv}'
    echo ")"
  } >> go.mod
  go mod tidy >/dev/null 2>&1 || go mod tidy
  go build -trimpath -o "$bin/$name" -ldflags "-s -w \
    -X k8s.io/component-base/version.gitVersion=$v \
    -X k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/component-base/version.gitMinor=$minor" "k8s.io/kubernetes/cmd/$name"
  stamp "$name" "$v"
}

build_go_main() { # name version module package
  local name="$1" v="$2" module="$3" pkg="$4"
  up_to_date "$name" "$v" && return
  echo "testbin: building $name $v"
  local dir="$work/$name"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  printf 'module local/%s-build\n\ngo 1.24\n' "$name" > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" > tools.go
  go get "$module@$v" >/dev/null 2>&1 || go get "$module@$v"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$bin/$name" "$pkg"
  stamp "$name" "$v"
}

# Our own small program on a pinned library: the stamp also covers the source, so an edit
# of main.go rebuilds it.
build_kstatus() {
  local src="$root/hack/kstatus/main.go" v
  v="$CLI_UTILS_VERSION-$(sha256sum "$src" | cut -c1-12)"
  up_to_date kstatus "$v" && return
  echo "testbin: building kstatus (sigs.k8s.io/cli-utils $CLI_UTILS_VERSION)"
  local dir="$work/kstatus"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  printf 'module local/kstatus\n\ngo 1.24\n' > go.mod
  cp "$src" main.go
  go get "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION" >/dev/null 2>&1 || go get "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$bin/kstatus" .
  stamp kstatus "$v"
}

# Crossplane's provider-http at a pinned release, its dependencies as its own go.mod selects
# them (it is the only requirement of the build module); its CRDs are copied from the same
# module version in the module cache, so the bench installs exactly what this binary serves.
# (`go install module@version` cannot be used: it reads the module's version list, which the
# module proxy refuses for this module, while it serves the pinned version itself.)
build_provider_http() {
  local v="$PROVIDER_HTTP_VERSION" module=github.com/crossplane-contrib/provider-http
  up_to_date provider-http "$v" && [ -d "$bin/provider-http-crds" ] && return
  echo "testbin: building provider-http $v (cold: a few minutes)"
  local dir="$work/provider-http"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  printf 'module local/provider-http-build\n\ngo 1.24\n' > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/provider"\n' "$module" > tools.go
  go get "$module@$v" >/dev/null 2>&1 || go get "$module@$v"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$bin/provider-http" "$module/cmd/provider"
  local src
  src="$(go list -m -f '{{.Dir}}' "$module")"
  [ -d "$src/package/crds" ] || { echo "testbin: no package/crds in $module@$v ($src)" >&2; exit 1; }
  rm -rf "$bin/provider-http-crds" && mkdir -p "$bin/provider-http-crds"
  cp "$src"/package/crds/*.yaml "$bin/provider-http-crds/"
  chmod u+w "$bin"/provider-http-crds/*.yaml
  stamp provider-http "$v"
}

# The oldest Kubernetes the chart supports (its `kubeVersion` floor, docs/versioning.md):
# kube-apiserver at that version as bin/kube-apiserver-<minor>, built by the function above
# in a subshell with its own bin/ and work folders, then moved beside the others.
KUBERNETES_FLOOR_VERSION="${KUBERNETES_FLOOR_VERSION:-v1.30.14}"
build_apiserver_floor() {
  local v="$KUBERNETES_FLOOR_VERSION" name
  name="kube-apiserver-$(echo "${v#v}" | cut -d. -f1-2)"
  up_to_date "$name" "$v" && return
  (
    KUBERNETES_VERSION="$v" bin="$work/floor-bin" work="$work/floor"
    mkdir -p "$bin" "$work"
    build_kubernetes_cmd kube-apiserver
  )
  mv "$work/floor-bin/kube-apiserver" "$bin/$name"
  stamp "$name" "$v"
}

targets=("$@")
[ $# -gt 0 ] || targets=(etcd kube-apiserver kube-controller-manager helm kustomize kstatus promtool)
[ $# -gt 0 ] || targets+=(kube-apiserver-floor)
for t in "${targets[@]}"; do
  case "$t" in
    kube-apiserver | kube-controller-manager | kubectl) build_kubernetes_cmd "$t" ;;
    etcd) build_go_main etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 ;;
    helm) build_go_main helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm ;;
    kstatus) build_kstatus ;;
    provider-http) build_provider_http ;;
    kube-apiserver-floor) build_apiserver_floor ;;
    kustomize) build_go_main kustomize "$KUSTOMIZE_VERSION" sigs.k8s.io/kustomize/kustomize/v5 sigs.k8s.io/kustomize/kustomize/v5 ;;
    promtool) build_go_main promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/promtool ;;
    *) echo "testbin: unknown target $t" >&2; exit 2 ;;
  esac
done
peer=""
[[ " ${targets[*]} " == *" kubectl "* ]] && peer=", kubectl $KUBERNETES_VERSION"
[[ " ${targets[*]} " == *" provider-http "* ]] && peer="$peer, provider-http $PROVIDER_HTTP_VERSION"
[[ " ${targets[*]} " == *" kube-apiserver-floor "* ]] && peer="$peer, floor kube-apiserver $KUBERNETES_FLOOR_VERSION"
echo "testbin: bin/ is up to date (kube-apiserver and kube-controller-manager $KUBERNETES_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, kustomize $KUSTOMIZE_VERSION, kstatus on cli-utils $CLI_UTILS_VERSION, promtool $PROMETHEUS_VERSION$peer)"
