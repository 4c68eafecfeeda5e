//! The container registry: who owns which VLAN, MAC, IPv4 address, cgroup and network namespace,
//! with each container's rules, counters and scan state.
//!
//! Storage is a caller-provided slice of [`ContainerSlot`]s (so the hypervisor can place it in
//! reserved memory and tests on the heap); lookups go through fixed hash indexes (O(1)) and a
//! direct VLAN table. Nothing here allocates.

use core::net::Ipv4Addr;

use shoji_shared::{ContainerId, TaskIdentity};

use crate::counters::Counters;
use crate::index::{FixedIndex, IndexError};
use crate::parse::{is_group_mac, MacAddr};
use crate::rules::{Action, Flow, Rule, RuleError, RuleOutcome, RuleSet, Side, MAX_RULES};
use crate::scan::OutboundScan;

/// Most containers a registry holds (also the size its indexes are built for).
pub const MAX_CONTAINERS: usize = 1024;
/// Most MAC addresses per container.
pub const MAX_MACS: usize = 2;
/// Most IPv4 addresses per container.
pub const MAX_IPV4: usize = 4;
/// Highest usable VLAN id (4095 is reserved, 0 means "priority tag only").
pub const MAX_VLAN: u16 = 4094;

/// A container registration, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The container's handle.
    pub id: ContainerId,
    /// Its VLAN on the guest bridge (1 to 4094).
    pub vlan: u16,
    /// cgroup v2 id its tasks run in, if known.
    pub cgroup_id: Option<u64>,
    /// Network-namespace inode its tasks use, if known.
    pub netns_id: Option<u32>,
    /// Its MAC addresses.
    pub macs: heapless::Vec<MacAddr, MAX_MACS>,
    /// Its IPv4 addresses.
    pub ipv4: heapless::Vec<Ipv4Addr, MAX_IPV4>,
    /// What happens to frames it sends that no rule matches.
    pub default_egress: Action,
    /// What happens to frames for it that no rule matches.
    pub default_ingress: Action,
    /// Ordered rules; the first match decides.
    pub rules: heapless::Vec<Rule, MAX_RULES>,
}

impl ContainerSpec {
    /// A spec with one MAC and one address, allow-all defaults and no rules.
    pub fn new(id: u32, vlan: u16, mac: MacAddr, ip: Ipv4Addr) -> ContainerSpec {
        let mut macs = heapless::Vec::new();
        let _ = macs.push(mac);
        let mut ipv4 = heapless::Vec::new();
        let _ = ipv4.push(ip);
        ContainerSpec {
            id: ContainerId(id),
            vlan,
            cgroup_id: None,
            netns_id: None,
            macs,
            ipv4,
            default_egress: Action::Allow,
            default_ingress: Action::Allow,
            rules: heapless::Vec::new(),
        }
    }

    /// Whether `mac` is one of the container's.
    #[inline]
    pub fn owns_mac(&self, mac: &MacAddr) -> bool {
        self.macs.iter().any(|m| m == mac)
    }

    /// Whether `ip` is one of the container's.
    #[inline]
    pub fn owns_ipv4(&self, ip: Ipv4Addr) -> bool {
        self.ipv4.contains(&ip)
    }

    /// Check what can be checked without the rest of the registry.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.vlan == 0 || self.vlan > MAX_VLAN {
            return Err(RegistryError::InvalidVlan(self.vlan));
        }
        if self.macs.is_empty() {
            return Err(RegistryError::NoMac);
        }
        for (i, mac) in self.macs.iter().enumerate() {
            if is_group_mac(mac) || *mac == [0; 6] {
                return Err(RegistryError::InvalidMac(*mac));
            }
            if self.macs[..i].contains(mac) {
                return Err(RegistryError::DuplicateMac(*mac));
            }
        }
        for (i, ip) in self.ipv4.iter().enumerate() {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                return Err(RegistryError::InvalidIpv4(*ip));
            }
            if self.ipv4[..i].contains(ip) {
                return Err(RegistryError::DuplicateIpv4(*ip));
            }
        }
        RuleSet::compile(&self.rules).map_err(|(index, error)| RegistryError::InvalidRule {
            index: index as u16,
            error,
        })?;
        Ok(())
    }
}

