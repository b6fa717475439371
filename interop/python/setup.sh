#!/usr/bin/env bash
# Makes a Python virtual environment with interop/python/requirements.txt
# installed (cached under ~/.cache/spate-interop, keyed by the requirements'
# hash, so a second run installs nothing) and prints its python's path.
# Needs python3 with venv (scripts/test.sh installs Debian's python3-venv).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sum="$(sha256sum "$here/requirements.txt" | cut -c1-16)"
venv="${SPATE_INTEROP_CACHE:-$HOME/.cache/spate-interop}/python-$sum"
if [ ! -f "$venv/.installed" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  touch "$venv/.installed"
fi
echo "$venv/bin/python"
