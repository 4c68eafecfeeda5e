//! Shoji's per-container ARP/IPv4 policy engine: frame parsing, the container registry, policy
//! decisions, spoof and port-scan detection, counters and security events.
//!
//! # Using it
//!
//! ```
//! use core::net::Ipv4Addr;
//! use shoji_netfilter::{ContainerSlot, ContainerSpec, Engine, EngineConfig};
//! use shoji_shared::{Direction, FrameFilter, FrameMeta, FrameSink, Verdict};
//!
//! struct Nic;
//! impl FrameSink for Nic {
//!     fn to_wire(&mut self, _frame: &[u8]) {}
//!     fn to_wire_joined(&mut self, _head: &[u8], _tail: &[u8]) {}
//!     fn to_guest(&mut self, _frame: &[u8]) {}
//!     fn to_guest_joined(&mut self, _parts: [&[u8]; 3]) {}
//! }
//!
//! let mut slots = [ContainerSlot::EMPTY, ContainerSlot::EMPTY];
//! let mut engine = Engine::new(&mut slots, EngineConfig::default());
//! engine
//!     .register(ContainerSpec::new(7, 107, [2, 0, 0, 0, 0, 7], Ipv4Addr::new(10, 0, 0, 7)))
//!     .unwrap();
//! engine.set_now(1_000); // monotonic nanoseconds, fed by the caller
//! let meta = FrameMeta { direction: Direction::Tx, descriptor_vlan: None, task: None };
//! assert_eq!(engine.filter(&meta, &[0u8; 10], &mut Nic), Verdict::Drop(shoji_shared::DropReason::Truncated));
//! ```
//!
//! # The policy model
//!
//! * **Attribution.** On TX the 802.1Q tag (port identity) names the sending container;
//!   untagged frames are the host's. A trusted task identity (cgroup or netns) naming another
//!   container is an `IdentityMismatch`. Source MAC, IPv4 source and ARP sender fields must
//!   belong to the sender ([`spoof`]).
//! * **Delivery.** The tag is stripped on the way to the wire; frames for another container are
//!   relayed into the guest with that container's tag after both sides' policy; RX frames get
//!   the tag of the container they are for ([`engine`]).
//! * **Rules.** Ordered allow/deny rules on direction, protocol, remote CIDR, ports and the
//!   sending user/process/executable; first match wins, else the container's default. IPv6
//!   needs an explicit rule ([`rules`]).
//! * **Fragments, malformed frames, scans, counters, events**: [`parse`], [`fragments`],
//!   [`scan`], [`counters`], [`events`]. The VMCALL registration format: [`encoding`]; the
//!   counters snapshot and event records read back through the ABI: [`report`].
//!
//! The full description, including the byte layout of the registration encoding, is in
//! `docs/policy.md`.
//!
//! # Guarantees
//!
//! `no_std`, no `alloc` (so no heap allocation anywhere, per frame or otherwise), no `unsafe`,
//! no clock reads, no panics on any input (fuzzed with `netfilter/fuzz`).
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod admin;
pub mod config;
pub mod counters;
pub mod encoding;
pub mod engine;
pub mod events;
pub mod flow_cache;
pub mod fragments;
pub mod index;
mod le;
pub mod parse;
pub mod registry;
pub mod report;
pub mod rules;
pub mod scan;
pub mod spoof;

pub use admin::{AdminError, AdminRule, AdminRules, AdminScope, AdminSpec, AdminVerdict};
pub use config::{BroadcastScope, EngineConfig, HostPolicy};
pub use counters::{Counters, EngineCounters};
pub use engine::{Decision, Engine, HostPolicyError, Party};
pub use events::{Event, EventKind, EventRead, PolicyChange};
pub use parse::{MacAddr, MAX_FRAME};
pub use registry::{ContainerSlot, ContainerSpec, RegistryError, MAX_CONTAINERS};
pub use rules::{
    Action, DirectionMatch, Ipv4Cidr, PortRange, ProtocolMatch, Rule, RuleFlags, Subject,
};
pub use scan::ScanConfig;
