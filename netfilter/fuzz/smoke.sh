#!/usr/bin/env bash
# Short fuzz run of the `decide` target: ./smoke.sh [seconds] (default 20).
# Needs a nightly toolchain and cargo-fuzz (installed here when missing).
# Exit status: 0 = the run finished clean; 77 = SKIPPED (no nightly toolchain, or cargo-fuzz
# missing and not installable): the reason is printed as `SKIP: ...` and, when
# SHOJI_SKIP_REASON_FILE is set, written there (`cargo xtask test` reports it, and fails in CI);
# anything else = failed.
set -euo pipefail
secs="${1:-20}"
here="$(cd "$(dirname "$0")" && pwd)"
skip() {
    echo "SKIP: netfilter fuzz smoke run: $*"
    if [ -n "${SHOJI_SKIP_REASON_FILE:-}" ]; then
        printf '%s\n' "$*" >"$SHOJI_SKIP_REASON_FILE"
    fi
    exit 77
}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    skip "no nightly toolchain installed (rustup toolchain install nightly)"
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
    echo "installing cargo-fuzz..."
    cargo install cargo-fuzz --locked \
        || skip "cargo-fuzz is missing and did not install (cargo install cargo-fuzz --locked)"
fi
cd "$here"
# The fuzz crate has its own workspace and target directory.
export CARGO_TARGET_DIR="${SHOJI_FUZZ_TARGET_DIR:-$here/target}"
mkdir -p corpus/decide
cargo +nightly fuzz run decide -- -max_total_time="$secs" -max_len=4096