/// Why a registration, update or removal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryError {
    /// The registry holds as many containers as it can.
    Full,
    /// A container with this id is already registered.
    DuplicateId(ContainerId),
    /// No container with this id is registered.
    NotFound(ContainerId),
    /// VLAN 0 or above 4094.
    InvalidVlan(u16),
    /// The VLAN belongs to another container.
    VlanInUse(u16, ContainerId),
    /// A container needs at least one MAC.
    NoMac,
    /// A group (multicast/broadcast) or all-zero MAC.
    InvalidMac(MacAddr),
    /// The same MAC twice in one spec.
    DuplicateMac(MacAddr),
    /// The MAC belongs to another container.
    MacInUse(MacAddr, ContainerId),
    /// Unspecified, broadcast, multicast or loopback address.
    InvalidIpv4(Ipv4Addr),
    /// The same address twice in one spec.
    DuplicateIpv4(Ipv4Addr),
    /// The address belongs to another container.
    Ipv4InUse(Ipv4Addr, ContainerId),
    /// The cgroup belongs to another container.
    CgroupInUse(u64, ContainerId),
    /// The network namespace belongs to another container.
    NetnsInUse(u32, ContainerId),
    /// A rule is invalid.
    InvalidRule {
        /// Index of the rule.
        index: u16,
        /// What is wrong with it.
        error: RuleError,
    },
}

impl RegistryError {
    /// Human-readable meaning.
    pub fn describe(&self) -> &'static str {
        match self {
            RegistryError::Full => "the registry is full",
            RegistryError::DuplicateId(_) => "a container with this id is already registered",
            RegistryError::NotFound(_) => "no container with this id is registered",
            RegistryError::InvalidVlan(_) => "VLAN must be 1..4094",
            RegistryError::VlanInUse(..) => "the VLAN belongs to another container",
            RegistryError::NoMac => "a container needs at least one MAC address",
            RegistryError::InvalidMac(_) => "group (multicast/broadcast) or all-zero MAC address",
            RegistryError::DuplicateMac(_) => "the same MAC address twice",
            RegistryError::MacInUse(..) => "the MAC address belongs to another container",
            RegistryError::InvalidIpv4(_) => {
                "unspecified, broadcast, multicast or loopback IPv4 address"
            }
            RegistryError::DuplicateIpv4(_) => "the same IPv4 address twice",
            RegistryError::Ipv4InUse(..) => "the IPv4 address belongs to another container",
            RegistryError::CgroupInUse(..) => "the cgroup belongs to another container",
            RegistryError::NetnsInUse(..) => "the network namespace belongs to another container",
            RegistryError::InvalidRule { .. } => "a rule is invalid",
        }
    }

    /// The detail code the hypervisor returns for this error (`RBX` of a refused register or
    /// update): `2000 +` the variant's index.
    pub fn code(&self) -> u64 {
        let index = match self {
            RegistryError::Full => 0,
            RegistryError::DuplicateId(_) => 1,
            RegistryError::NotFound(_) => 2,
            RegistryError::InvalidVlan(_) => 3,
            RegistryError::VlanInUse(..) => 4,
            RegistryError::NoMac => 5,
            RegistryError::InvalidMac(_) => 6,
            RegistryError::DuplicateMac(_) => 7,
            RegistryError::MacInUse(..) => 8,
            RegistryError::InvalidIpv4(_) => 9,
            RegistryError::DuplicateIpv4(_) => 10,
            RegistryError::Ipv4InUse(..) => 11,
            RegistryError::CgroupInUse(..) => 12,
            RegistryError::NetnsInUse(..) => 13,
            RegistryError::InvalidRule { .. } => 14,
        };
        crate::report::REGISTRY_CODE_BASE + index
    }

    /// The error a `2000 + index` detail code stands for (payloads, which the code does not
    /// carry, are zero); `None` for any other number.
    pub fn from_code(code: u64) -> Option<RegistryError> {
        let none = ContainerId(0);
        Some(match code.checked_sub(crate::report::REGISTRY_CODE_BASE)? {
            0 => RegistryError::Full,
            1 => RegistryError::DuplicateId(none),
            2 => RegistryError::NotFound(none),
            3 => RegistryError::InvalidVlan(0),
            4 => RegistryError::VlanInUse(0, none),
            5 => RegistryError::NoMac,
            6 => RegistryError::InvalidMac([0; 6]),
            7 => RegistryError::DuplicateMac([0; 6]),
            8 => RegistryError::MacInUse([0; 6], none),
            9 => RegistryError::InvalidIpv4(Ipv4Addr::UNSPECIFIED),
            10 => RegistryError::DuplicateIpv4(Ipv4Addr::UNSPECIFIED),
            11 => RegistryError::Ipv4InUse(Ipv4Addr::UNSPECIFIED, none),
            12 => RegistryError::CgroupInUse(0, none),
            13 => RegistryError::NetnsInUse(0, none),
            14 => RegistryError::InvalidRule {
                index: 0,
                error: RuleError::BadCidr,
            },
            _ => return None,
        })
    }
}

