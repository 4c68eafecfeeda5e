//! IPv4 fragment tracking: later fragments follow the decision taken on their datagram's first
//! fragment; overlapping fragments are refused.
//!
//! The table is fixed-size and set-associative. A datagram's entry is created by its first
//! fragment (offset 0) and expires after a configured time. A later fragment whose datagram has
//! no entry (its first fragment never came, came too long ago, or was evicted) gets the stated
//! default (`EngineConfig::orphan_fragments`, deny by default).

use core::net::Ipv4Addr;

use shoji_shared::{Direction, DropReason};

use crate::index::IndexKey;

/// Number of datagrams tracked at once.
pub const FRAGMENT_DATAGRAMS: usize = 64;
/// Most fragments tracked per datagram; more is refused as a bad fragment.
pub const FRAGMENTS_PER_DATAGRAM: usize = 16;
const WAYS: usize = 4;

/// Identifies a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP identification.
    pub ident: u16,
    /// IP protocol.
    pub protocol: u8,
    /// Direction it crosses the NIC.
    pub direction: Direction,
}

impl DatagramKey {
    fn hash(&self) -> u32 {
        let a = u64::from(u32::from(self.src)) << 32 | u64::from(u32::from(self.dst));
        let b = u64::from(self.ident) << 16
            | u64::from(self.protocol) << 8
            | u64::from(self.direction == Direction::Tx);
        (a ^ b.rotate_left(29)).hash32()
    }
}

/// What was decided for a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramDecision {
    /// Later fragments pass (subject to the same delivery).
    Pass,
    /// Later fragments are dropped for this reason.
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: DatagramKey,
    used: bool,
    created: u64,
    decision: DatagramDecision,
    pieces: [(u32, u32); FRAGMENTS_PER_DATAGRAM],
    piece_count: u8,
}

const EMPTY_ENTRY: Entry = Entry {
    key: DatagramKey {
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        ident: 0,
        protocol: 0,
        direction: Direction::Tx,
    },
    used: false,
    created: 0,
    decision: DatagramDecision::Pass,
    pieces: [(0, 0); FRAGMENTS_PER_DATAGRAM],
    piece_count: 0,
};

impl Entry {
    /// Add the byte range `[start, end)`; false when it overlaps or the entry is full.
    fn add_piece(&mut self, start: u32, end: u32) -> bool {
        let n = self.piece_count as usize;
        if self.pieces[..n].iter().any(|&(s, e)| start < e && s < end) {
            return false;
        }
        if n >= FRAGMENTS_PER_DATAGRAM {
            return false;
        }
        self.pieces[n] = (start, end);
        self.piece_count += 1;
        true
    }
}

/// What the table says about a later fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaterFragment {
    /// The datagram's first fragment was seen: follow its decision.
    Known(DatagramDecision),
    /// The fragment overlaps one already seen (or the datagram has too many fragments).
    Overlap,
    /// No first fragment is known for this datagram.
    Orphan,
}

/// The fragment table.
#[derive(Debug, Clone)]
pub struct FragmentTable {
    entries: [Entry; FRAGMENT_DATAGRAMS],
}

impl FragmentTable {
    /// Empty.
    pub const fn new() -> FragmentTable {
        FragmentTable {
            entries: [EMPTY_ENTRY; FRAGMENT_DATAGRAMS],
        }
    }

    fn set(&self, key: &DatagramKey) -> core::ops::Range<usize> {
        let base = (key.hash() as usize) & (FRAGMENT_DATAGRAMS - 1) & !(WAYS - 1);
        base..base + WAYS
    }

    fn find(&mut self, key: &DatagramKey, now: u64, timeout: u64) -> Option<usize> {
        for i in self.set(key) {
            let e = &mut self.entries[i];
            if e.used && now.saturating_sub(e.created) >= timeout {
                e.used = false;
            }
            if e.used && e.key == *key {
                return Some(i);
            }
        }
        None
    }

