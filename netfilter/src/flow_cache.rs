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

/// Sets of the cache. A key's set is chosen by the top bits of its hash.
pub const FLOW_CACHE_SETS: usize = 1024;
/// Entries per set: two keys whose hashes share a set both stay.
pub const FLOW_CACHE_WAYS: usize = 2;
/// Entries in the cache.
pub const FLOW_CACHE_ENTRIES: usize = FLOW_CACHE_SETS * FLOW_CACHE_WAYS;
/// Task identities the entries can refer to (a task identity is about 170 bytes; most cached
/// frames have no acting task, so entries refer to a smaller table instead of holding one each).
pub const FLOW_CACHE_TASKS: usize = 256;

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

    /// Whether `words` are this key's (word-wise, without a byte comparison call). The words
    /// hold the EtherType at bytes 12..14, so they also tell a tagged key from an untagged one.
    #[inline]
    fn is(&self, words: &[u64; KEY_WORDS]) -> bool {
        self.words
            .iter()
            .zip(words.iter())
            .fold(0, |d, (a, b)| d | (a ^ b))
            == 0
    }

    /// The key's set: the top bits of a multiplicative hash of its words.
    #[inline]
    fn set(&self) -> usize {
        let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
        for w in self.words {
            h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        }
        (h >> (64 - FLOW_CACHE_SETS.trailing_zeros())) as usize
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

/// The part of an entry a lookup compares: the key's words and the policy generation, one
/// cache line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line {
    words: [u64; KEY_WORDS],
    /// [`EMPTY`] for an entry never written.
    generation: u64,
}

/// The generation of an empty line: the engine's generations count up from 0 and never reach it.
const EMPTY: u64 = u64::MAX;

/// The rest of an entry, read only when its line matches.
#[derive(Debug, Clone, Copy)]
struct Payload {
    pass: CachedPass,
    /// The acting task the entry was made for, if any.
    task: Option<TaskRef>,
}

/// An entry's task: a place in the task table and the version of that place the entry was made
/// under. Writing another identity to the place makes a new version, so the entry never stands
/// for the identity that replaced its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskRef {
    index: u16,
    version: u64,
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

/// The cache: [`FLOW_CACHE_SETS`] sets of [`FLOW_CACHE_WAYS`] entries of flow key, policy
/// generation, task and decision.
///
/// The parts of an entry live apart so that a lookup reads one cache line per way ([`Line`]), a
/// hit one more for the decision, and only an entry made for an acting task its task identity
/// (in a table of [`FLOW_CACHE_TASKS`], by the `task_struct` address). A miss inserts into the
/// way that held the same key for the same task, else an empty or outdated way, else the way of
/// the set that was used less recently.
#[derive(Debug, Clone)]
pub struct FlowCache {
    lines: [Line; FLOW_CACHE_ENTRIES],
    payloads: [Payload; FLOW_CACHE_ENTRIES],
    /// Per set, the way used most recently.
    recent: [u8; FLOW_CACHE_SETS],
    /// The identity each place holds, if any.
    tasks: [Option<TaskIdentity>; FLOW_CACHE_TASKS],
    /// Per task place, its version: bumped whenever another identity is written there.
    task_versions: [u64; FLOW_CACHE_TASKS],
    stats: FlowCacheStats,
}

impl Default for FlowCache {
    fn default() -> Self {
        Self::new()
    }
}

const NO_PASS: Payload = Payload {
    pass: CachedPass {
        sender: Party::Host,
        sender_id: None,
        rule: None,
        scan_window: None,
    },
    task: None,
};

/// The task table place of `task`: a hash of its `task_struct` address.
#[inline]
fn task_index(task: &TaskIdentity) -> usize {
    (task.task.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FLOW_CACHE_TASKS.trailing_zeros()))
        as usize
}

impl FlowCache {
    /// An empty cache.
    pub const fn new() -> Self {
        FlowCache {
            lines: [Line {
                words: [0; KEY_WORDS],
                generation: EMPTY,
            }; FLOW_CACHE_ENTRIES],
            payloads: [NO_PASS; FLOW_CACHE_ENTRIES],
            recent: [0; FLOW_CACHE_SETS],
            tasks: [None; FLOW_CACHE_TASKS],
            task_versions: [0; FLOW_CACHE_TASKS],
            stats: FlowCacheStats {
                hits: 0,
                misses: 0,
                inserts: 0,
            },
        }
    }

