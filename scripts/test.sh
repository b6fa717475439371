#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# The full-disk test mounts a small tmpfs (needs root and util-linux's
# mount). Later issues add ZooKeeper here.
if ! command -v mount >/dev/null 2>&1; then
  apt-get update && apt-get install -y mount
fi

cargo test --workspace
