#!/usr/bin/env bash
# What the HTTP admin plane costs the MQTT path: QoS 0 fan-in (10 publishers -> 1 subscriber)
# against one `ternmq broker --http`, alternating runs with /metrics scraped every second and
# runs without, in the same broker process; prints each run and the ratio of the medians.
# The broker is pinned to CPU 0 and the load (and the scraper) to CPU 1 when there are two.
# Usage: scripts/bench-admin-overhead.sh [ROUNDS]   (default 5 rounds of each)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${1:-5}"
cargo build --release --quiet
BIN=target/release/ternmq
. scripts/bench-lib.sh
MQTT_PORT=$(free_port)
HTTP_PORT=$(free_port)
$PIN_BROKER "$BIN" broker --no-persistence -p "$MQTT_PORT" --http "127.0.0.1:$HTTP_PORT" \
    --log-level warn >/dev/null &
BROKER=$!
SCRAPER=""
trap 'kill $BROKER $SCRAPER 2>/dev/null || true' EXIT
sleep 0.5

# One /metrics scrape a second, over bash's /dev/tcp (no HTTP client needed), bounded.
scrape() {
    for _ in $(seq 1 600); do
        exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT"
        printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
        cat <&3 >/dev/null
        exec 3<&-
        sleep 1
    done
}

rate() {
    $PIN_LOAD "$BIN" bench -p "$MQTT_PORT" -s fan-in -n 200000 2>/dev/null |
        awk '$1 == "fan-in" { print $6 }'
}

with=()
without=()
for round in $(seq 1 "$ROUNDS"); do
    without+=("$(rate)")
    $PIN_LOAD bash -c "$(declare -f scrape); HTTP_PORT=$HTTP_PORT scrape" &
    SCRAPER=$!
    sleep 1.2
    with+=("$(rate)")
    kill "$SCRAPER" 2>/dev/null || true
    wait "$SCRAPER" 2>/dev/null || true
    SCRAPER=""
    echo "round $round: without ${without[-1]} msg/s, with /metrics every second ${with[-1]} msg/s"
done
m_without=$(printf '%s\n' "${without[@]}" | median)
m_with=$(printf '%s\n' "${with[@]}" | median)
echo "median fan-in QoS 0: without $m_without msg/s, scraped $m_with msg/s," \
    "ratio $(awk -v a="$m_with" -v b="$m_without" 'BEGIN { printf "%.3f", a / b }')"
