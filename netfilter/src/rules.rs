//! Policy rules: ordered allow/deny entries on remote CIDR, protocol, ports, direction and
//! (optionally) the sending task's user, process or executable; and their evaluation.
//!
//! Rules are stateless and evaluated in order; the first match decides. A rule set is
//! "compiled" into per-direction, per-protocol-class bitmaps so a frame only looks at the rules
//! that can apply to it.

use core::net::Ipv4Addr;

use shoji_shared::identity::COMM_LEN;
use shoji_shared::{Direction, TaskIdentity};

use crate::parse::{Network, ParsedFrame, Transport};

/// Most rules one container (or the host policy) can hold.
pub const MAX_RULES: usize = 64;

/// What a rule or a default does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Action {
    /// Let the frame through.
    Allow = 0,
    /// Drop the frame.
    Deny = 1,
}

impl Action {
    /// Decode the wire value.
    pub fn from_u8(v: u8) -> Option<Action> {
        match v {
            0 => Some(Action::Allow),
            1 => Some(Action::Deny),
            _ => None,
        }
    }
}

/// Which direction a rule applies to, seen from the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DirectionMatch {
    /// Frames the container sends.
    Egress = 0,
    /// Frames delivered to the container.
    Ingress = 1,
    /// Both.
    Both = 2,
}

impl DirectionMatch {
    /// Decode the wire value.
    pub fn from_u8(v: u8) -> Option<DirectionMatch> {
        match v {
            0 => Some(DirectionMatch::Egress),
            1 => Some(DirectionMatch::Ingress),
            2 => Some(DirectionMatch::Both),
            _ => None,
        }
    }
    fn covers(self, side: Side) -> bool {
        matches!(
            (self, side),
            (DirectionMatch::Both, _)
                | (DirectionMatch::Egress, Side::Egress)
                | (DirectionMatch::Ingress, Side::Ingress)
        )
    }
}

/// Which protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolMatch {
    /// Every ARP packet and IPv4 datagram (not IPv6: that needs an explicit `Ipv6` rule).
    Any,
    /// ARP.
    Arp,
    /// ICMP (IPv4).
    Icmp,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// Any other IPv4 protocol number.
    IpProtocol(u8),
    /// IPv6, including NDP (the remote CIDR and ports are not consulted).
    Ipv6,
}

/// Protocol class of a frame, used to index the compiled rule bitmaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProtocolClass {
    /// ARP.
    Arp = 0,
    /// ICMP.
    Icmp = 1,
    /// TCP.
    Tcp = 2,
    /// UDP.
    Udp = 3,
    /// Another IPv4 protocol.
    OtherIp = 4,
    /// IPv6.
    Ipv6 = 5,
    /// Not ARP, IPv4 or IPv6: no rule matches it.
    NonIp = 6,
}

const CLASS_COUNT: usize = 7;

impl ProtocolMatch {
    fn covers_class(self, class: ProtocolClass) -> bool {
        match self {
            ProtocolMatch::Any => !matches!(class, ProtocolClass::Ipv6 | ProtocolClass::NonIp),
            ProtocolMatch::Arp => class == ProtocolClass::Arp,
            ProtocolMatch::Icmp => class == ProtocolClass::Icmp,
            ProtocolMatch::Tcp => class == ProtocolClass::Tcp,
            ProtocolMatch::Udp => class == ProtocolClass::Udp,
            ProtocolMatch::IpProtocol(_) => class == ProtocolClass::OtherIp,
            ProtocolMatch::Ipv6 => class == ProtocolClass::Ipv6,
        }
    }
}

/// An IPv4 prefix. `0.0.0.0/0` matches everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// Network address (host bits must be zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The prefix that matches every address.
    pub const ANY: Ipv4Cidr = Ipv4Cidr {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
    };

    /// A prefix, if `prefix <= 32` and the host bits of `addr` are zero.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        let c = Ipv4Cidr { addr, prefix };
        c.is_valid().then_some(c)
    }

    /// A single host (/32).
    pub fn host(addr: Ipv4Addr) -> Ipv4Cidr {
        Ipv4Cidr { addr, prefix: 32 }
    }

    /// The netmask as a host-order integer.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        }
    }

    /// Whether the prefix length is valid and the host bits are zero.
    pub fn is_valid(&self) -> bool {
        self.prefix <= 32 && u32::from(self.addr) & !self.mask() == 0
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether this is `0.0.0.0/0`.
    pub fn is_any(&self) -> bool {
        self.prefix == 0
    }
}

