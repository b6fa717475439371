# Sourced by the interop run scripts: one `spate standalone` on free
# loopback ports for the run, stopped when the script exits, its last log
# lines shown when the script fails.
#   source "$here/../standalone.sh" NAME   # needs $bin; makes $work
#   (write "$work/broker.conf")
#   start_standalone                        # sets spate_pid, namesrv_port, broker_port
spate_start_timeout_s=10
work="$(mktemp -d "/tmp/spate-$1-XXXXXX")"
spate_pid=""

stop_spate() {
  if [ -n "$spate_pid" ]; then
    kill "$spate_pid" 2>/dev/null || true
    wait "$spate_pid" 2>/dev/null || true
    spate_pid=""
  fi
}

spate_cleanup() {
  local rc=$?
  stop_spate
  if [ $rc -ne 0 ] && [ -f "$work/spate.log" ]; then
    echo "---- last 40 lines of spate's output ----" >&2
    tail -n 40 "$work/spate.log" >&2
  fi
  rm -rf "$work"
  exit $rc
}
trap spate_cleanup EXIT

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A loopback port below the kernel's ephemeral range with nothing listening on it.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    listening "$p" || { echo "$p"; return; }
  done
}

# Starts spate with "$work/broker.conf" and waits until both ports listen;
# if it cannot bind (another process took a port first), tries other ports.
start_standalone() {
  local attempt deadline
  for attempt in 1 2 3; do
    namesrv_port="$(free_port)"
    broker_port="$(free_port)"
    [ "$namesrv_port" != "$broker_port" ] || continue
    rm -rf "$work/data" && mkdir "$work/data"
    "$bin" standalone -c "$work/broker.conf" --data-dir "$work/data" \
      --namesrv-port "$namesrv_port" --broker-port "$broker_port" > "$work/spate.log" 2>&1 &
    spate_pid=$!
    deadline=$((SECONDS + spate_start_timeout_s))
    until listening "$namesrv_port" && listening "$broker_port"; do
      kill -0 "$spate_pid" 2>/dev/null || break
      [ $SECONDS -lt $deadline ] || { echo "spate did not listen within ${spate_start_timeout_s}s" >&2; exit 1; }
      sleep 0.1
    done
    if kill -0 "$spate_pid" 2>/dev/null; then
      return 0
    fi
    echo "spate exited during start-up (attempt $attempt); last lines:" >&2
    tail -n 5 "$work/spate.log" >&2
    wait "$spate_pid" 2>/dev/null || true
    spate_pid=""
  done
  echo "spate could not be started" >&2
  exit 1
}
