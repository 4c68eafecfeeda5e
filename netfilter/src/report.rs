//! The byte formats Shoji reports through the VMCALL ABI: the counters snapshot ("SHJS",
//! `ReadCounters`) and the fixed-size event record (`ReadEvents`), with no-alloc encoders for
//! the hypervisor and validating decoders for `shojictl`.
//!
//! Everything is little-endian.
//!
//! ```text
//! counters snapshot
//!   header 16 bytes
//!     0  magic              4  "SHJS"
//!     4  version            1  1
//!     5  reserved           1  0
//!     6  container_count    2
//!     8  drop_reason_count  2  DropReason::COUNT when written
//!    10  reserved           6  0
//!   3 party records (host, unattributed, total), then container_count container records
//!   party record     = tx_passed, tx_bytes, rx_passed, rx_bytes, relayed (u64 each),
//!                      then drop_reason_count u64 drop counters (index = DropReason::index)
//!   container record = id u32 | vlan u16 | reserved u16 | party record
//!
//! event record (EVENT_LEN = 64 bytes)
//!    0 seq u64 | 8 time u64 | 16 kind u8 | 17 direction u8 | 18 reason u16 | 20 flags u8
//!   21 change u8 | 22 reserved 2 | 24 sender/container u32 | 28 claimed u32 | 32 mac 6
//!   38 reserved 2 | 40 ipv4 4 (network order) | 44 distinct_ports u16
//!   46 distinct_hosts u16 | 48 blocked_until u64 | 56 reserved 8
//! ```
//!
//! A decoder accepts a `drop_reason_count` other than this build's [`DropReason::COUNT`]:
//! counters for reasons it does not know are ignored, reasons the writer did not know read as 0.

use core::net::Ipv4Addr;

use shoji_shared::{ContainerId, Direction, DropReason};

use crate::counters::{Counters, EngineCounters};
use crate::engine::Engine;
use crate::events::{Event, EventKind, PolicyChange};
use crate::le::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// The magic at the start of a counters snapshot.
pub const COUNTERS_MAGIC: [u8; 4] = *b"SHJS";
/// The snapshot version this crate writes and reads.
pub const COUNTERS_VERSION: u8 = 1;
/// Length of the snapshot header.
pub const COUNTERS_HEADER_LEN: usize = 16;
/// Number of party records before the containers (host, unattributed, total).
pub const PARTY_RECORDS: usize = 3;
/// Length of the fixed part of a party record (five u64 counters).
const PARTY_FIXED_LEN: usize = 5 * 8;
/// Length of one party record as this build writes it.
pub const PARTY_RECORD_LEN: usize = party_len(DropReason::COUNT);
/// Length of one container record as this build writes it.
pub const CONTAINER_RECORD_LEN: usize = 8 + PARTY_RECORD_LEN;
/// Length of one event record.
pub const EVENT_LEN: usize = 64;

/// Length of a party record carrying `drop_reasons` drop counters.
const fn party_len(drop_reasons: usize) -> usize {
    PARTY_FIXED_LEN + 8 * drop_reasons
}

/// The length of a snapshot holding `containers` container records (as this build writes it).
pub const fn counters_len(containers: usize) -> usize {
    COUNTERS_HEADER_LEN + PARTY_RECORDS * PARTY_RECORD_LEN + containers * CONTAINER_RECORD_LEN
}

/// Why a snapshot or an event record is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// Shorter than its header or than the records it announces.
    Truncated,
    /// Longer than the records it announces (or not a whole number of events).
    TrailingBytes,
    /// Does not start with "SHJS".
    BadMagic,
    /// A version this build does not read.
    UnsupportedVersion(u8),
    /// A reserved byte is not zero (at this byte offset).
    NonZeroReserved(usize),
    /// An event kind this build does not know.
    BadKind(u8),
    /// A direction other than 0 (tx) or 1 (rx), or one the event kind does not allow.
    BadDirection(u8),
    /// A drop reason this build does not know, or one the event kind does not allow.
    BadReason(u16),
    /// Presence flags the event kind does not allow, or a required field missing.
    BadFlags(u8),
    /// A policy change this build does not know.
    BadChange(u8),
}

impl ReportError {
    /// Human-readable meaning.
    pub fn describe(&self) -> &'static str {
        match self {
            ReportError::Truncated => "record shorter than it announces",
            ReportError::TrailingBytes => "bytes after the announced records",
            ReportError::BadMagic => "not a counters snapshot (bad magic)",
            ReportError::UnsupportedVersion(_) => "unsupported snapshot version",
            ReportError::NonZeroReserved(_) => "reserved field not zero",
            ReportError::BadKind(_) => "unknown event kind",
            ReportError::BadDirection(_) => "bad event direction",
            ReportError::BadReason(_) => "bad drop reason",
            ReportError::BadFlags(_) => "bad event presence flags",
            ReportError::BadChange(_) => "unknown policy change",
        }
    }
}

