//! The binary encoding of a container registration, carried by the VMCALL ABI
//! (`RegisterContainer`, `UpdateContainer`) and produced by `shojictl`.
//!
//! Little-endian, versioned, fixed layout; the decoder validates every field and returns the
//! first problem it finds. See `docs/policy.md` for the byte-level description.
//!
//! ```text
//! header (32 bytes)
//!   0  magic       4  "SHJC"
//!   4  version     1  1
//!   5  flags       1  bit 0: cgroup_id present, bit 1: netns_id present; others 0
//!   6  mac_count   1  1..=MAX_MACS
//!   7  ipv4_count  1  0..=MAX_IPV4
//!   8  rule_count  2  0..=MAX_RULES
//!  10  vlan        2  1..=4094
//!  12  id          4
//!  16  cgroup_id   8  0 unless flag bit 0
//!  24  netns_id    4  0 unless flag bit 1
//!  28  default_egress  1  0 allow, 1 deny
//!  29  default_ingress 1
//!  30  reserved    2  0
//! macs   6 bytes each
//! ipv4   4 bytes each (network order, as written: 10.0.0.1 = 0a 00 00 01)
//! rules  36 bytes each
//!   0 action 1 | 1 direction 1 | 2 protocol 1 | 3 protocol number 1 | 4 remote 4 | 8 prefix 1
//!   9 flags 1 | 10 subject kind 1 | 11 reserved 1 | 12 src first 2 | 14 src last 2
//!  16 dst first 2 | 18 dst last 2 | 20 subject value 16
//! ```

use core::net::Ipv4Addr;

use shoji_shared::ContainerId;

use crate::le::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use crate::parse::MacAddr;
use crate::registry::{ContainerSpec, RegistryError, MAX_IPV4, MAX_MACS};
use crate::rules::{
    Action, DirectionMatch, Ipv4Cidr, PortRange, ProtocolMatch, Rule, RuleFlags, Subject, MAX_RULES,
};

/// The magic at the start of an encoded registration.
pub const MAGIC: [u8; 4] = *b"SHJC";
/// The encoding version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Length of one encoded MAC.
pub const MAC_LEN: usize = 6;
/// Length of one encoded IPv4 address.
pub const IPV4_LEN: usize = 4;
/// Length of one encoded rule.
pub const RULE_LEN: usize = 36;
/// The longest possible encoding.
pub const MAX_ENCODED_LEN: usize =
    HEADER_LEN + MAX_MACS * MAC_LEN + MAX_IPV4 * IPV4_LEN + MAX_RULES * RULE_LEN;

const FLAG_CGROUP: u8 = 1;
const FLAG_NETNS: u8 = 2;

const PROTO_ANY: u8 = 0;
const PROTO_ARP: u8 = 1;
const PROTO_ICMP: u8 = 2;
const PROTO_TCP: u8 = 3;
const PROTO_UDP: u8 = 4;
const PROTO_IP: u8 = 5;
const PROTO_IPV6: u8 = 6;

const SUBJECT_ANYONE: u8 = 0;
const SUBJECT_UID: u8 = 1;
const SUBJECT_PROCESS: u8 = 2;
const SUBJECT_EXECUTABLE: u8 = 3;
const SUBJECT_COMM: u8 = 4;

/// Why a buffer is not a valid registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the header, or than the counts it announces.
    Truncated,
    /// Longer than the counts announce.
    TrailingBytes,
    /// Does not start with "SHJC".
    BadMagic,
    /// A version this build does not read.
    UnsupportedVersion(u8),
    /// Unknown header flag bits.
    UnknownFlags(u8),
    /// A reserved byte or unused field is not zero (at this byte offset).
    NonZeroReserved(usize),
    /// More MACs, addresses or rules than allowed, or no MAC.
    BadCount,
    /// A default action that is neither 0 nor 1.
    BadDefaultAction(u8),
    /// A rule field holds an unknown value.
    BadRuleField {
        /// Index of the rule.
        rule: u16,
        /// Name of the field.
        field: &'static str,
    },
    /// The decoded registration is inconsistent (bad VLAN, MAC, address, rule...).
    Invalid(RegistryError),
}

