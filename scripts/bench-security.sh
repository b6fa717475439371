#!/usr/bin/env bash
# What authentication and TLS cost a send (issue 19): one sync producer
# (--in-flight 1, 1 KiB, closed loop) against brokers that differ only in
# the setting under test, interleaved A B A B in one run, client pinned to
# CPU 1 and brokers to CPU 0. Prints one JSON line per round and a summary
# of the median p50 / p99 per variant and their ratios to plaintext.
# Usage: scripts/bench-security.sh [seconds per round] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
rounds="${2:-4}"
cargo build --release -p spate >/dev/null 2>&1
bin=$PWD/target/release/spate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
ROOT_AK=bench-root
ROOT_SK=bench-root-secret

start() { # name, namesrv port, broker port, broker.conf lines...
  local name=$1 ns=$2 bp=$3; shift 3
  printf '%s\n' "$@" > "$work/$name.conf"
  taskset -c 0 "$bin" standalone --data-dir "$work/$name" --namesrv-port "$ns" --broker-port "$bp" \
    -c "$work/$name.conf" 2>"$work/$name.log" &
  for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$bp") 2>/dev/null && break; sleep 0.05; done
  sleep 3
}

creds="{\"username\":\"$ROOT_AK\",\"password\":\"$ROOT_SK\"}"
start plain 19876 19911
# A second plaintext broker started like the others: the no-op control for
# what a broker's place in the start order and its ports alone change.
start control 39876 39911
start auth 29876 29911 "authenticationEnabled=true" "authorizationEnabled=true" "initAuthenticationUser=$creds"
# TLS alone (self-signed test certificate; the client does not verify it).
start tls 49876 49911 "tlsMode=enforcing" "tls.test.mode.enable=true"
# A Normal user with exactly what the producer needs: the common case, policy evaluated on every send.
A="$bin admin -n 127.0.0.1:29876 --access-key $ROOT_AK --secret-key $ROOT_SK"
$A user create bench --password bench-secret-1 >/dev/null
$A acl create --subject User:bench --resources Topic:SEC --actions Pub,Sub >/dev/null
$A topic create SEC >/dev/null
$bin admin -n 127.0.0.1:19876 topic create SEC >/dev/null
$bin admin -n 127.0.0.1:39876 topic create SEC >/dev/null
$bin admin -n 127.0.0.1:49876 --tls topic create SEC >/dev/null

variants=(plain control auth tls)
declare -A args=(
  [plain]="-n 127.0.0.1:19876"
  [control]="-n 127.0.0.1:39876"
  [auth]="-n 127.0.0.1:29876 --access-key bench --secret-key bench-secret-1"
  [tls]="-n 127.0.0.1:49876 --tls"
)
# A first append makes a broker prepare (warm) its next segment, and the
# first seconds of load grow its allocator's caches: load each a little
# first, so that work is done before the rounds.
for v in "${variants[@]}"; do
  # shellcheck disable=SC2086
  taskset -c 1 "$bin" bench produce ${args[$v]} --topic SEC --size 1024 --rate 0 --in-flight 1 \
    --duration 3s --warmup 0s >/dev/null 2>&1 || true
done
# Every broker idle (its first segments warmed: background work on the
# brokers' shared CPU would land on whichever variant runs) before the
# rounds: under 5 % of a CPU for a second, or 90 s at most.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for p in $(jobs -p); do
  for _ in $(seq 90); do
    t0=$(ticks "$p"); sleep 1; t1=$(ticks "$p")
    [ $((t1 - t0)) -lt $(($(getconf CLK_TCK) / 20)) ] && break
  done
done

for r in $(seq "$rounds"); do
  # Each round starts with the next variant, so no variant always runs
  # right after the same other one (or first after a pause).
  for i in $(seq 0 $((${#variants[@]} - 1))); do
    v=${variants[$(((r + i) % ${#variants[@]}))]}
    # shellcheck disable=SC2086
    out=$(taskset -c 1 "$bin" bench produce ${args[$v]} --topic SEC --size 1024 --rate 0 --in-flight 1 \
      --duration "${secs}s" --warmup 2s --json 2>/dev/null)
    echo "{\"round\":$r,\"variant\":\"$v\",\"result\":$out}"
  done
done | tee "$work/rounds.jsonl"
python3 - "$work/rounds.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def lat(r, q):
    return r["result"][q + "_us"]
summary = {}
for v in sorted({r["variant"] for r in rows}):
    rs = [r for r in rows if r["variant"] == v]
    summary[v] = {q: statistics.median(lat(r, q) for r in rs) for q in ("p50", "p99")}
    summary[v]["errors"] = sum(sum(r["result"]["errors"].values()) for r in rs)
# The plaintext baseline: every round of both plaintext brokers.
plain_rows = [r for r in rows if r["variant"] in ("plain", "control")]
base = {q: statistics.median(lat(r, q) for r in plain_rows) for q in ("p50", "p99")}
for v, s in summary.items():
    s["p50_ratio_to_plaintext"] = round(s["p50"] / base["p50"], 3)
    s["p99_ratio_to_plaintext"] = round(s["p99"] / base["p99"], 3)
# Paired within each round (the machine drifts between rounds): a variant's
# p50 over the mean of that round's two plaintext p50s, median over rounds.
for v, s in summary.items():
    per_round = []
    for r in sorted({x["round"] for x in rows}):
        mine = [lat(x, "p50") for x in rows if x["round"] == r and x["variant"] == v]
        plain = [lat(x, "p50") for x in rows if x["round"] == r and x["variant"] in ("plain", "control")]
        if mine and plain:
            per_round.append(mine[0] / statistics.mean(plain))
    s["p50_ratio_paired_median"] = round(statistics.median(per_round), 3)
summary["plaintext_baseline"] = base
print(json.dumps({"summary": summary}))
PY