fn require_zero(bytes: &[u8], base: usize) -> Result<(), ReportError> {
    match bytes.iter().position(|b| *b != 0) {
        Some(i) => Err(ReportError::NonZeroReserved(base + i)),
        None => Ok(()),
    }
}

/// Write one party record (`out` is exactly [`PARTY_RECORD_LEN`] bytes).
fn put_counters(out: &mut [u8], c: &Counters) {
    put_u64(out, 0, c.tx_passed);
    put_u64(out, 8, c.tx_bytes);
    put_u64(out, 16, c.rx_passed);
    put_u64(out, 24, c.rx_bytes);
    put_u64(out, 32, c.relayed);
    for (i, d) in c.drops.iter().enumerate() {
        put_u64(out, PARTY_FIXED_LEN + 8 * i, *d);
    }
}

/// Read one party record of `drop_reasons` drop counters (`b` is exactly that long).
fn get_counters(b: &[u8], drop_reasons: usize) -> Counters {
    let mut c = Counters {
        tx_passed: get_u64(b, 0),
        tx_bytes: get_u64(b, 8),
        rx_passed: get_u64(b, 16),
        rx_bytes: get_u64(b, 24),
        relayed: get_u64(b, 32),
        drops: [0; DropReason::COUNT],
    };
    for (i, d) in c.drops.iter_mut().enumerate().take(drop_reasons) {
        *d = get_u64(b, PARTY_FIXED_LEN + 8 * i);
    }
    c
}

/// Encode a counters snapshot of `engine` (the engine-wide counters) and `containers`
/// (id, VLAN, counters) into `out`.
///
/// Returns the bytes written, or `Err(needed)` when `out` is too small (then `out` holds
/// nothing meaningful). At most `u16::MAX` containers are written; more is `Err(needed)` as
/// well, with `needed` larger than any buffer the ABI allows.
pub fn encode_counters<'a, I>(
    engine: &EngineCounters,
    containers: I,
    out: &mut [u8],
) -> Result<usize, usize>
where
    I: Iterator<Item = (ContainerId, u16, &'a Counters)>,
{
    let mut at = COUNTERS_HEADER_LEN;
    let mut count = 0usize;
    let mut fits = out.len() >= counters_len(0);
    if fits {
        for party in [&engine.host, &engine.unattributed, &engine.total] {
            put_counters(&mut out[at..at + PARTY_RECORD_LEN], party);
            at += PARTY_RECORD_LEN;
        }
    }
    for (id, vlan, counters) in containers {
        count += 1;
        if !fits || out.len() < counters_len(count) {
            fits = false;
            continue;
        }
        let rec = &mut out[at..at + CONTAINER_RECORD_LEN];
        put_u32(rec, 0, id.0);
        put_u16(rec, 4, vlan);
        put_u16(rec, 6, 0);
        put_counters(&mut rec[8..], counters);
        at += CONTAINER_RECORD_LEN;
    }
    let needed = counters_len(count);
    if !fits || count > usize::from(u16::MAX) {
        return Err(needed);
    }
    let header = &mut out[..COUNTERS_HEADER_LEN];
    header.fill(0);
    header[0..4].copy_from_slice(&COUNTERS_MAGIC);
    header[4] = COUNTERS_VERSION;
    put_u16(header, 6, count as u16);
    put_u16(header, 8, DropReason::COUNT as u16);
    Ok(needed)
}

/// Encode the counters snapshot of `engine` (every registered container) into `out`; see
/// [`encode_counters`].
pub fn encode_engine_counters(engine: &Engine<'_>, out: &mut [u8]) -> Result<usize, usize> {
    let containers = engine
        .registry()
        .iter()
        .map(|(_, c)| (c.id(), c.vlan(), &c.counters));
    encode_counters(engine.counters(), containers, out)
}

/// One container's entry in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The container.
    pub id: ContainerId,
    /// Its VLAN.
    pub vlan: u16,
    /// Its counters.
    pub counters: Counters,
}

/// A validated counters snapshot, read in place.
#[derive(Debug, Clone, Copy)]
pub struct CountersView<'a> {
    bytes: &'a [u8],
    container_count: usize,
    drop_reasons: usize,
}

