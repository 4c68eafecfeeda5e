//! The `shoji-admin` binary end to end against a fake Shoji: output, messages and exit codes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn admin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoji-admin"));
    cmd.env_remove("SHOJI_ADMIN_ADDR")
        .env_remove("SHOJI_ADMIN_KEY_FILE");
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code().expect("exited"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn signed(fake: &Fake, args: &[&str]) -> (i32, String, String) {
    let key = key_file(&format!("{KEY_HEX}\n"));
    run(admin()
        .args(["--addr", &fake.addr, "--key-file"])
        .arg(&key)
        .args(args))
}

#[test]
fn signed_commands_print_the_body_and_exit_0() {
    let fake = shoji(Some(KEY), Options::default());
    assert_eq!(
        signed(&fake, &["metrics"]),
        (0, METRICS.to_string(), String::new())
    );
    assert_eq!(
        signed(&fake, &["containers"]),
        (0, format!("{CONTAINERS}\n"), String::new())
    );
    let (code, out, _) = signed(&fake, &["events", "--from", "1"]);
    assert_eq!((code, out), (0, format!("{}\n{}\n", EVENTS[1], EVENTS[2])));
    assert!(fake.targets().contains(&"/events?from=1".to_string()));
    // Global options also after the command.
    let key = key_file(KEY_HEX);
    let (code, out, _) = run(admin()
        .args(["metrics", "--addr", &fake.addr, "--key-file"])
        .arg(&key));
    assert_eq!((code, out.as_str()), (0, METRICS));
}

#[test]
fn the_environment_gives_address_and_key() {
    let fake = shoji(Some(KEY), Options::default());
    let (code, out, _) = run(admin()
        .env("SHOJI_ADMIN_ADDR", &fake.addr)
        .env("SHOJI_ADMIN_KEY_FILE", key_file(KEY_HEX))
        .arg("metrics"));
    assert_eq!((code, out.as_str()), (0, METRICS));
}

#[test]
fn nonce_prints_the_body_without_a_key() {
    let fake = shoji(Some(KEY), Options::default());
    let (code, out, err) = run(admin().args(["--addr", &fake.addr, "nonce"]));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "boot=b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0\nnext=1\n", "")
    );
}

#[test]
fn unsigned_is_refused_with_exit_2() {
    let fake = shoji(Some(KEY), Options::default());
    let (code, out, err) = run(admin().args(["--addr", &fake.addr, "--no-key", "containers"]));
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "shoji-admin: GET /containers: refused with 401 Unauthorized: no Authorization header: \
         this request must be signed (see GET /nonce)\n"
    );
    // --no-key wins over a key file: nothing is read.
    let (code, _, _) = run(admin().args([
        "--addr",
        &fake.addr,
        "--no-key",
        "--key-file",
        "/nonexistent/key",
        "metrics",
    ]));
    assert_eq!(code, 2);
    assert_eq!(fake.targets(), ["/containers", "/metrics"]);
}

#[test]
fn a_retried_409_exits_0() {
    let fake = shoji(
        Some(KEY),
        Options {
            steal_once: true,
            ..Options::default()
        },
    );
    assert_eq!(signed(&fake, &["metrics"]).0, 0);
    assert_eq!(fake.targets(), ["/nonce", "/metrics", "/nonce", "/metrics"]);
}

#[test]
fn unreachable_exits_3() {
    let addr = closed_port();
    let (code, out, err) = run(admin().args(["--addr", &addr, "--no-key", "metrics"]));
    assert_eq!((code, out.as_str()), (3, ""));
    assert!(
        err.starts_with(&format!("shoji-admin: cannot reach {addr}: ")),
        "{err}"
    );
    // Signed: the /nonce request is the one that fails.
    let key = key_file(KEY_HEX);
    let (code, _, _) = run(admin()
        .args(["--addr", &addr, "--key-file"])
        .arg(&key)
        .arg("metrics"));
    assert_eq!(code, 3);
    // A time-out.
    let fake = serve(|_| {
        std::thread::sleep(Duration::from_secs(3));
        Vec::new()
    });
    let (code, _, err) = run(admin().args([
        "--addr",
        &fake.addr,
        "--no-key",
        "--timeout",
        "0.3",
        "metrics",
    ]));
    assert_eq!(code, 3);
    assert!(
        err.ends_with("no complete answer within 0.3 s (see --timeout)\n"),
        "{err}"
    );
}

