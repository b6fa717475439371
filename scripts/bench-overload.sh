#!/usr/bin/env bash
# The overload numbers in BENCHMARKS.md (issue 7): one standalone broker
# (release build) with a core topic (class core) and a bulk topic (class
# bulk).
#
# CPUs: the broker runs on CPU 1 alone and the load generators on CPU 0,
# the core generator at real-time priority. On a 2-vCPU machine this is the
# nearest to "clients on other machines": without it the bulk generator
# takes CPU from the broker and from the process measuring core latency, and
# the numbers say more about the generators than the broker.
#
# Steps (one JSON object per line each):
#  0. warm-up: bulk traffic past the first segment roll (a fresh broker
#     warms its second segment while the first is written);
#  1. peak: bulk alone (batches of 16, async, open loop) at rising rates;
#     the maximum sustainable rate is the highest that is acknowledged in
#     full with a p99 under 50 ms (no backlog);
#  2. core alone (single sync sends, open loop, a twentieth of the peak),
#     `runs` times, once the broker has settled after the sweep: its
#     unloaded p99;
#  3. overload, `runs` times: core at the same rate while bulk is offered
#     twice the peak; the broker's anonymous memory (RssAnon: its own
#     memory, not the mapped log) sampled every second;
#  4. nothing accepted lost: each topic stores at least what was acknowledged.
# Usage: scripts/bench-overload.sh [seconds per run] [runs]
# SPATE_BROKER_CONF=file: further broker.conf settings (e.g. degrade thresholds).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
runs="${2:-3}"
cargo build --release -p spate >/dev/null 2>&1
bin=target/release/spate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
ns=127.0.0.1:19876
broker_cpu=1
client_cpu=0

extra=()
[ -n "${SPATE_BROKER_CONF:-}" ] && extra=(-c "$SPATE_BROKER_CONF")
taskset -c $broker_cpu $bin standalone "${extra[@]}" --data-dir "$work/data" --namesrv-port 19876 --broker-port 19911 2>"$work/broker.log" &
pid=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/19911) 2>/dev/null && break; sleep 0.05; done
sleep 2
for t in Core Bulk; do $bin admin -n $ns topic create $t -r 8 -w 8 >/dev/null; done
$bin admin -n $ns limit priority --target topic --name Core --class core >/dev/null
$bin admin -n $ns limit priority --target topic --name Bulk --class bulk >/dev/null
sleep 1

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
stored() { # messages ever stored in a topic's queues (offsets are dense from 0;
  # retention may since have deleted the oldest: min_offset > 0)
  $bin admin -n $ns --json topic status "$1" | python3 -c '
import json,sys
v=json.load(sys.stdin)
print(sum(int(q["max_offset"]) for q in v))'
}
bulk() { # rate seconds [in-flight]
  taskset -c $client_cpu $bin bench produce -n $ns --topic Bulk --rate "$1" --mode async --batch 16 \
    --in-flight "${3:-1024}" --producers 2 --warmup 0s --duration "$2s" --json 2>/dev/null
}
core() { # rate seconds
  taskset -c $client_cpu chrt -f 50 $bin bench produce -n $ns --topic Core --rate "$1" --in-flight 256 \
    --warmup 1s --duration "$2s" --json 2>/dev/null
}
acked_bulk=0
acked_core=0
add_bulk() { acked_bulk=$((acked_bulk + $(echo "$1" | json_field '["sent_ok"]'))); }
add_core() { acked_core=$((acked_core + $(echo "$1" | json_field '["sent_ok"]'))); }

w=$(bulk 0 10)
add_bulk "$w"
echo "{\"step\":\"warmup\",\"result\":$w}"
sleep 3

peak_rate=0
for rate in 60000 90000 120000 150000 180000 210000; do
  r=$(bulk "$rate" "$secs")
  add_bulk "$r"
  echo "{\"step\":\"peak_sweep\",\"rate\":$rate,\"result\":$r}"
  ok=$(echo "$r" | python3 -c "import json,sys; v=json.load(sys.stdin); print(int(v['sent_ok'] >= 0.98 * v['rate'] * v['seconds'] and v['p99_us'] < 50000))")
  [ "$ok" = 1 ] || break
  peak_rate=$rate
  sleep 2
done
echo "{\"step\":\"peak\",\"rate\":$peak_rate}"
core_rate=$((peak_rate / 20))
bulk_rate=$((2 * peak_rate))
# The sweep's last step left a backlog: let the broker settle (dispatch,
# flush, the next segment's warming) so "unloaded" means unloaded.
sleep 15

for i in $(seq "$runs"); do
  r=$(core "$core_rate" "$secs")
  add_core "$r"
  echo "{\"step\":\"core_alone\",\"run\":$i,\"rate\":$core_rate,\"result\":$r}"
done

anon_log="$work/anon"
( while kill -0 $pid 2>/dev/null; do awk '/^RssAnon:/{print $2}' /proc/$pid/status >> "$anon_log"; sleep 1; done ) &
for i in $(seq "$runs"); do
  bulk "$bulk_rate" $((secs + 2)) 4096 > "$work/bulk.json" &
  bulk_pid=$!
  c=$(core "$core_rate" "$secs")
  wait $bulk_pid
  b=$(cat "$work/bulk.json")
  add_core "$c"
  add_bulk "$b"
  echo "{\"step\":\"overload_core\",\"run\":$i,\"rate\":$core_rate,\"result\":$c}"
  echo "{\"step\":\"overload_bulk\",\"run\":$i,\"offered_rate\":$bulk_rate,\"result\":$b}"
  echo "{\"step\":\"degradation\",\"run\":$i,\"result\":$($bin admin -n $ns --json limit list | tr -d "\n")}"
  sleep 3
done
echo "{\"step\":\"broker_rss_anon_kb\",\"first\":$(head -1 "$anon_log"),\"max\":$(sort -n "$anon_log" | tail -1)}"
echo "{\"step\":\"stored_vs_acked\",\"core_acked\":$acked_core,\"core_stored\":$(stored Core),\"bulk_acked\":$acked_bulk,\"bulk_stored\":$(stored Bulk)}"
grep -c "shedding lower-priority traffic" "$work/broker.log" | sed 's/^/{"step":"degrade_warnings","count":/; s/$/}/' || true
echo "{\"step\":\"retention\",\"segments_deleted_log_lines\":$(grep -ci "delet" "$work/broker.log" || true)}"
