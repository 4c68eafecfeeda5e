//! The decision engine: attributes a frame, checks it for spoofing and scanning, applies the
//! sender's egress and each receiver's ingress policy, and emits the (re-tagged) copies.
//!
//! See the crate documentation for the policy model. The per-frame path allocates nothing: the
//! frame is parsed into a small summary, lookups go through fixed indexes, and rewritten frames
//! are built in a buffer inside the engine.

use core::net::Ipv4Addr;

use shoji_shared::{
    ContainerId, ContainerMembership, Direction, DropReason, FrameFilter, FrameMeta, FrameSink,
    TaskIdentity, Verdict,
};

use crate::admin::{AdminError, AdminRule, AdminRules, AdminSpec, AdminVerdict};
use crate::config::{BroadcastScope, EngineConfig, HostPolicy};
use crate::counters::{Counters, EngineCounters};
use crate::events::{Event, EventKind, EventRead, EventRing, PolicyChange};
use crate::flow_cache::{self, CachedPass, FlowCache, FlowCacheStats, FlowKey};
use crate::fragments::{
    DatagramDecision, DatagramKey, FragmentTable, Known, LaterFragment, Owner, Receivers,
};
use crate::parse::{
    is_group_mac, parse_frame, Network, ParsedFrame, Transport, ETHERTYPE_VLAN, ETH_HEADER_LEN,
    MAX_FRAME, VLAN_TAG_LEN,
};
use crate::registry::{ContainerSlot, ContainerSpec, Registry, RegistryError};
use crate::rules::{Action, Flow, ProtocolClass, RuleError, RuleOutcome, RuleSet, Side};
use crate::scan::{InboundScans, InboundVerdict, Probe, ScanVerdict};
use crate::spoof::{self, SpoofFinding};

/// A party on the guest side of the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The host (untagged frames).
    Host,
    /// The container in this registry slot.
    Container(u16),
}

/// The full outcome of one decision ("what and why").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Pass or drop (with the reason).
    pub verdict: Verdict,
    /// The container that sent the frame (TX), `None` for the host or the wire.
    pub sender: Option<ContainerId>,
    /// The rule of the sender's (TX) or the first receiver's (RX) policy that decided, if a rule
    /// (not the default) did.
    pub rule: Option<u16>,
    /// Whether a copy went to the wire.
    pub to_wire: bool,
    /// How many copies went into the guest (relays and RX deliveries).
    pub to_guest: u16,
}

impl Decision {
    fn dropped(sender: Option<ContainerId>, reason: DropReason) -> Decision {
        Decision {
            verdict: Verdict::Drop(reason),
            sender,
            rule: None,
            to_wire: false,
            to_guest: 0,
        }
    }
}

/// Why the host policy was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPolicyError {
    /// Index of the bad rule.
    pub index: u16,
    /// What is wrong with it.
    pub error: RuleError,
}

/// The policy engine. Implements [`FrameFilter`].
pub struct Engine<'s> {
    config: EngineConfig,
    registry: Registry<'s>,
    host: HostPolicy,
    host_rules: RuleSet,
    /// The administrator's rules, over every party's own.
    admin: AdminRules,
    counters: EngineCounters,
    events: EventRing,
    fragments: FragmentTable,
    inbound: InboundScans,
    now: u64,
    drops_until_sample: u32,
    /// The policy generation: bumped by every change that can alter a decision, so flow-cache
    /// entries of an older policy no longer match.
    generation: u64,
    flow_cache: FlowCache,
}

/// Where one copy of a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Wire,
    Host,
    Container(u16),
}

impl Target {
    /// Record this target among a first fragment's receivers.
    fn add_to(self, r: &mut Receivers) {
        match self {
            Target::Wire => r.add_wire(),
            Target::Host => r.add_host(),
            Target::Container(slot) => r.add_container(slot),
        }
    }
}

/// Send `frame` into the guest with `tag` as its only 802.1Q tag (or untagged when `tag` is
/// `None`): the bytes before and after its own tag (`ethertype_offset` is 12, or 16 behind a tag)
/// and the new tag go to the sink in pieces, which it joins while it copies the frame anyway.
fn to_guest_tagged(
    out: &mut dyn FrameSink,
    frame: &[u8],
    ethertype_offset: usize,
    tag: Option<u16>,
) {
    let (Some(head), Some(rest)) = (frame.get(..12), frame.get(ethertype_offset..)) else {
        return out.to_guest(frame);
    };
    match tag {
        // Nothing to change: the original bytes, in one piece.
        None if ethertype_offset == 12 => out.to_guest(frame),
        None => out.to_guest_joined([head, &[], rest]),
        Some(vid) => {
            let [t0, t1] = ETHERTYPE_VLAN.to_be_bytes();
            let [v0, v1] = (vid & 0x0fff).to_be_bytes();
            out.to_guest_joined([head, &[t0, t1, v0, v1], rest]);
        }
    }
}

/// Send `frame` to the wire without its in-frame tag (`ethertype_offset` is 12, or 16 behind a
/// tag); the sink leaves the tag out while it copies the frame, no copy here.
fn to_wire_untagged(out: &mut dyn FrameSink, frame: &[u8], ethertype_offset: usize) {
    match frame.get(ethertype_offset..) {
        Some(rest) if ethertype_offset > 12 => out.to_wire_joined(&frame[..12], rest),
        _ => out.to_wire(frame),
    }
}

