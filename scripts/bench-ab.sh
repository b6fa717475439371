#!/usr/bin/env bash
# A/B: this checkout's build (A) against another revision's (B), measured
# interleaved in one run (A B, then B A, ...), so a performance claim never
# compares numbers from different days. Each build runs its own standalone
# broker (pinned to CPU 0) and its own benchmark client (pinned to CPU 1);
# `spate bench floor` (loopback ping-pong, same pinning) runs every round
# as the floor. Besides the client's latency, the broker's CPU time and
# context switches per request come from /proc.
#
# Usage: scripts/bench-ab.sh REV [seconds per run] [rounds]
#   BENCH_ARGS  the `spate bench` arguments after -n (default: one sync
#               producer, 1 KiB, closed loop); `{broker}` in it becomes
#               each variant's broker address (e.g. `--grpc {broker}`)
# B's binary is built once in a scratch worktree and kept in target/ab/.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: scripts/bench-ab.sh REV [seconds] [rounds]}"
secs="${2:-10}"
rounds="${3:-4}"
bench_args="${BENCH_ARGS:-produce --topic AB --size 1024 --rate 0 --in-flight 1}"
root=$PWD
sha=$(git rev-parse --short=10 "$rev^{commit}")

cargo build --release -p spate >/dev/null 2>&1
mkdir -p target/ab
cp target/release/spate target/ab/spate-A
if [ ! -x "target/ab/spate-$sha" ]; then
  wt=$(mktemp -d)
  git worktree add -q --detach "$wt" "$sha"
  # One target directory for every B build, so the next one is incremental.
  (cd "$wt" && CARGO_TARGET_DIR="$root/target/ab/target" cargo build --release -p spate >/dev/null 2>&1)
  cp target/ab/target/release/spate "target/ab/spate-$sha"
  git worktree remove --force "$wt"
fi
declare -A bin=([A]="$root/target/ab/spate-A" [B]="$root/target/ab/spate-$sha")
declare -A port=([A]=18876 [B]=28876)
declare -A pid

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
for v in A B; do
  ns=${port[$v]}
  taskset -c 0 "${bin[$v]}" standalone --data-dir "$work/$v" --namesrv-port "$ns" --broker-port $((ns + 35)) \
    2>"$work/$v.log" &
  pid[$v]=$!
  for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$((ns + 35))") 2>/dev/null && break; sleep 0.05; done
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# A first append makes a broker prepare (warm) its next segment: send a
# little to each first, so that work is done before the rounds.
for v in A B; do
  "${bin[$v]}" bench produce -n "127.0.0.1:${port[$v]}" --topic AB --rate 0 --in-flight 1 --duration 1s \
    --warmup 0s >/dev/null 2>&1 || true
done
# Both brokers idle (the first segments warmed) before anything is measured:
# under 5 % of a CPU for a second, or 90 s at most.
for v in A B; do
  for _ in $(seq 90); do
    t0=$(ticks "${pid[$v]}"); sleep 1; t1=$(ticks "${pid[$v]}")
    [ $((t1 - t0)) -lt $(($(getconf CLK_TCK) / 20)) ] && break
  done
done

switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches:/ {n += $2} END {print n}'; }

run() { # round, variant
  local v=$2 p=${pid[$2]} t0 c0 out t1 c1
  t0=$(ticks "$p"); c0=$(switches "$p")
  local args=${bench_args//\{broker\}/127.0.0.1:$((${port[$v]} + 35))}
  # shellcheck disable=SC2086
  out=$(taskset -c 1 "${bin[$v]}" bench $args -n "127.0.0.1:${port[$v]}" --duration "${secs}s" --warmup 2s \
    --json 2>/dev/null)
  t1=$(ticks "$p"); c1=$(switches "$p")
  echo "{\"round\":$1,\"variant\":\"$v\",\"broker_cpu_ticks\":$((t1 - t0)),\"broker_switches\":$((c1 - c0)),\"result\":$out}"
}

for r in $(seq "$rounds"); do
  floor=$("${bin[A]}" bench floor --pin --rounds 5000 --seq-write-mib 0 --dir "$work" --json 2>/dev/null)
  echo "{\"round\":$r,\"variant\":\"floor\",\"result\":$floor}"
  if [ $((r % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
  for v in $order; do run "$r" "$v"; done
done | tee "$work/rounds.jsonl"

python3 - "$work/rounds.jsonl" "$(getconf CLK_TCK)" "$sha" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
hz = int(sys.argv[2])
med = statistics.median
def floor_p50(r):
    return r["result"]["tcp_round_trip"]["p50_us"]
floors = [floor_p50(r) for r in rows if r["variant"] == "floor"]
out = {"B": sys.argv[3], "floor_p50_us": med(floors) if floors else None}
for v in ("A", "B"):
    rs = [r for r in rows if r["variant"] == v]
    ok = [r["result"]["sent_ok"] for r in rs]
    out[v] = {
        "p50_us": med(r["result"]["p50_us"] for r in rs),
        "p99_us": med(r["result"]["p99_us"] for r in rs),
        "p999_us": med(r["result"]["p999_us"] for r in rs),
        "throughput_per_s": med(r["result"]["throughput_per_s"] for r in rs),
        "broker_cpu_us_per_request": round(med(r["broker_cpu_ticks"] * 1e6 / hz / max(n, 1) for r, n in zip(rs, ok)), 2),
        "broker_switches_per_request": round(med(r["broker_switches"] / max(n, 1) for r, n in zip(rs, ok)), 3),
        "errors": sum(sum(r["result"]["errors"].values()) for r in rs),
    }
    if out["floor_p50_us"]:
        out[v]["p50_over_floor"] = round(out[v]["p50_us"] / out["floor_p50_us"], 2)
out["B_over_A"] = {k: round(out["B"][k] / out["A"][k], 3) for k in ("p50_us", "p99_us", "p999_us", "broker_cpu_us_per_request", "broker_switches_per_request") if out["A"][k]}
print(json.dumps({"summary": out}))
PY