/// An inclusive port range. `0..=65535` matches everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// Lowest port.
    pub first: u16,
    /// Highest port.
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ANY: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// A single port.
    pub const fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Whether `port` is inside the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// Whether this matches every port.
    pub fn is_any(&self) -> bool {
        self.first == 0 && self.last == u16::MAX
    }
}

/// Which sending task a rule applies to. Only consulted when the task identity is trusted
/// (`ExecContext::Task`); otherwise a rule with a subject other than `Anyone` does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// Any sender, identified or not.
    Anyone,
    /// A user: the real uid in the initial user namespace.
    Uid(u32),
    /// A process: the thread-group id in the initial pid namespace.
    Process(u32),
    /// An application: the inode number of the executable.
    Executable(u64),
    /// A `comm` name (NUL-padded). Advisory only: a process can rename itself.
    Comm([u8; COMM_LEN]),
}

impl Subject {
    fn matches(&self, task: Option<&TaskIdentity>) -> bool {
        match self {
            Subject::Anyone => true,
            _ => match task {
                None => false,
                Some(t) => match *self {
                    Subject::Anyone => true,
                    Subject::Uid(uid) => t.uid == Some(uid),
                    Subject::Process(tgid) => t.tgid == Some(tgid),
                    Subject::Executable(ino) => t.exe_inode == Some(ino),
                    Subject::Comm(name) => t.comm == Some(name),
                },
            },
        }
    }
}

bitflags::bitflags! {
    /// Extra conditions of a rule.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct RuleFlags: u8 {
        /// TCP only: match only connection attempts (SYN without ACK), so a deny rule blocks new
        /// connections while replies to the container's own connections still pass.
        const TCP_NEW_ONLY = 1;
    }
}

/// One policy rule. Fields left at their "any" value do not restrict the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What to do on a match.
    pub action: Action,
    /// Which direction it applies to.
    pub direction: DirectionMatch,
    /// Which protocol it applies to.
    pub protocol: ProtocolMatch,
    /// The remote address: destination on egress, source on ingress (ARP: target on egress,
    /// sender on ingress).
    pub remote: Ipv4Cidr,
    /// Source port range (TCP/UDP).
    pub src_ports: PortRange,
    /// Destination port range (TCP/UDP).
    pub dst_ports: PortRange,
    /// Which sending task it applies to.
    pub subject: Subject,
    /// Extra conditions.
    pub flags: RuleFlags,
}

impl Rule {
    /// A rule matching everything in `direction`, with `action`.
    pub const fn any(action: Action, direction: DirectionMatch) -> Rule {
        Rule {
            action,
            direction,
            protocol: ProtocolMatch::Any,
            remote: Ipv4Cidr::ANY,
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
            subject: Subject::Anyone,
            flags: RuleFlags::empty(),
        }
    }

    /// Check the rule's own consistency.
    pub fn validate(&self) -> Result<(), RuleError> {
        if !self.remote.is_valid() {
            return Err(RuleError::BadCidr);
        }
        if self.src_ports.first > self.src_ports.last || self.dst_ports.first > self.dst_ports.last
        {
            return Err(RuleError::BadPortRange);
        }
        let has_ports = !self.src_ports.is_any() || !self.dst_ports.is_any();
        if has_ports && !matches!(self.protocol, ProtocolMatch::Tcp | ProtocolMatch::Udp) {
            return Err(RuleError::PortsWithoutTcpOrUdp);
        }
        if self.flags.contains(RuleFlags::TCP_NEW_ONLY) && self.protocol != ProtocolMatch::Tcp {
            return Err(RuleError::TcpFlagWithoutTcp);
        }
        if let ProtocolMatch::IpProtocol(p) = self.protocol {
            if matches!(p, 1 | 6 | 17) {
                return Err(RuleError::ProtocolNumberHasName);
            }
        }
        Ok(())
    }

