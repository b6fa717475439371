#!/usr/bin/env bash
# Spate vs. the ali-ons Node.js client (pinned in package.json / package-lock.json):
# starts `spate standalone` on free loopback ports with authentication and
# authorization on, makes the topic, users and ACLs with `spate admin`, runs
# acl_interop.js against it, checks with the Super user that only the valid
# sends were stored, and stops spate. Exits non-zero on failure.
# Usage: interop/node/run.sh   (needs node and npm)
# SPATE_BIN: the spate binary (default: <main>/target/debug/spate, which interop/run.sh builds);
# ONS_MESSAGES: messages to send (default 20).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
main="$(dirname "$(dirname "$here")")"
bin="${SPATE_BIN:-$main/target/debug/spate}"
messages="${ONS_MESSAGES:-20}"
setup_timeout_s=15
script_timeout_s=180

[ -x "$bin" ] || { echo "spate binary not found at $bin (cargo build -p spate, or set SPATE_BIN)" >&2; exit 1; }
cd "$here"

# npm ci only when node_modules was not installed from this very lock file.
lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.spate-lock.sha256
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
  echo "$lock_sum" > "$stamp"
fi

source "$here/../standalone.sh" ons

root_user=ons_root
root_secret="root-$RANDOM-$RANDOM"
topic=SpateOnsTopic
group=spate_ons_consumer
# Short delay levels: a consumer's retried message (level 3) is back in 300 ms.
cat > "$work/broker.conf" <<EOF
brokerIP1=127.0.0.1
authenticationEnabled=true
authorizationEnabled=true
initAuthenticationUser={"username":"$root_user","password":"$root_secret"}
messageDelayLevel=$(for l in $(seq 1 18); do printf '%dms ' $((l * 100)); done)
EOF
start_standalone
namesrv="127.0.0.1:$namesrv_port"

admin() { SPATE_ACCESS_KEY="$root_user" SPATE_SECRET_KEY="$root_secret" "$bin" admin -n "$namesrv" "$@"; }
# The broker registers with the name server a moment after it listens.
deadline=$((SECONDS + setup_timeout_s))
until admin topic create "$topic" -r 4 -w 4 > /dev/null 2>"$work/admin.err"; do
  [ $SECONDS -lt $deadline ] || { cat "$work/admin.err" >&2; exit 1; }
  sleep 0.3
done
writer_secret="writer-$RANDOM-$RANDOM"
reader_secret="reader-$RANDOM-$RANDOM"
admin user create ons_writer --password "$writer_secret" > /dev/null
admin acl create --subject User:ons_writer --resources "Topic:$topic" --actions Pub,Sub > /dev/null
admin acl update --subject User:ons_writer --resources "Group:$group" --actions Sub > /dev/null
admin user create ons_reader --password "$reader_secret" > /dev/null
admin acl create --subject User:ons_reader --resources "Topic:$topic,Group:$group" --actions Sub > /dev/null

ONS_NAMESRV="$namesrv" ONS_TOPIC="$topic" ONS_GROUP="$group" ONS_MESSAGES="$messages" \
  ONS_ACCESS_KEY=ons_writer ONS_SECRET_KEY="$writer_secret" \
  ONS_SUB_ONLY_ACCESS_KEY=ons_reader ONS_SUB_ONLY_SECRET_KEY="$reader_secret" \
  timeout "$script_timeout_s" node acl_interop.js

# Only the valid sends were stored: the queues' max offsets add up to them.
stored="$(admin --json topic status "$topic" | node -e '
  let s = ""; process.stdin.on("data", d => s += d).on("end", () =>
    console.log(JSON.parse(s).reduce((n, q) => n + q.max_offset, 0)));')"
if [ "$stored" != "$messages" ]; then
  echo "$topic holds $stored messages, want the $messages sent with valid credentials" >&2
  exit 1
fi
echo "$topic: max offsets add up to $stored: no refused send was stored"