impl<'a> CountersView<'a> {
    /// Validate `bytes` (exactly one snapshot, nothing after it).
    pub fn parse(bytes: &'a [u8]) -> Result<CountersView<'a>, ReportError> {
        if bytes.len() < COUNTERS_HEADER_LEN {
            return Err(ReportError::Truncated);
        }
        if bytes[0..4] != COUNTERS_MAGIC {
            return Err(ReportError::BadMagic);
        }
        if bytes[4] != COUNTERS_VERSION {
            return Err(ReportError::UnsupportedVersion(bytes[4]));
        }
        require_zero(&bytes[5..6], 5)?;
        require_zero(&bytes[10..16], 10)?;
        let container_count = usize::from(get_u16(bytes, 6));
        let drop_reasons = usize::from(get_u16(bytes, 8));
        let party = party_len(drop_reasons);
        let len = COUNTERS_HEADER_LEN + PARTY_RECORDS * party + container_count * (8 + party);
        if bytes.len() < len {
            return Err(ReportError::Truncated);
        }
        if bytes.len() > len {
            return Err(ReportError::TrailingBytes);
        }
        let view = CountersView {
            bytes,
            container_count,
            drop_reasons,
        };
        for i in 0..container_count {
            let at = view.container_at(i);
            require_zero(&bytes[at + 6..at + 8], at + 6)?;
        }
        Ok(view)
    }

    fn party_len(&self) -> usize {
        party_len(self.drop_reasons)
    }

    fn party(&self, index: usize) -> Counters {
        let at = COUNTERS_HEADER_LEN + index * self.party_len();
        get_counters(&self.bytes[at..at + self.party_len()], self.drop_reasons)
    }

    fn container_at(&self, index: usize) -> usize {
        COUNTERS_HEADER_LEN + PARTY_RECORDS * self.party_len() + index * (8 + self.party_len())
    }

    /// The host's counters.
    pub fn host(&self) -> Counters {
        self.party(0)
    }

    /// Frames no party could be named for.
    pub fn unattributed(&self) -> Counters {
        self.party(1)
    }

    /// Every frame decided.
    pub fn total(&self) -> Counters {
        self.party(2)
    }

    /// The engine-wide counters.
    pub fn engine(&self) -> EngineCounters {
        EngineCounters {
            host: self.host(),
            unattributed: self.unattributed(),
            total: self.total(),
        }
    }

    /// Number of container records.
    pub fn container_count(&self) -> usize {
        self.container_count
    }

    /// Number of drop counters per record the writer used.
    pub fn drop_reason_count(&self) -> usize {
        self.drop_reasons
    }

    /// The `index`-th container record.
    pub fn container(&self, index: usize) -> Option<ContainerRecord> {
        if index >= self.container_count {
            return None;
        }
        let at = self.container_at(index);
        let rec = &self.bytes[at..at + 8 + self.party_len()];
        Some(ContainerRecord {
            id: ContainerId(get_u32(rec, 0)),
            vlan: get_u16(rec, 4),
            counters: get_counters(&rec[8..], self.drop_reasons),
        })
    }

    /// The container records, in snapshot order.
    pub fn containers(&self) -> impl Iterator<Item = ContainerRecord> + '_ {
        (0..self.container_count).filter_map(move |i| self.container(i))
    }
}

const KIND_SPOOF: u8 = 1;
const KIND_OUTBOUND_SCAN: u8 = 2;
const KIND_INBOUND_SCAN: u8 = 3;
const KIND_POLICY: u8 = 4;
const KIND_DROP_SAMPLE: u8 = 5;

/// Event flag: the sender field (offset 24) is present.
pub const EVENT_SENDER: u8 = 1 << 0;
/// Event flag: the claimed field (offset 28) is present.
pub const EVENT_CLAIMED: u8 = 1 << 1;
/// Event flag: the IPv4 field (offset 40) is present.
pub const EVENT_IPV4: u8 = 1 << 2;
/// Event flag: the container field (offset 24) is present.
pub const EVENT_CONTAINER: u8 = 1 << 3;
/// Event flag: the blocked-until field (offset 48) is present.
pub const EVENT_BLOCKED_UNTIL: u8 = 1 << 4;

fn direction_code(d: Direction) -> u8 {
    match d {
        Direction::Tx => 0,
        Direction::Rx => 1,
    }
}

fn change_code(c: PolicyChange) -> u8 {
    match c {
        PolicyChange::Registered => 0,
        PolicyChange::Updated => 1,
        PolicyChange::Unregistered => 2,
        PolicyChange::HostPolicy => 3,
        PolicyChange::Config => 4,
        PolicyChange::AdminRuleAdded => 5,
        PolicyChange::AdminRuleRemoved => 6,
    }
}

