#!/usr/bin/env bash
# Replication numbers in BENCHMARKS.md (issue 5): a name server, a master
# and one slave on this machine (loopback), 1 KiB messages. The same sends
# against an ASYNC_MASTER and then a SYNC_MASTER (fresh stores each), one
# JSON object per measurement. Usage: scripts/bench-replication.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
cargo build --release -p spate >/dev/null 2>&1
bin=target/release/spate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

wait_port() { for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

$bin namesrv --port 19876 2>"$work/ns.log" &
wait_port 19876
ns=127.0.0.1:19876

run_pair() { # $1: master role
  local role=$1 dir="$work/$1"
  mkdir -p "$dir"
  printf 'brokerName=bench-a\nbrokerId=0\nbrokerRole=%s\nlistenPort=19911\nhaListenPort=19912\nbrokerIP1=127.0.0.1\nnamesrvAddr=%s\nstorePathRootDir=%s/m\n' \
    "$role" "$ns" "$dir" > "$dir/m.conf"
  printf 'brokerName=bench-a\nbrokerId=1\nbrokerRole=SLAVE\nlistenPort=19921\nhaListenPort=19922\nhaMasterAddress=127.0.0.1:19912\nbrokerIP1=127.0.0.1\nnamesrvAddr=%s\nstorePathRootDir=%s/s\n' \
    "$ns" "$dir" > "$dir/s.conf"
  $bin broker -c "$dir/m.conf" 2>"$dir/m.log" & local m=$!
  $bin broker -c "$dir/s.conf" 2>"$dir/s.log" & local s=$!
  wait_port 19911; wait_port 19921
  sleep 5 # let both warm their first segment and the slave connect
  for spec in "1:1:1" "64:64:64"; do
    IFS=: read -r producers inflight label <<<"$spec"
    out=$($bin bench produce -n $ns --topic R --duration "${secs}s" --rate 0 --producers "$producers" --in-flight "$inflight" --json 2>/dev/null)
    echo "{\"label\":\"${role}_${label}_producers\",\"result\":$out}"
  done
  echo "{\"label\":\"${role}_ha_status\",\"result\":$($bin admin -n $ns ha status --json | tr -d '\n ')}"
  kill $m $s; wait $m $s 2>/dev/null || true
}
run_pair ASYNC_MASTER
run_pair SYNC_MASTER