fn probe_of(parsed: &ParsedFrame, side: Side) -> Option<Probe> {
    let Network::Ipv4(ip) = parsed.network else {
        return None;
    };
    let host = match side {
        Side::Egress => ip.dst,
        Side::Ingress => ip.dst,
    };
    match ip.transport {
        Transport::Tcp {
            dst_port, flags, ..
        } if flags.is_connection_attempt() => Some(Probe {
            host,
            port: Some(dst_port),
        }),
        Transport::Udp { dst_port, .. } => Some(Probe {
            host,
            port: Some(dst_port),
        }),
        Transport::Icmp { icmp_type: 8, .. } => Some(Probe { host, port: None }),
        _ => None,
    }
}

impl<'s> Engine<'s> {
    /// An engine storing containers in `slots`, with `config` and a permissive host policy.
    pub fn new(slots: &'s mut [ContainerSlot], config: EngineConfig) -> Engine<'s> {
        let drops_until_sample = config.drop_sample_every;
        Engine {
            config,
            registry: Registry::new(slots),
            host: HostPolicy::default(),
            host_rules: RuleSet::new(),
            admin: AdminRules::new(),
            counters: EngineCounters::default(),
            events: EventRing::new(),
            fragments: FragmentTable::new(),
            inbound: InboundScans::new(),
            now: 0,
            drops_until_sample,
            generation: 0,
            flow_cache: FlowCache::new(),
        }
    }

    /// Set the current time (monotonic; from the TSC in the hypervisor, explicit in tests).
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// The current time as last set.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Replace the configuration.
    pub fn set_config(&mut self, config: EngineConfig) {
        self.new_generation();
        self.drops_until_sample = config.drop_sample_every;
        self.config = config;
        self.events.push(
            self.now,
            EventKind::Policy {
                container: None,
                change: PolicyChange::Config,
            },
        );
    }

    /// The host policy.
    pub fn host_policy(&self) -> &HostPolicy {
        &self.host
    }

    /// Replace the host policy.
    pub fn set_host_policy(&mut self, policy: HostPolicy) -> Result<(), HostPolicyError> {
        let rules = RuleSet::compile(&policy.rules).map_err(|(i, error)| HostPolicyError {
            index: i as u16,
            error,
        })?;
        self.new_generation();
        self.host = policy;
        self.host_rules = rules;
        self.events.push(
            self.now,
            EventKind::Policy {
                container: None,
                change: PolicyChange::HostPolicy,
            },
        );
        Ok(())
    }

    /// The registry (read-only).
    pub fn registry(&self) -> &Registry<'s> {
        &self.registry
    }

    /// Register a container.
    pub fn register(&mut self, spec: ContainerSpec) -> Result<(), RegistryError> {
        let id = spec.id;
        self.registry.add(spec)?;
        self.refresh_admin_mask(id);
        self.new_generation();
        self.policy_event(id, PolicyChange::Registered);
        Ok(())
    }

    /// Replace a container's registration (addresses, identity, rules, defaults).
    pub fn update(&mut self, spec: ContainerSpec) -> Result<(), RegistryError> {
        let id = spec.id;
        self.registry.update(spec)?;
        self.refresh_admin_mask(id);
        self.new_generation();
        self.policy_event(id, PolicyChange::Updated);
        Ok(())
    }

    /// Unregister a container; returns its final counters.
    pub fn unregister(&mut self, id: ContainerId) -> Result<Counters, RegistryError> {
        let counters = self.registry.remove(id)?;
        self.new_generation();
        self.policy_event(id, PolicyChange::Unregistered);
        Ok(counters)
    }

    /// The administrator's rules.
    pub fn admin_rules(&self) -> &AdminRules {
        &self.admin
    }

    /// Add an administrator rule; returns its id. A rule for a registered container pins the
    /// container's current addresses too (see [`crate::admin`]).
    pub fn add_admin_rule(&mut self, spec: AdminSpec) -> Result<u32, AdminError> {
        let container = spec.scope.container();
        let registered = container
            .and_then(|id| self.registry.slot_of(id))
            .and_then(|slot| self.registry.get(slot))
            .map(|c| c.spec());
        let id = self.admin.add(spec, registered)?;
        self.admin_changed(container, PolicyChange::AdminRuleAdded);
        Ok(id)
    }

    /// Remove administrator rule `id`; returns it when it existed.
    pub fn remove_admin_rule(&mut self, id: u32) -> Option<AdminRule> {
        let gone = self.admin.remove(id)?;
        self.admin_changed(gone.scope.container(), PolicyChange::AdminRuleRemoved);
        Some(gone)
    }

    fn admin_changed(&mut self, container: Option<ContainerId>, change: PolicyChange) {
        for slot in 0..self.registry.capacity() as u16 {
            self.refresh_admin_mask_of(slot);
        }
        self.new_generation();
        self.events
            .push(self.now, EventKind::Policy { container, change });
    }