/// The identity fields the frame path reads for nearly every frame, copied out of the spec so
/// they share the container's first cache line with the rule bitmaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    id: ContainerId,
    ipv4: [u32; MAX_IPV4],
    vlan: u16,
    macs: [MacAddr; MAX_MACS],
    mac_count: u8,
    ipv4_count: u8,
    default_egress: Action,
    default_ingress: Action,
}

impl Identity {
    fn of(spec: &ContainerSpec) -> Identity {
        let mut macs = [[0; 6]; MAX_MACS];
        for (m, mac) in macs.iter_mut().zip(&spec.macs) {
            *m = *mac;
        }
        let mut ipv4 = [0; MAX_IPV4];
        for (a, ip) in ipv4.iter_mut().zip(&spec.ipv4) {
            *a = u32::from(*ip);
        }
        Identity {
            id: spec.id,
            ipv4,
            vlan: spec.vlan,
            macs,
            mac_count: spec.macs.len() as u8,
            ipv4_count: spec.ipv4.len() as u8,
            default_egress: spec.default_egress,
            default_ingress: spec.default_ingress,
        }
    }
}

/// A registered container with its live state.
///
/// Laid out hot first: the identity the frame path checks (id, VLAN, addresses, defaults) and
/// the compiled rules (bitmaps, then 16 bytes per rule) lead, then the counters and the scan
/// window; the registration itself (whose full rules are read only for rules with a subject or
/// an IP protocol number) comes last.
///
/// A slot spans an odd number of cache lines, so the same field of consecutive (or every
/// 2^k-th) containers falls into different cache sets instead of competing for a few.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub struct Container {
    identity: Identity,
    rules: RuleSet,
    /// Its counters.
    pub counters: Counters,
    /// Its outbound scan state.
    pub scan: OutboundScan,
    /// The registry's [`Registry::sequence`] when it was registered (kept across updates).
    registered: u64,
    /// Which administrator rules apply to it (bit i: rule i of the engine's table).
    pub(crate) admin: u64,
    spec: ContainerSpec,
    pad: [[u8; CACHE_LINE]; PAD_LINES],
}

const CACHE_LINE: usize = 64;

/// [`Container`] without its padding (same fields, same layout).
#[allow(dead_code)]
#[repr(C, align(64))]
struct Unpadded(
    Identity,
    RuleSet,
    Counters,
    OutboundScan,
    u64,
    u64,
    ContainerSpec,
);

/// One more line when the unpadded container spans an even number of lines.
const PAD_LINES: usize = (core::mem::size_of::<Unpadded>() / CACHE_LINE + 1) % 2;

