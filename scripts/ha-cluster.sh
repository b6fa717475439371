#!/usr/bin/env bash
# A local HA cluster on loopback for trying failover by hand: ZooKeeper
# (Debian's package; installed if missing), a name server on 9876, two
# controllers, and one replica group (broker-a) of three brokers under them
# (client ports 10911, 10921, 10931). Ctrl-C stops everything.
#   spate admin -n 127.0.0.1:9876 ha status        # the group, from its brokers
#   spate admin ha groups --zk 127.0.0.1:2181       # the controller's view
#   kill -9 <the master's pid>                       # and watch a slave take over
#   curl -s 127.0.0.1:5557/metrics 127.0.0.1:5558/metrics   # availability, from the leader
# Usage: scripts/ha-cluster.sh [work dir]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
if [ ! -f /usr/share/java/zookeeper.jar ] || ! command -v java >/dev/null 2>&1; then
  apt-get update && apt-get install -y zookeeper
fi
cargo build --release -p spate
bin=target/release/spate
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT
wait_port() { for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

java -Dzookeeper.admin.enableServer=false -cp /usr/share/java/zookeeper.jar \
  org.apache.zookeeper.server.ZooKeeperServerMain 2181 "$work/zk" 200 >"$work/zk.log" 2>&1 &
wait_port 2181
$bin namesrv --port 9876 2>"$work/namesrv.log" &
for c in 1 2; do
  $bin controller --zk 127.0.0.1:2181 --id "controller-$c" --session-timeout-ms 1000 \
    --namesrv-addr 127.0.0.1:9876 --metrics-port $((5556 + c)) 2>"$work/controller-$c.log" &
done
for id in 1 2 3; do
  port=$((10901 + id * 10))
  cat > "$work/broker-$id.conf" <<CONF
brokerName=broker-a
brokerId=$id
listenPort=$port
haListenPort=$((port + 1))
brokerIP1=127.0.0.1
namesrvAddr=127.0.0.1:9876
storePathRootDir=$work/broker-$id
mappedFileSizeCommitLog=268435456
zkAddr=127.0.0.1:2181
zkSessionTimeoutMillis=1000
haStrictSync=true
CONF
  $bin broker -c "$work/broker-$id.conf" 2>"$work/broker-$id.log" &
  echo "broker $id: pid $!, port $port, log $work/broker-$id.log"
done
echo "cluster up in $work; Ctrl-C to stop"
wait
