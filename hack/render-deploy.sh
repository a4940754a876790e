#!/usr/bin/env bash
# Prints the chart rendered as deploy/operator.yaml holds it: release cyclr-operator in
# cyclr-system, default values but the CRDs (deploy/crds.yaml holds them, for
# `kubectl delete -f deploy/operator.yaml` to leave them), the lowest Kubernetes version the
# chart supports.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bin/helm template cyclr-operator charts/cyclr-operator \
  --namespace cyclr-system --kube-version 1.33.0 --set crds.enabled=false
