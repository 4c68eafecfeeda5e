//! Requests to Shoji: the admin key, `GET /nonce`, signing, and the one retry.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoji_mgmt::auth::{hex, parse_hex, sign, BOOT_ID_LEN, SCHEME};

use crate::error::{Defect, Error};
use crate::http::{self, Answer};

/// The admin key's length in bytes.
pub const KEY_LEN: usize = 32;

/// Read the admin key: a file holding 64 hex digits (either case), whitespace around them
/// ignored. The key itself never appears in a message.
pub fn load_key(path: &Path) -> Result<[u8; KEY_LEN], Error> {
    let bytes = std::fs::read(path).map_err(|err| Error::KeyRead {
        path: path.to_path_buf(),
        err,
    })?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| parse_hex::<KEY_LEN>(text.trim()))
        .ok_or_else(|| Error::KeyFormat {
            path: path.to_path_buf(),
        })
}

/// What `GET /nonce` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    /// This boot's id.
    pub boot: [u8; BOOT_ID_LEN],
    /// The smallest nonce Shoji accepts now.
    pub next: u64,
}

/// Parse a `/nonce` body: a `boot=<32 hex digits>` and a `next=<decimal u64>` line, each once,
/// in any order; other lines are ignored.
pub fn parse_nonce_body(text: &str) -> Option<Nonce> {
    let (mut boot, mut next) = (None, None);
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("boot=") {
            if boot.is_some() {
                return None;
            }
            boot = Some(parse_hex::<BOOT_ID_LEN>(v)?);
        } else if let Some(v) = line.strip_prefix("next=") {
            if next.is_some() || v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            next = Some(v.parse().ok()?);
        }
    }
    Some(Nonce {
        boot: boot?,
        next: next?,
    })
}

/// The `Authorization` value of a request.
pub fn authorization(
    key: &[u8; KEY_LEN],
    method: &str,
    target: &str,
    boot: &[u8; BOOT_ID_LEN],
    nonce: u64,
    body: &[u8],
) -> String {
    let signature = sign(key, method, target, boot, nonce, body);
    let mut text = [0u8; 2 * 32];
    format!(
        "{SCHEME} nonce={nonce}, signature={}",
        hex(&signature, &mut text)
    )
}

/// Now in microseconds since 1970 (0 if the clock is before that).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The boot and the smallest nonce worth sending in it, from the last `/nonce` and the nonces
/// sent since.
#[derive(Debug, Clone, Copy)]
struct Session {
    boot: [u8; BOOT_ID_LEN],
    floor: u64,
}

/// A client of one Shoji management endpoint.
#[derive(Debug)]
pub struct Client {
    addr: String,
    key: Option<[u8; KEY_LEN]>,
    timeout: Duration,
    session: Option<Session>,
    last_sent: Option<Vec<u8>>,
}

impl Client {
    /// A client of `addr` (`HOST:PORT`) that signs with `key` (None: unsigned requests), each
    /// request (connection to last byte) within `timeout`.
    pub fn new(addr: &str, key: Option<[u8; KEY_LEN]>, timeout: Duration) -> Client {
        Client {
            addr: addr.to_string(),
            key,
            timeout,
            session: None,
            last_sent: None,
        }
    }

    /// The address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The bytes of the last request sent by [`Client::call`] (not `/nonce` requests).
    pub fn last_sent(&self) -> Option<&[u8]> {
        self.last_sent.as_deref()
    }

    fn malformed(&self, what: Defect) -> Error {
        Error::Malformed {
            addr: self.addr.clone(),
            what,
        }
    }

    fn send(&self, request: &[u8]) -> Result<Answer, Error> {
        let raw = http::exchange(&self.addr, request, self.timeout)?;
        http::parse_answer(&raw).map_err(|what| self.malformed(what))
    }

    /// `GET /nonce` (unsigned): the parsed body and the answer. Anything but 2xx is an error.
    pub fn nonce(&mut self) -> Result<(Nonce, Answer), Error> {
        let request = http::request_bytes("GET", "/nonce", &self.addr, None, None, b"");
        let answer = self.send(&request)?.success("GET", "/nonce")?;
        let text = answer.text().map_err(|what| self.malformed(what))?;
        let nonce = parse_nonce_body(text).ok_or_else(|| self.malformed(Defect::NonceBody))?;
        if answer.header(http::BOOT_HEADER).is_some() && answer.boot() != Some(nonce.boot) {
            return Err(self.malformed(Defect::BootMismatch));
        }
        self.session = Some(Session {
            boot: nonce.boot,
            floor: nonce.next,
        });
        Ok((nonce, answer))
    }