impl Container {
    fn new(spec: ContainerSpec, rules: RuleSet, registered: u64) -> Container {
        Container {
            identity: Identity::of(&spec),
            rules,
            counters: Counters::ZERO,
            scan: OutboundScan::NEW,
            registered,
            admin: 0,
            spec,
            pad: [[0; CACHE_LINE]; PAD_LINES],
        }
    }

    /// The registry's [`Registry::sequence`] at its registration: a container registered at or
    /// after a moment `m` has `registered() >= m`.
    pub fn registered(&self) -> u64 {
        self.registered
    }

    /// The registration.
    pub fn spec(&self) -> &ContainerSpec {
        &self.spec
    }

    /// The compiled rules (compiled from `spec().rules`).
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The container's id.
    #[inline]
    pub fn id(&self) -> ContainerId {
        self.identity.id
    }

    /// The container's VLAN.
    #[inline]
    pub fn vlan(&self) -> u16 {
        self.identity.vlan
    }

    /// Whether `mac` is one of the container's.
    #[inline]
    pub fn owns_mac(&self, mac: &MacAddr) -> bool {
        let n = usize::from(self.identity.mac_count).min(MAX_MACS);
        self.identity.macs[..n].contains(mac)
    }

    /// Whether `ip` is one of the container's.
    #[inline]
    pub fn owns_ipv4(&self, ip: Ipv4Addr) -> bool {
        let n = usize::from(self.identity.ipv4_count).min(MAX_IPV4);
        self.identity.ipv4[..n].contains(&u32::from(ip))
    }

    /// The container's default action for frames on `side`.
    #[inline]
    pub fn default_action(&self, side: Side) -> Action {
        match side {
            Side::Egress => self.identity.default_egress,
            Side::Ingress => self.identity.default_ingress,
        }
    }

    /// Evaluate the container's policy for `flow`: the first matching rule, or the default.
    #[inline]
    pub fn evaluate(&self, flow: &Flow, task: Option<&TaskIdentity>) -> RuleOutcome {
        self.rules
            .evaluate(&self.spec.rules, flow, task, self.default_action(flow.side))
    }
}

/// One storage slot of the registry.
#[derive(Debug, Clone, Default)]
pub struct ContainerSlot {
    container: Option<Container>,
}

impl ContainerSlot {
    /// An empty slot (for building storage: `[ContainerSlot::EMPTY; N]` or `vec![...]`).
    pub const EMPTY: ContainerSlot = ContainerSlot { container: None };
}

const NO_SLOT: u16 = u16::MAX;

/// The registry.
#[derive(Debug)]
pub struct Registry<'s> {
    slots: &'s mut [ContainerSlot],
    len: usize,
    /// Registrations so far (the next one's sequence number).
    sequence: u64,
    by_vlan: [u16; 4096],
    by_id: FixedIndex<u32, { 2 * MAX_CONTAINERS }>,
    by_mac: FixedIndex<MacAddr, { 2 * MAX_CONTAINERS * MAX_MACS }>,
    by_ipv4: FixedIndex<u32, { 2 * MAX_CONTAINERS * MAX_IPV4 }>,
    by_cgroup: FixedIndex<u64, { 2 * MAX_CONTAINERS }>,
    by_netns: FixedIndex<u32, { 2 * MAX_CONTAINERS }>,
}

impl<'s> Registry<'s> {
    /// A registry storing containers in `slots` (capacity: `min(slots.len(), MAX_CONTAINERS)`).
    pub fn new(slots: &'s mut [ContainerSlot]) -> Registry<'s> {
        for s in slots.iter_mut() {
            s.container = None;
        }
        Registry {
            slots,
            len: 0,
            sequence: 0,
            by_vlan: [NO_SLOT; 4096],
            by_id: FixedIndex::new(0),
            by_mac: FixedIndex::new([0; 6]),
            by_ipv4: FixedIndex::new(0),
            by_cgroup: FixedIndex::new(0),
            by_netns: FixedIndex::new(0),
        }
    }

    /// How many registrations there have been: a mark in time that every later registration
    /// is at or after (see [`Container::registered`]).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// How many containers it can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len().min(MAX_CONTAINERS)
    }

