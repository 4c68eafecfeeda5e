//! The client against a fake Shoji: signing, the retry, refusals, malformed answers, time-outs
//! and key files.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shoji_admin::{load_key, Client, Defect, Error, Unreachable};

const T: Duration = Duration::from_secs(10);

fn signed(fake: &Fake) -> Client {
    Client::new(&fake.addr, Some(KEY), T)
}

#[test]
fn a_signed_request_passes() {
    let fake = shoji(Some(KEY), Options::default());
    let mut client = signed(&fake);
    let before = now_micros();
    let answer = client.get("/containers").unwrap();
    assert_eq!(answer.text().unwrap(), CONTAINERS);
    assert_eq!(fake.targets(), ["/nonce", "/containers"]);
    let seen = fake.seen();
    assert_eq!(seen[0].authorization, None, "GET /nonce is unsigned");
    // The nonce is max(next, now in µs): here now, as next is 1.
    let nonce = nonce_of(seen[1].authorization.as_deref().unwrap());
    assert!(nonce >= before && nonce <= now_micros(), "{nonce}");

    // Later requests of the same client reuse the boot id and go on with larger nonces.
    assert_eq!(client.get("/metrics").unwrap().text().unwrap(), METRICS);
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    assert!(nonce_of(seen[2].authorization.as_deref().unwrap()) > nonce);
}

#[test]
fn a_signed_body_passes() {
    let fake = shoji(Some(KEY), Options::default());
    let answer = signed(&fake)
        .call("POST", "/echo", Some("application/json"), br#"{"a":1}"#)
        .unwrap();
    assert_eq!((answer.status, answer.text().unwrap()), (200, r#"{"a":1}"#));
}

#[test]
fn a_stale_nonce_is_retried_once_with_a_fresh_one() {
    let fake = shoji(
        Some(KEY),
        Options {
            steal_once: true,
            ..Options::default()
        },
    );
    let answer = signed(&fake).get("/metrics").unwrap();
    assert_eq!(answer.text().unwrap(), METRICS);
    assert_eq!(fake.targets(), ["/nonce", "/metrics", "/nonce", "/metrics"]);
    // The other administrator's nonce is 10 s ahead of the clock: the retry uses `next`.
    let seen = fake.seen();
    let first = nonce_of(seen[1].authorization.as_deref().unwrap());
    let second = nonce_of(seen[3].authorization.as_deref().unwrap());
    assert!(second > first + 5_000_000, "{first} {second}");
}

#[test]
fn a_second_409_is_the_answer() {
    let fake = shoji(
        Some(KEY),
        Options {
            steal_always: true,
            ..Options::default()
        },
    );
    let err = signed(&fake).get("/metrics").unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        "GET /metrics: refused with 409 Conflict: the nonce is not larger than the last \
         accepted one (a replay or a stale nonce; see GET /nonce)"
    );
    assert_eq!(fake.targets().len(), 4, "one retry only");
}

#[test]
fn a_restart_between_nonce_and_request_is_retried() {
    let fake = shoji(
        Some(KEY),
        Options {
            reboot_after_first_nonce: true,
            ..Options::default()
        },
    );
    let answer = signed(&fake).get("/containers").unwrap();
    assert_eq!(answer.boot(), Some(BOOT2));
    assert_eq!(
        fake.targets(),
        ["/nonce", "/containers", "/nonce", "/containers"]
    );
}

#[test]
fn a_wrong_key_is_refused_without_a_retry() {
    let fake = shoji(Some(KEY), Options::default());
    let err = Client::new(&fake.addr, Some([1; 32]), T)
        .get("/metrics")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "GET /metrics: refused with 401 Unauthorized: the signature does not match this \
         request under the admin key"
    );
    assert_eq!(fake.targets(), ["/nonce", "/metrics"]);
}

#[test]
fn unsigned_requests_get_401_or_pass_where_allowed() {
    let fake = shoji(
        Some(KEY),
        Options {
            metrics_unsigned: true,
            ..Options::default()
        },
    );
    let mut client = Client::new(&fake.addr, None, T);
    let err = client.get("/containers").unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        "GET /containers: refused with 401 Unauthorized: no Authorization header: this \
         request must be signed (see GET /nonce)"
    );
    assert_eq!(client.get("/metrics").unwrap().text().unwrap(), METRICS);
    assert_eq!(fake.targets(), ["/containers", "/metrics"], "no /nonce");
    assert!(fake.seen().iter().all(|s| s.authorization.is_none()));
}

#[test]
fn nonce_is_parsed() {
    let fake = shoji(Some(KEY), Options::default());
    let (nonce, answer) = Client::new(&fake.addr, None, T).nonce().unwrap();
    assert_eq!((nonce.boot, nonce.next), (BOOT, 1));
    assert!(answer.text().unwrap().starts_with("boot=b0b0"));
}

fn malformed(raw: &'static [u8], target: &str) -> String {
    let fake = serve(move |_| raw.to_vec());
    let err = Client::new(&fake.addr, None, T)
        .get(target)
        .map(|a| a.status)
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    let msg = err.to_string();
    let prefix = format!("malformed answer from {}: ", fake.addr);
    msg.strip_prefix(&prefix).unwrap_or(&msg).to_string()
}