    /// Send one request, signed if the client has a key, and return Shoji's answer whatever
    /// its status. A signed request is sent with nonce `max(next, now in µs)`, `next` from
    /// `GET /nonce` (fetched for the first signed request, and again after a refusal). It is
    /// sent once more, newly signed, when Shoji answers 409 (another administrator spent a
    /// larger nonce meanwhile) or 401 from a boot other than the one signed for (Shoji
    /// restarted in between).
    pub fn call(
        &mut self,
        method: &str,
        target: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Answer, Error> {
        let Some(key) = self.key else {
            let request = http::request_bytes(method, target, &self.addr, None, content_type, body);
            let answer = self.send(&request);
            self.last_sent = Some(request);
            return answer;
        };
        let mut retried = false;
        loop {
            let session = match self.session {
                Some(s) => s,
                None => {
                    self.nonce()?;
                    self.session
                        .ok_or_else(|| self.malformed(Defect::NonceBody))?
                }
            };
            let nonce = session.floor.max(unix_micros());
            let auth = authorization(&key, method, target, &session.boot, nonce, body);
            let request =
                http::request_bytes(method, target, &self.addr, Some(&auth), content_type, body);
            let answer = self.send(&request);
            self.last_sent = Some(request);
            self.session = Some(Session {
                boot: session.boot,
                floor: nonce.saturating_add(1),
            });
            let answer = answer?;
            let stale = answer.status == 409;
            let other_boot =
                answer.status == 401 && answer.boot().is_some_and(|boot| boot != session.boot);
            if retried || !(stale || other_boot) {
                return Ok(answer);
            }
            retried = true;
            self.session = None;
        }
    }

    /// `GET target`; anything but 2xx is an error.
    pub fn get(&mut self, target: &str) -> Result<Answer, Error> {
        self.call("GET", target, None, b"")?.success("GET", target)
    }

    /// The answer's body as text, or the malformed-answer error.
    pub fn text<'a>(&self, answer: &'a Answer) -> Result<&'a str, Error> {
        answer.text().map_err(|what| self.malformed(what))
    }

    /// Check that `text` is one JSON value.
    pub fn check_json(&self, text: &str) -> Result<(), Error> {
        serde_json::from_str::<serde_json::Value>(text)
            .map(drop)
            .map_err(|e| self.malformed(Defect::NotJson(e)))
    }

    /// Check that every non-blank line of `text` is one JSON value.
    pub fn check_json_lines(&self, text: &str) -> Result<(), Error> {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if let Err(err) = serde_json::from_str::<serde_json::Value>(line) {
                return Err(self.malformed(Defect::NotJsonLine { line: i + 1, err }));
            }
        }
        Ok(())
    }

    /// `X-Shoji-Next-Event` of an events answer.
    pub fn next_event(&self, answer: &Answer) -> Result<u64, Error> {
        answer
            .header("X-Shoji-Next-Event")
            .filter(|v| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.malformed(Defect::NoNextEvent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_bodies() {
        let boot = "000102030405060708090a0b0c0d0e0f";
        let want = Some(Nonce {
            boot: core::array::from_fn(|i| i as u8),
            next: 42,
        });
        assert_eq!(parse_nonce_body(&format!("boot={boot}\nnext=42\n")), want);
        assert_eq!(parse_nonce_body(&format!("next=42\r\nboot={boot}")), want);
        assert_eq!(
            parse_nonce_body(&format!("boot={boot}\nnext=42\nlast=41\n")),
            want
        );
        for bad in [
            String::new(),
            format!("boot={boot}\n"),
            "next=42\n".to_string(),
            format!("boot={boot}\nnext=\n"),
            format!("boot={boot}\nnext=-1\n"),
            format!("boot={boot}\nnext=+1\n"),
            format!("boot={boot}\nnext=18446744073709551616\n"),
            format!("boot={boot}0\nnext=1\n"),
            format!("boot={boot}\nnext=1\nnext=2\n"),
            format!("boot={boot}\nboot={boot}\nnext=2\n"),
        ] {
            assert_eq!(parse_nonce_body(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_authorization_header_is_what_the_verifier_reads() {
        let key = [3; 32];
        let boot = [9; 16];
        let auth = authorization(&key, "GET", "/metrics", &boot, 77, b"");
        let mut v = shoji_mgmt::auth::Verifier::new(Some(key), boot);
        assert_eq!(v.verify(Some(&auth), "GET", "/metrics", b""), Ok(()));
        assert!(auth.starts_with("Shoji-HMAC-SHA256 nonce=77, signature="));
    }
}
