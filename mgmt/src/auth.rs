//! The administrator's request signature: HMAC-SHA256 with the admin key over the request and a
//! nonce, bound to one boot of Shoji.
//!
//! A signed request carries
//! `Authorization: Shoji-HMAC-SHA256 nonce=<decimal u64>, signature=<64 hex digits>`. The MAC is
//! taken over [`string_to_sign`]: a version tag, the method, the path with its query, Shoji's
//! boot id (16 random bytes drawn at start, sent in every response as `X-Shoji-Boot`), the nonce
//! and the SHA-256 of the body. Shoji accepts a nonce only when it is larger than the last one it
//! accepted in this boot ([`Verifier`]), so a captured request cannot be replayed, in this boot
//! (the nonce is spent) or a later one (the boot id differs). `GET /nonce` (unsigned) tells a
//! client the boot id and the smallest nonce Shoji accepts. There is no secrecy: requests and
//! answers travel in clear text; see the README's management section.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The scheme name in the `Authorization` header.
pub const SCHEME: &str = "Shoji-HMAC-SHA256";
/// The first line of the string to sign (changes with any change of the format).
pub const VERSION_TAG: &str = "SHOJI-ADMIN-V1";
/// Length of the boot id in bytes.
pub const BOOT_ID_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature was not accepted. The doc comment of each variant is its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// no Authorization header: this request must be signed (see GET /nonce)
    Missing,
    /// the Authorization header is not `Shoji-HMAC-SHA256 nonce=N, signature=HEX`
    Malformed,
    /// Shoji has no admin key: signed requests are refused
    NoKey,
    /// the signature does not match this request under the admin key
    BadSignature,
    /// the nonce is not larger than the last accepted one (a replay or a stale nonce; see GET /nonce)
    StaleNonce,
}

impl AuthError {
    /// The message (one source: the variant's doc comment).
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => {
                "no Authorization header: this request must be signed (see GET /nonce)"
            }
            AuthError::Malformed => {
                "the Authorization header is not `Shoji-HMAC-SHA256 nonce=N, signature=HEX`"
            }
            AuthError::NoKey => "Shoji has no admin key: signed requests are refused",
            AuthError::BadSignature => {
                "the signature does not match this request under the admin key"
            }
            AuthError::StaleNonce => {
                "the nonce is not larger than the last accepted one (a replay or a stale nonce; see GET /nonce)"
            }
        }
    }

    /// The HTTP status Shoji answers with.
    pub fn status(self) -> u16 {
        match self {
            AuthError::Missing | AuthError::BadSignature | AuthError::NoKey => 401,
            AuthError::Malformed => 400,
            AuthError::StaleNonce => 409,
        }
    }
}

impl core::fmt::Display for AuthError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())
    }
}

/// Lower-case hex of `bytes` into `out` (which must be twice as long); returns the text.
pub fn hex<'o>(bytes: &[u8], out: &'o mut [u8]) -> &'o str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    core::str::from_utf8(&out[..2 * bytes.len()]).unwrap_or("")
}

/// Parse exactly `N` bytes of hex (either case).
pub fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let t = text.as_bytes();
    if t.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(t[2 * i])? * 16 + digit(t[2 * i + 1])?;
    }
    Some(out)
}

/// Feed the string to sign into `sink`, piece by piece (no allocation):
/// `SHOJI-ADMIN-V1\n<METHOD>\n<path?query>\n<boot id hex>\n<nonce>\n<hex sha256(body)>`.
pub fn string_to_sign(
    method: &str,
    path: &str,
    boot_id: &[u8; BOOT_ID_LEN],
    nonce: u64,
    body: &[u8],
    sink: &mut dyn FnMut(&[u8]),
) {
    let mut boot_hex = [0u8; 2 * BOOT_ID_LEN];
    let mut body_hex = [0u8; 64];
    let digest: [u8; 32] = Sha256::digest(body).into();
    let mut nonce_buf = [0u8; 20];
    let nonce_text = decimal(nonce, &mut nonce_buf);
    for piece in [
        VERSION_TAG.as_bytes(),
        b"\n",
        method.as_bytes(),
        b"\n",
        path.as_bytes(),
        b"\n",
        hex(boot_id, &mut boot_hex).as_bytes(),
        b"\n",
        nonce_text.as_bytes(),
        b"\n",
        hex(&digest, &mut body_hex).as_bytes(),
    ] {
        sink(piece);
    }
}

/// `n` in decimal, written into `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    core::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// The signature of a request (what a client puts after `signature=`).
pub fn sign(
    key: &[u8; 32],
    method: &str,
    path: &str,
    boot_id: &[u8; BOOT_ID_LEN],
    nonce: u64,
    body: &[u8],
) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    string_to_sign(method, path, boot_id, nonce, body, &mut |p| mac.update(p));
    mac.finalize().into_bytes().into()
}