    /// Recompute which administrator rules apply to container `id` (after its registration
    /// changed).
    fn refresh_admin_mask(&mut self, id: ContainerId) {
        if let Some(slot) = self.registry.slot_of(id) {
            self.refresh_admin_mask_of(slot);
        }
    }

    /// Recompute which administrator rules apply to the container in `slot`, if any.
    fn refresh_admin_mask_of(&mut self, slot: u16) {
        let Some(mask) = self.registry.get(slot).map(|c| self.admin.mask_for(c)) else {
            return;
        };
        if let Some(c) = self.registry.get_mut(slot) {
            c.admin = mask;
        }
    }

    /// The administrator's verdict on `flow` for `party`.
    #[inline(always)]
    fn admin_verdict(
        &mut self,
        party: Party,
        flow: &Flow,
        task: Option<&TaskIdentity>,
    ) -> AdminVerdict {
        // Without administrator rules (the usual case) one test is all a frame pays.
        if self.admin.is_empty() {
            return AdminVerdict::Continue;
        }
        self.admin_verdict_with_rules(party, flow, task)
    }

    #[inline(never)]
    fn admin_verdict_with_rules(
        &mut self,
        party: Party,
        flow: &Flow,
        task: Option<&TaskIdentity>,
    ) -> AdminVerdict {
        let (mask, code) = match party {
            Party::Host => (self.admin.host_mask(), u32::MAX),
            Party::Container(slot) => (
                self.registry.get(slot).map_or(0, |c| c.admin),
                u32::from(slot),
            ),
        };
        if mask == 0 {
            return AdminVerdict::Continue;
        }
        self.admin.judge(mask, code, flow, task, self.now)
    }

    fn policy_event(&mut self, id: ContainerId, change: PolicyChange) {
        self.events.push(
            self.now,
            EventKind::Policy {
                container: Some(id),
                change,
            },
        );
    }

    /// Counters of a container.
    pub fn container_counters(&self, id: ContainerId) -> Option<&Counters> {
        let slot = self.registry.slot_of(id)?;
        self.registry.get(slot).map(|c| &c.counters)
    }

    /// Engine-wide counters (host, unattributed, total).
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Read events from sequence number `from_seq` on.
    pub fn read_events(&self, from_seq: u64, out: &mut [Event]) -> EventRead {
        self.events.read(from_seq, out)
    }

    /// The event ring.
    pub fn events(&self) -> &EventRing {
        &self.events
    }

    /// When a container is blocked by the scan detector, until when.
    pub fn scan_blocked_until(&mut self, id: ContainerId) -> Option<u64> {
        let now = self.now;
        let slot = self.registry.slot_of(id)?;
        let c = self.registry.get_mut(slot)?;
        if c.scan.is_blocked(now) {
            c.scan.blocked_until()
        } else {
            None
        }
    }

    /// Lift a container's scan block (operator action); returns whether it existed.
    pub fn unblock_container(&mut self, id: ContainerId) -> bool {
        let Some(slot) = self.registry.slot_of(id) else {
            return false;
        };
        match self.registry.get_mut(slot) {
            Some(c) => {
                c.scan.unblock();
                self.new_generation();
                true
            }
            None => false,
        }
    }

    /// Whether an inbound source is blocked now.
    pub fn is_source_blocked(&mut self, source: Ipv4Addr) -> bool {
        self.inbound.is_blocked(self.now, source)
    }

    /// Lift an inbound source's block (operator action).
    pub fn unblock_source(&mut self, source: Ipv4Addr) -> bool {
        self.new_generation();
        self.inbound.unblock(source)
    }

    /// Start a new policy generation (cached decisions of the old one stop matching).
    fn new_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// The TX flow cache's hits, misses and insertions.
    pub fn flow_cache_stats(&self) -> FlowCacheStats {
        self.flow_cache.stats()
    }

    fn party_id(&self, party: Party) -> Option<ContainerId> {
        match party {
            Party::Host => None,
            Party::Container(s) => self.registry.id_of(s),
        }
    }

    fn party_counters(&mut self, party: Option<Party>) -> &mut Counters {
        match party {
            None => &mut self.counters.unattributed,
            Some(Party::Host) => &mut self.counters.host,
            Some(Party::Container(slot)) => match self.registry.get_mut(slot) {
                Some(c) => &mut c.counters,
                None => &mut self.counters.unattributed,
            },
        }
    }

    /// Count a drop for `party` (not the total), sampling it into the event ring.
    fn count_drop(&mut self, party: Option<Party>, direction: Direction, reason: DropReason) {
        self.party_counters(party).count_drop(reason);
        if self.config.drop_sample_every != 0 {
            self.drops_until_sample = self.drops_until_sample.saturating_sub(1);
            if self.drops_until_sample == 0 {
                self.drops_until_sample = self.config.drop_sample_every;
                let container = party.and_then(|p| self.party_id(p));
                self.events.push(
                    self.now,
                    EventKind::DropSample {
                        container,
                        direction,
                        reason,
                    },
                );
            }
        }
    }

    /// Finish a decision that drops the frame at the sender stage.
    fn drop_frame(
        &mut self,
        party: Option<Party>,
        direction: Direction,
        reason: DropReason,
    ) -> Decision {
        self.count_drop(party, direction, reason);
        self.counters.total.count_drop(reason);
        let sender = match direction {
            Direction::Tx => party.and_then(|p| self.party_id(p)),
            Direction::Rx => None,
        };
        Decision::dropped(sender, reason)
    }