    /// Whether `entry` refers to exactly `task` (or to no task, when `task` is `None`).
    #[inline]
    fn same_task(&self, entry: Option<TaskRef>, task: Option<&TaskIdentity>) -> bool {
        match (entry, task) {
            (None, None) => true,
            (Some(r), Some(t)) => {
                let i = usize::from(r.index);
                self.task_versions[i] == r.version && self.tasks[i].as_ref() == Some(t)
            }
            _ => false,
        }
    }

    /// A reference to `task` in the task table, writing it there (as a new version of its
    /// place) unless the place already holds exactly it.
    fn task_ref(&mut self, task: &TaskIdentity) -> TaskRef {
        let i = task_index(task);
        if self.tasks[i].as_ref() != Some(task) {
            self.tasks[i] = Some(*task);
            self.task_versions[i] += 1;
        }
        TaskRef {
            index: i as u16,
            version: self.task_versions[i],
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
        let set = key.set();
        let first = set * FLOW_CACHE_WAYS;
        for way in 0..FLOW_CACHE_WAYS {
            let i = first + way;
            let line = &self.lines[i];
            if line.generation == generation
                && key.is(&line.words)
                && self.same_task(self.payloads[i].task, task)
            {
                self.stats.hits += 1;
                self.recent[set] = way as u8;
                return Some(&self.payloads[i].pass);
            }
        }
        self.stats.misses += 1;
        None
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
        let set = key.set();
        let first = set * FLOW_CACHE_WAYS;
        // The same key for the same task (an entry found outdated), else an empty or outdated
        // way, else the one used less recently.
        let way = (0..FLOW_CACHE_WAYS)
            .find(|&w| {
                let i = first + w;
                key.is(&self.lines[i].words) && self.same_task(self.payloads[i].task, task)
            })
            .or_else(|| {
                (0..FLOW_CACHE_WAYS).find(|&w| self.lines[first + w].generation != generation)
            })
            .unwrap_or((usize::from(self.recent[set]) + 1) % FLOW_CACHE_WAYS);
        let task = task.map(|t| self.task_ref(t));
        let i = first + way;
        self.lines[i] = Line {
            words: key.words,
            generation,
        };
        self.payloads[i] = Payload { pass, task };
        self.recent[set] = way as u8;
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
    fn pass(slot: u16) -> CachedPass {
        CachedPass {
            sender: Party::Container(slot),
            sender_id: Some(ContainerId(u32::from(slot) + 100)),
            rule: None,
            scan_window: None,
        }
    }

    /// `n` keys (of tagged UDP frames, one VLAN each) that share one set.
    fn keys_in_one_set(n: usize) -> Vec<FlowKey> {
        let mut by_set: std::collections::BTreeMap<usize, Vec<FlowKey>> = Default::default();
        for vlan in 1..4000 {
            let key = key_of(&udp_frame(Some(vlan), 1, 64, 10)).unwrap();
            let same = by_set.entry(key.set()).or_default();
            same.push(key);
            if same.len() == n {
                return same.clone();
            }
        }
        panic!("no {n} keys in one set");
    }

    /// Two task identities (of different tasks) that take the same place in the task table.
    fn tasks_in_one_place() -> (TaskIdentity, TaskIdentity) {
        let a = TaskIdentity {
            task: 0xffff_8880_0100_0000,
            pid: Some(7),
            uid: Some(1000),
            ..TaskIdentity::default()
        };
        let b = (1..1_000_000u64)
            .map(|k| TaskIdentity {
                task: a.task + k * 0x40,
                pid: Some(8),
                uid: Some(0),
                ..TaskIdentity::default()
            })
            .find(|b| task_index(b) == task_index(&a))
            .unwrap();
        (a, b)
    }

    #[test]
    fn keys_sharing_a_set_both_stay() {
        let k = keys_in_one_set(2);
        let mut c = FlowCache::new();
        c.insert(k[0], 1, None, pass(0));
        c.insert(k[1], 1, None, pass(1));
        assert_eq!(c.lookup(&k[0], 1, None), Some(&pass(0)));
        assert_eq!(c.lookup(&k[1], 1, None), Some(&pass(1)));
    }

    #[test]
    fn a_third_key_replaces_the_one_used_less_recently() {
        let k = keys_in_one_set(3);
        let mut c = FlowCache::new();
        c.insert(k[0], 1, None, pass(0));
        c.insert(k[1], 1, None, pass(1));
        assert!(c.lookup(&k[0], 1, None).is_some());
        c.insert(k[2], 1, None, pass(2));
        assert_eq!(
            c.lookup(&k[1], 1, None),
            None,
            "the less recently used way goes"
        );
        assert_eq!(c.lookup(&k[2], 1, None), Some(&pass(2)));
        assert_eq!(c.lookup(&k[0], 1, None), Some(&pass(0)));
        // Now k[0] was used last: the next new key replaces k[2].
        c.insert(k[1], 1, None, pass(1));
        assert_eq!(c.lookup(&k[2], 1, None), None);
        assert_eq!(c.lookup(&k[0], 1, None), Some(&pass(0)));
    }

    #[test]
    fn an_outdated_or_empty_way_goes_before_a_current_one() {
        let k = keys_in_one_set(3);
        let mut c = FlowCache::new();
        c.insert(k[0], 1, None, pass(0));
        // The set's other way is empty: k[1] takes it although k[0] was used last.
        c.insert(k[1], 2, None, pass(1));
        assert!(c.lookup(&k[1], 2, None).is_some());
        // k[0]'s entry is from generation 1: k[2] replaces it, not k[1]'s current one, even
        // though k[1] was used last.
        c.insert(k[2], 2, None, pass(2));
        assert_eq!(c.lookup(&k[1], 2, None), Some(&pass(1)));
        assert_eq!(c.lookup(&k[2], 2, None), Some(&pass(2)));
    }

    #[test]
    fn a_key_made_again_replaces_its_own_entry() {
        let k = keys_in_one_set(2);
        let mut c = FlowCache::new();
        c.insert(k[1], 1, None, pass(1));
        c.insert(k[0], 1, None, pass(0));
        // k[0] again in a new generation: its own way, not k[1]'s outdated one (which would
        // leave two entries for k[0] and lose k[1]).
        c.insert(k[0], 2, None, pass(5));
        assert_eq!(c.lookup(&k[1], 1, None), Some(&pass(1)));
        assert_eq!(c.lookup(&k[0], 2, None), Some(&pass(5)));
        assert_eq!(c.lookup(&k[0], 1, None), None);
    }

    #[test]
    fn one_key_for_two_tasks_keeps_two_entries() {
        let k = keys_in_one_set(1)[0];
        let (a, _) = tasks_in_one_place();
        let mut c = FlowCache::new();
        c.insert(k, 1, Some(&a), pass(1));
        c.insert(k, 1, None, pass(2));
        assert_eq!(c.lookup(&k, 1, Some(&a)), Some(&pass(1)));
        assert_eq!(c.lookup(&k, 1, None), Some(&pass(2)));
    }

    #[test]
    fn an_entry_never_answers_for_the_task_that_took_its_tasks_place() {
        let k = keys_in_one_set(2);
        let (a, b) = tasks_in_one_place();
        let mut c = FlowCache::new();
        c.insert(k[0], 1, Some(&a), pass(1));
        assert_eq!(c.lookup(&k[0], 1, Some(&a)), Some(&pass(1)));
        // b's entry takes a's place in the task table.
        c.insert(k[1], 1, Some(&b), pass(2));
        assert_eq!(c.lookup(&k[1], 1, Some(&b)), Some(&pass(2)));
        assert_eq!(
            c.lookup(&k[0], 1, Some(&b)),
            None,
            "made for a, asked for b"
        );
        assert_eq!(
            c.lookup(&k[0], 1, Some(&a)),
            None,
            "a is no longer in the table"
        );
        // a back in its place: its new entry hits, b's old one does not answer for a or b.
        c.insert(k[0], 1, Some(&a), pass(3));
        assert_eq!(c.lookup(&k[0], 1, Some(&a)), Some(&pass(3)));
        assert_eq!(c.lookup(&k[1], 1, Some(&a)), None);
        assert_eq!(c.lookup(&k[1], 1, Some(&b)), None);
        // The same identity written again keeps its version: entries made for it stay.
        c.insert(k[1], 1, Some(&a), pass(4));
        assert_eq!(c.lookup(&k[0], 1, Some(&a)), Some(&pass(3)));
        assert_eq!(c.lookup(&k[1], 1, Some(&a)), Some(&pass(4)));
    }
    #[test]
    fn keys_differ_in_any_word() {
        let a = key_of(&udp_frame(Some(101), 1, 64, 10)).unwrap();
        // Two words changed by the same bits: a comparison that let the differences cancel
        // would call these the same key.
        let mut b = a;
        b.words[2] ^= 0x0101;
        b.words[3] ^= 0x0101;
        assert!(!a.is(&b.words));
        assert!(a.is(&a.words));
        for w in 0..KEY_WORDS {
            let mut c = a;
            c.words[w] ^= 1 << 40;
            assert!(!a.is(&c.words), "word {w}");
        }
    }

    #[test]
    fn flows_in_different_sets_all_stay() {
        // 600 keys, each the only one of its set: every one is still there after all went in.
        let mut keys: std::collections::BTreeMap<usize, FlowKey> = Default::default();
        for vlan in 1..4000 {
            let key = key_of(&udp_frame(Some(vlan), 1, 64, 10)).unwrap();
            keys.entry(key.set()).or_insert(key);
            if keys.len() == 600 {
                break;
            }
        }
        assert_eq!(keys.len(), 600);
        let mut c = FlowCache::new();
        for (n, key) in keys.values().enumerate() {
            c.insert(*key, 1, None, pass(n as u16));
        }
        for (n, key) in keys.values().enumerate() {
            assert_eq!(c.lookup(key, 1, None), Some(&pass(n as u16)), "key {n}");
        }
    }

    #[test]
    fn entries_for_tasks_in_different_places_all_stay() {
        // 16 tasks, each alone in its place of the task table, one entry each for one key.
        let key = keys_in_one_set(1)[0];
        let mut tasks: std::collections::BTreeMap<usize, TaskIdentity> = Default::default();
        for k in 0..10_000u64 {
            let t = TaskIdentity {
                task: 0xffff_8880_0200_0000 + k * 0x2c40,
                pid: Some(100 + k as u32),
                ..TaskIdentity::default()
            };
            tasks.entry(task_index(&t)).or_insert(t);
            if tasks.len() == 16 {
                break;
            }
        }
        assert_eq!(tasks.len(), 16, "16 tasks in 16 places");
        let keys: Vec<FlowKey> = (1..4000)
            .map(|vlan| key_of(&udp_frame(Some(vlan), 1, 64, 10)).unwrap())
            .filter(|k| k.set() != key.set())
            .take(16)
            .collect();
        let mut c = FlowCache::new();
        for (n, (t, k)) in tasks.values().zip(&keys).enumerate() {
            c.insert(*k, 1, Some(t), pass(n as u16));
        }
        for (n, (t, k)) in tasks.values().zip(&keys).enumerate() {
            assert_eq!(c.lookup(k, 1, Some(t)), Some(&pass(n as u16)), "task {n}");
        }
    }

    #[test]
    fn a_new_entry_counts_as_the_most_recently_used() {
        let k = keys_in_one_set(4);
        assert_ne!(k[0].set(), 0, "a set other than the first");
        let mut c = FlowCache::new();
        c.insert(k[0], 1, None, pass(0));
        c.insert(k[1], 1, None, pass(1));
        assert!(c.lookup(&k[1], 1, None).is_some());
        // k[0] is the less recently used: k[2] replaces it and is then the most recent one.
        c.insert(k[2], 1, None, pass(2));
        assert_eq!(c.lookup(&k[0], 1, None), None);
        // So k[3] replaces k[1], not k[2].
        c.insert(k[3], 1, None, pass(3));
        assert_eq!(c.lookup(&k[1], 1, None), None);
        assert_eq!(c.lookup(&k[2], 1, None), Some(&pass(2)));
        assert_eq!(c.lookup(&k[3], 1, None), Some(&pass(3)));
    }
}
