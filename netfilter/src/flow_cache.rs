//! The TX flow cache: a frame whose decision-relevant header repeats one already passed to the
//! wire, sent by the same task under the same policy, takes that decision again without being
//! parsed and evaluated.
//!
//! Only the plainest shape is cached: Ethernet with at most one 802.1Q tag, IPv4 without options
//! and not fragmented, TCP or UDP, unicast to the wire. The key is the frame's header bytes with
//! the fields that change inside a flow and decide nothing zeroed (IPv4 total length,
//! identification, TTL and checksum; UDP length and checksum; TCP sequence and acknowledgement
//! numbers and data offset). The checks the parser makes on those fields are made again for every
//! frame ([`key_of`]), so a hit stands only for a frame the parser accepts with the same summary.
//!
//! An entry is valid only for the engine's policy generation it was made in (every registration,
//! update, unregistration, configuration or host-policy change, and operator unblock starts a new
//! one), for the identical task identity (or the identical absence of an acting task), and, for a
//! container, while its port-scan window is the one the entry's probe was recorded in and it is
//! not blocked (the engine checks these at the hit, [`crate::Engine`]).

use shoji_shared::{ContainerId, TaskIdentity};

use crate::engine::Party;

/// Entries in the cache (direct-mapped).
pub const FLOW_CACHE_ENTRIES: usize = 256;

/// Bytes of a key: a tagged Ethernet header (18), IPv4 without options (20), TCP up to its
/// flags (14), rounded up to whole words.
const KEY_BYTES: usize = 56;
const KEY_WORDS: usize = KEY_BYTES / 8;

const ETHERTYPE_IPV4: usize = 0x0800;
const ETHERTYPE_VLAN: usize = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The bytes of a key that are kept, as little-endian words: for untagged and tagged frames,
/// each with UDP and with TCP (index `tagged * 2 + tcp`).
const KEY_MASKS: [[u64; KEY_WORDS]; 4] = [
    key_mask(14, false),
    key_mask(14, true),
    key_mask(18, false),
    key_mask(18, true),
];

/// The key mask for an IPv4 header at `l2` followed by TCP (`tcp`) or UDP: the header bytes up
/// to the TCP flags or the end of the UDP header, without the per-frame fields.
const fn key_mask(l2: usize, tcp: bool) -> [u64; KEY_WORDS] {
    let l4 = l2 + 20;
    let len = l4 + if tcp { 14 } else { 8 };
    let mut keep = [false; KEY_BYTES];
    let mut i = 0;
    while i < len {
        keep[i] = true;
        i += 1;
    }
    // IPv4: total length and identification (2..6), TTL (8), header checksum (10..12).
    let mut k = 2;
    while k < 6 {
        keep[l2 + k] = false;
        k += 1;
    }
    keep[l2 + 8] = false;
    keep[l2 + 10] = false;
    keep[l2 + 11] = false;
    // TCP: sequence and acknowledgement numbers (4..12); UDP: length and checksum (4..8).
    let mut k = 4;
    while k < if tcp { 12 } else { 8 } {
        keep[l4 + k] = false;
        k += 1;
    }
    let mut words = [0u64; KEY_WORDS];
    let mut b = 0;
    while b < KEY_BYTES {
        if keep[b] {
            words[b / 8] |= 0xff << ((b % 8) * 8);
        }
        b += 1;
    }
    // TCP: the data offset nibble of byte 12 goes too (the flags in byte 13 stay).
    if tcp {
        let at = l4 + 12;
        words[at / 8] &= !(0xf0 << ((at % 8) * 8));
    }
    words
}

/// A frame's flow key: its header with the per-frame fields zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    words: [u64; KEY_WORDS],
    /// Whether the frame carries an 802.1Q tag (its VLAN id is in the key).
    pub tagged: bool,
}

impl FlowKey {
    /// The VLAN id of the tag (0 when untagged).
    pub fn vlan(&self) -> u16 {
        if !self.tagged {
            return 0;
        }
        let b = self.words[1].to_le_bytes();
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff
    }

    /// Whether `other` is the same key (word-wise, without a byte comparison call).
    #[inline]
    fn same(&self, other: &FlowKey) -> bool {
        let diff = self
            .words
            .iter()
            .zip(other.words.iter())
            .fold(0, |d, (a, b)| d | (a ^ b));
        diff == 0 && self.tagged == other.tagged
    }

    #[inline]
    fn slot(&self) -> usize {
        let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
        for w in self.words {
            h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        }
        (h >> 56) as usize % FLOW_CACHE_ENTRIES
    }
}

/// The key of `frame` when it has the cached shape and the parser would accept it; `None`
/// otherwise (the frame then takes the full path).
///
/// Every check reads fixed offsets of the frame's first [`KEY_BYTES`] (a shorter frame is
/// zero-padded to them); a field beyond the frame's end reads as zero, and each such read comes
/// after the length check that puts the field inside the frame.
#[inline]
pub fn key_of(frame: &[u8]) -> Option<FlowKey> {
    match frame.first_chunk::<KEY_BYTES>() {
        Some(head) => key_from(head, frame.len()),
        None => key_of_short(frame),
    }
}