#[test]
fn malformed_answers_exit_4() {
    let fake = serve(|_| b"SSH-2.0-OpenSSH_9.6\r\n".to_vec());
    let (code, out, err) = run(admin().args(["--addr", &fake.addr, "--no-key", "metrics"]));
    assert_eq!((code, out.as_str()), (4, ""));
    assert!(
        err.starts_with(&format!(
            "shoji-admin: malformed answer from {}: bad status line or headers",
            fake.addr
        )),
        "{err}"
    );
    let fake = serve(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshoji_up 1\n".to_vec());
    let (code, out, err) = run(admin().args(["--addr", &fake.addr, "--no-key", "metrics"]));
    assert_eq!((code, out.as_str()), (4, ""));
    assert_eq!(
        err,
        format!(
            "shoji-admin: malformed answer from {}: Content-Length says 50 bytes but the body \
             has 11\n",
            fake.addr
        )
    );
    // Metrics must be text, containers JSON, events JSON lines with a next number.
    let fake = serve(|req| match req.target.as_str() {
        "/metrics" => b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n\x80".to_vec(),
        "/containers" => answer(200, "OK", &BOOT, "", "{\"containers\": ["),
        _ => answer(200, "OK", &BOOT, "", "{}\n"),
    });
    for (cmd, what) in [
        ("metrics", "the body is not UTF-8 text"),
        ("containers", "the body is not JSON"),
        ("events", "no decimal X-Shoji-Next-Event header"),
    ] {
        let (code, out, err) = run(admin().args(["--addr", &fake.addr, "--no-key", cmd]));
        assert_eq!((code, out.as_str()), (4, ""), "{cmd}");
        assert!(err.contains(what), "{cmd}: {err}");
    }
}

#[test]
fn key_file_errors_exit_1() {
    let fake = shoji(Some(KEY), Options::default());
    let bad = key_file("not a key\n");
    let (code, out, err) = run(admin()
        .args(["--addr", &fake.addr, "--key-file"])
        .arg(&bad)
        .arg("metrics"));
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "shoji-admin: key file {}: not an admin key (expected exactly 64 hex digits; \
             whitespace around them is ignored)\n",
            bad.display()
        )
    );
    let missing = temp_path("missing-key");
    let (code, _, err) = run(admin()
        .args(["--addr", &fake.addr, "--key-file"])
        .arg(&missing)
        .arg("metrics"));
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!(
        "shoji-admin: cannot read key file {}: ",
        missing.display()
    )));
    let (code, _, err) = run(admin().args(["--addr", &fake.addr, "metrics"]));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "shoji-admin: no admin key: give --key-file PATH (or set SHOJI_ADMIN_KEY_FILE), or \
         --no-key to send unsigned requests\n"
    );
    assert!(fake.seen().is_empty(), "nothing is sent without a key");
}

#[test]
fn usage_errors_exit_1_and_help_0() {
    let (code, _, err) = run(admin().args(["--no-key", "metrics"]));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "shoji-admin: no address: give --addr HOST:PORT or set SHOJI_ADMIN_ADDR\n"
    );
    for args in [
        &["--addr", "h:1", "frobnicate"][..],
        &["--addr", "h:1", "--timeout", "0", "metrics"],
        &["--addr", "h:1", "--timeout", "soon", "metrics"],
        &["--addr", "h:1", "request", "GET", "no-slash"],
        &["--addr", "h:1", "request", "GET", "/a b"],
        &["--addr", "h:1", "request", "G T", "/"],
    ] {
        let (code, out, _) = run(admin().args(args));
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}");
    }
    let (code, out, _) = run(admin().arg("--help"));
    assert_eq!(code, 0);
    assert!(out.contains("Exit status: 0 on a 2xx answer"));
}

#[test]
fn request_prints_status_and_body_and_a_saved_request_cannot_be_replayed() {
    let fake = shoji(Some(KEY), Options::default());
    let saved = temp_path("request");
    let (code, out, err) = signed(
        &fake,
        &[
            "request",
            "POST",
            "/echo",
            "--body",
            "{\"block\": 7}",
            "--content-type",
            "application/json",
            "--save-request",
            saved.to_str().unwrap(),
        ],
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "{\"block\": 7}", "HTTP/1.1 200 OK\n")
    );
    let bytes = std::fs::read(&saved).unwrap();
    assert_eq!(
        bytes,
        fake.seen().last().unwrap().raw,
        "the exact bytes sent"
    );

    // The replay (as `nc` would send it) is refused: the nonce is spent.
    let mut conn = TcpStream::connect(&fake.addr).unwrap();
    conn.write_all(&bytes).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 409 Conflict\r\n"), "{answer}");

    // A refusal: status line and body still printed, then the message, exit 2.
    let (code, out, err) = signed(&fake, &["request", "DELETE", "/metrics"]);
    assert_eq!(code, 2);
    assert_eq!(out, "this path takes GET only\n");
    assert_eq!(
        err,
        "HTTP/1.1 405 Method Not Allowed\nshoji-admin: DELETE /metrics: refused with 405 \
         Method Not Allowed: this path takes GET only\n"
    );
}

