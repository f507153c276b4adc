#!/usr/bin/env bash
# A bridge's throughput against Mosquitto's bridge, in the same run: QoS 1 fan-in
# (10 publishers -> 1 subscriber) published to an edge broker and subscribed to on a remote
# Mosquitto that the edge bridges to ("bench/#" out at QoS 1). The edge is, in turn,
# `ternmq broker` (persistence off) and Mosquitto; each is measured ROUNDS times, alternating,
# and the medians and their ratio are printed. The edge is pinned to CPU 0, the remote and the
# load to CPU 1 when there are two.
# With REMOTE_BROKER=ternmq the remote broker is `ternmq broker` instead, so that the remote's
# own speed bounds the two edges less.
# Usage: scripts/bench-bridge.sh [ROUNDS] [MESSAGES]   (default 3 rounds of 20000 per publisher)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${1:-3}"
MESSAGES="${2:-20000}"
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
[ -x "$MOSQUITTO" ] || { echo "bench-bridge: mosquitto is needed (apt install mosquitto)" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/ternmq
# The edge broker is the one under test (CPU 0); the remote and the load share CPU 1.
. scripts/bench-lib.sh
DIR="$(mktemp -d)"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$DIR"' EXIT

REMOTE=$(free_port)
if [ "${REMOTE_BROKER:-mosquitto}" = ternmq ]; then
    printf 'max_queued_messages = 1000000\n' >"$DIR/remote.toml"
    $PIN_LOAD "$BIN" broker --no-persistence -p "$REMOTE" -c "$DIR/remote.toml" \
        --log-level warn >/dev/null 2>&1 &
else
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n' \
        "$REMOTE" >"$DIR/remote.conf"
    $PIN_LOAD "$MOSQUITTO" -c "$DIR/remote.conf" >/dev/null 2>&1 &
fi
PIDS+=($!)

TERNMQ_EDGE=$(free_port)
cat >"$DIR/ternmq.toml" <<EOF
max_queued_messages = 1000000
[[bridge]]
name = "bench"
address = "127.0.0.1:$REMOTE"
client_id = "ternmq-edge"
[[bridge.topic]]
pattern = "bench/#"
direction = "out"
qos = 1
EOF
$PIN_BROKER "$BIN" broker --no-persistence -p "$TERNMQ_EDGE" -c "$DIR/ternmq.toml" \
    --log-level warn >/dev/null 2>&1 &
PIDS+=($!)

MOSQUITTO_EDGE=$(free_port)
cat >"$DIR/edge.conf" <<EOF
listener $MOSQUITTO_EDGE 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
connection bench
address 127.0.0.1:$REMOTE
clientid mosquitto-edge
topic bench/# out 1
EOF
$PIN_BROKER "$MOSQUITTO" -c "$DIR/edge.conf" >/dev/null 2>&1 &
PIDS+=($!)
sleep 2

# Delivered messages/s, and the losses column, of one fan-in run through `edge`.
rate() {
    $PIN_LOAD "$BIN" bench -p "$1" --sub-port "$REMOTE" -s fan-in -q 1 -n "$MESSAGES" \
        2>/dev/null | awk '$1 == "fan-in" { print $6, $10 }'
}

ours=()
theirs=()
for round in $(seq 1 "$ROUNDS"); do
    read -r o lost_o < <(rate "$TERNMQ_EDGE")
    read -r m lost_m < <(rate "$MOSQUITTO_EDGE")
    echo "round $round: ternmq edge $o msg/s (lost $lost_o), mosquitto edge $m msg/s (lost $lost_m)"
    ours+=("$o")
    theirs+=("$m")
done
o=$(printf '%s\n' "${ours[@]}" | median)
m=$(printf '%s\n' "${theirs[@]}" | median)
echo "median: ternmq edge $o msg/s, mosquitto edge $m msg/s, ratio $(awk -v a="$o" -v b="$m" 'BEGIN { printf "%.2f", a / b }')"