fn change_from(c: u8) -> Option<PolicyChange> {
    Some(match c {
        0 => PolicyChange::Registered,
        1 => PolicyChange::Updated,
        2 => PolicyChange::Unregistered,
        3 => PolicyChange::HostPolicy,
        4 => PolicyChange::Config,
        5 => PolicyChange::AdminRuleAdded,
        6 => PolicyChange::AdminRuleRemoved,
        _ => return None,
    })
}

/// Encode one event.
pub fn encode_event(event: &Event) -> [u8; EVENT_LEN] {
    let mut out = [0u8; EVENT_LEN];
    put_u64(&mut out, 0, event.seq);
    put_u64(&mut out, 8, event.time);
    let mut flags = 0u8;
    match event.kind {
        EventKind::Spoof {
            reason,
            direction,
            sender,
            claimed,
            mac,
            ipv4,
        } => {
            out[16] = KIND_SPOOF;
            out[17] = direction_code(direction);
            put_u16(&mut out, 18, reason as u16);
            if let Some(s) = sender {
                flags |= EVENT_SENDER;
                put_u32(&mut out, 24, s.0);
            }
            if let Some(c) = claimed {
                flags |= EVENT_CLAIMED;
                put_u32(&mut out, 28, c.0);
            }
            out[32..38].copy_from_slice(&mac);
            if let Some(ip) = ipv4 {
                flags |= EVENT_IPV4;
                out[40..44].copy_from_slice(&ip.octets());
            }
        }
        EventKind::OutboundScan {
            container,
            distinct_ports,
            distinct_hosts,
            blocked_until,
        } => {
            out[16] = KIND_OUTBOUND_SCAN;
            out[17] = direction_code(Direction::Tx);
            flags |= EVENT_CONTAINER | EVENT_BLOCKED_UNTIL;
            put_u32(&mut out, 24, container.0);
            put_u16(&mut out, 44, distinct_ports);
            put_u16(&mut out, 46, distinct_hosts);
            put_u64(&mut out, 48, blocked_until);
        }
        EventKind::InboundScan {
            source,
            distinct_ports,
            distinct_hosts,
            blocked_until,
        } => {
            out[16] = KIND_INBOUND_SCAN;
            out[17] = direction_code(Direction::Rx);
            flags |= EVENT_IPV4;
            out[40..44].copy_from_slice(&source.octets());
            put_u16(&mut out, 44, distinct_ports);
            put_u16(&mut out, 46, distinct_hosts);
            if let Some(t) = blocked_until {
                flags |= EVENT_BLOCKED_UNTIL;
                put_u64(&mut out, 48, t);
            }
        }
        EventKind::Policy { container, change } => {
            out[16] = KIND_POLICY;
            out[21] = change_code(change);
            if let Some(c) = container {
                flags |= EVENT_CONTAINER;
                put_u32(&mut out, 24, c.0);
            }
        }
        EventKind::DropSample {
            container,
            direction,
            reason,
        } => {
            out[16] = KIND_DROP_SAMPLE;
            out[17] = direction_code(direction);
            put_u16(&mut out, 18, reason as u16);
            if let Some(c) = container {
                flags |= EVENT_CONTAINER;
                put_u32(&mut out, 24, c.0);
            }
        }
    }
    out[20] = flags;
    out
}

/// Encode as many of `events` as fit into `out`; returns the bytes written (a multiple of
/// [`EVENT_LEN`]).
pub fn encode_events(events: &[Event], out: &mut [u8]) -> usize {
    let mut written = 0;
    for (event, slot) in events.iter().zip(out.chunks_exact_mut(EVENT_LEN)) {
        slot.copy_from_slice(&encode_event(event));
        written += EVENT_LEN;
    }
    written
}