    fn spoof_event(&mut self, direction: Direction, sender: Option<Party>, f: &SpoofFinding) {
        let sender = sender.and_then(|p| self.party_id(p));
        let claimed = f.claimed.and_then(|s| self.registry.id_of(s));
        self.events.push(
            self.now,
            EventKind::Spoof {
                reason: f.reason,
                direction,
                sender,
                claimed,
                mac: f.mac,
                ipv4: f.ipv4,
            },
        );
    }

    /// Decide one frame; emit what passes through `out`.
    pub fn decide(
        &mut self,
        meta: &FrameMeta<'_>,
        frame: &[u8],
        out: &mut dyn FrameSink,
    ) -> Decision {
        if frame.len() > MAX_FRAME {
            return self.drop_frame(None, meta.direction, DropReason::Oversize);
        }
        // The TX flow cache: a repeated header from the same task under the same policy.
        let cacheable = meta.direction == Direction::Tx
            && meta.descriptor_vlan.is_none()
            && self.config.flow_cache;
        match cacheable.then(|| flow_cache::key_of(frame)).flatten() {
            Some(key) => {
                let task = meta.task.filter(|t| t.is_actor());
                match self.replay(&key, task, frame, out) {
                    Some(d) => d,
                    None => self.decide_and_remember(key, task, meta, frame, out),
                }
            }
            None => self.decide_uncached(meta, frame, out),
        }
    }

    /// Decide a frame of the cached shape that no entry answered, and cache the decision.
    #[inline(never)]
    fn decide_and_remember(
        &mut self,
        key: FlowKey,
        task: Option<&TaskIdentity>,
        meta: &FrameMeta<'_>,
        frame: &[u8],
        out: &mut dyn FrameSink,
    ) -> Decision {
        let d = self.decide_uncached(meta, frame, out);
        self.remember(key, task, frame, &d);
        d
    }

    /// Decide a frame from the cache entry for `key`, if a valid one exists.
    fn replay(
        &mut self,
        key: &FlowKey,
        task: Option<&TaskIdentity>,
        frame: &[u8],
        out: &mut dyn FrameSink,
    ) -> Option<Decision> {
        let pass = self.flow_cache.lookup(key, self.generation, task)?;
        // The sender's counters; a container's only while its scan state is the entry's (not
        // blocked, the same probe window open).
        let counters = match pass.sender {
            Party::Host => &mut self.counters.host,
            Party::Container(slot) => {
                let (now, scan) = (self.now, &self.config.scan);
                let Some(c) = self.registry.get_mut(slot) else {
                    self.flow_cache.demote_hit();
                    return None;
                };
                if c.scan.is_blocked(now) || c.scan.open_window(now, scan) != pass.scan_window {
                    self.flow_cache.demote_hit();
                    return None;
                }
                &mut c.counters
            }
        };
        // The tag names the sender's port; the wire gets the frame without it.
        let len = frame.len();
        let ethertype_offset = if key.tagged { 12 + VLAN_TAG_LEN } else { 12 };
        to_wire_untagged(out, frame, ethertype_offset);
        counters.count_tx(len);
        self.counters.total.count_tx(len);
        Some(Decision {
            verdict: Verdict::Pass,
            sender: pass.sender_id,
            rule: pass.rule,
            to_wire: true,
            to_guest: 0,
        })
    }

    /// Cache decision `d` of a frame with flow key `key` when it passed unicast to the wire only.
    fn remember(&mut self, key: FlowKey, task: Option<&TaskIdentity>, frame: &[u8], d: &Decision) {
        if d.verdict != Verdict::Pass || !d.to_wire || d.to_guest != 0 || frame[0] & 1 != 0 {
            return;
        }
        let vlan = key.vlan();
        let sender = if vlan == 0 {
            Party::Host
        } else {
            match self.registry.by_vlan(vlan) {
                Some(slot) => Party::Container(slot),
                None => return,
            }
        };
        let scan_window = match sender {
            Party::Container(slot) => match self.registry.get(slot) {
                Some(c) => c.scan.open_window(self.now, &self.config.scan),
                None => return,
            },
            Party::Host => None,
        };
        let pass = CachedPass {
            sender,
            sender_id: d.sender,
            rule: d.rule,
            scan_window,
        };
        self.flow_cache.insert(key, self.generation, task, pass);
    }

    /// Decide one frame the full way: parse, attribute, check, evaluate, deliver.
    #[inline(never)]
    fn decide_uncached(
        &mut self,
        meta: &FrameMeta<'_>,
        frame: &[u8],
        out: &mut dyn FrameSink,
    ) -> Decision {
        let parsed = match parse_frame(frame) {
            Ok(p) => p,
            Err(e) => {
                let party = match meta.direction {
                    Direction::Tx => self.peek_tx_party(frame, meta.descriptor_vlan),
                    Direction::Rx => None,
                };
                return self.drop_frame(party, meta.direction, e.reason());
            }
        };
        match meta.direction {
            Direction::Tx => self.decide_tx(meta, frame, &parsed, out),
            Direction::Rx => self.decide_rx(meta, frame, &parsed, out),
        }
    }