    /// Whether the rule matches `flow` (sent by `task`, when trusted), evaluated field by field
    /// straight from the rule: the reference the compiled [`RuleSet`] is tested against.
    pub fn matches(&self, flow: &Flow, task: Option<&TaskIdentity>) -> bool {
        if !self.direction.covers(flow.side) || !self.protocol.covers_class(flow.class) {
            return false;
        }
        if let ProtocolMatch::IpProtocol(p) = self.protocol {
            if flow.ip_protocol != p {
                return false;
            }
        }
        if self.protocol != ProtocolMatch::Ipv6 {
            match flow.remote {
                Some(ip) => {
                    if !self.remote.contains(ip) {
                        return false;
                    }
                }
                None => {
                    if !self.remote.is_any() {
                        return false;
                    }
                }
            }
        }
        if !self.src_ports.contains(flow.src_port) || !self.dst_ports.contains(flow.dst_port) {
            return false;
        }
        if self.flags.contains(RuleFlags::TCP_NEW_ONLY) && !flow.tcp_new {
            return false;
        }
        self.subject.matches(task)
    }

    /// The checks the compiled form leaves to the full rule: the IP protocol number and the
    /// subject.
    fn matches_cold(&self, flow: &Flow, task: Option<&TaskIdentity>) -> bool {
        if let ProtocolMatch::IpProtocol(p) = self.protocol {
            if flow.ip_protocol != p {
                return false;
            }
        }
        self.subject.matches(task)
    }
}

/// Why a rule is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleError {
    /// Prefix longer than 32 or host bits set.
    BadCidr,
    /// A port range whose first port is above its last.
    BadPortRange,
    /// Port ranges on a protocol without ports.
    PortsWithoutTcpOrUdp,
    /// `TCP_NEW_ONLY` on a non-TCP rule.
    TcpFlagWithoutTcp,
    /// `IpProtocol(1 | 6 | 17)`: use `Icmp`, `Tcp` or `Udp`.
    ProtocolNumberHasName,
    /// More than [`MAX_RULES`] rules.
    TooMany,
}

impl RuleError {
    /// Human-readable meaning.
    pub fn describe(self) -> &'static str {
        match self {
            RuleError::BadCidr => "CIDR prefix longer than 32 or host bits set",
            RuleError::BadPortRange => "port range first > last",
            RuleError::PortsWithoutTcpOrUdp => "port ranges need protocol tcp or udp",
            RuleError::TcpFlagWithoutTcp => "tcp-new-only needs protocol tcp",
            RuleError::ProtocolNumberHasName => "use the named protocol for icmp, tcp or udp",
            RuleError::TooMany => "too many rules",
        }
    }
}

/// The side of a container a frame is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The container sends it.
    Egress,
    /// It is delivered to the container.
    Ingress,
}

impl Side {
    /// The side of the sender (`Tx`) or receiver (`Rx`).
    pub fn of(direction: Direction) -> Side {
        match direction {
            Direction::Tx => Side::Egress,
            Direction::Rx => Side::Ingress,
        }
    }
}

/// What rules look at in a frame, from one side's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Egress or ingress.
    pub side: Side,
    /// Protocol class.
    pub class: ProtocolClass,
    /// IP protocol number (IPv4), 0 otherwise.
    pub ip_protocol: u8,
    /// The remote IPv4 address, if the frame has one.
    pub remote: Option<Ipv4Addr>,
    /// Source port (0 without ports).
    pub src_port: u16,
    /// Destination port (0 without ports).
    pub dst_port: u16,
    /// A TCP connection attempt.
    pub tcp_new: bool,
}

impl Flow {
    /// Build the flow of `frame` as seen from `side`.
    pub fn of(frame: &ParsedFrame, side: Side) -> Flow {
        let mut flow = Flow {
            side,
            class: ProtocolClass::NonIp,
            ip_protocol: 0,
            remote: None,
            src_port: 0,
            dst_port: 0,
            tcp_new: false,
        };
        match frame.network {
            Network::Arp(arp) => {
                flow.class = ProtocolClass::Arp;
                flow.remote = Some(match side {
                    Side::Egress => arp.target_ip,
                    Side::Ingress => arp.sender_ip,
                });
            }
            Network::Ipv4(ip) => {
                flow.ip_protocol = ip.protocol;
                flow.remote = Some(match side {
                    Side::Egress => ip.dst,
                    Side::Ingress => ip.src,
                });
                flow.class = match ip.transport {
                    Transport::Tcp {
                        src_port,
                        dst_port,
                        flags,
                    } => {
                        flow.src_port = src_port;
                        flow.dst_port = dst_port;
                        flow.tcp_new = flags.is_connection_attempt();
                        ProtocolClass::Tcp
                    }
                    Transport::Udp { src_port, dst_port } => {
                        flow.src_port = src_port;
                        flow.dst_port = dst_port;
                        ProtocolClass::Udp
                    }
                    Transport::Icmp { .. } => ProtocolClass::Icmp,
                    Transport::Other => ProtocolClass::OtherIp,
                    Transport::LaterFragment => match ip.protocol {
                        1 => ProtocolClass::Icmp,
                        6 => ProtocolClass::Tcp,
                        17 => ProtocolClass::Udp,
                        _ => ProtocolClass::OtherIp,
                    },
                };
            }
            Network::Ipv6(_) => flow.class = ProtocolClass::Ipv6,
            Network::Other(_) => flow.class = ProtocolClass::NonIp,
        }
        flow
    }
}

