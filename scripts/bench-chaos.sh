#!/usr/bin/env bash
# Chaos numbers in BENCHMARKS.md (issue 6): the chaos tests as a runner.
# Each fault (kill -9 master, SIGSTOP master, master cut off from
# ZooKeeper, kill -9 leading controller, kill -9 slave) gets its own
# cluster (ZooKeeper, name server, 2 controllers, 3 brokers with strict sync
# replication) with a producer at a fixed rate and a consumer, is repeated
# `trials` times, and is checked for loss, queue order, duplicates and one
# acknowledging broker per epoch; one JSON line per fault.
# Usage: scripts/bench-chaos.sh [trials] [broker ZooKeeper session ms] [sends/s]
set -euo pipefail
cd "$(dirname "$0")/.."
SPATE_CHAOS_TRIALS="${1:-20}" SPATE_CHAOS_ZK_SESSION_MS="${2:-1000}" SPATE_CHAOS_RATE="${3:-200}" \
  cargo test --release -p spate --test chaos -- --nocapture --test-threads=1 2>&1 \
  | grep -E '^\{"fault"|^chaos |test result|panicked'
