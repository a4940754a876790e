#!/usr/bin/env bash
# `make manifests`: writes every generated manifest from its one source.
#   crds/, the chart's files/crds.yaml, deploy/crds.yaml <- `cyclr-operator crd` (the Rust types)
#   docs/api.md                                     <- `cyclr-operator crd --reference` (the same)
#   the chart's appVersion, the krew manifest's version  <- the root Cargo.toml's version
#   the chart's files/grafana-dashboard.json        <- deploy/grafana/cyclr-operator.json
#   the chart's files/alerts.yaml                   <- deploy/prometheus/alerts.yaml
#   deploy/operator.yaml                            <- `helm template` of the chart's defaults
# tests/deploy.rs fails when any of them differs from what this script would write.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo run -q --bin cyclr-operator -- crd > crds/cyclr.com_crds.yaml
cp crds/cyclr.com_crds.yaml charts/cyclr-operator/files/crds.yaml
cp crds/cyclr.com_crds.yaml deploy/crds.yaml
cargo run -q --bin cyclr-operator -- crd --reference > docs/api.md
cp deploy/grafana/cyclr-operator.json charts/cyclr-operator/files/grafana-dashboard.json
cp deploy/prometheus/alerts.yaml charts/cyclr-operator/files/alerts.yaml

# One version for the operator, its image, the chart's appVersion and the plugin.
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
sed -i "s/^appVersion: .*/appVersion: \"$version\"/" charts/cyclr-operator/Chart.yaml
sed -i -E "s/^(  version: )v.*/\1v$version/; s/kubectl-cyclr-v.*-(x86_64|aarch64)/kubectl-cyclr-v$version-\1/" deploy/krew/cyclr.yaml

bash hack/testbin.sh helm >/dev/null
bash hack/render-deploy.sh > deploy/operator.yaml