impl DecodeError {
    /// Human-readable meaning.
    pub fn describe(&self) -> &'static str {
        match self {
            DecodeError::Truncated => "buffer shorter than the registration it announces",
            DecodeError::TrailingBytes => "bytes after the announced registration",
            DecodeError::BadMagic => "not a container registration (bad magic)",
            DecodeError::UnsupportedVersion(_) => "unsupported registration version",
            DecodeError::UnknownFlags(_) => "unknown header flags",
            DecodeError::NonZeroReserved(_) => "reserved field not zero",
            DecodeError::BadCount => "MAC, address or rule count out of range",
            DecodeError::BadDefaultAction(_) => "default action must be 0 (allow) or 1 (deny)",
            DecodeError::BadRuleField { .. } => "rule field holds an unknown value",
            DecodeError::Invalid(e) => e.describe(),
        }
    }

    /// The detail code the hypervisor returns for this error (`RBX` of a refused register or
    /// update): `1000 +` the variant's index, except that [`DecodeError::Invalid`] returns the
    /// registry error's own code (`2000 + ...`, see [`RegistryError::code`]), which says more.
    pub fn code(&self) -> u64 {
        let index = match self {
            DecodeError::Truncated => 0,
            DecodeError::TrailingBytes => 1,
            DecodeError::BadMagic => 2,
            DecodeError::UnsupportedVersion(_) => 3,
            DecodeError::UnknownFlags(_) => 4,
            DecodeError::NonZeroReserved(_) => 5,
            DecodeError::BadCount => 6,
            DecodeError::BadDefaultAction(_) => 7,
            DecodeError::BadRuleField { .. } => 8,
            DecodeError::Invalid(e) => return e.code(),
        };
        crate::report::DECODE_CODE_BASE + index
    }

    /// The error a `1000 + index` detail code stands for (payloads, which the code does not
    /// carry, are zero or `"?"`); `None` for any other number.
    pub fn from_code(code: u64) -> Option<DecodeError> {
        Some(match code.checked_sub(crate::report::DECODE_CODE_BASE)? {
            0 => DecodeError::Truncated,
            1 => DecodeError::TrailingBytes,
            2 => DecodeError::BadMagic,
            3 => DecodeError::UnsupportedVersion(0),
            4 => DecodeError::UnknownFlags(0),
            5 => DecodeError::NonZeroReserved(0),
            6 => DecodeError::BadCount,
            7 => DecodeError::BadDefaultAction(0),
            8 => DecodeError::BadRuleField {
                rule: 0,
                field: "?",
            },
            _ => return None,
        })
    }
}

/// Why a registration could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small; this many bytes are needed.
    BufferTooSmall(usize),
    /// The spec itself is invalid.
    Invalid(RegistryError),
}

/// The encoded length of `spec`.
pub fn encoded_len(spec: &ContainerSpec) -> usize {
    HEADER_LEN
        + spec.macs.len() * MAC_LEN
        + spec.ipv4.len() * IPV4_LEN
        + spec.rules.len() * RULE_LEN
}

/// Encode `spec` into `out`; returns the number of bytes written.
pub fn encode(spec: &ContainerSpec, out: &mut [u8]) -> Result<usize, EncodeError> {
    spec.validate().map_err(EncodeError::Invalid)?;
    let len = encoded_len(spec);
    if out.len() < len {
        return Err(EncodeError::BufferTooSmall(len));
    }
    let out = &mut out[..len];
    out.fill(0);
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    let mut flags = 0;
    if spec.cgroup_id.is_some() {
        flags |= FLAG_CGROUP;
    }
    if spec.netns_id.is_some() {
        flags |= FLAG_NETNS;
    }
    out[5] = flags;
    out[6] = spec.macs.len() as u8;
    out[7] = spec.ipv4.len() as u8;
    put_u16(out, 8, spec.rules.len() as u16);
    put_u16(out, 10, spec.vlan);
    put_u32(out, 12, spec.id.0);
    put_u64(out, 16, spec.cgroup_id.unwrap_or(0));
    put_u32(out, 24, spec.netns_id.unwrap_or(0));
    out[28] = spec.default_egress as u8;
    out[29] = spec.default_ingress as u8;
    let mut at = HEADER_LEN;
    for mac in &spec.macs {
        out[at..at + MAC_LEN].copy_from_slice(mac);
        at += MAC_LEN;
    }
    for ip in &spec.ipv4 {
        out[at..at + IPV4_LEN].copy_from_slice(&ip.octets());
        at += IPV4_LEN;
    }
    for rule in &spec.rules {
        encode_rule(rule, &mut out[at..at + RULE_LEN]);
        at += RULE_LEN;
    }
    Ok(len)
}