/// What every candidate rule checks, packed into 16 bytes (four rules per cache line): the
/// remote prefix as address and mask, and the port ranges as first port and span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedRule {
    addr: u32,
    mask: u32,
    src_first: u16,
    src_span: u16,
    dst_first: u16,
    dst_span: u16,
}

impl PackedRule {
    const ANY: PackedRule = PackedRule {
        addr: 0,
        mask: 0,
        src_first: 0,
        src_span: u16::MAX,
        dst_first: 0,
        dst_span: u16::MAX,
    };

    fn of(rule: &Rule) -> PackedRule {
        // IPv6 rules do not consult the remote prefix: a zero mask matches every address.
        let (addr, mask) = if rule.protocol == ProtocolMatch::Ipv6 {
            (0, 0)
        } else {
            (u32::from(rule.remote.addr), rule.remote.mask())
        };
        PackedRule {
            addr,
            mask,
            src_first: rule.src_ports.first,
            src_span: rule.src_ports.last.wrapping_sub(rule.src_ports.first),
            dst_first: rule.dst_ports.first,
            dst_span: rule.dst_ports.last.wrapping_sub(rule.dst_ports.first),
        }
    }

    #[inline(always)]
    fn matches(&self, remote: Option<u32>, src_port: u16, dst_port: u16) -> bool {
        let remote_ok = match remote {
            Some(ip) => ip & self.mask == self.addr,
            None => self.mask == 0,
        };
        remote_ok
            && src_port.wrapping_sub(self.src_first) <= self.src_span
            && dst_port.wrapping_sub(self.dst_first) <= self.dst_span
    }
}

/// The compiled form of one container's (or the host's) rules: per-direction, per-protocol-class
/// candidate bitmaps, bitmaps of the rules' actions and extra conditions, and each rule's
/// address and port match data packed into 16 bytes.
///
/// The rules themselves are stored once, in the spec (or host policy) they were compiled from;
/// evaluation takes that list to check the rare conditions not packed here (an IP protocol
/// number, a subject), only for rules that have one.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct RuleSet {
    /// Rules whose action is `Deny`.
    deny: u64,
    /// Rules with `TCP_NEW_ONLY` (they cannot match anything but a connection attempt).
    tcp_new_only: u64,
    /// Rules with a subject other than `Anyone` (they cannot match without a trusted task).
    with_subject: u64,
    /// Rules checked against the full rule too: an IP protocol number or a subject.
    cold: u64,
    /// `applicable[side][class]`: bit i set when rule i can match that side and class.
    applicable: [[u64; CLASS_COUNT]; 2],
    /// Number of rules.
    len: u8,
    packed: PackedRules,
}

/// The packed rules, cache-line aligned (rules 4k to 4k+3 share a line).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct PackedRules([PackedRule; MAX_RULES]);

/// The outcome of evaluating a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleOutcome {
    /// The action decided.
    pub action: Action,
    /// The index of the matching rule, or `None` when the default applied.
    pub rule: Option<u16>,
}

impl RuleSet {
    /// An empty rule set.
    pub const fn new() -> RuleSet {
        RuleSet {
            applicable: [[0; CLASS_COUNT]; 2],
            deny: 0,
            tcp_new_only: 0,
            with_subject: 0,
            cold: 0,
            len: 0,
            packed: PackedRules([PackedRule::ANY; MAX_RULES]),
        }
    }