/// The parts of an `Authorization` header of this scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// The request's nonce.
    pub nonce: u64,
    /// The claimed signature.
    pub signature: [u8; 32],
}

impl Credentials {
    /// Parse `Shoji-HMAC-SHA256 nonce=N, signature=HEX` (parameters in either order, spaces
    /// after commas optional; nothing else accepted).
    pub fn parse(value: &str) -> Result<Credentials, AuthError> {
        let rest = value
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(AuthError::Malformed)?;
        let (mut nonce, mut signature) = (None, None);
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=').ok_or(AuthError::Malformed)?;
            match k {
                "nonce" if nonce.is_none() => {
                    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
                        return Err(AuthError::Malformed);
                    }
                    nonce = Some(v.parse::<u64>().map_err(|_| AuthError::Malformed)?);
                }
                "signature" if signature.is_none() => {
                    signature = Some(parse_hex::<32>(v).ok_or(AuthError::Malformed)?);
                }
                _ => return Err(AuthError::Malformed),
            }
        }
        Ok(Credentials {
            nonce: nonce.ok_or(AuthError::Malformed)?,
            signature: signature.ok_or(AuthError::Malformed)?,
        })
    }
}

/// Shoji's side: the admin key, this boot's id and the last accepted nonce.
#[derive(Clone)]
pub struct Verifier {
    key: Option<[u8; 32]>,
    boot_id: [u8; BOOT_ID_LEN],
    last: u64,
}