fn encode_rule(rule: &Rule, out: &mut [u8]) {
    out[0] = rule.action as u8;
    out[1] = rule.direction as u8;
    let (kind, number) = match rule.protocol {
        ProtocolMatch::Any => (PROTO_ANY, 0),
        ProtocolMatch::Arp => (PROTO_ARP, 0),
        ProtocolMatch::Icmp => (PROTO_ICMP, 0),
        ProtocolMatch::Tcp => (PROTO_TCP, 0),
        ProtocolMatch::Udp => (PROTO_UDP, 0),
        ProtocolMatch::IpProtocol(n) => (PROTO_IP, n),
        ProtocolMatch::Ipv6 => (PROTO_IPV6, 0),
    };
    out[2] = kind;
    out[3] = number;
    out[4..8].copy_from_slice(&rule.remote.addr.octets());
    out[8] = rule.remote.prefix;
    out[9] = rule.flags.bits();
    put_u16(out, 12, rule.src_ports.first);
    put_u16(out, 14, rule.src_ports.last);
    put_u16(out, 16, rule.dst_ports.first);
    put_u16(out, 18, rule.dst_ports.last);
    out[10] = match rule.subject {
        Subject::Anyone => SUBJECT_ANYONE,
        Subject::Uid(uid) => {
            put_u32(out, 20, uid);
            SUBJECT_UID
        }
        Subject::Process(pid) => {
            put_u32(out, 20, pid);
            SUBJECT_PROCESS
        }
        Subject::Executable(ino) => {
            put_u64(out, 20, ino);
            SUBJECT_EXECUTABLE
        }
        Subject::Comm(name) => {
            out[20..36].copy_from_slice(&name);
            SUBJECT_COMM
        }
    };
}

fn require_zero(bytes: &[u8], base: usize) -> Result<(), DecodeError> {
    match bytes.iter().position(|b| *b != 0) {
        Some(i) => Err(DecodeError::NonZeroReserved(base + i)),
        None => Ok(()),
    }
}

/// Decode and validate a registration.
pub fn decode(bytes: &[u8]) -> Result<ContainerSpec, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    if bytes[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(DecodeError::UnsupportedVersion(bytes[4]));
    }
    let flags = bytes[5];
    if flags & !(FLAG_CGROUP | FLAG_NETNS) != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let mac_count = bytes[6] as usize;
    let ipv4_count = bytes[7] as usize;
    let rule_count = get_u16(bytes, 8) as usize;
    if mac_count == 0 || mac_count > MAX_MACS || ipv4_count > MAX_IPV4 || rule_count > MAX_RULES {
        return Err(DecodeError::BadCount);
    }
    let len = HEADER_LEN + mac_count * MAC_LEN + ipv4_count * IPV4_LEN + rule_count * RULE_LEN;
    if bytes.len() < len {
        return Err(DecodeError::Truncated);
    }
    if bytes.len() > len {
        return Err(DecodeError::TrailingBytes);
    }
    let vlan = get_u16(bytes, 10);
    let id = ContainerId(get_u32(bytes, 12));
    let cgroup_raw = get_u64(bytes, 16);
    let netns_raw = get_u32(bytes, 24);
    let cgroup_id = if flags & FLAG_CGROUP != 0 {
        Some(cgroup_raw)
    } else if cgroup_raw != 0 {
        return Err(DecodeError::NonZeroReserved(16));
    } else {
        None
    };
    let netns_id = if flags & FLAG_NETNS != 0 {
        Some(netns_raw)
    } else if netns_raw != 0 {
        return Err(DecodeError::NonZeroReserved(24));
    } else {
        None
    };
    let default_egress =
        Action::from_u8(bytes[28]).ok_or(DecodeError::BadDefaultAction(bytes[28]))?;
    let default_ingress =
        Action::from_u8(bytes[29]).ok_or(DecodeError::BadDefaultAction(bytes[29]))?;
    require_zero(&bytes[30..32], 30)?;

    let mut at = HEADER_LEN;
    let mut macs: heapless::Vec<MacAddr, MAX_MACS> = heapless::Vec::new();
    for _ in 0..mac_count {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[at..at + MAC_LEN]);
        macs.push(mac).map_err(|_| DecodeError::BadCount)?;
        at += MAC_LEN;
    }
    let mut ipv4: heapless::Vec<Ipv4Addr, MAX_IPV4> = heapless::Vec::new();
    for _ in 0..ipv4_count {
        let ip = Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
        ipv4.push(ip).map_err(|_| DecodeError::BadCount)?;
        at += IPV4_LEN;
    }
    let mut rules: heapless::Vec<Rule, MAX_RULES> = heapless::Vec::new();
    for i in 0..rule_count {
        let rule = decode_rule(&bytes[at..at + RULE_LEN], at, i as u16)?;
        rules.push(rule).map_err(|_| DecodeError::BadCount)?;
        at += RULE_LEN;
    }
    let spec = ContainerSpec {
        id,
        vlan,
        cgroup_id,
        netns_id,
        macs,
        ipv4,
        default_egress,
        default_ingress,
        rules,
    };
    spec.validate().map_err(DecodeError::Invalid)?;
    Ok(spec)
}