    /// Compile `rules` (validating each one); on error, returns the index of the bad rule.
    pub fn compile(rules: &[Rule]) -> Result<RuleSet, (usize, RuleError)> {
        let mut set = RuleSet::new();
        if rules.len() > MAX_RULES {
            return Err((MAX_RULES, RuleError::TooMany));
        }
        for (i, rule) in rules.iter().enumerate() {
            rule.validate().map_err(|e| (i, e))?;
            let bit = 1u64 << i;
            set.packed.0[i] = PackedRule::of(rule);
            if rule.action == Action::Deny {
                set.deny |= bit;
            }
            if rule.flags.contains(RuleFlags::TCP_NEW_ONLY) {
                set.tcp_new_only |= bit;
            }
            if rule.subject != Subject::Anyone {
                set.with_subject |= bit;
                set.cold |= bit;
            }
            if matches!(rule.protocol, ProtocolMatch::IpProtocol(_)) {
                set.cold |= bit;
            }
            for (s, side) in [Side::Egress, Side::Ingress].into_iter().enumerate() {
                if !rule.direction.covers(side) {
                    continue;
                }
                for (c, class) in CLASSES.iter().enumerate() {
                    if rule.protocol.covers_class(*class) {
                        set.applicable[s][c] |= bit;
                    }
                }
            }
        }
        set.len = rules.len() as u8;
        Ok(set)
    }

    /// Number of rules compiled.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first rule matching `flow` (sent by `task`, when trusted), if any. `rules` is the
    /// list this set was compiled from (read only for rules with an IP protocol number or a
    /// subject, so the usual frame never touches it).
    #[inline]
    pub fn first_match(
        &self,
        rules: &heapless::Vec<Rule, MAX_RULES>,
        flow: &Flow,
        task: Option<&TaskIdentity>,
    ) -> Option<RuleOutcome> {
        self.first_match_within(rules, flow, task, u64::MAX)
    }

    /// The first rule among `within` (bit i: rule i) matching `flow`, as [`Self::first_match`].
    #[inline]
    pub fn first_match_within(
        &self,
        rules: &heapless::Vec<Rule, MAX_RULES>,
        flow: &Flow,
        task: Option<&TaskIdentity>,
        within: u64,
    ) -> Option<RuleOutcome> {
        let side = match flow.side {
            Side::Egress => 0,
            Side::Ingress => 1,
        };
        let mut candidates = self.applicable[side][flow.class as usize] & within;
        if !flow.tcp_new {
            candidates &= !self.tcp_new_only;
        }
        if task.is_none() {
            candidates &= !self.with_subject;
        }
        let remote = flow.remote.map(u32::from);
        while candidates != 0 {
            let i = candidates.trailing_zeros() as usize & (MAX_RULES - 1);
            candidates &= candidates - 1;
            if !self.packed.0[i].matches(remote, flow.src_port, flow.dst_port) {
                continue;
            }
            let bit = 1u64 << i;
            if self.cold & bit != 0 && !rules.get(i).is_some_and(|r| r.matches_cold(flow, task)) {
                continue;
            }
            return Some(RuleOutcome {
                action: if self.deny & bit != 0 {
                    Action::Deny
                } else {
                    Action::Allow
                },
                rule: Some(i as u16),
            });
        }
        None
    }

    /// Evaluate: the first matching rule, or `default`. `rules` is the list this set was
    /// compiled from.
    #[inline]
    pub fn evaluate(
        &self,
        rules: &heapless::Vec<Rule, MAX_RULES>,
        flow: &Flow,
        task: Option<&TaskIdentity>,
        default: Action,
    ) -> RuleOutcome {
        self.first_match(rules, flow, task).unwrap_or(RuleOutcome {
            action: default,
            rule: None,
        })
    }
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::new()
    }
}

