//! IPv4 fragment tracking: later fragments follow the decision taken on their datagram's first
//! fragment, and reach only the parties the first fragment reached; overlapping fragments are
//! refused.
//!
//! A datagram's entry is created by its first fragment (offset 0) and expires after a configured
//! time. It records who the first fragment was delivered to ([`Receivers`]: the wire, the host,
//! which containers), so a later fragment whose own headers name someone else (another
//! container's MAC) goes nowhere that the first fragment's policy did not admit. It also records
//! the registry's sequence number at that time, so a container registered later into a slot the
//! first fragment reached is not taken for the receiver it replaced.
//!
//! The table is fixed-size and shared, but no party can take more than [`FRAGMENT_QUOTA`] of its
//! entries: a party at its quota replaces its own oldest datagram; a full table gives way by
//! forgetting the oldest datagram of the party that holds the most. One container flooding
//! first fragments therefore evicts only its own. A later fragment whose datagram has no entry
//! (its first fragment never came, came too long ago, or was evicted) gets the stated default
//! (`EngineConfig::orphan_fragments`, deny by default).

use core::net::Ipv4Addr;

use shoji_shared::{Direction, DropReason};

use crate::registry::MAX_CONTAINERS;

/// Number of datagrams tracked at once.
pub const FRAGMENT_DATAGRAMS: usize = 64;
/// Most datagrams one party (the sending container or host, or on RX the receiving one) may have
/// tracked at once.
pub const FRAGMENT_QUOTA: usize = 8;
/// Most fragments tracked per datagram; more is refused as a bad fragment.
pub const FRAGMENTS_PER_DATAGRAM: usize = 16;

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

/// Whose quota a datagram counts against: on TX its sender, on RX the party its destination MAC
/// names (the wire's group for group-addressed frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The host (untagged frames, or frames to the host's MAC).
    Host,
    /// The container in this registry slot.
    Container(u16),
    /// Group-addressed frames from the wire.
    Wire,
}

/// The parties a first fragment was delivered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receivers {
    wire: bool,
    host: bool,
    containers: [u64; MAX_CONTAINERS / 64],
}

impl Receivers {
    /// Nobody.
    pub const NONE: Receivers = Receivers {
        wire: false,
        host: false,
        containers: [0; MAX_CONTAINERS / 64],
    };

    /// Add the wire.
    pub fn add_wire(&mut self) {
        self.wire = true;
    }

    /// Add the host.
    pub fn add_host(&mut self) {
        self.host = true;
    }

    /// Add the container in `slot`.
    pub fn add_container(&mut self, slot: u16) {
        if let Some(w) = self.containers.get_mut(usize::from(slot) / 64) {
            *w |= 1 << (slot % 64);
        }
    }

    /// Whether the wire is one.
    pub fn wire(&self) -> bool {
        self.wire
    }

    /// Whether the host is one.
    pub fn host(&self) -> bool {
        self.host
    }

    /// Whether the container in `slot` is one.
    pub fn container(&self, slot: u16) -> bool {
        self.containers
            .get(usize::from(slot) / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }
}

/// What was decided for a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramDecision {
    /// Later fragments pass, to these receivers only.
    Pass(Receivers),
    /// Later fragments are dropped for this reason.
    Drop(DropReason),
}

