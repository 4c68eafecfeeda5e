//! Every way a shoji-admin command can fail: its message (written here and nowhere else) and
//! its exit code.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Exit code of a command that got a 2xx answer.
pub const EXIT_OK: u8 = 0;
/// Exit code of a local problem: the command line, the key file, writing an output file.
pub const EXIT_LOCAL: u8 = 1;
/// Exit code when Shoji answered with a status other than 2xx.
pub const EXIT_REFUSED: u8 = 2;
/// Exit code when Shoji could not be reached (name, connection, time-out, broken connection).
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code when Shoji's answer is not one this client understands.
pub const EXIT_MALFORMED: u8 = 4;

/// Why a command failed.
#[derive(Debug)]
pub enum Error {
    /// The command line cannot be used (clap checks most of it before this).
    Usage(String),
    /// The key file cannot be read.
    KeyRead {
        /// The key file.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// The key file does not hold a key.
    KeyFormat {
        /// The key file.
        path: PathBuf,
    },
    /// Neither a key file nor `--no-key` was given.
    NoKey,
    /// A local output (stdout, the `--save-request` file) cannot be written.
    Output {
        /// What was being written.
        what: String,
        /// Why.
        err: io::Error,
    },
    /// Shoji cannot be reached.
    Unreachable {
        /// The address as given.
        addr: String,
        /// Why.
        why: Unreachable,
    },
    /// Shoji's answer is not understood.
    Malformed {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        what: Defect,
    },
    /// Shoji answered with a status other than 2xx.
    Refused {
        /// The request's method.
        method: String,
        /// The request's path with its query.
        path: String,
        /// The status code.
        status: u16,
        /// The reason phrase (the server's, or the standard one when it sent none), printable.
        reason: String,
        /// The first line of the body, printable.
        body: String,
    },
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_)
            | Error::KeyRead { .. }
            | Error::KeyFormat { .. }
            | Error::NoKey
            | Error::Output { .. } => EXIT_LOCAL,
            Error::Refused { .. } => EXIT_REFUSED,
            Error::Unreachable { .. } => EXIT_UNREACHABLE,
            Error::Malformed { .. } => EXIT_MALFORMED,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(what) => f.write_str(what),
            Error::KeyRead { path, err } => {
                write!(f, "cannot read key file {}: {err}", path.display())
            }
            Error::KeyFormat { path } => write!(
                f,
                "key file {}: not an admin key (expected exactly 64 hex digits; \
                 whitespace around them is ignored)",
                path.display()
            ),
            Error::NoKey => f.write_str(
                "no admin key: give --key-file PATH (or set SHOJI_ADMIN_KEY_FILE), \
                 or --no-key to send unsigned requests",
            ),
            Error::Output { what, err } => write!(f, "cannot write {what}: {err}"),
            Error::Unreachable { addr, why } => write!(f, "cannot reach {addr}: {why}"),
            Error::Malformed { addr, what } => write!(f, "malformed answer from {addr}: {what}"),
            Error::Refused {
                method,
                path,
                status,
                reason,
                body,
            } => {
                write!(f, "{method} {path}: refused with {status}")?;
                if !reason.is_empty() {
                    write!(f, " {reason}")?;
                }
                write!(f, ": {body}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Why Shoji cannot be reached.
#[derive(Debug)]
pub enum Unreachable {
    /// The host name cannot be resolved (or the address is not `HOST:PORT`).
    Resolve(io::Error),
    /// The host name resolves to no address.
    NoAddress,
    /// The connection was not established.
    Connect(io::Error),
    /// No complete answer arrived within the time-out.
    TimedOut(Duration),
    /// The connection broke while sending or receiving.
    Io(io::Error),
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreachable::Resolve(err) => write!(f, "cannot resolve the address ({err})"),
            Unreachable::NoAddress => f.write_str("the address resolves to nothing"),
            Unreachable::Connect(err) => write!(f, "{err}"),
            Unreachable::TimedOut(limit) => write!(
                f,
                "no complete answer within {} s (see --timeout)",
                limit.as_secs_f64()
            ),
            Unreachable::Io(err) => write!(f, "connection broken: {err}"),
        }
    }
}

/// What is wrong with an answer.
#[derive(Debug)]
pub enum Defect {
    /// The connection closed without a byte.
    Empty,
    /// The connection closed inside the status line or the headers.
    IncompleteHead,
    /// The status line or a header is not HTTP/1.x.
    BadHead(httparse::Error),
    /// The answer is larger than this client accepts.
    TooLarge(usize),
    /// No `Content-Length` header.
    NoContentLength,
    /// A `Content-Length` header that is not one decimal number (or several that disagree).
    BadContentLength,
    /// A `Transfer-Encoding` header (Shoji never sends one).
    TransferEncoding,
    /// The body's length differs from `Content-Length`.
    LengthMismatch {
        /// What `Content-Length` says.
        declared: u64,
        /// What arrived.
        got: usize,
    },
    /// A text body that is not UTF-8.
    NotUtf8,
    /// A JSON body that is not JSON.
    NotJson(serde_json::Error),
    /// A line of a JSON-lines body that is not JSON.
    NotJsonLine {
        /// The line's number, from 1.
        line: usize,
        /// Why.
        err: serde_json::Error,
    },
    /// A `/nonce` body without `boot=<32 hex digits>` and `next=<decimal>`.
    NonceBody,
    /// `X-Shoji-Boot` differs from the boot id in the `/nonce` body.
    BootMismatch,
    /// An events answer without a decimal `X-Shoji-Next-Event` header.
    NoNextEvent,
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::Empty => f.write_str("the connection closed without an answer"),
            Defect::IncompleteHead => {
                f.write_str("the answer ends inside its status line or headers")
            }
            Defect::BadHead(err) => write!(f, "bad status line or headers ({err})"),
            Defect::TooLarge(limit) => write!(f, "the answer is larger than {limit} bytes"),
            Defect::NoContentLength => f.write_str("no Content-Length header"),
            Defect::BadContentLength => f.write_str("bad Content-Length header"),
            Defect::TransferEncoding => f.write_str("unexpected Transfer-Encoding header"),
            Defect::LengthMismatch { declared, got } => write!(
                f,
                "Content-Length says {declared} bytes but the body has {got}"
            ),
            Defect::NotUtf8 => f.write_str("the body is not UTF-8 text"),
            Defect::NotJson(err) => write!(f, "the body is not JSON ({err})"),
            Defect::NotJsonLine { line, err } => {
                write!(f, "line {line} of the body is not JSON ({err})")
            }
            Defect::NonceBody => f.write_str(
                "the /nonce body does not hold boot=<32 hex digits> and next=<decimal> lines",
            ),
            Defect::BootMismatch => {
                f.write_str("X-Shoji-Boot differs from the boot id in the /nonce body")
            }
            Defect::NoNextEvent => f.write_str("no decimal X-Shoji-Next-Event header"),
        }
    }
}
