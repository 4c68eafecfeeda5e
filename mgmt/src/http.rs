//! HTTP/1.1 for the management endpoint: one request per connection, parsed with httparse from a
//! bounded buffer, and answers built in place with `Connection: close` and a Content-Length.
//!
//! Only what the endpoint needs: no chunked bodies (`Transfer-Encoding` is refused with 501), no
//! pipelining, no keep-alive. Every refusal has a status and a one-line reason.

use core::fmt::{self, Write};

/// Most headers a request may carry.
pub const MAX_HEADERS: usize = 24;
/// Most bytes of request line and headers.
pub const MAX_HEAD: usize = 4096;
/// Most bytes of a request body.
pub const MAX_BODY: usize = 4096;

/// A parsed request (borrowing the connection's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method (`GET`, `POST`, `DELETE`).
    pub method: &'a str,
    /// The request target: path and query.
    pub target: &'a str,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The body (Content-Length bytes).
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// The path without the query.
    pub fn path(&self) -> &'a str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The value of query parameter `name` (no percent-decoding: Shoji's parameters are numbers).
    pub fn query(&self, name: &str) -> Option<&'a str> {
        let (_, q) = self.target.split_once('?')?;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Why a request was refused before routing. The doc comment of each variant is its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// the request is not valid HTTP/1.1
    Malformed,
    /// the request line and headers are longer than 4096 bytes
    HeadTooLarge,
    /// the body is longer than 4096 bytes
    BodyTooLarge,
    /// Transfer-Encoding is not supported: send a Content-Length
    Chunked,
    /// only HTTP/1.1 and HTTP/1.0 are spoken here
    Version,
}

impl HttpError {
    /// The message (one source: the variant's doc comment).
    pub fn message(self) -> &'static str {
        match self {
            HttpError::Malformed => "the request is not valid HTTP/1.1",
            HttpError::HeadTooLarge => "the request line and headers are longer than 4096 bytes",
            HttpError::BodyTooLarge => "the body is longer than 4096 bytes",
            HttpError::Chunked => "Transfer-Encoding is not supported: send a Content-Length",
            HttpError::Version => "only HTTP/1.1 and HTTP/1.0 are spoken here",
        }
    }

    /// The status Shoji answers with.
    pub fn status(self) -> u16 {
        match self {
            HttpError::Malformed => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::Chunked => 501,
            HttpError::Version => 505,
        }
    }
}

/// The state of a request in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// More bytes are needed.
    Partial,
    /// A whole request.
    Complete(Request<'a>),
    /// A refused request.
    Error(HttpError),
}

/// Parse the bytes received so far.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Parsed::Error(HttpError::HeadTooLarge)
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Error(HttpError::HeadTooLarge),
        Err(_) => return Parsed::Error(HttpError::Malformed),
    };
    if head_len > MAX_HEAD {
        return Parsed::Error(HttpError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Error(HttpError::Malformed);
    };
    if version > 1 {
        return Parsed::Error(HttpError::Version);
    }
    if !target.starts_with('/') {
        return Parsed::Error(HttpError::Malformed);
    }
    let mut length: Option<usize> = None;
    let mut authorization = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Error(HttpError::Chunked);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = core::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
            else {
                return Parsed::Error(HttpError::Malformed);
            };
            if length.is_some_and(|l| l != n) {
                return Parsed::Error(HttpError::Malformed);
            }
            length = Some(n);
        }
        if h.name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Parsed::Error(HttpError::Malformed);
            }
            match core::str::from_utf8(h.value) {
                Ok(v) => authorization = Some(v),
                Err(_) => return Parsed::Error(HttpError::Malformed),
            }
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return Parsed::Error(HttpError::BodyTooLarge);
    }
    let Some(body) = buf.get(head_len..head_len + length) else {
        return Parsed::Partial;
    };
    if buf.len() > head_len + length {
        // Bytes after the body: pipelining is not spoken here.
        return Parsed::Error(HttpError::Malformed);
    }
    Parsed::Complete(Request {
        method,
        target,
        authorization,
        body,
    })
}

/// The reason phrase of a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// `fmt::Write` into a byte slice; remembers whether anything did not fit.
#[derive(Debug)]
pub struct SliceWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    overflow: bool,
}

