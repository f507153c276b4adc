# What the benchmark scripts share; sourced by them, not run. The broker under test goes on
# CPU 0 ($PIN_BROKER) and the load on CPU 1 ($PIN_LOAD) when there are two CPUs and taskset.

# PIN=0 pins nothing: every process may use every CPU (how the default server's I/O threads
# spread socket work over the CPUs is measured that way).
PIN_BROKER="taskset -c 0"
PIN_LOAD="taskset -c 1"
if [ "${PIN:-1}" = 0 ]; then
    PIN_BROKER=""
    PIN_LOAD=""
    echo "note: not pinning (PIN=0)" >&2
elif ! command -v taskset >/dev/null || [ "$(nproc)" -lt 2 ]; then
    PIN_BROKER=""
    PIN_LOAD=""
    echo "note: not pinning (taskset missing or fewer than 2 CPUs)" >&2
fi

# A loopback port free now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (up to 10 s) until something listens on loopback port $1.
wait_port() {
    for _ in $(seq 1 200); do
        if (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "broker did not start on port $1" >&2
    return 1
}

# The median of the numbers on standard input, one per line.
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