/// [`key_of`] for a frame shorter than a key: its bytes zero-padded to a key's length.
#[cold]
#[inline(never)]
fn key_of_short(frame: &[u8]) -> Option<FlowKey> {
    let mut b = [0u8; KEY_BYTES];
    let n = frame.len().min(KEY_BYTES);
    b[..n].copy_from_slice(&frame[..n]);
    key_from(&b, frame.len())
}

/// [`key_of`] given the frame's first [`KEY_BYTES`] (zero-padded) and its length.
#[inline(always)]
fn key_from(b: &[u8; KEY_BYTES], len: usize) -> Option<FlowKey> {
    if len < 14 {
        return None;
    }
    let be16 = |at: usize| usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
    let (tagged, l2) = match be16(12) {
        // One tag, a valid VLAN id, IPv4 inside (so no stacked tag).
        ETHERTYPE_VLAN
            if len >= 18 && be16(16) == ETHERTYPE_IPV4 && be16(14) & 0x0fff != 0x0fff =>
        {
            (true, 18)
        }
        ETHERTYPE_IPV4 => (false, 14),
        _ => return None,
    };
    // Version 4, no options; not a fragment (MF clear, offset 0); a total length inside the
    // frame that covers the header.
    let ip_len = len - l2;
    if ip_len < 20 || b[l2] != 0x45 || be16(l2 + 6) & 0x3fff != 0 {
        return None;
    }
    let total = be16(l2 + 2);
    if total < 20 || total > ip_len {
        return None;
    }
    let body = total - 20;
    let l4 = l2 + 20;
    let tcp = match b[l2 + 9] {
        // The parser's checks: a whole header, a data offset inside the segment.
        IPPROTO_TCP => {
            let data_offset = usize::from(b[l4 + 12] >> 4) * 4;
            if body < 20 || data_offset < 20 || data_offset > body {
                return None;
            }
            true
        }
        IPPROTO_UDP => {
            let udp_len = be16(l4 + 4);
            if body < 8 || udp_len < 8 || udp_len > body {
                return None;
            }
            false
        }
        _ => return None,
    };
    let mask = &KEY_MASKS[usize::from(tagged) * 2 + usize::from(tcp)];
    let mut words = [0u64; KEY_WORDS];
    for ((w, m), chunk) in words.iter_mut().zip(mask).zip(b.chunks_exact(8)) {
        let mut le = [0u8; 8];
        le.copy_from_slice(chunk);
        *w = u64::from_le_bytes(le) & m;
    }
    Some(FlowKey { words, tagged })
}

/// The decision an entry replays: passed to the wire, as the sender's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedPass {
    /// Who sent it (the registry slot behind the tag, or the host).
    pub sender: Party,
    /// The sender's container id, for the decision.
    pub sender_id: Option<ContainerId>,
    /// The rule that allowed it, if a rule did.
    pub rule: Option<u16>,
    /// The sender's port-scan window when it was decided (see [`crate::scan::OutboundScan`]).
    pub scan_window: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: FlowKey,
    generation: u64,
    task: Option<TaskIdentity>,
    pass: CachedPass,
}

/// Hits, misses and insertions since the engine was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCacheStats {
    /// Frames decided from an entry.
    pub hits: u64,
    /// Frames of the cached shape that found no valid entry.
    pub misses: u64,
    /// Entries written.
    pub inserts: u64,
}

/// The cache: direct-mapped entries of flow key, policy generation, task and decision.
#[derive(Debug, Clone)]
pub struct FlowCache {
    entries: [Option<Entry>; FLOW_CACHE_ENTRIES],
    stats: FlowCacheStats,
}

impl Default for FlowCache {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowCache {
    /// An empty cache.
    pub const fn new() -> Self {
        FlowCache {
            entries: [None; FLOW_CACHE_ENTRIES],
            stats: FlowCacheStats {
                hits: 0,
                misses: 0,
                inserts: 0,
            },
        }
    }

    /// The entry for `key` made in `generation` for exactly `task`, if there is one.
    #[inline]
    pub fn lookup(
        &mut self,
        key: &FlowKey,
        generation: u64,
        task: Option<&TaskIdentity>,
    ) -> Option<&CachedPass> {
        match &self.entries[key.slot()] {
            Some(e) if e.generation == generation && e.key.same(key) && e.task.as_ref() == task => {
                self.stats.hits += 1;
                Some(&e.pass)
            }
            _ => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// A hit found stale by the engine's checks after all: count it as a miss.
    pub fn demote_hit(&mut self) {
        self.stats.hits -= 1;
        self.stats.misses += 1;
    }

    /// Remember `pass` for `key` in `generation` and for `task`.
    pub fn insert(
        &mut self,
        key: FlowKey,
        generation: u64,
        task: Option<&TaskIdentity>,
        pass: CachedPass,
    ) {
        self.entries[key.slot()] = Some(Entry {
            key,
            generation,
            task: task.copied(),
            pass,
        });
        self.stats.inserts += 1;
    }

    /// The counters.
    pub fn stats(&self) -> FlowCacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn udp_frame(tag: Option<u16>, ident: u16, ttl: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0x0a];
        if let Some(v) = tag {
            f.extend_from_slice(&[0x81, 0, (v >> 8) as u8, v as u8]);
        }
        f.extend_from_slice(&[0x08, 0]);
        let total = 28 + payload;
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8]);
        f.extend_from_slice(&ident.to_be_bytes());
        f.extend_from_slice(&[0x40, 0, ttl, 17, 0xab, 0xcd, 10, 0, 2, 21, 10, 0, 2, 2]);
        let udp_len = 8 + payload;
        f.extend_from_slice(&[0x9c, 0x40, 0, 9, (udp_len >> 8) as u8, udp_len as u8, 1, 2]);
        f.extend(core::iter::repeat_n(0x55, payload));
        f
    }

