#!/usr/bin/env bash
# ternmq against its peers, in one run on one machine: `ternmq bench` drives ternmq, a Mosquitto
# started with persistence off, and rumqttd (when installed; `cargo install rumqttd` puts it on
# PATH, or pass RUMQTTD=/path/to/rumqttd), each broker pinned to CPU 0 and the load generator to
# CPU 1. MQTT 3.1.1 throughout, since rumqttd's MQTT 5 support is partial.
#
# Prints each broker's results, its peak memory under load and its memory per idle connection,
# then ternmq's ratios to each peer. Everything listens on 127.0.0.1 only.
#
# Usage: scripts/bench-vs-peers.sh [quick]   (quick: fewer messages and connections)
# Then TLS shapes against Mosquitto with a TLS listener (QoS 1 fan-in, and memory per idle TLS
# connection), and a WebSocket fan-in on ternmq (TERNMQ_BENCH_TLS=0 skips them); the test
# certificates are made with openssl for the run and removed after it.
# TERNMQ_RUNTIMES="default tokio std smol" measures ternmq on each of those servers (default:
# default, the server `ternmq broker` picks by itself: pinned to one CPU as here, the std
# server); each runtime named is reported as ternmq-<runtime>. TERNMQ_BEFORE=/path/to/an/older/ternmq adds
# that build's default server as ternmq-before, so that a change is measured before and after in
# one run (the load generator is this build's for every broker).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${1:-}
MSGS=20000
FANOUT_MSGS=5000
IDLE=10000
if [ "$QUICK" = quick ]; then
    MSGS=5000
    FANOUT_MSGS=1000
    IDLE=2000
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -q --bin ternmq
TERNMQ=target/release/ternmq
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
RUMQTTD=${RUMQTTD:-$(command -v rumqttd || true)}
. scripts/bench-lib.sh
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

start_broker() { # name port -> sets PID
    local name=$1 port=$2
    case $name in
    ternmq-before)
        $PIN_BROKER "$TERNMQ_BEFORE" broker -p "$port" --no-persistence --log-level error \
            >"$WORK/$name.log" 2>&1 &
        ;;
    ternmq*)
        local runtime=${name#ternmq}
        runtime=${runtime#-}
        # Room for the idle connections and the QoS pair probed beside them (the default
        # max_connections is 10,000, as many as the full run holds).
        printf 'max_connections = %s\n' "$((IDLE + 1000))" >"$WORK/ternmq.toml"
        $PIN_BROKER "$TERNMQ" broker -p "$port" ${runtime:+--runtime "$runtime"} \
            --no-persistence --log-level error -c "$WORK/ternmq.toml" \
            >"$WORK/$name.log" 2>&1 &
        ;;
    mosquitto)
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" \
            >"$WORK/mosquitto.conf"
        $PIN_BROKER "$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/$name.log" 2>&1 &
        ;;
    rumqttd)
        cat >"$WORK/rumqttd.toml" <<EOF
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
EOF
        $PIN_BROKER "$RUMQTTD" -c "$WORK/rumqttd.toml" -q >"$WORK/$name.log" 2>&1 &
        ;;
    esac
    PID=$!
    wait_port "$port"
}

# Runs one bench; prints its table rows (without the header lines).
bench() { # port args...
    local port=$1
    shift
    $PIN_LOAD "$TERNMQ" bench -p "$port" -V 311 --timeout 120 "$@" 2>/dev/null |
        awk '/^(fan-in|fan-out|pairs|latency|idle) / {print}' || true
}

# With the broker $PID fresh: holds $IDLE idle connections (`ternmq bench ARGS -s idle`), waiting
# at most TRIES tenths of a second for them to open, and records the broker's RSS growth per
# connection as KEY; then stops the broker.
idle_per_connection() { # name key tries bench-args...
    local name=$1 key=$2 tries=$3
    shift 3
    local base held load opened per
    base=$(rss_kb "$PID")
    $PIN_LOAD "$TERNMQ" bench "$@" -V 311 -s idle --connections "$IDLE" --hold 6 \
        >"$WORK/idle.out" 2>"$WORK/idle.err" &
    load=$!
    for _ in $(seq 1 "$tries"); do
        grep -q holding "$WORK/idle.err" 2>/dev/null && break
        sleep 0.1
    done
    sleep 1
    held=$(rss_kb "$PID")
    wait "$load" || true
    opened=$(awk '/^idle / {print $5}' "$WORK/idle.out")
    opened=${opened:-0}
    per=$(( opened > 0 ? (held - base) * 1024 / opened : 0 ))
    echo "$name $key $per ($opened connections)" | tee -a "$RESULTS"
    # The QoS pair probed while they were open.
    sed -n 's/.*QoS \([0-2]\) pair meanwhile at \([0-9]*\)\/s: p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms, p99.9 \([0-9.]*\) ms.*/\1 \2 \3 \4 \5/p' \
        "$WORK/idle.out" | while read -r qos rate p50 p99 p999; do
        echo "$name ${key}_pair $p50 $p99 $p999 q$qos (at $rate/s)" | tee -a "$RESULTS"
    done
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
}

