#!/usr/bin/env bash
# The project's test command. On a fresh machine it installs what the tests need when it is
# missing, then runs every test of the workspace. Extra arguments go to `cargo test`.
#
# Today the suite needs only the Rust toolchain. The interop tests that arrive with the client
# and broker servers need Mosquitto and paho-mqtt; they are installed here, by this script, in
# the same change that adds those tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo not found; install Rust (https://rustup.rs) and run again" >&2
    exit 1
fi

exec cargo test --workspace --all-features "$@"
