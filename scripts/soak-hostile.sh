#!/usr/bin/env bash
# Soaks the hostile-client test (crates/spate/tests/hostile.rs) against a
# release build: `cargo test --release` builds the `spate` binary with the
# release profile and the test starts that binary (CARGO_BIN_EXE_spate).
#
#   scripts/soak-hostile.sh [seconds] [seed]      (defaults: 3600, random)
#
# Every violation is reported and the run goes on (SPATE_HOSTILE_KEEP_GOING=1);
# the totals (requests by kind, answers by code, restarts, checks held) are
# printed at the end. Replay a failure with the seed it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3600}"
seed="${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
echo "soak-hostile: ${secs} s, seed ${seed}"
SPATE_HOSTILE_SECS="$secs" SPATE_HOSTILE_SEED="$seed" SPATE_HOSTILE_KEEP_GOING="${SPATE_HOSTILE_KEEP_GOING:-1}" \
    cargo test --release -p spate --test hostile -- --nocapture
