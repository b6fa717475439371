#!/usr/bin/env bash
# Pop + ack against the offset model (issue 21), in one run: one standalone
# broker (pinned to CPU 0) holds a backlog of 1 KiB messages on a 4-queue
# topic; each round drains it twice with a fresh group each time, once by
# pull (a push consumer from the first offset) and once by pop + ack (4
# simple consumers), in alternating order, the clients pinned to CPU 1.
# Prints one JSON line per run and the median throughput of each model with
# their ratio.
# Usage: scripts/bench-pop.sh [backlog messages] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
backlog="${1:-50000}"
rounds="${2:-4}"
cargo build --release -p spate >/dev/null 2>&1
bin=$PWD/target/release/spate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
ns=127.0.0.1:17876
taskset -c 0 "$bin" standalone --data-dir "$work/d" --namesrv-port 17876 --broker-port 17911 2>"$work/log" &
for _ in $(seq 200); do grep -q "spate standalone ready" "$work/log" 2>/dev/null && break; sleep 0.05; done
"$bin" admin -n $ns topic create POPB -r 4 -w 4 >/dev/null
# The backlog, at the producer's full speed (four in flight).
sent=0
while [ "$sent" -lt "$backlog" ]; do
  out=$(taskset -c 1 "$bin" bench produce -n $ns --topic POPB --size 1024 --rate 0 --in-flight 4 \
    --duration 2s --warmup 0s --json)
  sent=$((sent + $(echo "$out" | sed -n 's/.*"sent_ok":\([0-9]*\).*/\1/p')))
done
echo "backlog: $sent messages" >&2
for r in $(seq "$rounds"); do
  order=(pull pop)
  [ $((r % 2)) -eq 0 ] && order=(pop pull)
  for m in "${order[@]}"; do
    extra=()
    [ "$m" = pop ] && extra=(--pop --consumers 4)
    out=$(taskset -c 1 "$bin" bench consume -n $ns --topic POPB --group "bench_${m}_$r" --from first \
      --warmup 0s --duration 120s --count "$backlog" "${extra[@]}" --json)
    echo "{\"round\":$r,\"model\":\"$m\",\"result\":$out}"
  done
done | tee "$work/runs.jsonl"
python3 - "$work/runs.jsonl" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
tp = {m: [r["result"]["throughput_per_s"] for r in runs if r["model"] == m] for m in ("pull", "pop")}
med = {m: statistics.median(v) for m, v in tp.items()}
pop = [r["result"] for r in runs if r["model"] == "pop"]
print(json.dumps({
    "pull_throughput_median": med["pull"],
    "pop_throughput_median": med["pop"],
    "pop_over_pull": round(med["pop"] / med["pull"], 3),
    "pop_duplicates": sum(p.get("duplicates", 0) for p in pop),
    "pop_store_to_receive_p50_us_median": statistics.median(p["store_to_consume_p50_us"] for p in pop),
    "pop_store_to_receive_p99_us_median": statistics.median(p["store_to_consume_p99_us"] for p in pop),
}))
EOF
