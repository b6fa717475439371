#!/usr/bin/env bash
# Failover numbers in BENCHMARKS.md (issue 6): the failover test as a chaos
# runner. One cluster (ZooKeeper, name server, controller, three brokers
# with strict sync replication); each trial sends 300 acknowledged
# messages, SIGKILLs the master, measures how long until a new master
# acknowledges a send, checks every acknowledged message is there, and lets
# the old master rejoin and match byte for byte.
# Usage: scripts/bench-failover.sh [trials] [broker ZooKeeper session ms]
set -euo pipefail
cd "$(dirname "$0")/.."
SPATE_FAILOVER_TRIALS="${1:-20}" SPATE_FAILOVER_ZK_SESSION_MS="${2:-1000}" \
  cargo test --release -p spate --test failover -- --nocapture 2>&1 | grep -E '^\{"trials"|failover trial|test result'
