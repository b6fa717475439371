#!/usr/bin/env bash
# Runs the store benchmarks recorded in BENCHMARKS.md, one JSON line each.
# Usage: scripts/bench-store.sh [OUT_DIR]   (takes about 7 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-results}
mkdir -p "$out"
cargo build --release -p spate
spate=target/release/spate
run() {
  local name=$1; shift
  echo "== $name: spate bench store $*" >&2
  "$spate" bench store --json "$@" | tee "$out/$name.json"
}
run control-noop-pinned    --size 1024 --rate 100000 --duration 30s --flush async --pin --noop
run async-100k-pinned      --size 1024 --rate 100000 --duration 30s --flush async --pin
run async-100k             --size 1024 --rate 100000 --duration 30s --flush async
run async-100k-256m-pinned --size 1024 --rate 100000 --duration 30s --flush async --pin --segment-size 268435456
run async-100k-nowarm      --size 1024 --rate 100000 --duration 30s --flush async --pin --no-warm
run async-100k-pool        --size 1024 --rate 100000 --duration 30s --flush async --pin --transient-pool
run async-max              --size 1024 --rate 0 --duration 10s --flush async --pin
run sync-1                 --size 1024 --rate 0 --duration 10s --flush sync --producers 1 --pin
run sync-64                --size 1024 --rate 0 --duration 10s --flush sync --producers 64 --pin
