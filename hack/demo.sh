#!/usr/bin/env bash
# `make demo`: a real control plane, cyclr-sim, the operator and examples/, then a status
# table. Runs until Ctrl-C; with DEMO_ONCE=1 it exits 0 once everything is Ready (non-zero
# after DEMO_TIMEOUT seconds, 180 by default).
set -euo pipefail
cd "$(dirname "$0")/.."

demo=.demo
timeout_s="${DEMO_TIMEOUT:-180}"
sim_port="${DEMO_SIM_PORT:-18181}"
metrics_port="${DEMO_METRICS_PORT:-18080}"
export KUBECONFIG="$PWD/$demo/cluster/kubeconfig"

# A machine without kubectl gets one built into bin/ like the control plane (once, minutes).
if ! command -v kubectl >/dev/null; then
  bash hack/testbin.sh kubectl
  export PATH="$PWD/bin:$PATH"
fi

pids=()
cleanup() {
  echo
  echo "demo: stopping the operator, cyclr-sim and the control plane"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ./target/debug/control-plane down --dir "$demo/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "demo: building"
bash hack/testbin.sh
cargo build --quiet --workspace --bins

mkdir -p "$demo"
./target/debug/control-plane down --dir "$demo/cluster" >/dev/null 2>&1 || true
./target/debug/control-plane up --dir "$demo/cluster"

echo "demo: starting cyclr-sim on 127.0.0.1:$sim_port"
# With the template examples/cycles.yaml installs (Tickets sync) in its partner console.
./target/debug/cyclr-sim --listen "127.0.0.1:$sim_port" --client-id demo-client --client-secret demo-secret \
  --templates hack/demo-templates.json >"$demo/cyclr-sim.log" 2>&1 &
pids+=($!)

kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
# The operator's own namespace, as the chart makes it: its leader Lease and Events go there.
kubectl create namespace cyclr-system --save-config >/dev/null

echo "demo: starting the operator (log: $demo/operator.log, metrics: http://127.0.0.1:$metrics_port/metrics)"
./target/debug/cyclr-operator run --namespace cyclr-system --http-addr "127.0.0.1:$metrics_port" \
  >"$demo/operator.log" 2>&1 &
pids+=($!)

echo "demo: applying examples/"
sed "s#https://api.cyclr.com#http://127.0.0.1:$sim_port#" examples/partner.yaml | kubectl apply -f - >/dev/null
kubectl apply -f examples/accounts.yaml >/dev/null
kubectl apply -f examples/connector-installs.yaml >/dev/null
# The second partner, on Cyclr's v1.0 API, and its account (after accounts.yaml: its namespace).
sed "s#https://api.cyclr.com#http://127.0.0.1:$sim_port#" examples/v1.yaml | kubectl apply -f - >/dev/null

deadline=$((SECONDS + timeout_s))
kinds=(cyclrpartners cyclraccounts cyclrconnectorinstalls)
all_ready() {
  local kind
  for kind in "${kinds[@]}"; do
    kubectl get "$kind" -A -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' \
      | grep -qv '^True$' && return 1
    [ -n "$(kubectl get "$kind" -A -o name)" ] || return 1
  done
  # Each partner's account count (what Cyclr lists for it; one simulator serves both demo
  # partners), refreshed a few seconds after its last create (one write per burst), counts at
  # least the accounts that name it.
  local partner want have
  for partner in $(kubectl get cyclrpartners -o jsonpath='{.items[*].metadata.name}'); do
    want=$(kubectl get cyclraccounts -A -o jsonpath="{range .items[?(@.spec.partnerRef.name==\"$partner\")]}x{end}" | wc -c)
    have=$(kubectl get cyclrpartner "$partner" -o jsonpath='{.status.accountCount}')
    [ "${have:-0}" -ge "$want" ] || return 1
  done
  return 0
}
wait_ready() {
  until all_ready; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: not everything was Ready after ${timeout_s}s" >&2
      kubectl get "$(IFS=,; echo "${kinds[*]}")" -A -o wide >&2 || true
      tail -n 30 "$demo/operator.log" >&2
      exit 1
    fi
    sleep 1
  done
}
wait_ready
# The cycle last: its template needs the Tickets connector v1.yaml installs, authenticated,
# into hooli; installed after it, the template reuses that connector and the cycle can run.
echo "demo: applying examples/cycles.yaml"
kubectl apply -f examples/cycles.yaml >/dev/null
kinds+=(cyclrcycles)
wait_ready
# Usage is read right after an account is synced; give the status a moment to show it.
sleep 2

echo
PATH="$PWD/target/debug:$PATH" kubectl cyclr status -A
echo
echo "demo: everything is Ready. Try it yourself:"
echo "  export KUBECONFIG=$KUBECONFIG"
echo "  kubectl get cyclr -A            # all four kinds, by category"
echo "  kubectl describe cya -n tenants acme"
echo "  kubectl get cyp                  # two partners: the Partner API (default) and v1.0 (v1)"
echo "  kubectl get cyc -n tenants -o wide     # the cycle: Cyclr's status, tasks run"
echo "  kubectl delete cya -n tenants hooli   # v1.0, deletionPolicy Delete: gone from Cyclr too"
echo "  export PATH=$PWD/target/debug:\$PATH   # kubectl-cyclr, the kubectl plugin"
echo "  kubectl cyclr status -A"
echo "  kubectl cyclr signin acme -n tenants --username support@example.com"
echo "  curl -s http://127.0.0.1:$metrics_port/metrics"
if [ "${DEMO_ONCE:-}" = 1 ]; then
  exit 0
fi
echo "demo: running; press Ctrl-C to stop and clean up"
while true; do sleep 3600; done
