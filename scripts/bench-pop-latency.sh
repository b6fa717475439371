#!/usr/bin/env bash
# Pop latency and revive lateness at a steady rate (issue 21), in one run:
# one standalone broker (pinned to CPU 0), a 4-queue topic, and
# `spate bench e2e` (producer and consumers in one process, pinned to CPU
# 1) at a fixed rate of 1 KiB messages, alternating between a push consumer
# (the offset model, the control) and 4 simple consumers popping
# (`--pop`), which leave 1 % of the messages un-acked on their first
# delivery with a 2 s invisible time. Between runs it reads the broker's
# `spate_pop_revive_lateness_seconds` histogram, so each pop run reports
# the share of its revives that were at most 50 ms late (broker side),
# besides the client's bound on that lateness.
# Usage: scripts/bench-pop-latency.sh [rate] [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-10000}"
secs="${2:-20}"
rounds="${3:-3}"
cargo build --release -p spate >/dev/null
bin=$PWD/target/release/spate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
ns=127.0.0.1:17876
metrics=127.0.0.1:17557
taskset -c 0 "$bin" standalone --data-dir "$work/d" --namesrv-port 17876 --broker-port 17911 \
  --metrics-port 17557 2>"$work/log" &
for _ in $(seq 200); do grep -q "spate standalone ready" "$work/log" 2>/dev/null && break; sleep 0.05; done
"$bin" admin -n $ns topic create POPL -r 4 -w 4 >/dev/null

# "count within_50ms" of the broker's revive-lateness histogram.
lateness() {
  curl -s "http://$metrics/metrics" | awk '
    /^spate_pop_revive_lateness_seconds_bucket\{le="0.05"\}/ { within = $2 }
    /^spate_pop_revive_lateness_seconds_count/ { count = $2 }
    END { printf "%d %d\n", count, within }'
}

for r in $(seq "$rounds"); do
  order=(push pop)
  [ $((r % 2)) -eq 0 ] && order=(pop push)
  for m in "${order[@]}"; do
    extra=()
    [ "$m" = pop ] && extra=(--pop --consumers 4 --invisible 2s --unacked-percent 1)
    read -r c0 w0 < <(lateness)
    out=$(taskset -c 1 "$bin" bench e2e -n $ns --topic POPL --size 1024 --rate "$rate" \
      --duration "${secs}s" --warmup 2s "${extra[@]}" --json 2>/dev/null)
    read -r c1 w1 < <(lateness)
    echo "{\"round\":$r,\"model\":\"$m\",\"revives\":$((c1 - c0)),\"revives_within_50ms\":$((w1 - w0)),\"result\":$out}"
  done
done | tee "$work/runs.jsonl"
python3 - "$work/runs.jsonl" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(model, key):
    return statistics.median(r["result"][key] for r in runs if r["model"] == model)
pop = [r for r in runs if r["model"] == "pop"]
revives = sum(r["revives"] for r in pop)
within = sum(r["revives_within_50ms"] for r in pop)
print(json.dumps({
    "push_p50_us_median": med("push", "p50_us"),
    "push_p99_us_median": med("push", "p99_us"),
    "pop_p50_us_median": med("pop", "p50_us"),
    "pop_p99_us_median": med("pop", "p99_us"),
    "pop_store_to_receive_p50_us_median": med("pop", "store_to_consume_p50_us"),
    "pop_store_to_receive_p99_us_median": med("pop", "store_to_consume_p99_us"),
    "client_revive_lateness_p99_us_median": med("pop", "revive_lateness_p99_us"),
    "broker_revives": revives,
    "broker_revives_within_50ms_share": round(within / revives, 5) if revives else None,
    "never_came_back": sum(r["result"]["never_came_back"] for r in pop),
    "redelivered": sum(r["result"]["redelivered"] for r in pop),
}))
EOF
