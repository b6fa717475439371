#!/usr/bin/env bash
# Installs interop/node-grpc's pinned packages (package-lock.json) into its
# node_modules, only when they were not installed from this very lock file.
# Install scripts are not needed: the only one in the tree (protobufjs's
# postinstall) just warns about version ranges in the parent package.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.spate-lock.sha256
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2
  echo "$lock_sum" > "$stamp"
fi