BROKERS=""
for rt in ${TERNMQ_RUNTIMES:-default}; do
    if [ "$rt" = default ]; then BROKERS="$BROKERS ternmq"; else BROKERS="$BROKERS ternmq-$rt"; fi
done
if [ -n "${TERNMQ_BEFORE:-}" ]; then BROKERS="$BROKERS ternmq-before"; fi
BROKERS="$BROKERS mosquitto"
if [ -n "$RUMQTTD" ]; then BROKERS="$BROKERS rumqttd"; else echo "note: rumqttd not found; skipping it"; fi

# One saturated QoS 0 shape on a fresh broker: its row, and the broker's peak RSS under it as KEY.
peak_under() { # name key bench-args...
    local name=$1 key=$2
    shift 2
    port=$(free_port)
    start_broker "$name" "$port"
    bench "$port" -q 0 "$@" | sed "s/^/$name q0 /" >/dev/null
    echo "$name $key $(hwm_kb "$PID")" | tee -a "$RESULTS"
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
}

RESULTS="$WORK/results"
: >"$RESULTS"
for b in $BROKERS; do
    port=$(free_port)
    start_broker "$b" "$port"
    base=$(rss_kb "$PID")
    echo "== $b (pid $PID, $((base / 1024)) MiB at start)"
    for q in 0 1; do
        bench "$port" -q "$q" -s fan-in,pairs -n "$MSGS" | sed "s/^/$b q$q /" | tee -a "$RESULTS"
        bench "$port" -q "$q" -s fan-out -n "$FANOUT_MSGS" | sed "s/^/$b q$q /" | tee -a "$RESULTS"
    done
    # QoS 1 fan-in twice more: how far its runs wander (the report gives min, median and max).
    for run in 2 3; do
        bench "$port" -q 1 -s fan-in -n "$MSGS" | sed "s/^fan-in/fan-in#$run/; s/^/$b q1 /" |
            tee -a "$RESULTS"
    done
    for q in 0 1; do
        bench "$port" -q "$q" -s latency --rate 10000 --seconds 5 | sed "s/^/$b q$q /" |
            tee -a "$RESULTS"
    done
    peak=$(hwm_kb "$PID")
    echo "$b peak_rss_kb $peak" | tee -a "$RESULTS"
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true

    # Peak RSS under each saturated QoS 0 shape alone, on a fresh broker.
    peak_under "$b" fan_in_peak_rss_kb -s fan-in -n "$MSGS"
    peak_under "$b" fan_out_peak_rss_kb -s fan-out -n "$FANOUT_MSGS"

    # Idle connections on a fresh broker: RSS growth per connection while they are held, and
    # a QoS 1 pair at 10,000 msg/s beside them.
    port=$(free_port)
    start_broker "$b" "$port"
    idle_per_connection "$b" idle_bytes_per_connection 600 -p "$port" -q 1 --seconds 5
done

# TLS and WebSocket: one CA and a server certificate for 127.0.0.1, made for this run.
if [ "${TERNMQ_BENCH_TLS:-1}" != 0 ] && command -v openssl >/dev/null; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=bench-ca -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
        -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >"$WORK/san.ext"
    openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
        -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null
    # Mosquitto started as root reads its files as the user mosquitto: let it (a key made for
    # this run only).
    chmod 755 "$WORK"
    chmod 644 "$WORK/server.pem" "$WORK/server.key"
    start_tls_broker() { # name tls_port ws_port -> sets PID
        case $1 in
        ternmq)
            # Room for the idle connections and the pair probed beside them, as above.
            printf 'enable_persistence = false\nlog_level = "error"\nmax_connections = %s\n[[listener]]\nport = %s\nkind = "mqtts"\ncertfile = "%s"\nkeyfile = "%s"\n[[listener]]\nport = %s\nkind = "ws"\n' \
                "$((IDLE + 1000))" "$2" "$WORK/server.pem" "$WORK/server.key" "$3" >"$WORK/tls.toml"
            $PIN_BROKER "$TERNMQ" broker -c "$WORK/tls.toml" >>"$WORK/$1-tls.log" 2>&1 &
            ;;
        mosquitto)
            printf 'listener %s 127.0.0.1\ncertfile %s\nkeyfile %s\nallow_anonymous true\npersistence false\n' \
                "$2" "$WORK/server.pem" "$WORK/server.key" >"$WORK/mosquitto-tls.conf"
            $PIN_BROKER "$MOSQUITTO" -c "$WORK/mosquitto-tls.conf" >>"$WORK/$1-tls.log" 2>&1 &
            ;;
        esac
        PID=$!
        wait_port "$2"
    }
    for b in ternmq mosquitto; do
        tls=$(free_port)
        ws=$(free_port)
        start_tls_broker "$b" "$tls" "$ws"
        echo "== $b over TLS (pid $PID)"
        $PIN_LOAD "$TERNMQ" bench -L "mqtts://127.0.0.1:$tls" --cafile "$WORK/ca.pem" -V 311 \
            --timeout 120 -q 1 -s fan-in -n "$MSGS" 2>/dev/null |
            awk '/^fan-in / {print}' | sed "s/^/$b tls-q1 /" | tee -a "$RESULTS" || true
        # Mosquitto's WebSocket listener needs a wildcard address, so only ternmq's is measured.
        if [ "$b" = ternmq ]; then
            $PIN_LOAD "$TERNMQ" bench -L "ws://127.0.0.1:$ws" -V 311 --timeout 120 -q 0 \
                -s fan-in -n "$MSGS" 2>/dev/null |
                awk '/^fan-in / {print}' | sed "s/^/$b ws-q0 /" | tee -a "$RESULTS" || true
        fi
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        # Idle TLS connections on a fresh broker: RSS growth per connection while held.
        start_tls_broker "$b" "$tls" "$ws"
        idle_per_connection "$b" idle_tls_bytes_per_connection 1200 \
            -L "mqtts://127.0.0.1:$tls" --cafile "$WORK/ca.pem"
    done
