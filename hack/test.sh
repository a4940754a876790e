#!/usr/bin/env bash
# `make test`: every check and every test, with the independent slow parts overlapped, since a
# cold run is mostly waiting (Go builds, control planes starting, operators converging):
#  - the Go-built binaries in bin/ (hack/testbin.sh, and kubectl when none is on PATH) build
#    in the background while the Rust code is linted and built;
#  - the test binaries run TEST_JOBS at a time (default: the number of cores), longest first
#    by the last run's durations; each starts its own control plane on free ports
#    (cyclr-testenv), so they share nothing. TEST_JOBS=1 runs them one after another.
# Each binary's output is printed whole when it ends and kept in target/test-logs/; every
# binary runs even when one fails (as `cargo test --no-fail-fast`), and the failures are
# listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
jobs=${TEST_JOBS:-$(nproc)}
logs=${CARGO_TARGET_DIR:-target}/test-logs
mkdir -p "$logs"
rm -f "$logs"/*.log "$logs"/*.failed "$logs"/binaries

# In a process group of its own, so a failure below stops it (and its go builds) too.
setsid bash -c 'bash hack/testbin.sh && { command -v kubectl >/dev/null || bash hack/testbin.sh kubectl; }' \
  >"$logs/testbin.log" 2>&1 &
testbin=$!
trap 'kill -- -"$testbin" 2>/dev/null || true' EXIT

$CARGO fmt --all -- --check
$CARGO clippy --workspace --all-targets -- -D warnings
# The image and release tests inspect debug-profile builds: the same layout, built in
# minutes, not the release profile's half hour.
IMAGE_PROFILE=dev bash hack/image.sh
# Every test binary with the directory cargo would run it in (its package's).
$CARGO test --workspace --no-run --message-format=json-render-diagnostics |
  jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
         | "\(.manifest_path | rtrimstr("/Cargo.toml"))\t\(.executable)"' >"$logs/binaries"

status=0
wait "$testbin" || status=$?
cat "$logs/testbin.log"
[ "$status" = 0 ] || { echo "make test: building bin/ failed (above)" >&2; exit 1; }
RELEASE_PROFILE=dev bash hack/release.sh

# One test binary ("DIR<tab>EXE"): run in its package's directory, its output printed whole
# when it ends, its time noted for the next run's order.
run_one() {
  local dir=${1%%$'\t'*} exe=${1#*$'\t'} base name start rc=0
  base=$(basename "$exe" | sed 's/-[0-9a-f]*$//')
  name=$(basename "$dir")-$(basename "$exe")
  start=$(date +%s)
  (cd "$dir" && "$exe") >"$LOGS/$name.log" 2>&1 || rc=$?
  echo "$(($(date +%s) - start)) $base" >>"$LOGS/durations.new"
  [ "$rc" = 0 ] || touch "$LOGS/$name.failed"
  {
    flock 9
    echo "=== $base ($dir): exit $rc"
    cat "$LOGS/$name.log"
  } 9>"$LOGS/print.lock"
}
export -f run_one
export LOGS=$logs
rm -f "$logs/durations.new"
# Longest first (by the last run, or on a clean clone by hack/test-durations.txt), so the
# slowest binary does not start last.
durations=$logs/durations
[ -f "$durations" ] || durations=hack/test-durations.txt
while IFS=$'\t' read -r dir exe; do
  base=$(basename "$exe" | sed 's/-[0-9a-f]*$//')
  last=$(awk -v b="$base" '$2 == b {print $1; exit}' "$durations" 2>/dev/null || true)
  printf '%s\t%s\t%s\n' "${last:-0}" "$dir" "$exe"
done <"$logs/binaries" | sort -rn | cut -f2- | xargs -d '\n' -P "$jobs" -I{} bash -c 'run_one "$1"' _ {}
mv "$logs/durations.new" "$logs/durations"

$CARGO test --workspace --doc

failed=$(cd "$logs" && ls -- *.failed 2>/dev/null | sed 's/\.failed$//' || true)
if [ -n "$failed" ]; then
  echo "make test: these test binaries failed (their output above and in $logs/):" >&2
  echo "$failed" | sed 's/^/  /' >&2
  exit 1
fi
echo "make test: every test binary passed ($(wc -l <"$logs/binaries") binaries, $jobs at a time)"