const CLASSES: [ProtocolClass; CLASS_COUNT] = [
    ProtocolClass::Arp,
    ProtocolClass::Icmp,
    ProtocolClass::Tcp,
    ProtocolClass::Udp,
    ProtocolClass::OtherIp,
    ProtocolClass::Ipv6,
    ProtocolClass::NonIp,
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ports() -> impl Strategy<Value = PortRange> {
        prop_oneof![
            Just(PortRange::ANY),
            (0u16..6, 0u16..4).prop_map(|(first, extra)| PortRange {
                first,
                last: first + extra
            }),
            (65530u16..=65535).prop_map(|first| PortRange {
                first,
                last: u16::MAX
            }),
        ]
    }

    fn rule() -> impl Strategy<Value = Rule> {
        let protocol = prop_oneof![
            Just(ProtocolMatch::Any),
            Just(ProtocolMatch::Arp),
            Just(ProtocolMatch::Icmp),
            Just(ProtocolMatch::Tcp),
            Just(ProtocolMatch::Udp),
            prop_oneof![Just(2u8), Just(47), Just(132)].prop_map(ProtocolMatch::IpProtocol),
            Just(ProtocolMatch::Ipv6),
        ];
        let subject = prop_oneof![
            3 => Just(Subject::Anyone),
            1 => (0u32..3).prop_map(Subject::Uid),
            1 => (0u32..3).prop_map(Subject::Process),
            1 => (0u64..3).prop_map(Subject::Executable),
        ];
        (
            any::<bool>(),
            0u8..3,
            protocol,
            (0u32..8, 0u8..=32),
            ports(),
            ports(),
            subject,
            any::<bool>(),
        )
            .prop_map(
                |(deny, dir, protocol, (net, prefix), src, dst, subject, new_only)| {
                    let has_ports = matches!(protocol, ProtocolMatch::Tcp | ProtocolMatch::Udp);
                    let mask = Ipv4Cidr {
                        addr: Ipv4Addr::UNSPECIFIED,
                        prefix,
                    }
                    .mask();
                    Rule {
                        action: if deny { Action::Deny } else { Action::Allow },
                        direction: DirectionMatch::from_u8(dir).unwrap(),
                        protocol,
                        // Few distinct networks, so remote addresses often fall inside.
                        remote: Ipv4Cidr {
                            addr: Ipv4Addr::from((net << 29 | net) & mask),
                            prefix,
                        },
                        src_ports: if has_ports { src } else { PortRange::ANY },
                        dst_ports: if has_ports { dst } else { PortRange::ANY },
                        subject,
                        flags: if new_only && protocol == ProtocolMatch::Tcp {
                            RuleFlags::TCP_NEW_ONLY
                        } else {
                            RuleFlags::empty()
                        },
                    }
                },
            )
    }

    fn flow() -> impl Strategy<Value = Flow> {
        (
            any::<bool>(),
            0usize..CLASS_COUNT,
            prop_oneof![Just(2u8), Just(47), Just(6), Just(17)],
            proptest::option::weighted(0.9, (0u32..8, 0u32..4)),
            0u16..10,
            prop_oneof![0u16..10, 65528u16..=65535],
            any::<bool>(),
        )
            .prop_map(
                |(egress, class, ip_protocol, remote, src_port, dst_port, tcp_new)| Flow {
                    side: if egress { Side::Egress } else { Side::Ingress },
                    class: CLASSES[class],
                    ip_protocol,
                    remote: remote.map(|(net, host)| Ipv4Addr::from(net << 29 | net | host << 8)),
                    src_port,
                    dst_port,
                    tcp_new,
                },
            )
    }

    fn task() -> impl Strategy<Value = Option<TaskIdentity>> {
        proptest::option::of((0u32..3, 0u32..3, 0u64..3).prop_map(|(uid, tgid, exe)| {
            TaskIdentity {
                uid: Some(uid),
                tgid: Some(tgid),
                exe_inode: Some(exe),
                ..TaskIdentity::default()
            }
        }))
    }

    proptest! {
        /// The compiled form (bitmaps and packed rules) decides exactly like evaluating every
        /// rule in order with the reference matcher.
        #[test]
        fn compiled_rules_agree_with_the_reference(
            rules in proptest::collection::vec(rule(), 0..=MAX_RULES),
            flows in proptest::collection::vec((flow(), task()), 1..16),
            default_deny in any::<bool>(),
        ) {
            let list: heapless::Vec<Rule, MAX_RULES> = rules.iter().copied().collect();
            let set = RuleSet::compile(&list).unwrap();
            prop_assert_eq!(set.len(), list.len());
            let default = if default_deny { Action::Deny } else { Action::Allow };
            for (flow, task) in &flows {
                let expected = list
                    .iter()
                    .position(|r| r.matches(flow, task.as_ref()))
                    .map_or(RuleOutcome { action: default, rule: None }, |i| RuleOutcome {
                        action: list[i].action,
                        rule: Some(i as u16),
                    });
                prop_assert_eq!(set.evaluate(&list, flow, task.as_ref(), default), expected);
            }
        }
    }

    #[test]
    fn a_rule_set_is_empty_only_without_rules() {
        assert!(RuleSet::new().is_empty());
        assert!(RuleSet::compile(&[]).unwrap().is_empty());
        let one = RuleSet::compile(&[Rule::any(Action::Deny, DirectionMatch::Both)]).unwrap();
        assert!(!one.is_empty());
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn rules_pack_into_16_bytes() {
        assert_eq!(core::mem::size_of::<PackedRule>(), 16);
    }
}