    /// How many containers are registered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no container is registered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The container in slot `slot`.
    #[inline]
    pub fn get(&self, slot: u16) -> Option<&Container> {
        self.slots.get(slot as usize)?.container.as_ref()
    }

    /// The container in slot `slot`, mutably.
    #[inline]
    pub fn get_mut(&mut self, slot: u16) -> Option<&mut Container> {
        self.slots.get_mut(slot as usize)?.container.as_mut()
    }

    /// Slot of the container with this id.
    pub fn slot_of(&self, id: ContainerId) -> Option<u16> {
        self.by_id.get(&id.0)
    }

    /// Slot of the container on `vlan`.
    #[inline]
    pub fn by_vlan(&self, vlan: u16) -> Option<u16> {
        match self.by_vlan.get(vlan as usize) {
            Some(&s) if s != NO_SLOT => Some(s),
            _ => None,
        }
    }

    /// Slot of the container owning `mac`.
    #[inline]
    pub fn by_mac(&self, mac: &MacAddr) -> Option<u16> {
        if self.by_mac.is_empty() {
            return None;
        }
        self.by_mac.get(mac)
    }

    /// Slot of the container owning `ip`.
    #[inline]
    pub fn by_ipv4(&self, ip: Ipv4Addr) -> Option<u16> {
        if self.by_ipv4.is_empty() {
            return None;
        }
        self.by_ipv4.get(&u32::from(ip))
    }

    /// Slot of the container whose tasks run in cgroup `id`.
    #[inline]
    pub fn by_cgroup(&self, id: u64) -> Option<u16> {
        if self.by_cgroup.is_empty() {
            return None;
        }
        self.by_cgroup.get(&id)
    }

    /// Slot of the container whose tasks use network namespace `id`.
    #[inline]
    pub fn by_netns(&self, id: u32) -> Option<u16> {
        if self.by_netns.is_empty() {
            return None;
        }
        self.by_netns.get(&id)
    }

    /// The id of the container in `slot`.
    pub fn id_of(&self, slot: u16) -> Option<ContainerId> {
        self.get(slot).map(|c| c.id())
    }