fi

echo
echo "== ternmq / peer (throughput: higher is better; latency and memory: lower is better)"
python3 - "$RESULTS" <<'EOF'
import sys
rows = {}
mem = {}
MEM = ("peak_rss_kb", "fan_in_peak_rss_kb", "fan_out_peak_rss_kb", "idle_bytes_per_connection",
       "idle_tls_bytes_per_connection")
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) >= 3 and f[1] in MEM:
        mem[(f[0], f[1])] = float(f[2])
        continue
    if len(f) >= 6 and f[1].endswith("_pair"):
        # p50, p99 and p99.9 of the QoS pair beside the idle connections.
        beside = "latency beside idle" + (" TLS" if "tls" in f[1] else "")
        rows[(f[0], f[5], beside)] = dict(
            rate=1.0, p50=float(f[2]), p99=float(f[3]), p999=float(f[4]), lost=0, dup=0)
        continue
    if len(f) < 14:
        continue
    broker, qos, scen = f[0], f[1], f[2]
    p999 = line.split("p99.9 ")[1].split()[0] if "p99.9 " in line else "0"
    rows[(broker, qos, scen)] = dict(rate=float(f[7]), p50=float(f[8]), p99=float(f[9]),
                                     p999=float(p999), lost=int(f[11]), dup=int(f[12]))
# QoS 1 fan-in ran three times: its row becomes the median, with the three runs beside it.
spread = {}
for b in {k[0] for k in rows}:
    runs = [rows.pop((b, "q1", s)) for s in ("fan-in", "fan-in#2", "fan-in#3") if (b, "q1", s) in rows]
    if runs:
        runs.sort(key=lambda r: r["rate"])
        rows[(b, "q1", "fan-in")] = dict(runs[len(runs) // 2], lost=max(r["lost"] for r in runs))
        spread[b] = [r["rate"] for r in runs]
ours = sorted({b for b, _, _ in rows if b.startswith("ternmq")}, key=len)
peers = sorted({b for b, _, _ in rows} - set(ours))
print(f"{'shape':<24}" + "".join(f"{'vs ' + p:>28}" for p in peers))
for (b, q, s), r in sorted(rows.items(), key=lambda kv: (len(kv[0][0]), kv[0])):
    if b not in ours:
        continue
    name = f"{b} {s} {q}" if len(ours) > 1 else f"{s} {q}"
    cells = []
    for p in peers:
        o = rows.get((p, q, s))
        if not o or o["rate"] == 0:
            cells.append("-")
        elif s.startswith("latency"):
            cells.append(f"p99 {r['p99'] / max(o['p99'], 1e-9):.2f}x"
                         f" p99.9 {r['p999'] / max(o['p999'], 1e-9):.2f}x")
        else:
            cells.append(f"{r['rate'] / o['rate']:.2f}x ({o['lost']} lost)")
    if s.startswith("latency"):
        own = f"   {b} p50/p99/p99.9 {r['p50']}/{r['p99']}/{r['p999']} ms"
    else:
        own = f"   {b} lost {r['lost']}"
    print(f"{name:<24}" + "".join(f"{c:>28}" for c in cells) + own)
print("QoS 1 fan-in runs, msg/s (min, median, max): " +
      "; ".join(f"{b} " + ", ".join(f"{x / 1000:.0f}k" for x in spread[b]) for b in sorted(spread)))
for b in ours:
    for key in MEM:
        t = mem.get((b, key))
        if t is None:
            continue
        cells = []
        for p in peers:
            o = mem.get((p, key))
            cells.append(f"{t / o:.2f}x" if t is not None and o else "-")
        name = f"{b} {key}" if len(ours) > 1 else key
        print(f"{name:<24}" + "".join(f"{c:>28}" for c in cells) + f"   {b} {t:.0f}")
EOF
