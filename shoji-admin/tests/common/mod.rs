//! A fake Shoji management endpoint on 127.0.0.1 for the tests: one thread, one connection at a
//! time, `/nonce` and signature checks with `shoji_mgmt::auth::Verifier`, and raw answers for
//! the malformed cases.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoji_mgmt::auth::{hex, sign, Verifier, SCHEME};

pub const KEY: [u8; 32] = [0x5a; 32];
pub const KEY_HEX: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
pub const BOOT: [u8; 16] = [0xb0; 16];
pub const BOOT2: [u8; 16] = [0xb2; 16];
pub const METRICS: &str = "# HELP shoji_frames_total Frames seen.\n\
                           # TYPE shoji_frames_total counter\n\
                           shoji_frames_total{dir=\"rx\"} 12\n";
pub const CONTAINERS: &str = r#"{"containers":[{"id":1,"name":"web"}]}"#;
pub const EVENTS: [&str; 3] = [
    r#"{"seq":0,"kind":"drop"}"#,
    r#"{"seq":1,"kind":"drop"}"#,
    r#"{"seq":2,"kind":"quota"}"#,
];

/// A request as the fake server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
    pub raw: Vec<u8>,
}

/// A running fake server.
pub struct Fake {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn targets(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.target).collect()
    }
}

/// Start a server answering each request with `handler`'s bytes (then closing).
pub fn serve(mut handler: impl FnMut(&Seen) -> Vec<u8> + Send + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let Some(req) = read_request(&mut conn) else {
                continue;
            };
            log.lock().unwrap().push(req.clone());
            let answer = handler(&req);
            let _ = conn.write_all(&answer);
            let _ = conn.shutdown(Shutdown::Both);
        }
    });
    Fake { addr, seen }
}

fn read_request(conn: &mut impl Read) -> Option<Seen> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head) = req.parse(&raw).ok()? {
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8(h.value.to_vec()).unwrap())
            };
            let len: usize = header("Content-Length").map_or(0, |v| v.parse().unwrap());
            if raw.len() >= head + len {
                return Some(Seen {
                    method: req.method?.to_string(),
                    target: req.path?.to_string(),
                    authorization: header("Authorization"),
                    body: raw[head..head + len].to_vec(),
                    raw: raw.clone(),
                });
            }
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// An answer as Shoji writes it.
pub fn answer(status: u16, reason: &str, boot: &[u8; 16], extra: &str, body: &str) -> Vec<u8> {
    let mut h = [0u8; 32];
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\nX-Shoji-Boot: {}\r\n{extra}\r\n{body}",
        body.len(),
        hex(boot, &mut h)
    )
    .into_bytes()
}

/// How the fake Shoji behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Metrics are served to unsigned requests too.
    pub metrics_unsigned: bool,
    /// Before checking the first (or, with `steal_always`, every) signed request, another
    /// administrator spends a nonce 10 s ahead of now.
    pub steal_once: bool,
    pub steal_always: bool,
    /// Shoji restarts (new boot id, new verifier) right after the first `/nonce`.
    pub reboot_after_first_nonce: bool,
}

/// A fake Shoji with the admin key [`KEY`] (or none).
pub fn shoji(key: Option<[u8; 32]>, opts: Options) -> Fake {
    let mut verifier = Verifier::new(key, BOOT);
    let mut steals = 0;
    let mut nonces = 0;
    serve(move |req| {
        let boot = *verifier.boot_id();
        if req.target == "/nonce" {
            let mut h = [0u8; 32];
            let body = format!(
                "boot={}\nnext={}\n",
                hex(&boot, &mut h),
                verifier.next_nonce()
            );
            nonces += 1;
            let a = answer(200, "OK", &boot, "", &body);
            if opts.reboot_after_first_nonce && nonces == 1 {
                verifier = Verifier::new(key, BOOT2);
            }
            return a;
        }
        if req.authorization.is_some() && (opts.steal_always || (opts.steal_once && steals == 0)) {
            steals += 1;
            let other = now_micros() + 10_000_000;
            let sig = sign(&KEY, "GET", "/other", &boot, other, b"");
            let mut h = [0u8; 64];
            let auth = format!("{SCHEME} nonce={other}, signature={}", hex(&sig, &mut h));
            verifier
                .verify(Some(&auth), "GET", "/other", b"")
                .expect("the other administrator's request");
        }
        let unsigned_ok = opts.metrics_unsigned && req.target == "/metrics";
        if !unsigned_ok || req.authorization.is_some() {
            if let Err(e) = verifier.verify(
                req.authorization.as_deref(),
                &req.method,
                &req.target,
                &req.body,
            ) {
                let reason = match e.status() {
                    400 => "Bad Request",
                    401 => "Unauthorized",
                    _ => "Conflict",
                };
                return answer(e.status(), reason, &boot, "", &format!("{e}\n"));
            }
        }
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        match (req.method.as_str(), path) {
            ("GET", "/metrics") => answer(200, "OK", &boot, "", METRICS),
            ("GET", "/containers") => answer(200, "OK", &boot, "", CONTAINERS),
            ("GET", "/events") => {
                let from: usize = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("from="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let mut body = String::new();
                for e in EVENTS.iter().skip(from) {
                    body.push_str(e);
                    body.push('\n');
                }
                let next = EVENTS.len().max(from);
                let extra = format!("X-Shoji-Next-Event: {next}\r\n");
                answer(200, "OK", &boot, &extra, &body)
            }
            ("POST", "/block") => {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                if body.contains("colour") {
                    return answer(400, "Bad Request", &boot, "", "colour: unknown key\n");
                }
                answer(
                    201,
                    "Created",
                    &boot,
                    "Location: /block/7\r\n",
                    "{\"id\":7}\n",
                )
            }
            ("GET", "/blocks") => answer(200, "OK", &boot, "", "{\"rules\":[]}\n"),
            ("DELETE", "/block/7") => answer(200, "OK", &boot, "", "{\"removed\":7}\n"),
            ("DELETE", p) if p.starts_with("/block/") => answer(
                404,
                "Not Found",
                &boot,
                "",
                "no administrator rule has this id\n",
            ),
            ("POST", "/echo") => {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                answer(200, "OK", &boot, "", &body)
            }
            (_, "/metrics" | "/containers" | "/events") => answer(
                405,
                "Method Not Allowed",
                &boot,
                "",
                "this path takes GET only\n",
            ),
            _ => answer(404, "Not Found", &boot, "", "no such path\n"),
        }
    })
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// An address where nobody listens (a port just closed).
pub fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

/// A fresh path for a test file.
pub fn temp_path(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("shoji-admin-{}-{n}-{name}", std::process::id()))
}

/// A key file holding `text`.
pub fn key_file(text: &str) -> PathBuf {
    let path = temp_path("key");
    std::fs::write(&path, text).unwrap();
    path
}

/// The nonce of an `Authorization` header.
pub fn nonce_of(authorization: &str) -> u64 {
    let rest = authorization.split("nonce=").nth(1).unwrap();
    rest.split(',').next().unwrap().parse().unwrap()
}
