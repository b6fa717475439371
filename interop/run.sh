#!/usr/bin/env bash
# Builds spate (debug) and runs the interop tests against it: the
# rocketmq-client-rust round trip (tests/interop.rs) and its ACL test
# (tests/acl.rs), RocketMQ 5's official Python client over gRPC
# (tests/grpc_python.rs, with python/setup.sh's pinned packages), the
# ali-ons Node.js ACL test (node/run.sh), and RocketMQ 5's official Node.js
# and Rust clients over gRPC (node-grpc/run.sh, rust-grpc/run.sh).
# Usage: interop/run.sh [extra cargo test args]   (exits non-zero on failure)
# CARGO_TARGET_DIR defaults to /work/interop-target (a cache outside the checkout);
# SPATE_BIN overrides the server binary (default: <main>/target/debug/spate).
# node/run.sh needs node and npm (scripts/test.sh installs them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
main="$(dirname "$here")"

# The main workspace keeps its own target dir (so an outer CARGO_TARGET_DIR must not leak in).
(cd "$main" && env -u CARGO_TARGET_DIR nice -n 15 cargo build -p spate)
export SPATE_BIN="${SPATE_BIN:-$main/target/debug/spate}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/interop-target}"
cd "$here"
# Once with the client's default JSON headers, once with ROCKETMQ binary
# headers (signatures are checked over the decoded extFields of either).
nice -n 15 cargo test --test interop --test acl -- --nocapture "$@"
ROCKETMQ_SERIALIZE_TYPE=ROCKETMQ nice -n 15 cargo test --test interop --test acl -- --nocapture "$@"
# RocketMQ 5's official clients: Python's and Node.js's packages first.
"$here/node-grpc/setup.sh"
SPATE_PYTHON="$("$here/python/setup.sh")" SPATE_NODE_GRPC="$here/node-grpc" \
  nice -n 15 cargo test --test grpc_python -- --nocapture "$@"
"$here/node/run.sh"
"$here/node-grpc/run.sh"
# The official Rust SDK (crates.io `rocketmq`, producer and simple consumer),
# built in a target dir of its own (its tonic 0.9 tree differs from the rest).
CARGO_TARGET_DIR="${SPATE_RUST_GRPC_TARGET:-/work/interop-target-rs}" "$here/rust-grpc/run.sh"