/// The decision a later fragment follows, with the registry's sequence number at the time of its
/// first fragment (a container whose registration is that recent or newer did not receive it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The decision.
    pub decision: DatagramDecision,
    /// [`crate::registry::Registry::sequence`] when the first fragment came.
    pub sequence: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: DatagramKey,
    owner: Owner,
    used: bool,
    created: u64,
    sequence: u64,
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
    owner: Owner::Wire,
    used: false,
    created: 0,
    sequence: 0,
    // Until the first fragment's decision is recorded, later fragments reach nobody.
    decision: DatagramDecision::Pass(Receivers::NONE),
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
    Known(Known),
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

    /// Forget datagrams older than `timeout`.
    fn expire(&mut self, now: u64, timeout: u64) {
        for e in self.entries.iter_mut() {
            if e.used && now.saturating_sub(e.created) >= timeout {
                e.used = false;
            }
        }
    }

    fn find(&mut self, key: &DatagramKey, now: u64, timeout: u64) -> Option<usize> {
        self.expire(now, timeout);
        self.entries.iter().position(|e| e.used && e.key == *key)
    }

    /// Entries `owner` holds.
    fn held_by(&self, owner: Owner) -> usize {
        self.entries
            .iter()
            .filter(|e| e.used && e.owner == owner)
            .count()
    }

    /// The oldest entry of `owner`.
    fn oldest_of(&self, owner: Owner) -> Option<usize> {
        (0..FRAGMENT_DATAGRAMS)
            .filter(|&i| self.entries[i].used && self.entries[i].owner == owner)
            .min_by_key(|&i| self.entries[i].created)
    }

    /// Where a new datagram of `owner` goes: its own oldest at its quota, else a free entry,
    /// else the oldest datagram of the parties holding the most.
    fn place_for(&self, owner: Owner) -> usize {
        if self.held_by(owner) >= FRAGMENT_QUOTA {
            if let Some(i) = self.oldest_of(owner) {
                return i;
            }
        }
        if let Some(i) = self.entries.iter().position(|e| !e.used) {
            return i;
        }
        // Full: the oldest datagram among those of the parties holding the most.
        let most = self
            .entries
            .iter()
            .map(|e| self.held_by(e.owner))
            .max()
            .unwrap_or(0);
        (0..FRAGMENT_DATAGRAMS)
            .filter(|&i| self.held_by(self.entries[i].owner) == most)
            .min_by_key(|&i| self.entries[i].created)
            .unwrap_or(0)
    }

    /// A first fragment `[0, len)` of `owner`'s datagram arrived, with the registry at
    /// `sequence`. Returns false when it overlaps a known first fragment (a duplicate first
    /// fragment is refused: it could carry a different header).
    pub fn first_fragment(
        &mut self,
        key: DatagramKey,
        owner: Owner,
        len: u32,
        sequence: u64,
        now: u64,
        timeout: u64,
    ) -> bool {
        if let Some(i) = self.find(&key, now, timeout) {
            let e = &mut self.entries[i];
            if !e.add_piece(0, len) {
                e.decision = DatagramDecision::Drop(DropReason::BadFragment);
                return false;
            }
            return true;
        }
        let i = self.place_for(owner);
        let e = &mut self.entries[i];
        *e = EMPTY_ENTRY;
        e.key = key;
        e.owner = owner;
        e.used = true;
        e.created = now;
        e.sequence = sequence;
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
            if let DatagramDecision::Pass(_) = e.decision {
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
        LaterFragment::Known(Known {
            decision: e.decision,
            sequence: e.sequence,
        })
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

    const T: u64 = 1_000_000;
    const A: Owner = Owner::Container(0);
    const B: Owner = Owner::Container(1);

    fn key(ident: u16) -> DatagramKey {
        DatagramKey {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            ident,
            protocol: 17,
            direction: Direction::Tx,
        }
    }

    fn to_wire() -> DatagramDecision {
        let mut r = Receivers::NONE;
        r.add_wire();
        DatagramDecision::Pass(r)
    }

    fn known(d: DatagramDecision, sequence: u64) -> LaterFragment {
        LaterFragment::Known(Known {
            decision: d,
            sequence,
        })
    }

    #[test]
    fn receivers_hold_exactly_what_was_added() {
        let mut r = Receivers::NONE;
        assert!(!r.wire() && !r.host() && !r.container(0));
        r.add_container(0);
        r.add_container(63);
        r.add_container(64);
        r.add_container(1023);
        r.add_container(5000); // outside the registry: ignored
        for slot in 0..1024u16 {
            assert_eq!(
                r.container(slot),
                [0, 63, 64, 1023].contains(&slot),
                "slot {slot}"
            );
        }
        assert!(!r.container(5000) && !r.wire() && !r.host());
        r.add_host();
        assert!(r.host() && !r.wire());
        r.add_wire();
        assert!(r.wire());
    }

    #[test]
    fn later_fragments_follow_first_and_overlap_poisons() {
        let mut t = FragmentTable::new();
        assert_eq!(
            t.later_fragment(&key(1), 64, 64, 0, 100),
            LaterFragment::Orphan
        );
        assert!(t.first_fragment(key(1), A, 64, 5, 0, 100));
        // Before the decision is recorded, later fragments reach nobody.
        assert_eq!(
            t.later_fragment(&key(1), 512, 8, 0, 100),
            known(DatagramDecision::Pass(Receivers::NONE), 5)
        );
        t.decide(&key(1), to_wire(), 0, 100);
        assert_eq!(
            t.later_fragment(&key(1), 64, 64, 1, 100),
            known(to_wire(), 5)
        );
        assert_eq!(
            t.later_fragment(&key(1), 96, 64, 2, 100),
            LaterFragment::Overlap
        );
        assert_eq!(
            t.later_fragment(&key(1), 128, 64, 3, 100),
            known(DatagramDecision::Drop(DropReason::BadFragment), 5)
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
        assert!(t.first_fragment(key(2), A, 8, 0, 0, 100));
        let deny = DatagramDecision::Drop(DropReason::PolicyDenied);
        t.decide(&key(2), deny, 0, 100);
        assert_eq!(t.later_fragment(&key(2), 8, 8, 1, 100), known(deny, 0));
        // A second first fragment overlaps the first.
        assert!(!t.first_fragment(key(2), A, 8, 0, 2, 100));
        // A condemned datagram stays condemned.
        t.decide(&key(2), to_wire(), 3, 100);
        assert_eq!(
            t.later_fragment(&key(2), 64, 8, 4, 100),
            known(DatagramDecision::Drop(DropReason::BadFragment), 0)
        );
    }

    /// Fragments that touch without overlapping (one ends where the next begins) are accepted,
    /// whichever arrives first.
    #[test]
    fn adjacent_fragments_do_not_overlap() {
        let mut t = FragmentTable::new();
        assert!(t.first_fragment(key(3), A, 8, 0, 0, 100));
        t.decide(&key(3), to_wire(), 0, 100);
        let pass = known(to_wire(), 0);
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

    #[test]
    fn a_datagram_has_at_most_sixteen_fragments() {
        let mut t = FragmentTable::new();
        assert!(t.first_fragment(key(4), A, 8, 0, 0, 100));
        t.decide(&key(4), to_wire(), 0, 100);
        for n in 1..FRAGMENTS_PER_DATAGRAM as u32 {
            assert_eq!(
                t.later_fragment(&key(4), 8 * n, 8, 1, 100),
                known(to_wire(), 0)
            );
        }
        assert_eq!(
            t.later_fragment(&key(4), 8 * 16, 8, 1, 100),
            LaterFragment::Overlap
        );
    }

    /// A party at its quota replaces its own oldest datagram, never another party's.
    #[test]
    fn a_party_at_its_quota_evicts_only_its_own() {
        let mut t = FragmentTable::new();
        // B has one datagram, then A floods first fragments.
        assert!(t.first_fragment(key(1000), B, 8, 0, 0, T));
        for ident in 0..500u16 {
            assert!(t.first_fragment(key(ident), A, 8, 0, 1 + u64::from(ident), T));
        }
        assert_ne!(
            t.later_fragment(&key(1000), 8, 8, 600, T),
            LaterFragment::Orphan
        );
        assert_eq!(t.held_by(A), FRAGMENT_QUOTA);
        // A's eight most recent ones are kept, every older one forgotten.
        for ident in 0..500u16 {
            let kept = t.later_fragment(&key(ident), 8, 8, 600, T) != LaterFragment::Orphan;
            assert_eq!(kept, ident >= 492, "datagram {ident}");
        }
    }

    /// A full table forgets a datagram of the party holding the most, even when another
    /// party's datagrams are older.
    #[test]
    fn a_full_table_forgets_the_greediest_partys_oldest_not_the_oldest_overall() {
        let mut t = FragmentTable::new();
        let mut now = 1;
        // Fourteen parties with four old datagrams each, then one party with eight new ones.
        for p in 0..14u16 {
            for i in 0..4u16 {
                assert!(t.first_fragment(key(p * 10 + i), Owner::Container(p), 8, 0, now, T));
                now += 1;
            }
        }
        let greedy = Owner::Container(20);
        for i in 0..8u16 {
            assert!(t.first_fragment(key(1000 + i), greedy, 8, 0, now, T));
            now += 1;
        }
        assert!(t.entries.iter().all(|e| e.used));
        assert!(t.first_fragment(key(9999), Owner::Host, 8, 0, now, T));
        // The greedy party's oldest went; the oldest datagram of all (party 0's) stayed.
        assert_eq!(
            t.later_fragment(&key(1000), 8, 8, now, T),
            LaterFragment::Orphan
        );
        assert_ne!(
            t.later_fragment(&key(0), 8, 8, now, T),
            LaterFragment::Orphan
        );
        assert_eq!(t.held_by(greedy), 7);
    }

    /// Sixty-four parties each below the quota fill the table; the next datagram takes the
    /// oldest of the party holding the most, and every party keeps at least one.
    #[test]
    fn a_full_table_gives_way_at_the_greediest_party() {
        let mut t = FragmentTable::new();
        let mut now = 1;
        // Eight parties with eight datagrams each: full.
        for p in 0..8u16 {
            for i in 0..8u16 {
                assert!(t.first_fragment(key(p * 100 + i), Owner::Container(p), 8, 0, now, T));
                now += 1;
            }
        }
        assert!(t.entries.iter().all(|e| e.used));
        // The host's first datagram: party 0 holds 8 (as many as anyone), its oldest goes.
        assert!(t.first_fragment(key(9999), Owner::Host, 8, 0, now, T));
        assert_eq!(
            t.later_fragment(&key(0), 8, 8, now, T),
            LaterFragment::Orphan
        );
        assert_eq!(t.held_by(Owner::Host), 1);
        for p in 0..8u16 {
            assert!(t.held_by(Owner::Container(p)) >= 7, "party {p}");
        }
    }

    #[test]
    fn expired_entries_make_room() {
        let mut t = FragmentTable::new();
        for ident in 0..FRAGMENT_QUOTA as u16 {
            assert!(t.first_fragment(key(ident), A, 8, 0, 0, 100));
        }
        // Long after, A's new datagram takes an expired place, and the old ones are gone.
        assert!(t.first_fragment(key(50), A, 8, 0, 1000, 100));
        assert_eq!(t.held_by(A), 1);
    }
}