impl core::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the key.
        f.debug_struct("Verifier")
            .field("key_set", &self.key.is_some())
            .field("last", &self.last)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `key` (None: every signed request is refused) in the boot `boot_id`.
    pub fn new(key: Option<[u8; 32]>, boot_id: [u8; BOOT_ID_LEN]) -> Verifier {
        Verifier {
            key,
            boot_id,
            last: 0,
        }
    }

    /// This boot's id.
    pub fn boot_id(&self) -> &[u8; BOOT_ID_LEN] {
        &self.boot_id
    }

    /// The smallest nonce the next request may carry.
    pub fn next_nonce(&self) -> u64 {
        self.last.saturating_add(1)
    }

    /// Check a request; on success its nonce is spent.
    pub fn verify(
        &mut self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let creds = Credentials::parse(value)?;
        let key = self.key.as_ref().ok_or(AuthError::NoKey)?;
        let want = sign(key, method, path, &self.boot_id, creds.nonce, body);
        if !bool::from(want.ct_eq(&creds.signature)) {
            return Err(AuthError::BadSignature);
        }
        // Only a request signed with the key may spend a nonce: a forger cannot push the
        // counter up and lock the administrator out.
        if creds.nonce <= self.last {
            return Err(AuthError::StaleNonce);
        }
        self.last = creds.nonce;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const BOOT: [u8; 16] = [0xab; 16];

    fn header(nonce: u64, sig: &[u8; 32]) -> std::string::String {
        let mut h = [0u8; 64];
        std::format!("{SCHEME} nonce={nonce}, signature={}", hex(sig, &mut h))
    }

    extern crate std;

    #[test]
    fn the_string_to_sign_is_the_documented_one() {
        let mut s = std::vec::Vec::new();
        string_to_sign("GET", "/metrics?x=1", &BOOT, 42, b"", &mut |p| {
            s.extend_from_slice(p)
        });
        assert_eq!(
            std::str::from_utf8(&s).unwrap(),
            "SHOJI-ADMIN-V1\nGET\n/metrics?x=1\nabababababababababababababababab\n42\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_signed_request_passes_once() {
        let mut v = Verifier::new(Some(KEY), BOOT);
        let sig = sign(&KEY, "POST", "/block", &BOOT, 5, b"{}");
        let h = header(5, &sig);
        assert_eq!(v.verify(Some(&h), "POST", "/block", b"{}"), Ok(()));
        assert_eq!(v.next_nonce(), 6);
        assert_eq!(
            v.verify(Some(&h), "POST", "/block", b"{}"),
            Err(AuthError::StaleNonce)
        );
        // A smaller nonce, correctly signed, is stale too.
        let sig = sign(&KEY, "POST", "/block", &BOOT, 4, b"{}");
        assert_eq!(
            v.verify(Some(&header(4, &sig)), "POST", "/block", b"{}"),
            Err(AuthError::StaleNonce)
        );
    }

    #[test]
    fn every_signed_part_matters() {
        let sig = sign(&KEY, "POST", "/block", &BOOT, 9, b"{}");
        let h = header(9, &sig);
        let mut v = Verifier::new(Some(KEY), BOOT);
        for (m, p, b) in [
            ("GET", "/block", &b"{}"[..]),
            ("POST", "/blocks", b"{}"),
            ("POST", "/block", b"{ }"),
        ] {
            assert_eq!(v.verify(Some(&h), m, p, b), Err(AuthError::BadSignature));
        }
        let mut other_boot = Verifier::new(Some(KEY), [0xac; 16]);
        assert_eq!(
            other_boot.verify(Some(&h), "POST", "/block", b"{}"),
            Err(AuthError::BadSignature)
        );
        let mut other_key = Verifier::new(Some([8; 32]), BOOT);
        assert_eq!(
            other_key.verify(Some(&h), "POST", "/block", b"{}"),
            Err(AuthError::BadSignature)
        );
        // The nonce is signed: the same signature with another nonce fails.
        assert_eq!(
            v.verify(Some(&header(10, &sig)), "POST", "/block", b"{}"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(v.verify(Some(&h), "POST", "/block", b"{}"), Ok(()));
    }

    #[test]
    fn a_forged_request_spends_no_nonce() {
        let mut v = Verifier::new(Some(KEY), BOOT);
        let bad = header(u64::MAX, &[0; 32]);
        assert_eq!(
            v.verify(Some(&bad), "GET", "/x", b""),
            Err(AuthError::BadSignature)
        );
        assert_eq!(v.next_nonce(), 1);
    }

    #[test]
    fn refusals() {
        let mut v = Verifier::new(Some(KEY), BOOT);
        assert_eq!(v.verify(None, "GET", "/", b""), Err(AuthError::Missing));
        let sig = [0u8; 32];
        let good = header(1, &sig);
        for bad in [
            "Basic abc",
            "Shoji-HMAC-SHA256",
            "Shoji-HMAC-SHA256 nonce=1",
            "Shoji-HMAC-SHA256 signature=00",
            "Shoji-HMAC-SHA256 nonce=-1, signature=0000000000000000000000000000000000000000000000000000000000000000",
            "Shoji-HMAC-SHA256 nonce=+1, signature=0000000000000000000000000000000000000000000000000000000000000000",
            "Shoji-HMAC-SHA256 nonce=99999999999999999999999, signature=0000000000000000000000000000000000000000000000000000000000000000",
            "Shoji-HMAC-SHA256 nonce=1, nonce=2, signature=0000000000000000000000000000000000000000000000000000000000000000",
            "Shoji-HMAC-SHA256 nonce=1, signature=0000000000000000000000000000000000000000000000000000000000000000, signature=0000000000000000000000000000000000000000000000000000000000000000",
            "Shoji-HMAC-SHA256 nonce=1, signature=00000000000000000000000000000000000000000000000000000000000000zz",
            "Shoji-HMAC-SHA256 nonce=1, signature=0000000000000000000000000000000000000000000000000000000000000000, x=1",
        ] {
            assert_eq!(
                v.verify(Some(bad), "GET", "/", b""),
                Err(AuthError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            Verifier::new(None, BOOT).verify(Some(&good), "GET", "/", b""),
            Err(AuthError::NoKey)
        );
        let debug = format_debug(&v);
        assert!(!debug.contains("7, 7") && !debug.contains("07"), "{debug}");
        assert!(debug.contains("key_set: true"), "{debug}");
        for e in [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::NoKey,
            AuthError::BadSignature,
            AuthError::StaleNonce,
        ] {
            assert_eq!(std::format!("{e}"), e.message());
        }
    }

    fn format_debug(v: &Verifier) -> std::string::String {
        std::format!("{v:?}")
    }

    #[test]
    fn parameters_in_either_order() {
        let c = Credentials::parse(
            "Shoji-HMAC-SHA256 signature=0101010101010101010101010101010101010101010101010101010101010101,nonce=3",
        )
        .unwrap();
        assert_eq!(c.nonce, 3);
        assert_eq!(c.signature, [1; 32]);
    }

    #[test]
    fn hex_round_trip() {
        let mut h = [0u8; 8];
        assert_eq!(hex(&[0, 0x9f, 0xa0, 255], &mut h), "009fa0ff");
        assert_eq!(parse_hex::<4>("009FA0ff"), Some([0, 0x9f, 0xa0, 255]));
        assert_eq!(parse_hex::<4>("009fa0f"), None);
        assert_eq!(parse_hex::<2>("0g00"), None);
        let mut b = [0u8; 20];
        assert_eq!(decimal(0, &mut b), "0");
        assert_eq!(decimal(u64::MAX, &mut b), "18446744073709551615");
    }
}