    /// Iterate over registered containers with their slots.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Container)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.container.as_ref().map(|c| (i as u16, c)))
    }

    /// Check that `spec` claims nothing another container (other than `slot_self`) owns.
    fn check_conflicts(
        &self,
        spec: &ContainerSpec,
        slot_self: Option<u16>,
    ) -> Result<(), RegistryError> {
        let other = |s: Option<u16>| -> Option<ContainerId> {
            match s {
                Some(s) if Some(s) != slot_self => self.id_of(s),
                _ => None,
            }
        };
        if let Some(owner) = other(self.by_vlan(spec.vlan)) {
            return Err(RegistryError::VlanInUse(spec.vlan, owner));
        }
        for mac in &spec.macs {
            if let Some(owner) = other(self.by_mac(mac)) {
                return Err(RegistryError::MacInUse(*mac, owner));
            }
        }
        for ip in &spec.ipv4 {
            if let Some(owner) = other(self.by_ipv4(*ip)) {
                return Err(RegistryError::Ipv4InUse(*ip, owner));
            }
        }
        if let Some(cg) = spec.cgroup_id {
            if let Some(owner) = other(self.by_cgroup(cg)) {
                return Err(RegistryError::CgroupInUse(cg, owner));
            }
        }
        if let Some(ns) = spec.netns_id {
            if let Some(owner) = other(self.by_netns(ns)) {
                return Err(RegistryError::NetnsInUse(ns, owner));
            }
        }
        Ok(())
    }

    fn index(&mut self, slot: u16, spec: &ContainerSpec) -> Result<(), IndexError> {
        self.by_vlan[spec.vlan as usize] = slot;
        self.by_id.insert(spec.id.0, slot)?;
        for mac in &spec.macs {
            self.by_mac.insert(*mac, slot)?;
        }
        for ip in &spec.ipv4 {
            self.by_ipv4.insert(u32::from(*ip), slot)?;
        }
        if let Some(cg) = spec.cgroup_id {
            self.by_cgroup.insert(cg, slot)?;
        }
        if let Some(ns) = spec.netns_id {
            self.by_netns.insert(ns, slot)?;
        }
        Ok(())
    }

    fn unindex(&mut self, spec: &ContainerSpec) {
        self.by_vlan[spec.vlan as usize] = NO_SLOT;
        self.by_id.remove(&spec.id.0);
        for mac in &spec.macs {
            self.by_mac.remove(mac);
        }
        for ip in &spec.ipv4 {
            self.by_ipv4.remove(&u32::from(*ip));
        }
        if let Some(cg) = spec.cgroup_id {
            self.by_cgroup.remove(&cg);
        }
        if let Some(ns) = spec.netns_id {
            self.by_netns.remove(&ns);
        }
    }

    /// Register a new container; returns its slot.
    pub fn add(&mut self, spec: ContainerSpec) -> Result<u16, RegistryError> {
        spec.validate()?;
        if let Some(slot) = self.slot_of(spec.id) {
            let _ = slot;
            return Err(RegistryError::DuplicateId(spec.id));
        }
        self.check_conflicts(&spec, None)?;
        if self.len >= self.capacity() {
            return Err(RegistryError::Full);
        }
        let Some(slot) = self.slots[..self.capacity()]
            .iter()
            .position(|s| s.container.is_none())
        else {
            return Err(RegistryError::Full);
        };
        let slot = slot as u16;
        let rules =
            RuleSet::compile(&spec.rules).map_err(|(index, error)| RegistryError::InvalidRule {
                index: index as u16,
                error,
            })?;
        // The indexes are sized for MAX_CONTAINERS full specs, so this cannot fail; undo if it
        // somehow does.
        if self.index(slot, &spec).is_err() {
            self.unindex(&spec);
            return Err(RegistryError::Full);
        }
        self.slots[slot as usize].container = Some(Container::new(spec, rules, self.sequence));
        self.sequence += 1;
        self.len += 1;
        Ok(slot)
    }

    /// Replace a registered container's spec (same id); counters and scan state are kept.
    pub fn update(&mut self, spec: ContainerSpec) -> Result<u16, RegistryError> {
        spec.validate()?;
        let slot = self
            .slot_of(spec.id)
            .ok_or(RegistryError::NotFound(spec.id))?;
        self.check_conflicts(&spec, Some(slot))?;
        let rules =
            RuleSet::compile(&spec.rules).map_err(|(index, error)| RegistryError::InvalidRule {
                index: index as u16,
                error,
            })?;
        let Some(old) = self.get(slot).map(|c| c.spec.clone()) else {
            return Err(RegistryError::NotFound(spec.id));
        };
        self.unindex(&old);
        if self.index(slot, &spec).is_err() {
            self.unindex(&spec);
            let _ = self.index(slot, &old);
            return Err(RegistryError::Full);
        }
        if let Some(c) = self.get_mut(slot) {
            c.identity = Identity::of(&spec);
            c.rules = rules;
            c.spec = spec;
        }
        Ok(slot)
    }

    /// Unregister a container; returns its final counters.
    pub fn remove(&mut self, id: ContainerId) -> Result<Counters, RegistryError> {
        let slot = self.slot_of(id).ok_or(RegistryError::NotFound(id))?;
        let Some(container) = self.slots[slot as usize].container.take() else {
            return Err(RegistryError::NotFound(id));
        };
        self.unindex(&container.spec);
        self.len -= 1;
        Ok(container.counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn a_slot_spans_an_odd_number_of_cache_lines() {
        assert_eq!(size_of::<ContainerSlot>(), size_of::<Container>());
        assert_eq!(size_of::<Container>() % CACHE_LINE, 0);
        assert_eq!((size_of::<Container>() / CACHE_LINE) % 2, 1);
    }
}
