//! The bounded security-event ring: spoofs, scans, policy changes and drop samples.
//!
//! Pushing never blocks and never fails: when the ring is full the oldest event is overwritten
//! and counted. Readers name the next sequence number they want and are told how many events
//! they missed.

use core::net::Ipv4Addr;

use shoji_shared::{ContainerId, Direction, DropReason};

use crate::parse::MacAddr;

/// Number of events the ring holds.
pub const EVENT_CAPACITY: usize = 256;

/// What changed in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChange {
    /// A container was registered.
    Registered,
    /// A container's addresses or rules were replaced.
    Updated,
    /// A container was unregistered.
    Unregistered,
    /// The host policy was replaced.
    HostPolicy,
    /// The engine configuration was replaced.
    Config,
    /// The administrator added a rule (the event's container: the rule's, if it names one).
    AdminRuleAdded,
    /// The administrator removed a rule (the event's container: the rule's, if it names one).
    AdminRuleRemoved,
}

impl PolicyChange {
    /// Snake-case name (logs, JSON, `shojictl`).
    pub fn name(self) -> &'static str {
        match self {
            PolicyChange::Registered => "registered",
            PolicyChange::Updated => "updated",
            PolicyChange::Unregistered => "unregistered",
            PolicyChange::HostPolicy => "host_policy",
            PolicyChange::Config => "config",
            PolicyChange::AdminRuleAdded => "admin_rule_added",
            PolicyChange::AdminRuleRemoved => "admin_rule_removed",
        }
    }
}

/// A security-relevant occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A spoofed frame was dropped.
    Spoof {
        /// `SpoofedMac`, `SpoofedIp`, `SpoofedArp` or `IdentityMismatch`.
        reason: DropReason,
        /// Direction of the frame.
        direction: Direction,
        /// The container its port (VLAN tag) names; `None` for the host or the wire.
        sender: Option<ContainerId>,
        /// The container it claimed to be (owner of the address or of the task), if any.
        claimed: Option<ContainerId>,
        /// The source MAC of the frame (ARP: sender hardware address).
        mac: MacAddr,
        /// The source IPv4 address claimed, if any.
        ipv4: Option<Ipv4Addr>,
    },
    /// A container was caught scanning and is blocked outbound.
    OutboundScan {
        /// The scanning container.
        container: ContainerId,
        /// Distinct destination ports in the window.
        distinct_ports: u16,
        /// Distinct destination hosts in the window.
        distinct_hosts: u16,
        /// Blocked until this time.
        blocked_until: u64,
    },
    /// A source on the wire was seen scanning.
    InboundScan {
        /// The (spoofable) source address.
        source: Ipv4Addr,
        /// Distinct destination ports in the window.
        distinct_ports: u16,
        /// Distinct destination hosts in the window.
        distinct_hosts: u16,
        /// Blocked until this time, or `None` when it was only recorded (allow-listed, or
        /// blocking disabled).
        blocked_until: Option<u64>,
    },
    /// The policy changed.
    Policy {
        /// The container concerned (`None` for host policy or configuration).
        container: Option<ContainerId>,
        /// What changed.
        change: PolicyChange,
    },
    /// A sample of dropped frames.
    DropSample {
        /// The party it was counted for (`None`: host or unattributed).
        container: Option<ContainerId>,
        /// Direction.
        direction: Direction,
        /// Why it was dropped.
        reason: DropReason,
    },
}

/// One event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// The engine's time when it happened.
    pub time: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The result of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRead {
    /// Events copied into the caller's buffer.
    pub copied: usize,
    /// The sequence number to ask for next.
    pub next_seq: u64,
    /// Events between the requested sequence number and the first copied one that were
    /// overwritten before this read.
    pub missed: u64,
}

/// The ring.
#[derive(Debug, Clone)]
pub struct EventRing {
    events: [Option<Event>; EVENT_CAPACITY],
    next_seq: u64,
    overwritten: u64,
}

impl EventRing {
    /// An empty ring.
    pub const fn new() -> EventRing {
        EventRing {
            events: [None; EVENT_CAPACITY],
            next_seq: 1,
            overwritten: 0,
        }
    }

    /// Record an event (overwrites the oldest when full).
    pub fn push(&mut self, time: u64, kind: EventKind) {
        let seq = self.next_seq;
        let slot = &mut self.events[(seq % EVENT_CAPACITY as u64) as usize];
        if slot.is_some() {
            self.overwritten += 1;
        }
        *slot = Some(Event { seq, time, kind });
        self.next_seq += 1;
    }

    /// Sequence number of the oldest event still held (equal to `next_seq` when empty).
    pub fn oldest_seq(&self) -> u64 {
        self.next_seq.saturating_sub(EVENT_CAPACITY as u64).max(1)
    }

    /// Sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Total events overwritten since the engine started.
    pub fn overwritten(&self) -> u64 {
        self.overwritten
    }

    /// Copy events with sequence numbers from `from_seq` on into `out`.
    pub fn read(&self, from_seq: u64, out: &mut [Event]) -> EventRead {
        let oldest = self.oldest_seq();
        let start = from_seq.max(oldest).min(self.next_seq);
        let missed = start.saturating_sub(from_seq.max(1));
        let mut copied = 0;
        let mut seq = start;
        while seq < self.next_seq && copied < out.len() {
            if let Some(e) = self.events[(seq % EVENT_CAPACITY as u64) as usize] {
                out[copied] = e;
                copied += 1;
            }
            seq += 1;
        }
        EventRead {
            copied,
            next_seq: seq,
            missed,
        }
    }
}

impl Default for EventRing {
    fn default() -> Self {
        EventRing::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u32) -> EventKind {
        EventKind::Policy {
            container: Some(ContainerId(n)),
            change: PolicyChange::Registered,
        }
    }

    #[test]
    fn reads_in_order_and_reports_overwrites() {
        let mut ring = EventRing::new();
        let blank = Event {
            seq: 0,
            time: 0,
            kind: sample(0),
        };
        let mut out = [blank; 8];
        assert_eq!(ring.read(1, &mut out).copied, 0);
        for n in 0..(EVENT_CAPACITY as u32 + 10) {
            ring.push(u64::from(n), sample(n));
        }
        assert_eq!(ring.overwritten(), 10);
        let r = ring.read(1, &mut out);
        assert_eq!(r.missed, 10);
        assert_eq!(r.copied, 8);
        assert_eq!(out[0].seq, 11);
        assert_eq!(out[7].seq, 18);
        assert_eq!(r.next_seq, 19);
        let r2 = ring.read(r.next_seq, &mut out);
        assert_eq!(r2.missed, 0);
        assert_eq!(out[0].seq, 19);
        // Reading past the end copies nothing.
        let end = ring.next_seq();
        let r3 = ring.read(end, &mut out);
        assert_eq!((r3.copied, r3.missed, r3.next_seq), (0, 0, end));
    }
}
