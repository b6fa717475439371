#!/usr/bin/env bash
# The overload numbers in BENCHMARKS.md (issue 7): one standalone broker
# (release build) with a core topic (class core) and a bulk topic (class
# bulk), client and broker on this machine.
#  1. peak: the bulk topic alone at the most the broker takes (async sends);
#  2. core alone at a tenth of the peak (sync, open loop): its unloaded p99;
#  3. overload: core at the same rate plus bulk offered twice the peak,
#     both at once; the broker's RSS sampled every second;
#  4. nothing accepted lost: each topic stores at least what was acknowledged.
# Prints one JSON object per step. Usage: scripts/bench-overload.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
cargo build --release -p spate >/dev/null 2>&1
bin=target/release/spate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
ns=127.0.0.1:19876

$bin standalone --data-dir "$work/data" --namesrv-port 19876 --broker-port 19911 2>"$work/broker.log" &
pid=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/19911) 2>/dev/null && break; sleep 0.05; done
sleep 3
for t in Core Bulk; do $bin admin -n $ns topic create $t -r 8 -w 8 >/dev/null; done
$bin admin -n $ns limit priority --target topic --name Core --class core >/dev/null
$bin admin -n $ns limit priority --target topic --name Bulk --class bulk >/dev/null
sleep 1

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
stored() { # total messages in a topic's queues
  $bin admin -n $ns --json topic status "$1" | python3 -c '
import json,sys
v=json.load(sys.stdin)
print(sum(int(q["max_offset"]) - int(q["min_offset"]) for q in v))'
}

peak=$($bin bench produce -n $ns --topic Bulk --rate 0 --mode async --in-flight 2048 --producers 2 \
  --warmup 0s --duration "${secs}s" --json 2>/dev/null)
echo "{\"step\":\"peak_bulk_alone\",\"result\":$peak}"
peak_rate=$(echo "$peak" | json_field '["throughput_per_s"]' | cut -d. -f1)
core_rate=$((peak_rate / 10))
bulk_rate=$((2 * peak_rate))

unloaded=$($bin bench produce -n $ns --topic Core --rate "$core_rate" --in-flight 256 \
  --warmup 0s --duration "${secs}s" --json 2>/dev/null)
echo "{\"step\":\"core_alone\",\"rate\":$core_rate,\"result\":$unloaded}"

rss_log="$work/rss"
( while kill -0 $pid 2>/dev/null; do awk '/^VmRSS:/{print $2}' /proc/$pid/status >> "$rss_log"; sleep 1; done ) &
$bin bench produce -n $ns --topic Bulk --rate "$bulk_rate" --mode async --in-flight 4096 --producers 2 \
  --warmup 0s --duration "${secs}s" --json > "$work/bulk.json" 2>/dev/null &
bulk_pid=$!
core=$($bin bench produce -n $ns --topic Core --rate "$core_rate" --in-flight 256 \
  --warmup 0s --duration "${secs}s" --json 2>/dev/null)
wait $bulk_pid
bulk=$(cat "$work/bulk.json")
echo "{\"step\":\"overload_core\",\"rate\":$core_rate,\"result\":$core}"
echo "{\"step\":\"overload_bulk\",\"offered_rate\":$bulk_rate,\"result\":$bulk}"
rss_max=$(sort -n "$rss_log" | tail -1)
rss_first=$(head -1 "$rss_log")
echo "{\"step\":\"broker_rss_kb\",\"first\":$rss_first,\"max\":$rss_max}"
echo "{\"step\":\"limits\",\"result\":$($bin admin -n $ns --json limit list)}"

acked_core=$(( $(echo "$unloaded" | json_field '["sent_ok"]') + $(echo "$core" | json_field '["sent_ok"]') ))
acked_bulk=$(( $(echo "$peak" | json_field '["sent_ok"]') + $(echo "$bulk" | json_field '["sent_ok"]') ))
echo "{\"step\":\"stored_vs_acked\",\"core_acked\":$acked_core,\"core_stored\":$(stored Core),\"bulk_acked\":$acked_bulk,\"bulk_stored\":$(stored Bulk)}"