    /// A first fragment `[0, len)` arrived. Returns false when it overlaps a known first
    /// fragment (a duplicate first fragment is refused: it could carry a different header).
    pub fn first_fragment(&mut self, key: DatagramKey, len: u32, now: u64, timeout: u64) -> bool {
        if let Some(i) = self.find(&key, now, timeout) {
            let e = &mut self.entries[i];
            if !e.add_piece(0, len) {
                e.decision = DatagramDecision::Drop(DropReason::BadFragment);
                return false;
            }
            return true;
        }
        let range = self.set(&key);
        let mut victim = range.start;
        for i in range {
            if !self.entries[i].used {
                victim = i;
                break;
            }
            if self.entries[i].created < self.entries[victim].created {
                victim = i;
            }
        }
        let e = &mut self.entries[victim];
        *e = EMPTY_ENTRY;
        e.key = key;
        e.used = true;
        e.created = now;
        e.pieces[0] = (0, len);
        e.piece_count = 1;
        true
    }

    /// Record the decision taken on the first fragment of `key`.
    pub fn decide(
        &mut self,
        key: &DatagramKey,
        decision: DatagramDecision,
        now: u64,
        timeout: u64,
    ) {
        if let Some(i) = self.find(key, now, timeout) {
            let e = &mut self.entries[i];
            // A datagram already condemned (overlap) stays condemned.
            if e.decision == DatagramDecision::Pass {
                e.decision = decision;
            }
        }
    }

    /// A later fragment covering `[offset, offset + len)` arrived.
    pub fn later_fragment(
        &mut self,
        key: &DatagramKey,
        offset: u32,
        len: u32,
        now: u64,
        timeout: u64,
    ) -> LaterFragment {
        let Some(i) = self.find(key, now, timeout) else {
            return LaterFragment::Orphan;
        };
        let e = &mut self.entries[i];
        if !e.add_piece(offset, offset.saturating_add(len)) {
            // Overlap poisons the whole datagram: its remaining fragments are dropped too.
            e.decision = DatagramDecision::Drop(DropReason::BadFragment);
            return LaterFragment::Overlap;
        }
        LaterFragment::Known(e.decision)
    }
}

impl Default for FragmentTable {
    fn default() -> Self {
        FragmentTable::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ident: u16) -> DatagramKey {
        DatagramKey {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            ident,
            protocol: 17,
            direction: Direction::Tx,
        }
    }

    #[test]
    fn later_fragments_follow_first_and_overlap_poisons() {
        let mut t = FragmentTable::new();
        assert_eq!(
            t.later_fragment(&key(1), 64, 64, 0, 100),
            LaterFragment::Orphan
        );
        assert!(t.first_fragment(key(1), 64, 0, 100));
        t.decide(&key(1), DatagramDecision::Pass, 0, 100);
        assert_eq!(
            t.later_fragment(&key(1), 64, 64, 1, 100),
            LaterFragment::Known(DatagramDecision::Pass)
        );
        assert_eq!(
            t.later_fragment(&key(1), 96, 64, 2, 100),
            LaterFragment::Overlap
        );
        assert_eq!(
            t.later_fragment(&key(1), 128, 64, 3, 100),
            LaterFragment::Known(DatagramDecision::Drop(DropReason::BadFragment))
        );
        // Expiry forgets the datagram.
        assert_eq!(
            t.later_fragment(&key(1), 192, 8, 200, 100),
            LaterFragment::Orphan
        );
    }

    #[test]
    fn denied_first_fragment_drops_later_ones() {
        let mut t = FragmentTable::new();
        assert!(t.first_fragment(key(2), 8, 0, 100));
        t.decide(
            &key(2),
            DatagramDecision::Drop(DropReason::PolicyDenied),
            0,
            100,
        );
        assert_eq!(
            t.later_fragment(&key(2), 8, 8, 1, 100),
            LaterFragment::Known(DatagramDecision::Drop(DropReason::PolicyDenied))
        );
        // A second first fragment overlaps the first.
        assert!(!t.first_fragment(key(2), 8, 2, 100));
    }

