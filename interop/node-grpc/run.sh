#!/usr/bin/env bash
# Spate's gRPC endpoint vs. RocketMQ 5's official Node.js client
# (rocketmq-client-nodejs, pinned in package.json / package-lock.json):
# starts `spate standalone` on free loopback ports with gRPC served on the
# broker port (grpcServerPort=0: HTTP/2 is told from remoting by sniffing),
# runs the interop.js scenarios send-receive, redeliver, fifo, delay,
# transaction and push against 127.0.0.1:<broker port>, each in a fresh topic
# (auto-created on its first route query) and consumer group, prints each
# run's JSON line, and stops spate. Exits non-zero on the first failure.
# delay also recalls a second delayed message (RecallMessage); transaction
# leaves a third half message open, which only the broker's check-back
# (RecoverOrphanedTransactionCommand on the Telemetry stream) commits.
# Usage: interop/node-grpc/run.sh   (needs node and npm)
# SPATE_BIN: the spate binary (default: <main>/target/debug/spate, which interop/run.sh builds);
# GRPC_NODE_MESSAGES: messages in send-receive (default 1000).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
main="$(dirname "$(dirname "$here")")"
bin="${SPATE_BIN:-$main/target/debug/spate}"
messages="${GRPC_NODE_MESSAGES:-1000}"

[ -x "$bin" ] || { echo "spate binary not found at $bin (cargo build -p spate, or set SPATE_BIN)" >&2; exit 1; }
cd "$here"

"$here/setup.sh"

source "$here/../standalone.sh" grpc-node

# No dedicated gRPC port. Half messages are checked every 300 ms, but only
# once 8 s old: the transaction scenario ends its first two halves itself
# well before that, and the third (left open) is checked back well within
# its --recv-timeout (60 s).
cat > "$work/broker.conf" <<EOF
brokerIP1=127.0.0.1
grpcServerPort=0
transactionCheckInterval=300
transactionTimeOut=8000
EOF
start_standalone
endpoint="127.0.0.1:$broker_port"
echo "spate: pid $spate_pid, gRPC endpoint $endpoint"

# run NAME WATCHDOG_S SCENARIO [interop.js options...]: one scenario in topic
# NodeGrpc<NAME><run> and group node_grpc_<name>_<run>. interop.js ends itself
# (exit 3) when its watchdog fires; `timeout` is only the backstop.
run_id="$$$RANDOM"
scenario() {
  local name="$1" watchdog_s="$2" which="$3"
  shift 3
  local topic="NodeGrpc${name}${run_id}" group="node_grpc_${name,,}_${run_id}"
  local started=$SECONDS line rc=0
  timeout -k 5 $((watchdog_s + 15)) node interop.js --endpoint "$endpoint" \
    --topic "$topic" --group "$group" --scenario "$which" --watchdog "$watchdog_s" "$@" \
    > "$work/node.out" 2> "$work/node.err" || rc=$?
  line="$(tail -n 1 "$work/node.out")"
  echo "node-grpc $which ($((SECONDS - started))s): $line"
  if [ $rc -ne 0 ] || ! printf '%s' "$line" | node -e '
      let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
        let v; try { v = JSON.parse(s); } catch (_) { process.exit(1); }
        process.exit(v && v.ok === true ? 0 : 1); });'; then
    echo "node-grpc scenario $which failed (exit $rc)" >&2
    if [ -s "$work/node.err" ]; then
      echo "---- interop.js stderr ----" >&2
      tail -n 40 "$work/node.err" >&2
    fi
    exit 1
  fi
  last_line="$line"
}

# expect SCENARIO FIELD VALUE: the last scenario's JSON line has FIELD == VALUE.
expect() {
  local which="$1" field="$2" want="$3"
  printf '%s' "$last_line" | node -e '
      let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
        const [ field, want ] = process.argv.slice(1);
        const got = JSON.stringify(JSON.parse(s)[field]);
        if (got !== want) { console.error(`got ${field} ${got}, expected ${want}`); process.exit(1); }
      });' "$field" "$want" \
    || { echo "node-grpc scenario $which: unexpected \"$field\"" >&2; exit 1; }
}

total_started=$SECONDS
scenario SendReceive 120 send-receive --count "$messages"
scenario Redeliver 60 redeliver
scenario Fifo 60 fifo --count 90
scenario Delay 60 delay
scenario Tx 90 transaction
expect transaction received 2 # committed by the producer, and by check-back
scenario Push 90 push --count 200 --nack 10
echo "node-grpc: all scenarios passed in $((SECONDS - total_started))s"
