#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs every test:
# the workspace's tests, then the interoperability tests against clients we
# did not write (rocketmq-client-rust from crates.io, ali-ons from npm,
# RocketMQ 5's rocketmq-python-client from PyPI over gRPC; set
# SPATE_SKIP_INTEROP=1 to leave them out of a quick local run).
set -euo pipefail
cd "$(dirname "$0")/.."

# The full-disk test mounts a small tmpfs (needs root and util-linux's
# mount); the controller tests run a real ZooKeeper (Debian's package,
# started by the tests themselves on free loopback ports).
missing=()
command -v mount >/dev/null 2>&1 || missing+=(mount)
[ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1 || missing+=(zookeeper)
# The ali-ons interop test (interop/node) runs on Node.js: Debian's packages
# when node or npm is missing (a NodeSource nodejs brings its own npm).
if [ "${SPATE_SKIP_INTEROP:-0}" != "1" ]; then
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  # RocketMQ 5's Python client (interop/python) installs into a venv.
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3 python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update && apt-get install -y "${missing[@]}"
fi

cargo test --workspace

if [ "${SPATE_SKIP_INTEROP:-0}" != "1" ]; then
  interop/run.sh
fi
