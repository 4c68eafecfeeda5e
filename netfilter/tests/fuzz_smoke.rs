//! Keeps the fuzz target from rotting: a short `cargo fuzz` run of `decide`.
//!
//! `cargo xtask test` runs `fuzz/smoke.sh` as its own step, which reports a skip (no nightly
//! toolchain, no cargo-fuzz) as SKIPPED with its reason and fails CI on it; so here the test is
//! ignored (`cargo test` lists it as ignored, not as passed). Run it alone with
//! `cargo test -p shoji-netfilter --test fuzz_smoke -- --ignored`: asked for explicitly, a skip
//! fails. `SHOJI_FUZZ_SMOKE_SECS` changes its length (default 5).

use std::process::Command;

/// smoke.sh's exit status when it could not run (see the script).
const EXIT_SKIPPED: i32 = 77;

#[test]
#[ignore = "run by `cargo xtask test` as the `netfilter fuzz smoke` step (needs nightly and cargo-fuzz)"]
fn fuzz_target_decide_builds_and_runs_clean() {
    let secs = std::env::var("SHOJI_FUZZ_SMOKE_SECS").unwrap_or_else(|_| "5".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/smoke.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(&secs)
        // The outer cargo's target dir must not leak into the fuzz build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("SHOJI_SKIP_REASON_FILE")
        .output()
        .expect("run fuzz/smoke.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tail = &output.stderr[output.stderr.len().saturating_sub(4000)..];
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail = String::from_utf8_lossy(tail);
    assert_ne!(
        output.status.code(),
        Some(EXIT_SKIPPED),
        "fuzz smoke run SKIPPED, which is not a pass:\n{stdout}"
    );
    assert!(
        output.status.success(),
        "fuzz smoke run failed:\n{stdout}\n{tail}"
    );
    assert!(
        stderr.contains("Done "),
        "fuzz smoke run did not report completion:\n{stdout}\n{tail}"
    );
}
