//! HTTP/1.1 by hand, as Shoji speaks it: one request per connection, and an answer with
//! `Connection: close` and a `Content-Length`, read until the server closes.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use shoji_mgmt::auth::{parse_hex, BOOT_ID_LEN};

use crate::error::{Defect, Error, Unreachable};

/// The largest answer accepted (the metrics and event pages are far smaller).
pub const MAX_ANSWER: usize = 64 << 20;
/// The most headers an answer may carry.
pub const MAX_HEADERS: usize = 64;
/// The header with Shoji's boot id, in every answer.
pub const BOOT_HEADER: &str = "X-Shoji-Boot";

/// The bytes of a request. `target` is the path with its query, `host` the `Host` header;
/// `Content-Length` is sent when there is a body or the method is not GET, HEAD or DELETE.
pub fn request_bytes(
    method: &str,
    target: &str,
    host: &str,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shoji-admin/{}\r\n\
         Connection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(auth) = authorization {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The minor HTTP version (`HTTP/1.x`).
    pub version: u8,
    /// The status code.
    pub status: u16,
    /// The reason phrase, as sent.
    pub reason: String,
    /// The headers in order: name as sent, value bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header called `name` (any case), trimmed, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// The boot id in `X-Shoji-Boot`, if there is a well-formed one.
    pub fn boot(&self) -> Option<[u8; BOOT_ID_LEN]> {
        self.header(BOOT_HEADER).and_then(parse_hex::<BOOT_ID_LEN>)
    }

    /// The status line, printable: `HTTP/1.1 200 OK`.
    pub fn status_line(&self) -> String {
        let mut line = format!("HTTP/1.{} {}", self.version, self.status);
        let reason = printable(&self.reason, 200);
        if !reason.is_empty() {
            line.push(' ');
            line.push_str(&reason);
        }
        line
    }

    /// The body as text.
    pub fn text(&self) -> Result<&str, Defect> {
        std::str::from_utf8(&self.body).map_err(|_| Defect::NotUtf8)
    }

    /// The first non-empty line of the body, printable (for error messages).
    pub fn body_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let line = text.lines().map(str::trim).find(|l| !l.is_empty());
        match line {
            Some(line) => printable(line, 300),
            None => "(no body)".to_string(),
        }
    }

    /// This answer if it is 2xx, else the refusal of `method` `target`.
    pub fn success(self, method: &str, target: &str) -> Result<Answer, Error> {
        if self.is_success() {
            return Ok(self);
        }
        let mut reason = printable(&self.reason, 200);
        if reason.is_empty() {
            reason = standard_reason(self.status).to_string();
        }
        Err(Error::Refused {
            method: method.to_string(),
            path: printable(target, 300),
            status: self.status,
            reason,
            body: self.body_line(),
        })
    }
}

/// The standard reason phrase of the statuses Shoji uses ("" for others): Shoji's own table.
pub fn standard_reason(status: u16) -> &'static str {
    match shoji_mgmt::http::reason(status) {
        "Unknown" => "",
        phrase => phrase,
    }
}

/// `text` with control characters escaped, cut to `max` characters (for a terminal).
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse a whole answer: status line, headers, and a body of exactly `Content-Length` bytes.
pub fn parse_answer(raw: &[u8]) -> Result<Answer, Defect> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if raw.is_empty() => return Err(Defect::Empty),
        Ok(httparse::Status::Partial) => return Err(Defect::IncompleteHead),
        Err(err) => return Err(Defect::BadHead(err)),
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(Defect::IncompleteHead);
    };
    let mut declared: Option<u64> = None;
    let mut list = Vec::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("Transfer-Encoding") {
            return Err(Defect::TransferEncoding);
        }
        if h.name.eq_ignore_ascii_case("Content-Length") {
            let n = content_length(h.value).ok_or(Defect::BadContentLength)?;
            if declared.is_some_and(|d| d != n) {
                return Err(Defect::BadContentLength);
            }
            declared = Some(n);
        }
        list.push((h.name.to_string(), h.value.to_vec()));
    }
    let declared = declared.ok_or(Defect::NoContentLength)?;
    let body = &raw[head_len..];
    if u64::try_from(body.len()).ok() != Some(declared) {
        return Err(Defect::LengthMismatch {
            declared,
            got: body.len(),
        });
    }
    Ok(Answer {
        version,
        status,
        reason: response.reason.unwrap_or("").to_string(),
        headers: list,
        body: body.to_vec(),
    })
}

