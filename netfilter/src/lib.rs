//! Per-container ARP/IPv4 policy engine: frame parsing, registry, decisions, spoof and port-scan detection, counters.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod config;
pub mod counters;
pub mod encoding;
pub mod engine;
pub mod events;
pub mod fragments;
pub mod index;
pub mod parse;
pub mod registry;
pub mod rules;
pub mod scan;
pub mod spoof;

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