    /// Best-effort attribution of an unparseable TX frame, for counting.
    fn peek_tx_party(&self, frame: &[u8], descriptor_vlan: Option<u16>) -> Option<Party> {
        let vlan = if frame.len() >= ETH_HEADER_LEN + VLAN_TAG_LEN
            && u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_VLAN
        {
            Some(u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
        } else {
            descriptor_vlan.map(|v| v & 0x0fff)
        };
        match vlan {
            None | Some(0) => Some(Party::Host),
            Some(v) => self.registry.by_vlan(v).map(Party::Container),
        }
    }

    fn decide_tx(
        &mut self,
        meta: &FrameMeta<'_>,
        frame: &[u8],
        parsed: &ParsedFrame,
        out: &mut dyn FrameSink,
    ) -> Decision {
        const DIR: Direction = Direction::Tx;
        let vlan = match (parsed.vlan, meta.descriptor_vlan) {
            (Some(_), Some(_)) => {
                let party = self.peek_tx_party(frame, None);
                return self.drop_frame(party, DIR, DropReason::Malformed);
            }
            (Some(v), None) | (None, Some(v)) => v & 0x0fff,
            (None, None) => 0,
        };
        let sender = if vlan == 0 {
            Party::Host
        } else {
            match self.registry.by_vlan(vlan) {
                Some(slot) => Party::Container(slot),
                None => return self.drop_frame(None, DIR, DropReason::UnknownVlan),
            }
        };
        let sender_slot = match sender {
            Party::Container(s) => Some(s),
            Party::Host => None,
        };
        let task: Option<&TaskIdentity> = meta.task.filter(|t| t.is_actor());

        // Attribution: port identity and task identity must agree; addresses must be the sender's.
        let checked =
            spoof::check_identity(&self.registry, sender_slot, parsed, task).and_then(|()| {
                match sender_slot {
                    Some(slot) => spoof::check_container_tx(&self.registry, slot, parsed)
                        .and_then(|()| spoof::check_first_hop(parsed)),
                    None => spoof::check_host_tx(&self.registry, parsed),
                }
            });
        if let Err(finding) = checked {
            self.spoof_event(DIR, Some(sender), &finding);
            return self.drop_frame(Some(sender), DIR, finding.reason);
        }

        // The scan detector: a blocked container sends nothing; probes are recorded.
        if let Some(slot) = sender_slot {
            if let Some(reason) = self.outbound_scan(slot, parsed) {
                return self.drop_frame(Some(sender), DIR, reason);
            }
        }

        // IPv4 options and fragments.
        let mut settled = None;
        let mut first_fragment_key = None;
        if let Network::Ipv4(ip) = parsed.network {
            if ip.source_routed && !self.config.allow_source_route {
                return self.drop_frame(Some(sender), DIR, DropReason::PolicyDenied);
            }
            match self.fragment_stage(DIR, parsed, Some(sender)) {
                FragmentStage::Unfragmented => {}
                FragmentStage::First(key) => first_fragment_key = Some(key),
                FragmentStage::Follow(s) => settled = Some(s),
                FragmentStage::Drop(reason) => {
                    return self.drop_frame(Some(sender), DIR, reason);
                }
            }
        }

        // The sender's egress policy.
        let flow = Flow::of(parsed, Side::Egress);
        let mut rule = None;
        if settled.is_none() {
            if let AdminVerdict::Deny(_) = self.admin_verdict(sender, &flow, task) {
                let reason = DropReason::AdminDenied;
                self.record_first_fragment(first_fragment_key, DatagramDecision::Drop(reason));
                return self.drop_frame(Some(sender), DIR, reason);
            }
            let outcome = self.evaluate(sender, &flow, task);
            rule = outcome.rule;
            if let Err(reason) = Self::verdict_of(sender, &flow, outcome) {
                self.record_first_fragment(first_fragment_key, DatagramDecision::Drop(reason));
                let mut d = self.drop_frame(Some(sender), DIR, reason);
                d.rule = rule;
                return d;
            }
        }

        // Delivery: the wire, another container (relay), or the host.
        let mut decision = Decision {
            verdict: Verdict::Pass,
            sender: self.party_id(sender),
            rule,
            to_wire: false,
            to_guest: 0,
        };
        let mut first_denial = None;
        let mut delivered = Receivers::NONE;
        let len = frame.len();
        let mut deliver = |engine: &mut Self, target: Target, decision: &mut Decision| match engine
            .deliver(target, frame, parsed, settled.as_ref(), out)
        {
            Ok(()) => {
                target.add_to(&mut delivered);
                if target == Target::Wire {
                    decision.to_wire = true;
                } else {
                    decision.to_guest += 1;
                    engine.party_counters(Some(sender)).relayed += 1;
                }
            }
            Err(reason) => {
                first_denial.get_or_insert(reason);
            }
        };
        let dst = parsed.dst_mac;
        if !is_group_mac(&dst) {
            let target = match self.registry.by_mac(&dst) {
                Some(slot) if Party::Container(slot) == sender => None,
                Some(slot) => Some(Target::Container(slot)),
                None if sender != Party::Host && self.host.macs.contains(&dst) => {
                    Some(Target::Host)
                }
                None => Some(Target::Wire),
            };
            if let Some(t) = target {
                deliver(self, t, &mut decision);
            }
        } else {
            let arp_target = match parsed.network {
                Network::Arp(arp) => {
                    if let Some(slot) = self.registry.by_ipv4(arp.target_ip) {
                        Some(if Party::Container(slot) == sender {
                            Target::Wire
                        } else {
                            Target::Container(slot)
                        })
                    } else if sender != Party::Host && self.host.ipv4.contains(&arp.target_ip) {
                        Some(Target::Host)
                    } else {
                        None
                    }
                }
                _ => None,
            };
            match arp_target {
                Some(t) => deliver(self, t, &mut decision),
                None => {
                    deliver(self, Target::Wire, &mut decision);
                    if self.config.broadcast == BroadcastScope::Everyone {
                        if sender != Party::Host {
                            deliver(self, Target::Host, &mut decision);
                        }
                        for slot in 0..self.registry.capacity() as u16 {
                            if Party::Container(slot) != sender && self.registry.get(slot).is_some()
                            {
                                deliver(self, Target::Container(slot), &mut decision);
                            }
                        }
                    }
                }
            }
        }

        if decision.to_wire || decision.to_guest > 0 {
            self.party_counters(Some(sender)).count_tx(len);
            self.counters.total.count_tx(len);
            self.record_first_fragment(first_fragment_key, DatagramDecision::Pass(delivered));
            decision
        } else {
            let reason = first_denial.unwrap_or(DropReason::NoDestination);
            self.record_first_fragment(first_fragment_key, DatagramDecision::Drop(reason));
            self.counters.total.count_drop(reason);
            // A receiver's policy denial is counted on the receiver; anything else (nobody to
            // deliver to, a later fragment sent where its first fragment did not go) on the
            // frame's sender.
            if first_denial.is_none_or(|r| r == DropReason::BadFragment) {
                self.count_drop(Some(sender), DIR, reason);
            }
            decision.verdict = Verdict::Drop(reason);
            decision
        }
    }

    fn decide_rx(
        &mut self,
        meta: &FrameMeta<'_>,
        frame: &[u8],
        parsed: &ParsedFrame,
        out: &mut dyn FrameSink,
    ) -> Decision {
        const DIR: Direction = Direction::Rx;
        // Tags from the wire mean nothing here (and must never reach a container's VLAN as-is).
        if parsed.vlan.is_some() || meta.descriptor_vlan.is_some() {
            return self.drop_frame(None, DIR, DropReason::UnknownVlan);
        }
        let source_ip = match parsed.network {
            Network::Ipv4(ip) => Some(ip.src),
            Network::Arp(arp) => Some(arp.sender_ip),
            _ => None,
        };
        if let Some(src) = source_ip {
            if self.inbound.is_blocked(self.now, src) {
                return self.drop_frame(None, DIR, DropReason::ScanSourceBlocked);
            }
        }
        if let Err(finding) = spoof::check_rx(&self.registry, parsed) {
            self.spoof_event(DIR, None, &finding);
            let victim = finding.claimed.map(Party::Container);
            return self.drop_frame(victim, DIR, finding.reason);
        }

        let mut settled = None;
        let mut first_fragment_key = None;
        if let Network::Ipv4(ip) = parsed.network {
            if ip.source_routed && !self.config.allow_source_route {
                return self.drop_frame(None, DIR, DropReason::PolicyDenied);
            }
            if let Some(probe) = probe_of(parsed, Side::Ingress) {
                if self.inbound_scan(ip.src, probe) {
                    return self.drop_frame(None, DIR, DropReason::ScanSourceBlocked);
                }
            }
            match self.fragment_stage(DIR, parsed, None) {
                FragmentStage::Unfragmented => {}
                FragmentStage::First(key) => first_fragment_key = Some(key),
                FragmentStage::Follow(s) => settled = Some(s),
                FragmentStage::Drop(reason) => return self.drop_frame(None, DIR, reason),
            }
        }

        let mut decision = Decision {
            verdict: Verdict::Pass,
            sender: None,
            rule: None,
            to_wire: false,
            to_guest: 0,
        };
        let mut first_denial = None;
        let mut delivered = Receivers::NONE;
        let mut deliver = |engine: &mut Self, target: Target, decision: &mut Decision| match engine
            .deliver(target, frame, parsed, settled.as_ref(), out)
        {
            Ok(()) => {
                target.add_to(&mut delivered);
                decision.to_guest += 1
            }
            Err(reason) => {
                first_denial.get_or_insert(reason);
            }
        };
        let dst = parsed.dst_mac;
        if !is_group_mac(&dst) {
            let target = match self.registry.by_mac(&dst) {
                Some(slot) => Some(Target::Container(slot)),
                None if self.host.macs.is_empty() || self.host.macs.contains(&dst) => {
                    Some(Target::Host)
                }
                None => None,
            };
            if let Some(t) = target {
                deliver(self, t, &mut decision);
            }
        } else {
            let arp_target = match parsed.network {
                Network::Arp(arp) => self.registry.by_ipv4(arp.target_ip),
                _ => None,
            };
            match arp_target {
                Some(slot) => deliver(self, Target::Container(slot), &mut decision),
                None => {
                    deliver(self, Target::Host, &mut decision);
                    if self.config.broadcast == BroadcastScope::Everyone {
                        for slot in 0..self.registry.capacity() as u16 {
                            if self.registry.get(slot).is_some() {
                                deliver(self, Target::Container(slot), &mut decision);
                            }
                        }
                    }
                }
            }
        }

        if decision.to_guest > 0 {
            self.counters.total.count_rx(frame.len());
            self.record_first_fragment(first_fragment_key, DatagramDecision::Pass(delivered));
            decision
        } else {
            let reason = first_denial.unwrap_or(DropReason::NoDestination);
            self.record_first_fragment(first_fragment_key, DatagramDecision::Drop(reason));
            self.counters.total.count_drop(reason);
            // A receiver's policy denial is counted on the receiver; anything else (nobody to
            // deliver to, a later fragment sent where its first fragment did not go) on the
            // frame's sender.
            if first_denial.is_none_or(|r| r == DropReason::BadFragment) {
                self.count_drop(None, DIR, reason);
            }
            decision.verdict = Verdict::Drop(reason);
            decision
        }
    }

    /// Apply `target`'s ingress policy and emit the copy; for a later fragment (`settled`), no
    /// policy, but only to a party its first fragment reached. Policy drops are counted on the
    /// receiving party.
    fn deliver(
        &mut self,
        target: Target,
        frame: &[u8],
        parsed: &ParsedFrame,
        settled: Option<&Settled>,
        out: &mut dyn FrameSink,
    ) -> Result<(), DropReason> {
        if let Some(Settled::Only(known)) = settled {
            if !self.first_fragment_reached(known, target) {
                return Err(DropReason::BadFragment);
            }
        }
        let (party, tag) = match target {
            Target::Wire => {
                to_wire_untagged(out, frame, parsed.ethertype_offset);
                return Ok(());
            }
            Target::Host => (Party::Host, None),
            Target::Container(slot) => match self.registry.get(slot) {
                Some(c) => (Party::Container(slot), Some(c.vlan())),
                None => return Err(DropReason::NoDestination),
            },
        };
        if settled.is_none() {
            let flow = Flow::of(parsed, Side::Ingress);
            if let AdminVerdict::Deny(_) = self.admin_verdict(party, &flow, None) {
                let reason = DropReason::AdminDenied;
                self.count_drop(Some(party), Direction::Rx, reason);
                return Err(reason);
            }
            let outcome = self.evaluate(party, &flow, None);
            if let Err(reason) = Self::verdict_of(party, &flow, outcome) {
                self.count_drop(Some(party), Direction::Rx, reason);
                return Err(reason);
            }
        }
        self.party_counters(Some(party)).count_rx(frame.len());
        to_guest_tagged(out, frame, parsed.ethertype_offset, tag);
        Ok(())
    }

    /// Evaluate `party`'s rules for `flow`.
    #[inline]
    fn evaluate(&self, party: Party, flow: &Flow, task: Option<&TaskIdentity>) -> RuleOutcome {
        match party {
            Party::Host => {
                let default = match flow.side {
                    Side::Egress => self.host.default_egress,
                    Side::Ingress => self.host.default_ingress,
                };
                self.host_rules
                    .evaluate(&self.host.rules, flow, task, default)
            }
            Party::Container(slot) => match self.registry.get(slot) {
                Some(c) => c.evaluate(flow, task),
                None => RuleOutcome {
                    action: Action::Deny,
                    rule: None,
                },
            },
        }
    }

    /// Turn a rule outcome into pass or a drop reason. Containers: IPv6 needs a matching allow
    /// rule whatever the default; frames that are neither ARP, IPv4 nor IPv6 are denied.
    fn verdict_of(party: Party, flow: &Flow, outcome: RuleOutcome) -> Result<(), DropReason> {
        let is_container = matches!(party, Party::Container(_));
        if is_container && flow.class == ProtocolClass::Ipv6 {
            return match (outcome.rule, outcome.action) {
                (Some(_), Action::Allow) => Ok(()),
                _ => Err(DropReason::Ipv6Denied),
            };
        }
        if is_container && flow.class == ProtocolClass::NonIp {
            return Err(DropReason::PolicyDenied);
        }
        match outcome.action {
            Action::Allow => Ok(()),
            Action::Deny => Err(DropReason::PolicyDenied),
        }
    }

    /// Scan-detector stage for a container's frame: `Some(reason)` when it must be dropped.
    fn outbound_scan(&mut self, slot: u16, parsed: &ParsedFrame) -> Option<DropReason> {
        let now = self.now;
        let enabled = self.config.scan.enabled;
        let probe = if enabled {
            probe_of(parsed, Side::Egress)
        } else {
            None
        };
        let c = self.registry.get_mut(slot)?;
        if c.scan.is_blocked(now) {
            return Some(DropReason::PortScanBlocked);
        }
        let probe = probe?;
        match c.scan.record(now, &self.config.scan, probe) {
            ScanVerdict::Clear => None,
            ScanVerdict::NewlyBlocked(counts, until) => {
                let container = c.id();
                self.events.push(
                    now,
                    EventKind::OutboundScan {
                        container,
                        distinct_ports: counts.ports,
                        distinct_hosts: counts.hosts,
                        blocked_until: until,
                    },
                );
                Some(DropReason::PortScanBlocked)
            }
        }
    }

    /// Record an inbound probe; true when this probe got its source blocked.
    fn inbound_scan(&mut self, source: Ipv4Addr, probe: Probe) -> bool {
        if !self.config.scan.enabled {
            return false;
        }
        match self
            .inbound
            .record(self.now, &self.config.scan, source, probe)
        {
            InboundVerdict::Clear => false,
            InboundVerdict::Scan {
                counts,
                blocked_until,
            } => {
                self.events.push(
                    self.now,
                    EventKind::InboundScan {
                        source,
                        distinct_ports: counts.ports,
                        distinct_hosts: counts.hosts,
                        blocked_until,
                    },
                );
                blocked_until.is_some()
            }
        }
    }

    /// Whether `target` is a party the first fragment of `known`'s datagram was delivered to
    /// (a container registered since then is not, even in the same slot).
    fn first_fragment_reached(&self, known: &Known, target: Target) -> bool {
        let DatagramDecision::Pass(receivers) = known.decision else {
            return false;
        };
        match target {
            Target::Wire => receivers.wire(),
            Target::Host => receivers.host(),
            Target::Container(slot) => {
                receivers.container(slot)
                    && self
                        .registry
                        .get(slot)
                        .is_some_and(|c| c.registered() < known.sequence)
            }
        }
    }

    /// The fragment stage of a frame; `sender` is the TX frame's sender (`None` on RX).
    fn fragment_stage(
        &mut self,
        direction: Direction,
        parsed: &ParsedFrame,
        sender: Option<Party>,
    ) -> FragmentStage {
        let Network::Ipv4(ip) = parsed.network else {
            return FragmentStage::Unfragmented;
        };
        if !ip.fragment.is_fragment() {
            return FragmentStage::Unfragmented;
        }
        let key = DatagramKey {
            src: ip.src,
            dst: ip.dst,
            ident: ip.ident,
            protocol: ip.protocol,
            direction,
        };
        let (now, timeout) = (self.now, self.config.fragment_timeout);
        if !ip.fragment.is_later() {
            // Whose quota: on TX the sender, on RX the party the destination MAC names.
            let owner = match sender {
                Some(Party::Container(slot)) => Owner::Container(slot),
                Some(Party::Host) => Owner::Host,
                None if is_group_mac(&parsed.dst_mac) => Owner::Wire,
                None => match self.registry.by_mac(&parsed.dst_mac) {
                    Some(slot) => Owner::Container(slot),
                    None => Owner::Host,
                },
            };
            let sequence = self.registry.sequence();
            return if self.fragments.first_fragment(
                key,
                owner,
                ip.fragment.len,
                sequence,
                now,
                timeout,
            ) {
                FragmentStage::First(key)
            } else {
                FragmentStage::Drop(DropReason::BadFragment)
            };
        }
        match self
            .fragments
            .later_fragment(&key, ip.fragment.offset, ip.fragment.len, now, timeout)
        {
            LaterFragment::Known(Known {
                decision: DatagramDecision::Drop(reason),
                ..
            }) => FragmentStage::Drop(reason),
            LaterFragment::Known(known) => FragmentStage::Follow(Settled::Only(known)),
            LaterFragment::Overlap => FragmentStage::Drop(DropReason::BadFragment),
            LaterFragment::Orphan => match self.config.orphan_fragments {
                Action::Allow => FragmentStage::Follow(Settled::Any),
                Action::Deny => FragmentStage::Drop(DropReason::BadFragment),
            },
        }
    }

    fn record_first_fragment(&mut self, key: Option<DatagramKey>, decision: DatagramDecision) {
        if let Some(key) = key {
            let (now, timeout) = (self.now, self.config.fragment_timeout);
            self.fragments.decide(&key, decision, now, timeout);
        }
    }
}

enum FragmentStage {
    Unfragmented,
    First(DatagramKey),
    /// A later fragment: no policy of its own; it goes where `Settled` admits.
    Follow(Settled),
    Drop(DropReason),
}

/// Where a later fragment may go.
enum Settled {
    /// Anywhere its headers name (an orphan, with `orphan_fragments = allow`).
    Any,
    /// Only to parties its datagram's first fragment reached.
    Only(Known),
}

/// Membership by the registry: a task whose cgroup or network namespace is a registered
/// container's belongs to it, in whatever context it runs.
impl ContainerMembership for Engine<'_> {
    fn container_of(&self, task: &TaskIdentity) -> Option<ContainerId> {
        let slot = task
            .cgroup_id
            .and_then(|cg| self.registry.by_cgroup(cg))
            .or_else(|| task.netns_id.and_then(|ns| self.registry.by_netns(ns)))?;
        self.registry.get(slot).map(|c| c.id())
    }

    fn none_registered(&self) -> bool {
        self.registry.is_empty()
    }
}

impl FrameFilter for Engine<'_> {
    fn filter(&mut self, meta: &FrameMeta<'_>, frame: &[u8], out: &mut dyn FrameSink) -> Verdict {
        self.decide(meta, frame, out).verdict
    }
}
