#!/usr/bin/env bash
# The broker numbers in BENCHMARKS.md (issue 4): one standalone broker on
# loopback, 1 KiB messages, client and broker on this machine. Prints one
# JSON object per measurement, and a latency plot per measurement in
# $PLOTS (default target/bench-plots). Usage: scripts/bench-broker.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
plots="${PLOTS:-target/bench-plots}"
mkdir -p "$plots"
cargo build --release -p spate >/dev/null 2>&1
bin=target/release/spate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

start_broker() { # $1: name, $2: extra broker.conf lines
  printf '%s\n' "$2" > "$work/$1.conf"
  $bin standalone --data-dir "$work/$1" --namesrv-port "$3" --broker-port "$4" -c "$work/$1.conf" 2>"$work/$1.log" &
  echo $! > "$work/$1.pid"
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/"$4") 2>/dev/null && break; sleep 0.05; done
  sleep 3 # let the first segments warm
}
cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }
rss_kb() { awk 'BEGIN{printf "{"} /^(VmRSS|RssAnon|RssFile):/{sub(":","",$1); printf "%s\"%s\":%s", (n++ ? "," : ""), $1, $2} END{printf "}"}' /proc/"$1"/status; }
measure() { # label, pid, bench args...
  local label=$1 pid=$2; shift 2
  local t0; t0=$(cpu_ticks "$pid")
  local out; out=$($bin bench "$@" --json --plot "$plots/$label.svg" 2>/dev/null)
  local t1; t1=$(cpu_ticks "$pid")
  local hz; hz=$(getconf CLK_TCK)
  echo "{\"label\":\"$label\",\"broker_cpu_s\":$(echo "scale=3; ($t1-$t0)/$hz" | bc),\"result\":$out}"
}

start_broker async "" 19876 19911
pid=$(cat "$work/async.pid")
echo "{\"label\":\"idle_rss_kb\",\"value\":$(rss_kb "$pid")}"
start_broker cold "warmMapedFileEnable=false" 39876 39911
echo "{\"label\":\"idle_rss_kb_without_warming\",\"value\":$(rss_kb "$(cat "$work/cold.pid")")}"
kill "$(cat "$work/cold.pid")"
echo "{\"label\":\"floor\",\"result\":$($bin bench floor --dir "$work" --json)}"
ns=127.0.0.1:19876
measure sync_1_producer_closed "$pid" produce -n $ns --topic B --duration "${secs}s" --rate 0 --in-flight 1
measure sync_open_5k "$pid" produce -n $ns --topic B --duration "${secs}s" --rate 5000 --in-flight 64
measure max_async "$pid" produce -n $ns --topic B --duration "${secs}s" --rate 0 --mode async --in-flight 1024 --producers 2
measure max_batch32 "$pid" produce -n $ns --topic B --duration "${secs}s" --rate 0 --batch 32 --in-flight 16 --producers 2
for r in 10000 20000 30000; do
  measure "async_open_$r" "$pid" produce -n $ns --topic B --duration "${secs}s" --rate $r --mode async --in-flight 4096 --producers 2
done
measure batch32_open_160k "$pid" produce -n $ns --topic B --duration "${secs}s" --rate 160000 --batch 32 --in-flight 64 --producers 2
measure e2e_10k "$pid" e2e -n $ns --topic E --duration "${secs}s" --rate 10000
measure e2e_2k "$pid" e2e -n $ns --topic E --duration "${secs}s" --rate 2000
measure consume_drain "$pid" consume -n $ns --topic B --from first --warmup 0s --duration "${secs}s" --batch 32
kill "$pid"; wait "$pid" 2>/dev/null || true

start_broker sync "flushDiskType=SYNC_FLUSH" 29876 29911
pid=$(cat "$work/sync.pid")
measure syncflush_1 "$pid" produce -n 127.0.0.1:29876 --topic S --duration "${secs}s" --rate 0 --in-flight 1
measure syncflush_64 "$pid" produce -n 127.0.0.1:29876 --topic S --duration "${secs}s" --rate 0 --in-flight 64 --producers 2