    #[test]
    fn per_frame_fields_do_not_change_the_key() {
        let a = key_of(&udp_frame(Some(101), 1, 64, 10)).unwrap();
        let b = key_of(&udp_frame(Some(101), 2, 63, 400)).unwrap();
        assert_eq!(a, b);
        assert!(a.tagged);
        assert_eq!(a.vlan(), 101);
        let c = key_of(&udp_frame(Some(102), 1, 64, 10)).unwrap();
        assert_ne!(a, c);
        let d = key_of(&udp_frame(None, 1, 64, 10)).unwrap();
        assert_eq!(d.vlan(), 0);
        assert_ne!(a, d);
    }

    #[test]
    fn tcp_keys_keep_ports_and_flags_only() {
        // Untagged TCP: Ethernet 14, IPv4 20 (at 14), TCP at 34; payload after 54.
        let mut f = udp_frame(None, 1, 64, 0);
        f.truncate(14);
        f.extend_from_slice(&[
            0x45, 0, 0, 60, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 2, 21, 10, 0, 2, 2,
        ]);
        f.extend_from_slice(&[0x9c, 0x40, 1, 187, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x10, 1, 0]);
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend(core::iter::repeat_n(0x55, 20));
        let k = key_of(&f).unwrap();
        let changed = |at: usize, v: u8| {
            let mut g = f.clone();
            g[at] = v;
            key_of(&g)
        };
        // Sequence, acknowledgement, window, checksum, payload: same key.
        for at in [38, 42, 48, 50, 56, 70] {
            assert_eq!(changed(at, 0x77), Some(k), "byte {at}");
        }
        // Data offset with room for options: same key.
        assert_eq!(changed(46, 0x60), Some(k));
        // Ports, flags, addresses, MACs: another key.
        for (at, v) in [
            (35, 0x41),
            (37, 80),
            (47, 0x02),
            (29, 9),
            (33, 3),
            (0, 4),
            (11, 9),
        ] {
            assert_ne!(changed(at, v), Some(k), "byte {at}");
        }
    }

    #[test]
    fn other_shapes_and_bad_lengths_have_no_key() {
        let good = udp_frame(Some(101), 1, 64, 10);
        let cases: [(&str, &[(usize, u8)]); 11] = [
            ("IPv4 options", &[(18, 0x46)]),
            ("a fragment (MF)", &[(24, 0x20)]),
            ("a later fragment (offset)", &[(25, 1)]),
            ("total length beyond the frame", &[(21, 200)]),
            ("total length below the header", &[(20, 0), (21, 19)]),
            ("UDP length beyond the datagram", &[(43, 100)]),
            ("UDP length below the header", &[(43, 7)]),
            ("stacked tags", &[(16, 0x81)]),
            ("VLAN id 0xfff", &[(14, 0x0f), (15, 0xff)]),
            ("another protocol", &[(27, 1)]),
            ("untagged, not IPv4", &[(12, 0x86), (13, 0xdd)]),
        ];
        for (what, edits) in cases {
            let mut f = good.clone();
            for &(at, v) in edits {
                f[at] = v;
            }
            assert!(key_of(&f).is_none(), "{what}");
        }
        assert!(key_of(&good[..40]).is_none());
    }

    #[test]
    fn lookups_need_generation_and_task() {
        let key = key_of(&udp_frame(Some(101), 1, 64, 10)).unwrap();
        let pass = CachedPass {
            sender: Party::Container(0),
            sender_id: Some(ContainerId(101)),
            rule: None,
            scan_window: Some(1),
        };
        let task = TaskIdentity {
            pid: Some(7),
            ..TaskIdentity::default()
        };
        let mut c = FlowCache::new();
        assert_eq!(c.lookup(&key, 1, None), None);
        c.insert(key, 1, Some(&task), pass);
        assert_eq!(c.lookup(&key, 1, Some(&task)), Some(&pass));
        assert_eq!(c.lookup(&key, 2, Some(&task)), None);
        assert_eq!(c.lookup(&key, 1, None), None);
        let other = TaskIdentity {
            pid: Some(8),
            ..task
        };
        assert_eq!(c.lookup(&key, 1, Some(&other)), None);
        assert_eq!(
            c.stats(),
            FlowCacheStats {
                hits: 1,
                misses: 4,
                inserts: 1
            }
        );
    }
}
