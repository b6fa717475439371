#!/usr/bin/env bash
# Spate's gRPC endpoint vs. RocketMQ 5's official Rust SDK (crate rocketmq
# 5.0.0, pinned in Cargo.toml / Cargo.lock): builds src/main.rs, starts
# `spate standalone` on free loopback ports with gRPC served on the broker
# port (grpcServerPort=0), runs the program against 127.0.0.1:<broker port>
# in a fresh topic (auto-created on its first route query) and consumer
# group, prints its JSON line, and stops spate. Exits non-zero on failure.
# Usage: interop/rust-grpc/run.sh
# CARGO_TARGET_DIR: build cache (default /work/interop-target-rs);
# SPATE_BIN: the spate binary (default: <main>/target/debug/spate);
# GRPC_RUST_MESSAGES: messages sent and received (default 1000).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
main="$(dirname "$(dirname "$here")")"
bin="${SPATE_BIN:-$main/target/debug/spate}"
messages="${GRPC_RUST_MESSAGES:-1000}"
target="${CARGO_TARGET_DIR:-/work/interop-target-rs}"

[ -x "$bin" ] || { echo "spate binary not found at $bin (cargo build -p spate, or set SPATE_BIN)" >&2; exit 1; }

(cd "$here" && CARGO_TARGET_DIR="$target" nice -n 15 cargo build --locked)
client="$target/debug/spate-rust-grpc-interop"

source "$here/../standalone.sh" grpc-rust

cat > "$work/broker.conf" <<EOF
brokerIP1=127.0.0.1
grpcServerPort=0
EOF

start_standalone
endpoint="127.0.0.1:$broker_port"
echo "spate: pid $spate_pid, gRPC endpoint $endpoint"

run_id="$$$RANDOM"
watchdog_s=120
rc=0
began=$SECONDS
# The SDK logs to stderr (and, at ERROR, "receive telemetry command but there
# is no handler" for the Settings the server sends back: 5.0.0 handles only
# RecoverOrphanedTransactionCommand there); it is shown only on failure.
timeout -k 5 $((watchdog_s + 15)) "$client" --endpoint "$endpoint" \
  --topic "RustGrpcSendReceive$run_id" --group "rust_grpc_send_receive_$run_id" \
  --count "$messages" --watchdog "$watchdog_s" > "$work/client.out" 2> "$work/client.err" || rc=$?
line="$(tail -n 1 "$work/client.out")"
echo "rust-grpc send-receive ($((SECONDS - began))s): $line"
case "$line" in
  '{"ok":true,'*) ;;
  *) [ "$rc" -ne 0 ] || rc=1 ;;
esac
if [ "$rc" -ne 0 ]; then
  echo "rust-grpc send-receive failed (exit $rc)" >&2
  echo "---- client stderr (last 40 lines) ----" >&2
  tail -n 40 "$work/client.err" >&2
  exit 1
fi
echo "rust-grpc: passed"
