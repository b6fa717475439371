#!/usr/bin/env bash
# What the header encoding costs the broker: one release standalone broker
# (pinned to CPU 0), one closed-loop sync producer (CPU 1) sending with
# JSON headers and with binary (ROCKETMQ) headers, interleaved (JSON
# first in odd rounds), `spate bench floor` each round. Prints one JSON
# line per run, then the medians.
# Usage: scripts/bench-headers.sh [seconds per run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-6}"
rounds="${2:-8}"
cargo build --release -p spate >/dev/null 2>&1
bin=$PWD/target/release/spate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
ns=17876
taskset -c 0 "$bin" standalone --data-dir "$work/data" --namesrv-port $ns --broker-port $((ns + 35)) 2>"$work/broker.log" &
broker=$!
for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$((ns + 35))") 2>/dev/null && break; sleep 0.05; done
# The first append makes the broker prepare its next segment: let that
# finish (under 5 % of a CPU for a second, 90 s at most) before measuring.
taskset -c 1 "$bin" bench produce -n "127.0.0.1:$ns" --topic H --rate 0 --in-flight 1 --duration 1s --warmup 0s \
  >/dev/null 2>&1 || true
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for _ in $(seq 90); do
  t0=$(ticks $broker); sleep 1; t1=$(ticks $broker)
  [ $((t1 - t0)) -lt $(($(getconf CLK_TCK) / 20)) ] && break
done
run() { # round, encoding
  local out
  out=$(taskset -c 1 "$bin" bench produce -n "127.0.0.1:$ns" --topic H --rate 0 --in-flight 1 \
    --duration "${secs}s" --warmup 2s --serialize-type "$2" --json 2>/dev/null)
  echo "{\"round\":$1,\"variant\":\"$2\",\"result\":$out}"
}
for r in $(seq "$rounds"); do
  floor=$("$bin" bench floor --pin --rounds 5000 --seq-write-mib 0 --dir "$work" --json 2>/dev/null)
  echo "{\"round\":$r,\"variant\":\"floor\",\"result\":$floor}"
  if [ $((r % 2)) -eq 1 ]; then order="json rocketmq"; else order="rocketmq json"; fi
  for v in $order; do run "$r" "$v"; done
done | tee "$work/rounds.jsonl"
python3 - "$work/rounds.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = statistics.median
floor = [r["result"]["tcp_round_trip"] for r in rows if r["variant"] == "floor"]
out = {"floor_p50_us": med(f["p50_us"] for f in floor),
       "floor_server_cpu_us": med(f["server_cpu_us_per_round_trip"] for f in floor)}
for v in ("json", "rocketmq"):
    rs = [r["result"] for r in rows if r["variant"] == v]
    cpu = med(r["broker_cpu_us_per_request"] for r in rs)
    p50 = med(r["p50_us"] for r in rs)
    out[v] = {"p50_us": p50, "p99_us": med(r["p99_us"] for r in rs),
              "broker_cpu_us_per_request": cpu,
              "p50_over_floor": round(p50 / out["floor_p50_us"], 2),
              "broker_cpu_over_floor_server": round(cpu / out["floor_server_cpu_us"], 2)}
print(json.dumps({"summary": out}))
PY