    /// Datagrams that differ in one key field only (source, destination, identification or
    /// protocol) are spread over the table: sixteen of them are all tracked at once, where a
    /// single set holds four.
    #[test]
    fn datagrams_differing_in_one_key_field_are_tracked_side_by_side() {
        let by_field: [fn(u8) -> DatagramKey; 4] = [
            |i| DatagramKey {
                src: Ipv4Addr::new(10, 0, 1, i),
                ..key(7)
            },
            |i| DatagramKey {
                dst: Ipv4Addr::new(10, 0, 2, i),
                ..key(7)
            },
            |i| key(u16::from(i)),
            |i| DatagramKey {
                protocol: 100 + i,
                ..key(7)
            },
        ];
        for (field, make) in by_field.iter().enumerate() {
            let mut t = FragmentTable::new();
            for i in 0..16 {
                assert!(t.first_fragment(make(i), 8, 0, 100));
            }
            for i in 0..16 {
                assert_ne!(
                    t.later_fragment(&make(i), 8, 8, 1, 100),
                    LaterFragment::Orphan,
                    "field {field}, datagram {i}"
                );
            }
        }
    }

    /// The table is set-associative: a datagram's set is one of the aligned, disjoint groups
    /// of `WAYS` entries, and the sets of different datagrams use the whole table.
    #[test]
    fn a_datagrams_set_is_an_aligned_group_of_ways() {
        let t = FragmentTable::new();
        let mut starts = [false; FRAGMENT_DATAGRAMS / WAYS];
        for ident in 0..1000u16 {
            let set = t.set(&key(ident));
            assert_eq!(set.start % WAYS, 0, "ident {ident}");
            assert_eq!(set.len(), WAYS);
            assert!(set.end <= FRAGMENT_DATAGRAMS);
            starts[set.start / WAYS] = true;
        }
        assert!(starts.iter().all(|s| *s), "every set is used");
    }

    /// Fragments that touch without overlapping (one ends where the next begins) are accepted,
    /// whichever arrives first.
    #[test]
    fn adjacent_fragments_do_not_overlap() {
        let mut t = FragmentTable::new();
        assert!(t.first_fragment(key(3), 8, 0, 100));
        t.decide(&key(3), DatagramDecision::Pass, 0, 100);
        let pass = LaterFragment::Known(DatagramDecision::Pass);
        assert_eq!(t.later_fragment(&key(3), 16, 8, 1, 100), pass);
        assert_eq!(
            t.later_fragment(&key(3), 8, 8, 2, 100),
            pass,
            "fills the gap exactly"
        );
        assert_eq!(
            t.later_fragment(&key(3), 23, 2, 3, 100),
            LaterFragment::Overlap
        );
    }

    /// Six datagrams that share one set.
    fn same_set() -> [DatagramKey; 6] {
        let t = FragmentTable::new();
        let set = t.set(&key(0));
        let mut keys = [key(0); 6];
        let mut n = 1;
        for ident in 1.. {
            if n == keys.len() {
                break;
            }
            if t.set(&key(ident)) == set {
                keys[n] = key(ident);
                n += 1;
            }
        }
        keys
    }

    /// A full set gives way to a new datagram by forgetting its oldest one; a set with room
    /// forgets nothing.
    #[test]
    fn a_full_set_evicts_its_oldest_datagram() {
        let k = same_set();
        let long = 1_000_000;
        let mut t = FragmentTable::new();
        for (i, key) in k[..4].iter().enumerate() {
            assert!(t.first_fragment(*key, 8, 1 + i as u64, long));
        }
        for key in &k[..4] {
            assert_ne!(t.later_fragment(key, 8, 8, 5, long), LaterFragment::Orphan);
        }
        // The fifth replaces k0 (created at 1), the sixth k1 (created at 2): the oldest each time.
        assert!(t.first_fragment(k[4], 8, 5, long));
        assert!(t.first_fragment(k[5], 8, 6, long));
        let orphan = |t: &mut FragmentTable, key: &DatagramKey| {
            t.later_fragment(key, 100, 8, 7, long) == LaterFragment::Orphan
        };
        assert!(orphan(&mut t, &k[0]));
        assert!(orphan(&mut t, &k[1]));
        for key in &k[2..] {
            assert!(!orphan(&mut t, key), "{key:?}");
        }
    }

    #[test]
    fn eviction_keeps_table_bounded() {
        let mut t = FragmentTable::new();
        for ident in 0..1000u16 {
            assert!(t.first_fragment(key(ident), 8, u64::from(ident), 1_000_000));
        }
        // Recent datagrams are still known.
        assert_ne!(
            t.later_fragment(&key(999), 8, 8, 1000, 1_000_000),
            LaterFragment::Orphan
        );
    }
}