#[test]
fn events_follow_polls_with_the_next_number() {
    let fake = shoji(Some(KEY), Options::default());
    let key = key_file(KEY_HEX);
    let mut child = admin()
        .args(["--addr", &fake.addr, "--key-file"])
        .arg(&key)
        .args(["events", "--follow", "--interval", "0.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for want in EVENTS {
        assert_eq!(lines.next().unwrap().unwrap(), want);
    }
    // Wait for two more polls, then stop the child (ours).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fake.targets().len() < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let targets = fake.targets();
    assert_eq!(
        targets[..4],
        [
            "/nonce",
            "/events?from=0&wait=15",
            "/events?from=3&wait=15",
            "/events?from=3&wait=15"
        ]
    );
}

#[test]
fn events_follow_starts_again_after_a_restart() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static POLLS: AtomicUsize = AtomicUsize::new(0);
    let fake = serve(|req| {
        let poll = POLLS.fetch_add(1, Ordering::SeqCst);
        let (boot, body, next) = match (poll, req.target.as_str()) {
            (0, _) => (BOOT, format!("{}\n", EVENTS[0]), 1),
            // After the restart: event 1 of the old numbering is not wanted.
            (_, "/events?from=1&wait=15") => (BOOT2, format!("{}\n", EVENTS[1]), 2),
            _ => (BOOT2, format!("{}\n", EVENTS[2]), 1),
        };
        let extra = format!("X-Shoji-Next-Event: {next}\r\n");
        answer(200, "OK", &boot, &extra, &body)
    });
    let mut child = admin()
        .args(["--addr", &fake.addr, "--no-key"])
        .args(["events", "--follow", "--interval", "0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), EVENTS[0]);
    assert_eq!(lines.next().unwrap().unwrap(), EVENTS[2]);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(
        err,
        "shoji-admin: Shoji restarted (boot b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2); following from \
         event 0\n"
    );
    assert_eq!(
        fake.targets()[..3],
        [
            "/events?from=0&wait=15",
            "/events?from=1&wait=15",
            "/events?from=0&wait=15"
        ]
    );
}

#[test]
fn block_blocks_and_unblock_send_the_form_and_print_the_answer() {
    let fake = shoji(Some(KEY), Options::default());
    let (code, out, err) = signed(
        &fake,
        &[
            "block",
            "--uid",
            "1000",
            "--tcp-dst-port",
            "7777",
            "--new-only",
        ],
    );
    assert_eq!((code, out.as_str(), err.as_str()), (0, "{\"id\":7}\n", ""));
    let (code, _, _) = signed(
        &fake,
        &[
            "block",
            "--container",
            "2",
            "--allow",
            "--direction",
            "egress",
            "--protocol",
            "udp",
            "--remote",
            "10.0.2.0/24",
            "--src-port",
            "1-9",
            "--dst-port",
            "53",
        ],
    );
    assert_eq!(code, 0);
    let (code, _, _) = signed(
        &fake,
        &["block", "--exe-inode", "1234", "--udp-dst-port", "53"],
    );
    assert_eq!(code, 0);
    let (code, _, _) = signed(&fake, &["block", "--pid", "42"]);
    assert_eq!(code, 0);
    let (code, _, _) = signed(&fake, &["block", "--comm", "wget", "--container", "host"]);
    assert_eq!(code, 0);
    let bodies: Vec<String> = fake
        .seen()
        .into_iter()
        .filter(|s| s.target == "/block")
        .map(|s| String::from_utf8(s.body).unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "protocol=tcp&dst_port=7777&uid=1000&new_only=true",
            "action=allow&container=2&direction=egress&protocol=udp&remote=10.0.2.0/24&src_port=1-9&dst_port=53",
            "protocol=udp&dst_port=53&exe=1234",
            "pid=42",
            "container=host&comm=wget",
        ]
    );
    assert_eq!(
        signed(&fake, &["blocks"]),
        (0, "{\"rules\":[]}\n".into(), String::new())
    );
    assert_eq!(
        signed(&fake, &["unblock", "7"]),
        (0, "{\"removed\":7}\n".into(), String::new())
    );
    let (code, _, err) = signed(&fake, &["unblock", "8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(err.contains("no administrator rule has this id"), "{err}");
    // Refused by Shoji: its reason, exit 2.
    let (code, _, err) = signed(&fake, &["block", "--comm", "colour"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("colour: unknown key"), "{err}");
}

#[test]
fn block_refuses_an_empty_or_injected_rule_locally() {
    let fake = shoji(Some(KEY), Options::default());
    let (code, _, err) = signed(&fake, &["block"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--container all"), "{err}");
    for bad in [
        &["block", "--comm", "a&uid=0"][..],
        &["block", "--remote", "10.0.0.0/8 "],
        &["block", "--uid", "1", "--pid", "2"],
        &["block", "--tcp-dst-port", "80", "--protocol", "udp"],
        &["block", "--direction", "up"],
        &["unblock", "x"],
    ] {
        let (code, _, err) = signed(&fake, bad);
        assert_eq!(code, 1, "{bad:?}: {err}");
    }
    assert!(
        !fake.targets().iter().any(|t| t.starts_with("/block")),
        "nothing was sent"
    );
}