impl<'b> SliceWriter<'b> {
    /// A writer filling `buf` from its start.
    pub fn new(buf: &'b mut [u8]) -> Self {
        SliceWriter {
            buf,
            len: 0,
            overflow: false,
        }
    }
    /// Bytes written.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// Whether a write did not fit (the text is then cut).
    pub fn overflowed(&self) -> bool {
        self.overflow
    }
    /// Append raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> fmt::Result {
        let Some(dst) = self.buf.get_mut(self.len..self.len + b.len()) else {
            self.overflow = true;
            return Err(fmt::Error);
        };
        dst.copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes())
    }
}

/// Room kept before a body for the status line and headers.
pub const HEAD_ROOM: usize = 512;

/// Build an answer in `buf`: the body is rendered by `body` at `HEAD_ROOM`, then (so `extra` may
/// use what the body's rendering found) the status line and headers are written just before it. Returns the range of `buf` to send, or `None` when the
/// body did not fit (the caller answers 500 instead).
pub fn respond(
    buf: &mut [u8],
    status: u16,
    content_type: &str,
    extra: &dyn Fn(&mut dyn Write) -> fmt::Result,
    body: &mut dyn FnMut(&mut SliceWriter<'_>) -> fmt::Result,
) -> Option<core::ops::Range<usize>> {
    if buf.len() < HEAD_ROOM {
        return None;
    }
    let (head_area, body_area) = buf.split_at_mut(HEAD_ROOM);
    let mut w = SliceWriter::new(body_area);
    if body(&mut w).is_err() || w.overflowed() {
        return None;
    }
    let body_len = w.len();
    let mut head = [0u8; HEAD_ROOM];
    let mut h = SliceWriter::new(&mut head);
    let ok = write!(
        h,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n",
        reason(status)
    )
    .and_then(|_| extra(&mut h))
    .and_then(|_| h.write_str("\r\n"));
    if ok.is_err() || h.overflowed() {
        return None;
    }
    let n = h.len();
    head_area[HEAD_ROOM - n..].copy_from_slice(&head[..n]);
    Some(HEAD_ROOM - n..HEAD_ROOM + body_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    #[test]
    fn a_whole_request() {
        let r = b"POST /block?x=1&from=7 HTTP/1.1\r\nHost: a\r\nAuthorization: X y\r\nContent-Length: 2\r\n\r\n{}";
        let Parsed::Complete(req) = parse(r) else {
            panic!("{:?}", parse(r))
        };
        assert_eq!(req.method, "POST");
        assert_eq!(req.path(), "/block");
        assert_eq!(req.query("from"), Some("7"));
        assert_eq!(req.query("y"), None);
        assert_eq!(req.authorization, Some("X y"));
        assert_eq!(req.body, b"{}");
        // Every prefix is partial, never an error.
        for n in 0..r.len() {
            assert_eq!(parse(&r[..n]), Parsed::Partial, "{n}");
        }
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], HttpError)] = &[
            (
                b"GET / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n",
                HttpError::BodyTooLarge,
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::Chunked,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                HttpError::Malformed,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                HttpError::Malformed,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                HttpError::Malformed,
            ),
            (
                b"GET / HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
                HttpError::Malformed,
            ),
            (
                b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
                HttpError::Malformed,
            ),
            (b"GET * HTTP/1.1\r\n\r\n", HttpError::Malformed),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                HttpError::Malformed,
            ),
            (b"GET / HTTP/2.0\r\n\r\n", HttpError::Malformed),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse(raw),
                Parsed::Error(*want),
                "{}",
                std::string::String::from_utf8_lossy(raw)
            );
        }
        let mut long = Vec::from(&b"GET / HTTP/1.1\r\n"[..]);
        while long.len() < MAX_HEAD {
            long.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse(&long), Parsed::Error(HttpError::HeadTooLarge));
        let mut many = Vec::from(&b"GET / HTTP/1.1\r\n"[..]);
        for _ in 0..MAX_HEADERS + 1 {
            many.extend_from_slice(b"A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many), Parsed::Error(HttpError::HeadTooLarge));
    }

    #[test]
    fn answers_are_built_in_place() {
        let mut buf = [0u8; 2048];
        let r = respond(
            &mut buf,
            404,
            "text/plain",
            &|w| w.write_str("X-Shoji-Boot: ab\r\n"),
            &mut |w| w.write_str("no such path\n"),
        )
        .unwrap();
        let text = std::str::from_utf8(&buf[r]).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 13\r\n"));
        assert!(text.contains("X-Shoji-Boot: ab\r\n"));
        assert!(text.ends_with("\r\n\r\nno such path\n"));
        let mut small = [0u8; HEAD_ROOM + 4];
        assert_eq!(
            respond(&mut small, 200, "text/plain", &|_| Ok(()), &mut |w| w
                .write_str("12345")),
            None
        );
    }

    #[test]
    fn limits_are_exact() {
        // A head of exactly MAX_HEAD bytes is taken, one byte more is not.
        let head = |len: usize| {
            let mut h = Vec::from(&b"GET / HTTP/1.1\r\nX: "[..]);
            h.resize(len - 4, b'a');
            h.extend_from_slice(b"\r\n\r\n");
            h
        };
        assert!(matches!(parse(&head(MAX_HEAD)), Parsed::Complete(_)));
        assert_eq!(
            parse(&head(MAX_HEAD + 1)),
            Parsed::Error(HttpError::HeadTooLarge)
        );
        // A body of exactly MAX_BODY bytes is taken.
        let mut r =
            std::format!("POST /x HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n").into_bytes();
        r.resize(r.len() + MAX_BODY, b'b');
        assert!(matches!(parse(&r), Parsed::Complete(q) if q.body.len() == MAX_BODY));
        // HTTP/1.0 is spoken too.
        assert!(matches!(
            parse(b"GET /nonce HTTP/1.0\r\n\r\n"),
            Parsed::Complete(_)
        ));
    }

    #[test]
    fn reasons_and_messages() {
        for (status, phrase) in [
            (200, "OK"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (409, "Conflict"),
            (413, "Content Too Large"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (503, "Service Unavailable"),
            (505, "HTTP Version Not Supported"),
            (299, "Unknown"),
        ] {
            assert_eq!(reason(status), phrase);
        }
        let all = [
            HttpError::Malformed,
            HttpError::HeadTooLarge,
            HttpError::BodyTooLarge,
            HttpError::Chunked,
            HttpError::Version,
        ];
        for e in all {
            assert!(e.message().len() > 20, "{e:?}");
            assert_eq!(all.iter().filter(|o| o.message() == e.message()).count(), 1);
        }
        assert!(HttpError::HeadTooLarge.message().contains("4096"));
    }

    #[test]
    fn answers_that_do_not_fit_are_refused() {
        // A body that swallows its own overflow still does not go out cut.
        let mut buf = [0u8; HEAD_ROOM + 8];
        assert_eq!(
            respond(&mut buf, 200, "t", &|_| Ok(()), &mut |w| {
                let _ = w.write_str("0123456789");
                Ok(())
            }),
            None
        );
        // Exactly the head room: an empty body fits.
        let mut exact = [0u8; HEAD_ROOM];
        assert!(respond(&mut exact, 204, "t", &|_| Ok(()), &mut |_| Ok(())).is_some());
        let mut short = [0u8; HEAD_ROOM - 1];
        assert_eq!(
            respond(&mut short, 204, "t", &|_| Ok(()), &mut |_| Ok(())),
            None
        );
        // Headers that do not fit the head room.
        let mut buf = [0u8; 2048];
        let long = "X-Long: ".to_string() + &"a".repeat(HEAD_ROOM);
        assert_eq!(
            respond(&mut buf, 200, "t", &|w| w.write_str(&long), &mut |_| Ok(())),
            None
        );
        // Headers that swallow their own overflow still do not go out cut.
        assert_eq!(
            respond(
                &mut buf,
                200,
                "t",
                &|w| {
                    let _ = w.write_str(&long);
                    Ok(())
                },
                &mut |_| Ok(())
            ),
            None
        );
        let mut b = [0u8; 4];
        let mut w = SliceWriter::new(&mut b);
        assert!(w.is_empty());
        w.write_str("ab").unwrap();
        assert!(!w.is_empty() && !w.overflowed());
        assert!(w.write_str("abc").is_err());
        assert!(w.overflowed());
    }

    use std::string::ToString;

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse(&raw);
        }
    }
}
