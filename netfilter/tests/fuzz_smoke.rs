//! Keeps the fuzz target from rotting: a short `cargo fuzz` run of `decide` is part of
//! `cargo test`. It needs a nightly toolchain (the script prints SKIP and succeeds without one);
//! set `SHOJI_SKIP_FUZZ_SMOKE=1` to skip it, `SHOJI_FUZZ_SMOKE_SECS` to change its length.

use std::process::Command;

#[test]
fn fuzz_target_decide_builds_and_runs_clean() {
    if std::env::var_os("SHOJI_SKIP_FUZZ_SMOKE").is_some() {
        eprintln!("SKIP: SHOJI_SKIP_FUZZ_SMOKE is set");
        return;
    }
    let secs = std::env::var("SHOJI_FUZZ_SMOKE_SECS").unwrap_or_else(|_| "5".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/smoke.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(&secs)
        // The outer cargo's target dir must not leak into the fuzz build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run fuzz/smoke.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tail = &output.stderr[output.stderr.len().saturating_sub(4000)..];
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail = String::from_utf8_lossy(tail);
    assert!(
        output.status.success(),
        "fuzz smoke run failed:\n{stdout}\n{tail}"
    );
    assert!(
        stdout.contains("SKIP") || stderr.contains("Done "),
        "fuzz smoke run did not report completion:\n{stdout}\n{tail}"
    );
}
