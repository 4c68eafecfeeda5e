//! Frames crossing the mediated NIC: direction, verdicts, drop reasons and the filter hook the NIC
//! driver calls for every frame.

use crate::identity::TaskIdentity;

/// Which way a frame crosses the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the guest to the wire (transmit).
    Tx,
    /// From the wire to the guest (receive).
    Rx,
}

impl Direction {
    /// Both directions, transmit first.
    pub const ALL: [Direction; 2] = [Direction::Tx, Direction::Rx];

    /// Short stable name (`tx`, `rx`: logs, JSON, Prometheus labels).
    pub fn name(self) -> &'static str {
        match self {
            Direction::Tx => "tx",
            Direction::Rx => "rx",
        }
    }
}

/// Why a frame was dropped. Stable numbering: the values appear in counters and in the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DropReason {
    /// Shorter than the headers it claims, or lengths that disagree.
    Truncated = 1,
    /// Structurally invalid (bad version, bad header length, bad ARP sizes...).
    Malformed = 2,
    /// A policy rule (or the default action) denied it.
    PolicyDenied = 3,
    /// Source MAC does not belong to the sending container.
    SpoofedMac = 4,
    /// Source IPv4 address does not belong to the sending container.
    SpoofedIp = 5,
    /// ARP sender fields do not belong to the sending container, or (RX) claim a container's IP
    /// from a foreign MAC.
    SpoofedArp = 6,
    /// The VLAN tag and the task identity name different containers.
    IdentityMismatch = 7,
    /// The sender is blocked by the port-scan detector.
    PortScanBlocked = 8,
    /// IPv6 (including NDP) from or to a container without a rule allowing it.
    Ipv6Denied = 9,
    /// An IPv4 fragment too small to carry the transport header, or overlapping.
    BadFragment = 10,
    /// A VLAN tag no registered container owns.
    UnknownVlan = 11,
    /// A guest descriptor pointed outside guest RAM, into Shoji's memory, or had a bad length.
    HostileDescriptor = 12,
    /// No room in a ring or queue.
    NoBuffer = 13,
    /// The frame is larger than Shoji accepts.
    Oversize = 14,
    /// Inbound frame for which no container or host delivery exists.
    NoDestination = 15,
    /// A source the inbound scan detector has blocked.
    ScanSourceBlocked = 16,
    /// A rule of the administrator's (management plane) denied it.
    AdminDenied = 17,
    /// A container answered as a DHCP server (UDP from port 67, or DHCPv6 from port 547).
    RogueDhcp = 18,
    /// A container spoke as a router (IPv6 router advertisement or redirect, ICMP redirect).
    RogueRouter = 19,
}

impl DropReason {
    /// Every reason, in numbering order (for counter tables).
    pub const ALL: [DropReason; 19] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::PolicyDenied,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::IdentityMismatch,
        DropReason::PortScanBlocked,
        DropReason::Ipv6Denied,
        DropReason::BadFragment,
        DropReason::UnknownVlan,
        DropReason::HostileDescriptor,
        DropReason::NoBuffer,
        DropReason::Oversize,
        DropReason::NoDestination,
        DropReason::ScanSourceBlocked,
        DropReason::AdminDenied,
        DropReason::RogueDhcp,
        DropReason::RogueRouter,
    ];
    /// Number of reasons; counter arrays are indexed by `reason as usize - 1`.
    pub const COUNT: usize = Self::ALL.len();

    /// Index into a counter array.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// Short stable name (used in logs and Prometheus labels).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::PolicyDenied => "policy_denied",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::IdentityMismatch => "identity_mismatch",
            DropReason::PortScanBlocked => "port_scan_blocked",
            DropReason::Ipv6Denied => "ipv6_denied",
            DropReason::BadFragment => "bad_fragment",
            DropReason::UnknownVlan => "unknown_vlan",
            DropReason::HostileDescriptor => "hostile_descriptor",
            DropReason::NoBuffer => "no_buffer",
            DropReason::Oversize => "oversize",
            DropReason::NoDestination => "no_destination",
            DropReason::ScanSourceBlocked => "scan_source_blocked",
            DropReason::AdminDenied => "admin_denied",
            DropReason::RogueDhcp => "rogue_dhcp",
            DropReason::RogueRouter => "rogue_router",
        }
    }

    /// The reason with ABI number `n`, if any.
    pub fn from_u16(n: u16) -> Option<DropReason> {
        Self::ALL.iter().copied().find(|r| *r as u16 == n)
    }
}

/// The outcome of filtering one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered onward (possibly rewritten, relayed or copied to several destinations).
    Pass,
    /// Dropped, for this reason.
    Drop(DropReason),
}

/// What the NIC driver knows about a frame when it asks the filter.
#[derive(Debug, Clone, Copy)]
pub struct FrameMeta<'a> {
    /// Direction of the frame.
    pub direction: Direction,
    /// A VLAN tag carried out of band (TX descriptor VLE / RX VLAN stripping), if any.
    pub descriptor_vlan: Option<u16>,
    /// The task that was running when the frame was handed over (TX only), if known.
    pub task: Option<&'a TaskIdentity>,
}

/// Where a filter sends the frames it lets through. Implemented by the NIC driver.
pub trait FrameSink {
    /// Queue `frame` for transmission on the wire.
    fn to_wire(&mut self, frame: &[u8]);
    /// Queue the frame `head` followed by `tail` for the wire: a frame rewritten without copying
    /// it first (a tagged frame sent without its 802.1Q tag is its first 12 bytes, then the bytes
    /// after the tag). The sink joins the pieces while it copies the frame anyway.
    fn to_wire_joined(&mut self, head: &[u8], tail: &[u8]);
    /// Queue `frame` for delivery into the guest's receive ring.
    fn to_guest(&mut self, frame: &[u8]);
    /// Queue for the guest the frame made of `parts` laid end to end: a frame rewritten without
    /// copying it first (a frame given an 802.1Q tag is its first 12 bytes, the tag, then the
    /// bytes after any tag it had). The sink joins the pieces while it copies the frame into
    /// the guest's buffers anyway.
    fn to_guest_joined(&mut self, parts: [&[u8]; 3]);
}

/// The policy hook: called by the NIC driver for every frame, in both directions.
///
/// The filter may emit zero or more (possibly rewritten) frames through `out` — to the wire, into
/// the guest, or both (relay between containers) — and returns the verdict for accounting.
pub trait FrameFilter {
    /// Decide `frame` and emit what passes.
    fn filter(&mut self, meta: &FrameMeta<'_>, frame: &[u8], out: &mut dyn FrameSink) -> Verdict;
}

/// The filter used until a policy engine is attached: everything continues in its direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassAll;

impl FrameFilter for PassAll {
    fn filter(&mut self, meta: &FrameMeta<'_>, frame: &[u8], out: &mut dyn FrameSink) -> Verdict {
        match meta.direction {
            Direction::Tx => out.to_wire(frame),
            Direction::Rx => out.to_guest(frame),
        }
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_numbering_is_dense_and_round_trips() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(DropReason::from_u16(*r as u16), Some(*r));
        }
        assert_eq!(DropReason::from_u16(0), None);
        assert_eq!(DropReason::from_u16(DropReason::COUNT as u16 + 1), None);
    }
}
