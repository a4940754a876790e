#!/usr/bin/env bash
# `make manifests`: writes every generated manifest from its one source.
#   crds/, the chart's crds/ and deploy/crds.yaml   <- `cyclr-operator crd` (the Rust types)
#   deploy/operator.yaml                            <- `helm template` of the chart's defaults
# tests/deploy.rs fails when any of them differs from what this script would write.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo run -q --bin cyclr-operator -- crd > crds/cyclr.com_crds.yaml
cp crds/cyclr.com_crds.yaml charts/cyclr-operator/crds/cyclr.com_crds.yaml
cp crds/cyclr.com_crds.yaml deploy/crds.yaml

bash hack/testbin.sh helm >/dev/null
bash hack/render-deploy.sh > deploy/operator.yaml