fn decode_rule(b: &[u8], base: usize, index: u16) -> Result<Rule, DecodeError> {
    let bad = |field| DecodeError::BadRuleField { rule: index, field };
    let action = Action::from_u8(b[0]).ok_or(bad("action"))?;
    let direction = DirectionMatch::from_u8(b[1]).ok_or(bad("direction"))?;
    let protocol = match b[2] {
        PROTO_ANY => ProtocolMatch::Any,
        PROTO_ARP => ProtocolMatch::Arp,
        PROTO_ICMP => ProtocolMatch::Icmp,
        PROTO_TCP => ProtocolMatch::Tcp,
        PROTO_UDP => ProtocolMatch::Udp,
        PROTO_IP => ProtocolMatch::IpProtocol(b[3]),
        PROTO_IPV6 => ProtocolMatch::Ipv6,
        _ => return Err(bad("protocol")),
    };
    if b[2] != PROTO_IP && b[3] != 0 {
        return Err(DecodeError::NonZeroReserved(base + 3));
    }
    let remote = Ipv4Cidr {
        addr: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
        prefix: b[8],
    };
    let flags = RuleFlags::from_bits(b[9]).ok_or(bad("flags"))?;
    require_zero(&b[11..12], base + 11)?;
    let src_ports = PortRange {
        first: get_u16(b, 12),
        last: get_u16(b, 14),
    };
    let dst_ports = PortRange {
        first: get_u16(b, 16),
        last: get_u16(b, 18),
    };
    let value = &b[20..36];
    let subject = match b[10] {
        SUBJECT_ANYONE => {
            require_zero(value, base + 20)?;
            Subject::Anyone
        }
        SUBJECT_UID => {
            require_zero(&value[4..], base + 24)?;
            Subject::Uid(get_u32(value, 0))
        }
        SUBJECT_PROCESS => {
            require_zero(&value[4..], base + 24)?;
            Subject::Process(get_u32(value, 0))
        }
        SUBJECT_EXECUTABLE => {
            require_zero(&value[8..], base + 28)?;
            Subject::Executable(get_u64(value, 0))
        }
        SUBJECT_COMM => {
            let mut name = [0u8; 16];
            name.copy_from_slice(value);
            Subject::Comm(name)
        }
        _ => return Err(bad("subject")),
    };
    let rule = Rule {
        action,
        direction,
        protocol,
        remote,
        src_ports,
        dst_ports,
        subject,
        flags,
    };
    rule.validate()
        .map_err(|error| DecodeError::Invalid(RegistryError::InvalidRule { index, error }))?;
    Ok(rule)
}