/// A `Content-Length` value: decimal digits, optionally surrounded by blanks.
fn content_length(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    if text.is_empty() || !text.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Send `request` to `addr` and read the answer until the server closes the connection, all
/// within `timeout` (connection included). A complete answer is also accepted when the
/// connection then breaks or stays open past the time-out.
pub fn exchange(addr: &str, request: &[u8], timeout: Duration) -> Result<Vec<u8>, Error> {
    let unreachable = |why| Error::Unreachable {
        addr: addr.to_string(),
        why,
    };
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let targets: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(Unreachable::Resolve(e)))?
        .collect();
    let mut stream = None;
    let mut why = Unreachable::NoAddress;
    for target in &targets {
        let Some(budget) = left() else {
            why = Unreachable::TimedOut(timeout);
            break;
        };
        match TcpStream::connect_timeout(target, budget) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => why = Unreachable::TimedOut(timeout),
            Err(e) => why = Unreachable::Connect(e),
        }
    }
    let Some(mut stream) = stream else {
        return Err(unreachable(why));
    };

    // A server may answer (413, 431) and close before it has read the whole request: then the
    // write fails but the answer is still there to read.
    let mut write_error = None;
    match left() {
        None => return Err(unreachable(Unreachable::TimedOut(timeout))),
        Some(budget) => {
            let sent = stream
                .set_write_timeout(Some(budget))
                .and_then(|()| stream.write_all(request))
                .and_then(|()| stream.flush());
            if let Err(e) = sent {
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    return Err(unreachable(Unreachable::TimedOut(timeout)));
                }
                write_error = Some(e);
            }
        }
    }

    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let Some(budget) = left() else {
            if parse_answer(&answer).is_ok() {
                break;
            }
            return Err(unreachable(Unreachable::TimedOut(timeout)));
        };
        if let Err(e) = stream.set_read_timeout(Some(budget)) {
            return Err(unreachable(Unreachable::Io(e)));
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if answer.len() + n > MAX_ANSWER {
                    return Err(Error::Malformed {
                        addr: addr.to_string(),
                        what: Defect::TooLarge(MAX_ANSWER),
                    });
                }
                answer.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) if parse_answer(&answer).is_ok() => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(unreachable(Unreachable::TimedOut(timeout)));
            }
            Err(e) => return Err(unreachable(Unreachable::Io(write_error.unwrap_or(e)))),
        }
    }
    if answer.is_empty() {
        if let Some(e) = write_error {
            return Err(unreachable(Unreachable::Io(e)));
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_written_as_documented() {
        let r = request_bytes("GET", "/events?from=3", "10.0.0.2:8080", None, None, b"");
        assert_eq!(
            String::from_utf8(r).unwrap(),
            format!(
                "GET /events?from=3 HTTP/1.1\r\nHost: 10.0.0.2:8080\r\n\
                 User-Agent: shoji-admin/{}\r\nConnection: close\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        let r = request_bytes(
            "POST",
            "/x",
            "h:1",
            Some("Shoji-HMAC-SHA256 nonce=1, signature=00"),
            Some("application/json"),
            b"{}",
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.contains("\r\nAuthorization: Shoji-HMAC-SHA256 nonce=1, signature=00\r\n"));
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
        assert!(text.ends_with("\r\nContent-Length: 2\r\n\r\n{}"));
        let r = request_bytes("POST", "/x", "h:1", None, None, b"");
        assert!(String::from_utf8(r)
            .unwrap()
            .ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn answers_are_parsed_strictly() {
        let ok = parse_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Shoji-Boot: 000102030405060708090a0b0c0d0e0f\r\n\r\nabc",
        )
        .unwrap();
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"abc"[..]));
        assert_eq!(ok.boot(), Some(core::array::from_fn(|i| i as u8)));
        assert_eq!(ok.status_line(), "HTTP/1.1 200 OK");

        let defect = |raw: &[u8]| parse_answer(raw).unwrap_err().to_string();
        assert_eq!(defect(b""), "the connection closed without an answer");
        assert_eq!(
            defect(b"HTTP/1.1 200 OK\r\nContent-Le"),
            "the answer ends inside its status line or headers"
        );
        assert!(defect(b"garbage\r\n\r\n").starts_with("bad status line or headers"));
        assert_eq!(
            defect(b"HTTP/1.1 200 OK\r\n\r\nabc"),
            "no Content-Length header"
        );
        assert_eq!(
            defect(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            "Content-Length says 10 bytes but the body has 3"
        );
        assert_eq!(
            defect(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nabc"),
            "Content-Length says 1 bytes but the body has 3"
        );
        for bad in ["+3", "3 3", "", "99999999999999999999999", "0x3"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\nabc");
            assert_eq!(defect(raw.as_bytes()), "bad Content-Length header", "{bad}");
        }
        assert_eq!(
            defect(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"),
            "bad Content-Length header"
        );
        assert_eq!(
            defect(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc"
            ),
            "unexpected Transfer-Encoding header"
        );
    }

    #[test]
    fn refusals_name_the_request_and_the_reason() {
        let a = parse_answer(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 21\r\n\r\nno key\nsecond line\n\x1b[",
        )
        .unwrap();
        assert_eq!(
            a.success("GET", "/metrics").unwrap_err().to_string(),
            "GET /metrics: refused with 401 Unauthorized: no key"
        );
        let a = parse_answer(b"HTTP/1.1 409 \r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(
            a.success("POST", "/x").unwrap_err().to_string(),
            "POST /x: refused with 409 Conflict: (no body)"
        );
        let a = parse_answer(b"HTTP/1.1 299 Odd\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(a.success("GET", "/").is_ok());
        let a = parse_answer(b"HTTP/1.1 302 Found\r\nContent-Length: 4\r\n\r\n\x1b[2J").unwrap();
        assert_eq!(
            a.success("GET", "/").unwrap_err().to_string(),
            "GET /: refused with 302 Found: \\u{1b}[2J"
        );
    }
}
