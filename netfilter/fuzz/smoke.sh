#!/usr/bin/env bash
# Short fuzz run of the `decide` target: ./smoke.sh [seconds] (default 20).
# Needs a nightly toolchain; installs cargo-fuzz if it is missing. Skips (exit 0) only when no
# nightly toolchain is installed.
set -euo pipefail
secs="${1:-20}"
here="$(cd "$(dirname "$0")" && pwd)"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "SKIP: netfilter fuzz smoke run: no nightly toolchain installed (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
    echo "installing cargo-fuzz..."
    cargo install cargo-fuzz
fi
cd "$here"
# The fuzz crate has its own workspace and target directory.
export CARGO_TARGET_DIR="${SHOJI_FUZZ_TARGET_DIR:-$here/target}"
mkdir -p corpus/decide
cargo +nightly fuzz run decide -- -max_total_time="$secs" -max_len=4096