#[test]
fn malformed_answers() {
    assert!(malformed(b"garbage\r\n\r\n", "/metrics").starts_with("bad status line or headers"));
    assert_eq!(
        malformed(b"", "/metrics"),
        "the connection closed without an answer"
    );
    assert_eq!(
        malformed(b"HTTP/1.1 200 OK\r\nContent-Length: 5", "/metrics"),
        "the answer ends inside its status line or headers"
    );
    assert_eq!(
        malformed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ntruncated",
            "/metrics"
        ),
        "Content-Length says 100 bytes but the body has 9"
    );
    assert_eq!(
        malformed(b"HTTP/1.1 200 OK\r\n\r\nno length", "/metrics"),
        "no Content-Length header"
    );
    // Even a refusal must be well-formed to be reported as one.
    assert_eq!(
        malformed(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 3\r\n\r\n",
            "/x"
        ),
        "Content-Length says 3 bytes but the body has 0"
    );
}

#[test]
fn malformed_bodies() {
    let fake = serve(|req| match req.target.as_str() {
        "/nonce" => answer(200, "OK", &BOOT, "", "boot=zz\nnext=1\n"),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xff\xfe".to_vec(),
    });
    let mut client = Client::new(&fake.addr, Some(KEY), T);
    let err = client.nonce().unwrap_err();
    assert!(matches!(
        err,
        Error::Malformed {
            what: Defect::NonceBody,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "malformed answer from {}: the /nonce body does not hold boot=<32 hex digits> and \
             next=<decimal> lines",
            fake.addr
        )
    );
    // A signed request needs a good /nonce first.
    assert_eq!(client.get("/metrics").unwrap_err().exit_code(), 4);
    let body = Client::new(&fake.addr, None, T).get("/metrics").unwrap();
    let err = client.text(&body).unwrap_err();
    assert!(
        err.to_string().ends_with(": the body is not UTF-8 text"),
        "{err}"
    );

    // The boot id of the body must be the one in X-Shoji-Boot.
    let fake = serve(|_| {
        answer(
            200,
            "OK",
            &BOOT2,
            "",
            "boot=b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0\nnext=1\n",
        )
    });
    let err = Client::new(&fake.addr, None, T).nonce().unwrap_err();
    assert!(matches!(
        err,
        Error::Malformed {
            what: Defect::BootMismatch,
            ..
        }
    ));

    // JSON where JSON is promised; events need their next number.
    let fake = serve(|_| answer(200, "OK", &BOOT, "", "{\"a\":1}\nnot json\n"));
    let client = Client::new(&fake.addr, None, T);
    let err = client
        .check_json_lines("{\"a\":1}\n\nnot json\n")
        .unwrap_err();
    assert!(
        err.to_string().contains("line 3 of the body is not JSON"),
        "{err}"
    );
    assert!(client.check_json("[1, 2").is_err());
    let a = Client::new(&fake.addr, None, T).get("/events").unwrap();
    assert!(client
        .next_event(&a)
        .unwrap_err()
        .to_string()
        .ends_with("no decimal X-Shoji-Next-Event header"));
}

#[test]
fn unreachable_and_slow_servers() {
    let addr = closed_port();
    let err = Client::new(&addr, Some(KEY), T)
        .get("/metrics")
        .unwrap_err();
    assert_eq!(err.exit_code(), 3);
    assert!(matches!(
        err,
        Error::Unreachable {
            why: Unreachable::Connect(_),
            ..
        }
    ));
    assert!(err
        .to_string()
        .starts_with(&format!("cannot reach {addr}: ")));

    // A server that accepts but answers too late.
    let fake = serve(|_| {
        std::thread::sleep(Duration::from_secs(3));
        Vec::new()
    });
    let start = Instant::now();
    let err = Client::new(&fake.addr, None, Duration::from_millis(500))
        .get("/metrics")
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach {}: no complete answer within 0.5 s (see --timeout)",
            fake.addr
        )
    );
    assert_eq!(err.exit_code(), 3);
}

#[test]
fn key_files() {
    assert_eq!(load_key(&key_file(KEY_HEX)).unwrap(), KEY);
    assert_eq!(
        load_key(&key_file(&format!("  {}\n\n", KEY_HEX.to_uppercase()))).unwrap(),
        KEY
    );
    for bad in [
        "",
        "5a5a",
        &KEY_HEX[1..],
        &format!("{KEY_HEX}00"),
        &format!("0x{}", &KEY_HEX[2..]),
        &format!("{} {}", &KEY_HEX[..32], &KEY_HEX[32..]),
        &KEY_HEX.replace('a', "g"),
    ] {
        let path = key_file(bad);
        let err = load_key(&path).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            format!(
                "key file {}: not an admin key (expected exactly 64 hex digits; whitespace \
                 around them is ignored)",
                path.display()
            ),
            "{bad:?}"
        );
    }
    let path = key_file("");
    std::fs::write(&path, b"\xff\xfe").unwrap();
    assert_eq!(load_key(&path).unwrap_err().exit_code(), 1);
    let missing = temp_path("missing");
    let err = load_key(&missing).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err
        .to_string()
        .starts_with(&format!("cannot read key file {}: ", missing.display())));
}
