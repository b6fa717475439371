#!/usr/bin/env bash
# gRPC against remoting in one run (issue 22): one standalone broker pinned
# to CPU 0, clients pinned to CPU 1.
# 1. Single-producer sync sends of 1 KiB, one in flight, alternating
#    remoting (through the name server) and gRPC (SendMessage on the broker
#    port, HTTP/2 sniffed) in A B A B order; per protocol the median of the
#    rounds' p50 and p99, and gRPC over remoting.
# 2. Receive + ack throughput: a backlog drained by 4 simple consumers over
#    gRPC (ReceiveMessage, one AckMessage per batch) and over remoting
#    (POP_MESSAGE, BATCH_ACK_MESSAGE), alternating.
# Usage: scripts/bench-grpc.sh [rounds] [seconds per send run] [backlog]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-4}"
secs="${2:-10}"
backlog="${3:-40000}"
cargo build --release -p spate >/dev/null 2>&1
bin=$PWD/target/release/spate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
ns=127.0.0.1:17876
broker=127.0.0.1:17911
printf 'grpcServerPort=0\n' > "$work/broker.conf"
taskset -c 0 "$bin" standalone -c "$work/broker.conf" --data-dir "$work/d" --namesrv-port 17876 --broker-port 17911 2>"$work/log" &
for _ in $(seq 200); do grep -q "spate standalone ready" "$work/log" 2>/dev/null && break; sleep 0.05; done
"$bin" admin -n $ns topic create GSEND -r 4 -w 4 >/dev/null
"$bin" admin -n $ns topic create GPOP -r 4 -w 4 >/dev/null
for r in $(seq "$rounds"); do
  order=(remoting grpc)
  [ $((r % 2)) -eq 0 ] && order=(grpc remoting)
  for p in "${order[@]}"; do
    extra=()
    [ "$p" = grpc ] && extra=(--grpc "$broker")
    out=$(taskset -c 1 "$bin" bench produce -n $ns --topic GSEND --size 1024 --in-flight 1 \
      --duration "${secs}s" --warmup 1s "${extra[@]}" --json)
    echo "{\"round\":$r,\"part\":\"send\",\"protocol\":\"$p\",\"result\":$out}"
  done
done | tee "$work/send.jsonl"
# The backlog for the drains: enough for every round of both protocols.
need=$((backlog * rounds * 2))
sent=0
while [ "$sent" -lt "$need" ]; do
  out=$(taskset -c 1 "$bin" bench produce -n $ns --topic GPOP --size 1024 --in-flight 8 --duration 3s --warmup 0s --json)
  sent=$((sent + $(echo "$out" | sed -n 's/.*"sent_ok":\([0-9]*\).*/\1/p')))
done
echo "backlog: $sent messages" >&2
for r in $(seq "$rounds"); do
  order=(remoting grpc)
  [ $((r % 2)) -eq 0 ] && order=(grpc remoting)
  for p in "${order[@]}"; do
    extra=()
    [ "$p" = grpc ] && extra=(--grpc "$broker")
    # One group for all rounds: each drains the next $backlog messages.
    out=$(taskset -c 1 "$bin" bench consume -n $ns --topic GPOP --group "bench_drain_$p" --from first --pop \
      --consumers 4 --warmup 0s --duration 120s --count "$backlog" "${extra[@]}" --json)
    echo "{\"round\":$r,\"part\":\"drain\",\"protocol\":\"$p\",\"result\":$out}"
  done
done | tee "$work/drain.jsonl"
python3 - "$work/send.jsonl" "$work/drain.jsonl" <<'PY'
import json, statistics, sys
send = [json.loads(l) for l in open(sys.argv[1])]
drain = [json.loads(l) for l in open(sys.argv[2])]
def med(rows, proto, key):
    return statistics.median(r["result"][key] for r in rows if r["protocol"] == proto)
out = {}
for q in ("p50", "p99"):
    k = f"{q}_us"
    rem, grpc = med(send, "remoting", k), med(send, "grpc", k)
    out[f"remoting_send_{q}_us"] = rem
    out[f"grpc_send_{q}_us"] = grpc
    out[f"grpc_over_remoting_{q}"] = round(grpc / rem, 3)
rem, grpc = med(drain, "remoting", "throughput_per_s"), med(drain, "grpc", "throughput_per_s")
out["remoting_receive_ack_per_s"] = round(rem)
out["grpc_receive_ack_per_s"] = round(grpc)
out["grpc_over_remoting_receive_ack"] = round(grpc / rem, 3)
print(json.dumps(out))
PY