/// Decode and validate one event record (`bytes` must be exactly [`EVENT_LEN`] long).
pub fn decode_event(bytes: &[u8]) -> Result<Event, ReportError> {
    if bytes.len() < EVENT_LEN {
        return Err(ReportError::Truncated);
    }
    if bytes.len() > EVENT_LEN {
        return Err(ReportError::TrailingBytes);
    }
    let b = bytes;
    let seq = get_u64(b, 0);
    let time = get_u64(b, 8);
    let kind = b[16];
    let dir_raw = b[17];
    let reason_raw = get_u16(b, 18);
    let flags = b[20];
    let change_raw = b[21];
    require_zero(&b[22..24], 22)?;
    require_zero(&b[38..40], 38)?;
    require_zero(&b[56..64], 56)?;
    let direction = match dir_raw {
        0 => Direction::Tx,
        1 => Direction::Rx,
        other => return Err(ReportError::BadDirection(other)),
    };
    let u24 = get_u32(b, 24);
    let u28 = get_u32(b, 28);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&b[32..38]);
    let ip = Ipv4Addr::new(b[40], b[41], b[42], b[43]);
    let ports = get_u16(b, 44);
    let hosts = get_u16(b, 46);
    let until = get_u64(b, 48);

    // Per kind: the flags it may carry, the flags it must carry, and which byte ranges it
    // does not use (those must be zero).
    let (allowed, required) = match kind {
        KIND_SPOOF => (EVENT_SENDER | EVENT_CLAIMED | EVENT_IPV4, 0),
        KIND_OUTBOUND_SCAN => (
            EVENT_CONTAINER | EVENT_BLOCKED_UNTIL,
            EVENT_CONTAINER | EVENT_BLOCKED_UNTIL,
        ),
        KIND_INBOUND_SCAN => (EVENT_IPV4 | EVENT_BLOCKED_UNTIL, EVENT_IPV4),
        KIND_POLICY | KIND_DROP_SAMPLE => (EVENT_CONTAINER, 0),
        other => return Err(ReportError::BadKind(other)),
    };
    if flags & !allowed != 0 || flags & required != required {
        return Err(ReportError::BadFlags(flags));
    }
    let has = |f: u8| flags & f != 0;
    // Absent fields must be zero.
    if !has(EVENT_SENDER) && !has(EVENT_CONTAINER) {
        require_zero(&b[24..28], 24)?;
    }
    if !has(EVENT_CLAIMED) {
        require_zero(&b[28..32], 28)?;
    }
    if !has(EVENT_IPV4) {
        require_zero(&b[40..44], 40)?;
    }
    if !has(EVENT_BLOCKED_UNTIL) {
        require_zero(&b[48..56], 48)?;
    }
    if kind != KIND_SPOOF {
        require_zero(&b[32..38], 32)?;
    }
    if !matches!(kind, KIND_OUTBOUND_SCAN | KIND_INBOUND_SCAN) {
        require_zero(&b[44..48], 44)?;
    }
    if kind != KIND_POLICY && change_raw != 0 {
        return Err(ReportError::NonZeroReserved(21));
    }
    let reason = match kind {
        KIND_SPOOF | KIND_DROP_SAMPLE => {
            Some(DropReason::from_u16(reason_raw).ok_or(ReportError::BadReason(reason_raw))?)
        }
        _ if reason_raw != 0 => return Err(ReportError::BadReason(reason_raw)),
        _ => None,
    };
    let opt = |f: u8, v: u32| has(f).then_some(ContainerId(v));
    let kind = match (kind, reason) {
        (KIND_SPOOF, Some(reason)) => EventKind::Spoof {
            reason,
            direction,
            sender: opt(EVENT_SENDER, u24),
            claimed: opt(EVENT_CLAIMED, u28),
            mac,
            ipv4: has(EVENT_IPV4).then_some(ip),
        },
        (KIND_DROP_SAMPLE, Some(reason)) => EventKind::DropSample {
            container: opt(EVENT_CONTAINER, u24),
            direction,
            reason,
        },
        (KIND_OUTBOUND_SCAN, _) => {
            if direction != Direction::Tx {
                return Err(ReportError::BadDirection(dir_raw));
            }
            EventKind::OutboundScan {
                container: ContainerId(u24),
                distinct_ports: ports,
                distinct_hosts: hosts,
                blocked_until: until,
            }
        }
        (KIND_INBOUND_SCAN, _) => {
            if direction != Direction::Rx {
                return Err(ReportError::BadDirection(dir_raw));
            }
            EventKind::InboundScan {
                source: ip,
                distinct_ports: ports,
                distinct_hosts: hosts,
                blocked_until: has(EVENT_BLOCKED_UNTIL).then_some(until),
            }
        }
        (_, _) => {
            // KIND_POLICY (the other kinds are handled above or refused earlier).
            if direction != Direction::Tx {
                return Err(ReportError::BadDirection(dir_raw));
            }
            EventKind::Policy {
                container: opt(EVENT_CONTAINER, u24),
                change: change_from(change_raw).ok_or(ReportError::BadChange(change_raw))?,
            }
        }
    };
    Ok(Event { seq, time, kind })
}

/// Decode a `ReadEvents` reply: a whole number of event records, each validated.
pub fn decode_events(
    bytes: &[u8],
) -> Result<impl Iterator<Item = Result<Event, ReportError>> + '_, ReportError> {
    if !bytes.len().is_multiple_of(EVENT_LEN) {
        return Err(ReportError::TrailingBytes);
    }
    Ok(bytes.chunks_exact(EVENT_LEN).map(decode_event))
}

/// Base of the detail codes for a malformed registration ([`crate::encoding::DecodeError`]).
pub const DECODE_CODE_BASE: u64 = shoji_shared::vmcall::DECODE_DETAIL_BASE;
/// Base of the detail codes for a registry refusal ([`crate::registry::RegistryError`]).
pub const REGISTRY_CODE_BASE: u64 = shoji_shared::vmcall::REGISTRY_DETAIL_BASE;

/// The meaning of a detail code returned with a refused register/update, if it is one.
pub fn describe_detail_code(code: u64) -> Option<&'static str> {
    if let Some(e) = crate::encoding::DecodeError::from_code(code) {
        return Some(e.describe());
    }
    crate::registry::RegistryError::from_code(code).map(|e| e.describe())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn counters(seed: u64) -> Counters {
        let mut c = Counters {
            tx_passed: seed,
            tx_bytes: seed * 100,
            rx_passed: seed + 1,
            rx_bytes: seed * 200,
            relayed: seed + 2,
            drops: [0; DropReason::COUNT],
        };
        for (i, d) in c.drops.iter_mut().enumerate() {
            *d = seed * 1000 + i as u64;
        }
        c
    }

    fn engine_counters() -> EngineCounters {
        EngineCounters {
            host: counters(1),
            unattributed: counters(2),
            total: counters(3),
        }
    }

    fn snapshot(n: u32) -> Vec<u8> {
        let list: Vec<(ContainerId, u16, Counters)> = (0..n)
            .map(|i| {
                (
                    ContainerId(i + 10),
                    100 + i as u16,
                    counters(u64::from(i) + 7),
                )
            })
            .collect();
        let mut out = vec![0u8; counters_len(n as usize)];
        let written = encode_counters(
            &engine_counters(),
            list.iter().map(|(id, v, c)| (*id, *v, c)),
            &mut out,
        )
        .unwrap();
        assert_eq!(written, out.len());
        out
    }

    #[test]
    fn counters_round_trip() {
        let bytes = snapshot(3);
        let view = CountersView::parse(&bytes).unwrap();
        assert_eq!(view.engine(), engine_counters());
        assert_eq!(view.container_count(), 3);
        assert_eq!(view.drop_reason_count(), DropReason::COUNT);
        let recs: Vec<ContainerRecord> = view.containers().collect();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].id, ContainerId(11));
        assert_eq!(recs[1].vlan, 101);
        assert_eq!(recs[1].counters, counters(8));
        assert_eq!(view.container(3), None);
    }

    #[test]
    fn empty_snapshot_round_trip() {
        let bytes = snapshot(0);
        assert_eq!(bytes.len(), counters_len(0));
        let view = CountersView::parse(&bytes).unwrap();
        assert_eq!(view.container_count(), 0);
        assert_eq!(view.total(), counters(3));
    }

    #[test]
    fn encoder_reports_needed_length() {
        let c = counters(1);
        let list = [(ContainerId(1), 2u16, &c), (ContainerId(2), 3u16, &c)];
        let mut small = vec![0u8; counters_len(1)];
        assert_eq!(
            encode_counters(&engine_counters(), list.iter().copied(), &mut small),
            Err(counters_len(2))
        );
        let mut tiny = [0u8; 8];
        assert_eq!(
            encode_counters(&engine_counters(), list.iter().copied(), &mut tiny),
            Err(counters_len(2))
        );
        let mut big = vec![0u8; counters_len(2) + 100];
        assert_eq!(
            encode_counters(&engine_counters(), list.iter().copied(), &mut big),
            Ok(counters_len(2))
        );
        assert!(CountersView::parse(&big[..counters_len(2)]).is_ok());
    }

    #[test]
    fn encodes_a_live_engine() {
        use crate::{ContainerSlot, ContainerSpec, Engine, EngineConfig};
        let mut slots = vec![ContainerSlot::EMPTY; 4];
        let mut engine = Engine::new(&mut slots, EngineConfig::default());
        engine
            .register(ContainerSpec::new(
                7,
                107,
                [2, 0, 0, 0, 0, 7],
                Ipv4Addr::new(10, 0, 0, 7),
            ))
            .unwrap();
        let mut out = vec![0u8; counters_len(1)];
        assert_eq!(
            encode_engine_counters(&engine, &mut out),
            Ok(counters_len(1))
        );
        let view = CountersView::parse(&out).unwrap();
        let rec = view.container(0).unwrap();
        assert_eq!((rec.id, rec.vlan), (ContainerId(7), 107));
    }

    #[test]
    fn malformed_snapshots_are_refused() {
        let good = snapshot(2);
        for len in 0..good.len() {
            assert_eq!(
                CountersView::parse(&good[..len]).err(),
                Some(ReportError::Truncated),
                "len {len}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            CountersView::parse(&long).err(),
            Some(ReportError::TrailingBytes)
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(CountersView::parse(&bad).err(), Some(ReportError::BadMagic));
        let mut bad = good.clone();
        bad[4] = 2;
        assert_eq!(
            CountersView::parse(&bad).err(),
            Some(ReportError::UnsupportedVersion(2))
        );
        for at in [5usize, 10, 15] {
            let mut bad = good.clone();
            bad[at] = 1;
            assert_eq!(
                CountersView::parse(&bad).err(),
                Some(ReportError::NonZeroReserved(at))
            );
        }
        // The reserved u16 of the second container record.
        let at = COUNTERS_HEADER_LEN + 3 * PARTY_RECORD_LEN + CONTAINER_RECORD_LEN + 6;
        let mut bad = good.clone();
        bad[at] = 1;
        assert_eq!(
            CountersView::parse(&bad).err(),
            Some(ReportError::NonZeroReserved(at))
        );
        // A count announcing more containers than present.
        let mut bad = good.clone();
        bad[6] = 3;
        assert_eq!(
            CountersView::parse(&bad).err(),
            Some(ReportError::Truncated)
        );
    }

    #[test]
    fn other_drop_reason_counts_are_read() {
        // A writer with two more reasons than this build: the extra counters are ignored.
        let n = DropReason::COUNT + 2;
        let party = party_len(n);
        let mut b = vec![0u8; COUNTERS_HEADER_LEN + 3 * party + (8 + party)];
        b[0..4].copy_from_slice(&COUNTERS_MAGIC);
        b[4] = COUNTERS_VERSION;
        put_u16(&mut b, 6, 1);
        put_u16(&mut b, 8, n as u16);
        let rec = COUNTERS_HEADER_LEN + 3 * party;
        put_u32(&mut b, rec, 5);
        put_u16(&mut b, rec + 4, 55);
        put_u64(&mut b, rec + 8 + PARTY_FIXED_LEN, 9); // first drop reason
        put_u64(&mut b, rec + 8 + PARTY_FIXED_LEN + 8 * (n - 1), 99); // unknown reason
        let view = CountersView::parse(&b).unwrap();
        let c = view.container(0).unwrap();
        assert_eq!((c.id, c.vlan), (ContainerId(5), 55));
        assert_eq!(c.counters.dropped(DropReason::Truncated), 9);
        assert_eq!(c.counters.total_drops(), 9);
    }

    fn sample_events() -> Vec<Event> {
        let kinds = [
            EventKind::Spoof {
                reason: DropReason::SpoofedArp,
                direction: Direction::Tx,
                sender: Some(ContainerId(1)),
                claimed: Some(ContainerId(2)),
                mac: [2, 0, 0, 0, 1, 0x0a],
                ipv4: Some(Ipv4Addr::new(10, 0, 2, 22)),
            },
            EventKind::Spoof {
                reason: DropReason::SpoofedMac,
                direction: Direction::Rx,
                sender: None,
                claimed: None,
                mac: [2, 0, 0, 0, 1, 0x0b],
                ipv4: None,
            },
            EventKind::OutboundScan {
                container: ContainerId(3),
                distinct_ports: 40,
                distinct_hosts: 2,
                blocked_until: 123_456,
            },
            EventKind::InboundScan {
                source: Ipv4Addr::new(192, 0, 2, 9),
                distinct_ports: 30,
                distinct_hosts: 1,
                blocked_until: Some(99),
            },
            EventKind::InboundScan {
                source: Ipv4Addr::new(192, 0, 2, 9),
                distinct_ports: 30,
                distinct_hosts: 1,
                blocked_until: None,
            },
            EventKind::Policy {
                container: Some(ContainerId(4)),
                change: PolicyChange::Registered,
            },
            EventKind::Policy {
                container: None,
                change: PolicyChange::Config,
            },
            EventKind::DropSample {
                container: Some(ContainerId(5)),
                direction: Direction::Rx,
                reason: DropReason::PolicyDenied,
            },
            EventKind::DropSample {
                container: None,
                direction: Direction::Tx,
                reason: DropReason::Truncated,
            },
        ];
        kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| Event {
                seq: i as u64 + 1,
                time: 1_000 * i as u64,
                kind: *kind,
            })
            .collect()
    }

    #[test]
    fn events_round_trip() {
        let events = sample_events();
        for e in &events {
            let bytes = encode_event(e);
            assert_eq!(decode_event(&bytes), Ok(*e), "{e:?}");
        }
        let mut out = vec![0u8; EVENT_LEN * events.len() + 10];
        let n = encode_events(&events, &mut out);
        assert_eq!(n, EVENT_LEN * events.len());
        let back: Vec<Event> = decode_events(&out[..n])
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, events);
        assert!(decode_events(&out[..n + 1]).is_err());
        // Too small an output holds only whole events.
        let mut small = [0u8; EVENT_LEN + 10];
        assert_eq!(encode_events(&events, &mut small), EVENT_LEN);
    }

    #[test]
    fn event_layout_is_as_documented() {
        let e = &sample_events()[0];
        let b = encode_event(e);
        assert_eq!(get_u64(&b, 0), 1);
        assert_eq!(b[16], 1);
        assert_eq!(b[17], 0);
        assert_eq!(get_u16(&b, 18), DropReason::SpoofedArp as u16);
        assert_eq!(b[20], EVENT_SENDER | EVENT_CLAIMED | EVENT_IPV4);
        assert_eq!(get_u32(&b, 24), 1);
        assert_eq!(get_u32(&b, 28), 2);
        assert_eq!(&b[32..38], &[2, 0, 0, 0, 1, 0x0a]);
        assert_eq!(&b[40..44], &[10, 0, 2, 22]);
    }

    #[test]
    fn malformed_events_are_refused() {
        let good = encode_event(&sample_events()[0]);
        assert_eq!(decode_event(&good[..63]), Err(ReportError::Truncated));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(decode_event(&long), Err(ReportError::TrailingBytes));
        let cases: [(usize, u8, ReportError); 8] = [
            (16, 0, ReportError::BadKind(0)),
            (16, 6, ReportError::BadKind(6)),
            (17, 2, ReportError::BadDirection(2)),
            (18, 99, ReportError::BadReason(99)),
            (20, 0x20, ReportError::BadFlags(0x27)),
            (22, 1, ReportError::NonZeroReserved(22)),
            (60, 1, ReportError::NonZeroReserved(60)),
            (21, 1, ReportError::NonZeroReserved(21)),
        ];
        for (at, v, want) in cases {
            let mut b = good;
            if at == 20 {
                b[at] |= v;
            } else {
                b[at] = v;
            }
            assert_eq!(decode_event(&b), Err(want), "byte {at}");
        }
        // A policy event with an unknown change, or a reason.
        let policy = encode_event(&sample_events()[5]);
        let mut b = policy;
        b[21] = 7;
        assert_eq!(decode_event(&b), Err(ReportError::BadChange(7)));
        let mut b = policy;
        b[18] = 3;
        assert_eq!(decode_event(&b), Err(ReportError::BadReason(3)));
        // A policy event with a MAC, or without its container flag but a container value.
        let mut b = policy;
        b[33] = 1;
        assert_eq!(decode_event(&b), Err(ReportError::NonZeroReserved(33)));
        let mut b = policy;
        b[20] = 0;
        assert_eq!(decode_event(&b), Err(ReportError::NonZeroReserved(24)));
        // An outbound scan must name its container and block time, and be TX.
        let scan = encode_event(&sample_events()[2]);
        let mut b = scan;
        b[20] = EVENT_CONTAINER;
        assert_eq!(
            decode_event(&b),
            Err(ReportError::BadFlags(EVENT_CONTAINER))
        );
        let mut b = scan;
        b[17] = 1;
        assert_eq!(decode_event(&b), Err(ReportError::BadDirection(1)));
        // A drop sample with reason 0.
        let mut b = encode_event(&sample_events()[7]);
        b[18] = 0;
        assert_eq!(decode_event(&b), Err(ReportError::BadReason(0)));
    }

    #[test]
    fn arbitrary_event_bytes_never_panic() {
        let mut b = [0u8; EVENT_LEN];
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            for byte in b.iter_mut().skip(16).take(32) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *byte = (x >> 16) as u8 & 0x1f;
            }
            if let Ok(e) = decode_event(&b) {
                assert_eq!(encode_event(&e), b);
            }
        }
    }

    #[test]
    fn detail_codes_describe() {
        use crate::encoding::DecodeError;
        use crate::registry::RegistryError;
        assert_eq!(DecodeError::Truncated.code(), DECODE_CODE_BASE);
        assert_eq!(RegistryError::Full.code(), REGISTRY_CODE_BASE);
        let e = RegistryError::VlanInUse(5, ContainerId(1));
        assert_eq!(describe_detail_code(e.code()), Some(e.describe()));
        let d = DecodeError::BadMagic;
        assert_eq!(describe_detail_code(d.code()), Some(d.describe()));
        assert_eq!(describe_detail_code(0), None);
        assert_eq!(describe_detail_code(1999), None);
        assert_eq!(describe_detail_code(u64::MAX), None);
    }
}
