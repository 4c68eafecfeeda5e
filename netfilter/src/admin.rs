//! The administrator's rules: deny rules (and allow exceptions to them) that the data-centre
//! administrator sets through Shoji's management endpoint, over every container's own policy.
//!
//! They sit beside the registry, not in it: the in-guest agent's VMCALLs (register, update,
//! unregister, host policy, configuration) never touch them. A frame is dropped
//! (`AdminDenied`) when some administrator deny rule that applies to its party matches it and
//! no administrator allow rule that applies matches it; otherwise it goes on to the party's own
//! policy, which can still deny it. An allow rule is an exception to the administrator's deny
//! rules, never a widening of a container's policy, so the order in which rules were added does
//! not matter.
//!
//! A rule applies to everyone, to the host, or to one container. A container's rule follows the
//! container's id and also the MAC and IPv4 addresses it had when the rule was made, so
//! unregistering it and registering the same addresses under another id does not escape the
//! rule. Rules are the same [`Rule`]s containers have (remote, protocol, ports, direction, user,
//! process, executable), compiled into one [`RuleSet`]; every party carries a bitmap of the rules
//! that apply to it, refreshed when the registry or these rules change, so a frame looks at no
//! rule of another party's and a guest without administrator rules pays one test.
//!
//! A rule on a user, process or executable can only judge frames sent in that task's own
//! context; the kernel sends some frames of the same connection later from a timer (a TCP SYN
//! retransmitted, for one). So when such a rule denies a TCP or UDP frame, the flow (party,
//! protocol, remote address, ports) is remembered for [`DENIED_FLOW_TTL_NS`] after its last
//! frame, and its frames without a trusted sender are denied too. The table holds
//! [`DENIED_FLOWS`] flows; a flow lives in one of [`PROBE`] entries its hash picks, and a new one
//! takes an empty or expired entry among them, else the one idle longest, so a lookup reads at
//! most [`PROBE`] entries.
//!
//! Requests arrive as `application/x-www-form-urlencoded` bodies ([`AdminSpec::parse_form`]);
//! the table renders as JSON ([`AdminRules::write_json`]).

use core::fmt::{self, Write};
use core::net::Ipv4Addr;

use shoji_shared::identity::COMM_LEN;
use shoji_shared::{ContainerId, TaskIdentity};

use crate::parse::MacAddr;
use crate::registry::{Container, ContainerSpec, MAX_IPV4, MAX_MACS};
use crate::rules::{
    Action, DirectionMatch, Flow, Ipv4Cidr, PortRange, ProtocolClass, ProtocolMatch, Rule,
    RuleError, RuleFlags, RuleSet, Side, Subject, MAX_RULES,
};

/// Most administrator rules at once.
pub const MAX_ADMIN_RULES: usize = MAX_RULES;

/// Flows remembered as denied by a rule on a sender (see the module documentation).
pub const DENIED_FLOWS: usize = 128;

/// Entries a flow may occupy (from the one its hash names on).
pub const PROBE: usize = 8;

/// How long a denied flow is remembered after its last frame: longer than Linux's SYN
/// retransmissions last (about 127 s with the default six retries).
pub const DENIED_FLOW_TTL_NS: u64 = 180_000_000_000;

/// A flow a rule on a sender denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeniedFlow {
    /// The rule's id; 0 for an empty entry.
    rule: u32,
    party: u32,
    remote: u32,
    src_port: u16,
    dst_port: u16,
    class: u8,
    /// When its last frame was denied.
    last: u64,
}

impl DeniedFlow {
    const EMPTY: DeniedFlow = DeniedFlow {
        rule: 0,
        party: 0,
        remote: 0,
        src_port: 0,
        dst_port: 0,
        class: 0,
        last: 0,
    };

    /// The entry `flow` of `party` would have (`None` for a flow that is not TCP or UDP
    /// egress).
    fn of(party: u32, flow: &Flow) -> Option<DeniedFlow> {
        let tcp_or_udp = matches!(flow.class, ProtocolClass::Tcp | ProtocolClass::Udp);
        (tcp_or_udp && flow.side == Side::Egress).then(|| DeniedFlow {
            rule: 0,
            party,
            remote: flow.remote.map_or(0, u32::from),
            src_port: flow.src_port,
            dst_port: flow.dst_port,
            class: flow.class as u8,
            last: 0,
        })
    }

    fn same_flow(&self, other: &DeniedFlow) -> bool {
        (
            self.party,
            self.remote,
            self.src_port,
            self.dst_port,
            self.class,
        ) == (
            other.party,
            other.remote,
            other.src_port,
            other.dst_port,
            other.class,
        )
    }

    fn live(&self, now: u64) -> bool {
        self.rule != 0 && now.saturating_sub(self.last) < DENIED_FLOW_TTL_NS
    }

    /// The first of the [`PROBE`] entries the flow may occupy.
    fn home(&self) -> usize {
        let ports = u64::from(self.src_port) << 16 | u64::from(self.dst_port);
        let x = (u64::from(self.remote) << 32 | ports)
            ^ (u64::from(self.party) << 8 | u64::from(self.class)).rotate_left(40);
        (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % DENIED_FLOWS
    }
}

/// The indexes of the entries `key` may occupy.
fn probe(key: &DeniedFlow) -> impl Iterator<Item = usize> {
    let home = key.home();
    (0..PROBE).map(move |i| (home + i) % DENIED_FLOWS)
}

/// Longest request body [`AdminSpec::parse_form`] reads.
pub const MAX_FORM: usize = 1024;

/// Whom an administrator rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminScope {
    /// The host and every container.
    Everyone,
    /// The host (untagged frames) only.
    Host,
    /// One container, by id (and the addresses it had when the rule was made).
    Container(ContainerId),
}

impl AdminScope {
    /// The container it names, if it names one.
    pub fn container(self) -> Option<ContainerId> {
        match self {
            AdminScope::Container(id) => Some(id),
            AdminScope::Everyone | AdminScope::Host => None,
        }
    }
}

/// A new administrator rule, as requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminSpec {
    /// Whom it applies to.
    pub scope: AdminScope,
    /// What it matches; its action is deny, or allow for an exception.
    pub rule: Rule,
}

/// One administrator rule in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRule {
    /// Its number (never reused while Shoji runs).
    pub id: u32,
    /// Whom it applies to.
    pub scope: AdminScope,
    /// What it matches and does.
    pub rule: Rule,
    /// The container's MAC addresses when the rule was made (container scope only).
    pub pinned_macs: heapless::Vec<MacAddr, MAX_MACS>,
    /// The container's IPv4 addresses when the rule was made (container scope only).
    pub pinned_ipv4: heapless::Vec<Ipv4Addr, MAX_IPV4>,
    /// Frames this rule decided: drops for a deny rule, exceptions for an allow rule.
    pub hits: u64,
}

impl AdminRule {
    fn applies_to(&self, c: &Container) -> bool {
        match self.scope {
            AdminScope::Everyone => true,
            AdminScope::Host => false,
            AdminScope::Container(id) => {
                c.id() == id
                    || self.pinned_macs.iter().any(|m| c.owns_mac(m))
                    || self.pinned_ipv4.iter().any(|ip| c.owns_ipv4(*ip))
            }
        }
    }
}

/// Why an administrator rule was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminError {
    /// The rule is inconsistent.
    Rule(RuleError),
    /// The table already holds [`MAX_ADMIN_RULES`] rules.
    Full,
    /// Rule numbers are exhausted.
    NoIds,
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Rule(e) => f.write_str(e.describe()),
            AdminError::Full => write!(f, "the table holds {MAX_ADMIN_RULES} rules already"),
            AdminError::NoIds => f.write_str("rule numbers exhausted"),
        }
    }
}

/// The outcome of the administrator's rules for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminVerdict {
    /// No administrator rule objects: the party's own policy decides.
    Continue,
    /// Administrator rule `id` denies it.
    Deny(u32),
}

/// The administrator's rule table and its compiled form.
#[derive(Debug, Clone)]
pub struct AdminRules {
    entries: heapless::Vec<AdminRule, MAX_ADMIN_RULES>,
    /// `entries[i].rule`, the list `set` was compiled from.
    rules: heapless::Vec<Rule, MAX_RULES>,
    set: RuleSet,
    /// Bit i: rule i is a deny rule.
    deny: u64,
    /// Rules for everyone.
    everyone: u64,
    /// Rules for the host (everyone's included).
    host: u64,
    /// Rules with a subject (their denials are remembered per flow).
    with_subject: u64,
    next_id: u32,
    denied: [DeniedFlow; DENIED_FLOWS],
    /// Entries of `denied` in use (expired ones included): none, and no lookup is made.
    occupied: usize,
}

impl Default for AdminRules {
    fn default() -> Self {
        AdminRules::new()
    }
}

impl AdminRules {
    /// An empty table.
    pub const fn new() -> AdminRules {
        AdminRules {
            entries: heapless::Vec::new(),
            rules: heapless::Vec::new(),
            set: RuleSet::new(),
            deny: 0,
            everyone: 0,
            host: 0,
            with_subject: 0,
            next_id: 1,
            denied: [DeniedFlow::EMPTY; DENIED_FLOWS],
            occupied: 0,
        }
    }

    /// The rules, oldest first.
    pub fn entries(&self) -> &[AdminRule] {
        &self.entries
    }

    /// Whether there is no rule.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add `spec`; `registered` is the container's registration when the scope names a
    /// registered container (its addresses are pinned). Returns the new rule's id.
    pub fn add(
        &mut self,
        spec: AdminSpec,
        registered: Option<&ContainerSpec>,
    ) -> Result<u32, AdminError> {
        spec.rule.validate().map_err(AdminError::Rule)?;
        if self.entries.is_full() {
            return Err(AdminError::Full);
        }
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(AdminError::NoIds)?;
        let mut entry = AdminRule {
            id,
            scope: spec.scope,
            rule: spec.rule,
            pinned_macs: heapless::Vec::new(),
            pinned_ipv4: heapless::Vec::new(),
            hits: 0,
        };
        if let (Some(_), Some(c)) = (spec.scope.container(), registered) {
            entry.pinned_macs = c.macs.clone();
            entry.pinned_ipv4 = c.ipv4.clone();
        }
        // Room was checked above; neither push can fail.
        let _ = self.entries.push(entry);
        self.recompile();
        Ok(id)
    }

    /// Remove rule `id`; returns it when it existed.
    pub fn remove(&mut self, id: u32) -> Option<AdminRule> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        let gone = self.entries.remove(i);
        for d in self.denied.iter_mut().filter(|d| d.rule == id) {
            *d = DeniedFlow::EMPTY;
            self.occupied -= 1;
        }
        self.recompile();
        Some(gone)
    }

    fn recompile(&mut self) {
        self.rules.clear();
        let (mut deny, mut everyone, mut host, mut with_subject) = (0, 0, 0, 0);
        for (i, e) in self.entries.iter().enumerate() {
            let bit = 1u64 << i;
            let _ = self.rules.push(e.rule);
            if e.rule.action == Action::Deny {
                deny |= bit;
            }
            if e.rule.subject != Subject::Anyone {
                with_subject |= bit;
            }
            match e.scope {
                AdminScope::Everyone => {
                    everyone |= bit;
                    host |= bit;
                }
                AdminScope::Host => host |= bit,
                AdminScope::Container(_) => {}
            }
        }
        // Every entry was validated when added, and there are at most MAX_RULES of them.
        self.set = RuleSet::compile(&self.rules).unwrap_or_default();
        (self.deny, self.everyone, self.host, self.with_subject) =
            (deny, everyone, host, with_subject);
    }

    /// The bitmap of rules that apply to the host.
    pub(crate) fn host_mask(&self) -> u64 {
        self.host
    }

    /// The bitmap of rules that apply to container `c`.
    pub(crate) fn mask_for(&self, c: &Container) -> u64 {
        let mut mask = self.everyone;
        for (i, e) in self.entries.iter().enumerate() {
            if matches!(e.scope, AdminScope::Container(_)) && e.applies_to(c) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// Judge `flow` (sent by `task`, when trusted) for `party` (a number naming the host or a
    /// registry slot), whose rule bitmap is `mask`, at time `now`; counts the deciding rule's
    /// hit.
    #[inline]
    pub(crate) fn judge(
        &mut self,
        mask: u64,
        party: u32,
        flow: &Flow,
        task: Option<&TaskIdentity>,
        now: u64,
    ) -> AdminVerdict {
        if mask & self.deny == 0 {
            return AdminVerdict::Continue;
        }
        let subject_rules = mask & self.deny & self.with_subject != 0;
        let remembered = match task {
            None if subject_rules && self.occupied > 0 => DeniedFlow::of(party, flow),
            _ => None,
        };
        if let Some(key) = remembered {
            let denied = &self.denied;
            let found = probe(&key).find(|&i| denied[i].live(now) && denied[i].same_flow(&key));
            if let Some(i) = found {
                let d = &mut self.denied[i];
                d.last = now;
                let rule = d.rule;
                if let Some(e) = self.entries.iter_mut().find(|e| e.id == rule) {
                    e.hits = e.hits.saturating_add(1);
                }
                return AdminVerdict::Deny(rule);
            }
        }
        let Some(denied) = self
            .set
            .first_match_within(&self.rules, flow, task, mask & self.deny)
            .and_then(|o| o.rule)
        else {
            if task.is_some() && subject_rules && self.occupied > 0 {
                // A sender the rules let through owns this flow now (a port used again): its
                // frames sent later without a trusted sender must not meet an old denial.
                self.forget(party, flow);
            }
            return AdminVerdict::Continue;
        };
        let exception = self
            .set
            .first_match_within(&self.rules, flow, task, mask & !self.deny)
            .and_then(|o| o.rule);
        let decider = exception.unwrap_or(denied);
        let Some(e) = self.entries.get_mut(usize::from(decider)) else {
            return AdminVerdict::Continue;
        };
        e.hits = e.hits.saturating_add(1);
        if exception.is_some() {
            return AdminVerdict::Continue;
        }
        let id = e.id;
        if self.with_subject & (1 << denied) != 0 {
            self.remember(party, flow, id, now);
        }
        AdminVerdict::Deny(id)
    }

    /// Forget a remembered denial of `flow` of `party`.
    fn forget(&mut self, party: u32, flow: &Flow) {
        let Some(key) = DeniedFlow::of(party, flow) else {
            return;
        };
        for i in probe(&key) {
            let d = &mut self.denied[i];
            if d.rule != 0 && d.same_flow(&key) {
                *d = DeniedFlow::EMPTY;
                self.occupied -= 1;
            }
        }
    }

    /// Remember that rule `id` denied `flow` of `party` (TCP and UDP egress only).
    fn remember(&mut self, party: u32, flow: &Flow, id: u32, now: u64) {
        let Some(mut key) = DeniedFlow::of(party, flow) else {
            return;
        };
        key.rule = id;
        key.last = now;
        let denied = &self.denied;
        let slot = probe(&key)
            .find(|&i| denied[i].live(now) && denied[i].same_flow(&key))
            .or_else(|| probe(&key).find(|&i| !denied[i].live(now)))
            .or_else(|| probe(&key).min_by_key(|&i| denied[i].last))
            .unwrap_or(0);
        if self.denied[slot].rule == 0 {
            self.occupied += 1;
        }
        self.denied[slot] = key;
    }

    /// Flows remembered as denied now.
    pub fn denied_flows(&self, now: u64) -> usize {
        self.denied.iter().filter(|d| d.live(now)).count()
    }

    /// The table as one JSON document: `{"rules":[{...},...]}`, each rule with the keys of the
    /// form it was made from plus `id`, `hits` and the pinned addresses.
    pub fn write_json(&self, out: &mut dyn Write) -> fmt::Result {
        out.write_str("{\"rules\":[")?;
        for (n, e) in self.entries.iter().enumerate() {
            if n > 0 {
                out.write_char(',')?;
            }
            write_rule_json(e, out)?;
        }
        out.write_str("]}\n")
    }
}

fn write_rule_json(e: &AdminRule, out: &mut dyn Write) -> fmt::Result {
    let r = &e.rule;
    write!(
        out,
        "{{\"id\":{},\"action\":\"{}\"",
        e.id,
        action_name(r.action)
    )?;
    match e.scope {
        AdminScope::Everyone => out.write_str(",\"container\":\"all\"")?,
        AdminScope::Host => out.write_str(",\"container\":\"host\"")?,
        AdminScope::Container(id) => write!(out, ",\"container\":{}", id.0)?,
    }
    write!(
        out,
        ",\"direction\":\"{}\",\"protocol\":\"",
        direction_name(r.direction)
    )?;
    match r.protocol {
        ProtocolMatch::IpProtocol(p) => write!(out, "{p}")?,
        p => out.write_str(protocol_name(p))?,
    }
    write!(
        out,
        "\",\"remote\":\"{}/{}\"",
        r.remote.addr, r.remote.prefix
    )?;
    for (key, ports) in [("src_port", r.src_ports), ("dst_port", r.dst_ports)] {
        if ports.first == ports.last {
            write!(out, ",\"{key}\":\"{}\"", ports.first)?;
        } else {
            write!(out, ",\"{key}\":\"{}-{}\"", ports.first, ports.last)?;
        }
    }
    match r.subject {
        Subject::Anyone => {}
        Subject::Uid(uid) => write!(out, ",\"uid\":{uid}")?,
        Subject::Process(pid) => write!(out, ",\"pid\":{pid}")?,
        Subject::Executable(ino) => write!(out, ",\"exe\":{ino}")?,
        Subject::Comm(name) => {
            out.write_str(",\"comm\":\"")?;
            for &b in name.iter().take_while(|b| **b != 0) {
                // `comm` values are checked to be printable ASCII without quote or backslash.
                out.write_char(char::from(b))?;
            }
            out.write_char('"')?;
        }
    }
    write!(
        out,
        ",\"new_only\":{},\"hits\":{},\"pinned_ipv4\":[",
        r.flags.contains(RuleFlags::TCP_NEW_ONLY),
        e.hits
    )?;
    for (i, ip) in e.pinned_ipv4.iter().enumerate() {
        write!(out, "{}\"{ip}\"", if i > 0 { "," } else { "" })?;
    }
    out.write_str("],\"pinned_macs\":[")?;
    for (i, m) in e.pinned_macs.iter().enumerate() {
        write!(
            out,
            "{}\"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\"",
            if i > 0 { "," } else { "" },
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5]
        )?;
    }
    out.write_str("]}")
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

fn direction_name(d: DirectionMatch) -> &'static str {
    match d {
        DirectionMatch::Egress => "egress",
        DirectionMatch::Ingress => "ingress",
        DirectionMatch::Both => "both",
    }
}

fn protocol_name(p: ProtocolMatch) -> &'static str {
    match p {
        ProtocolMatch::Any => "any",
        ProtocolMatch::Arp => "arp",
        ProtocolMatch::Icmp => "icmp",
        ProtocolMatch::Tcp => "tcp",
        ProtocolMatch::Udp => "udp",
        ProtocolMatch::Ipv6 => "ipv6",
        // Rendered as its number by the caller.
        ProtocolMatch::IpProtocol(_) => "ip",
    }
}

/// A refused request body: the key it is about (when one) and what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormError<'a> {
    /// The key concerned.
    pub key: Option<&'a str>,
    /// What is wrong.
    pub message: &'static str,
}

impl fmt::Display for FormError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            Some(k) => write!(f, "{k}: {}", self.message),
            None => f.write_str(self.message),
        }
    }
}

/// The keys a rule request may carry, each at most once.
pub const FORM_KEYS: [&str; 12] = [
    "action",
    "container",
    "direction",
    "protocol",
    "remote",
    "src_port",
    "dst_port",
    "uid",
    "pid",
    "exe",
    "comm",
    "new_only",
];

impl AdminSpec {
    /// Parse a rule request: `key=value` pairs joined by `&` (no percent-escapes: no value
    /// needs one), each key of [`FORM_KEYS`] at most once. Defaults: `action=deny`,
    /// `container=all`, `direction=both`, `protocol=any`, `remote=0.0.0.0/0`, every port, any
    /// sender. At most one of `uid`, `pid`, `exe` and `comm`.
    pub fn parse_form(body: &[u8]) -> Result<AdminSpec, FormError<'_>> {
        let err = |key, message| FormError { key, message };
        if body.len() > MAX_FORM {
            return Err(err(None, "body too long"));
        }
        let text = core::str::from_utf8(body).map_err(|_| err(None, "not UTF-8"))?;
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            return Err(err(
                None,
                "empty rule: name what to block (container=all blocks everything)",
            ));
        }
        let mut spec = AdminSpec {
            scope: AdminScope::Everyone,
            rule: Rule::any(Action::Deny, DirectionMatch::Both),
        };
        let mut seen = [false; FORM_KEYS.len()];
        for pair in text.split('&') {
            let (key, value) = pair
                .split_once('=')
                .ok_or(err(Some(pair), "expected key=value"))?;
            let k = FORM_KEYS
                .iter()
                .position(|known| *known == key)
                .ok_or(err(Some(key), "unknown key"))?;
            if core::mem::replace(&mut seen[k], true) {
                return Err(err(Some(key), "given twice"));
            }
            if value.contains(['%', '+']) {
                return Err(err(Some(key), "escapes are not accepted"));
            }
            spec.set(key, value).map_err(|m| err(Some(key), m))?;
        }
        let subjects = ["uid", "pid", "exe", "comm"]
            .iter()
            .filter(|k| seen[FORM_KEYS.iter().position(|f| f == *k).unwrap_or(0)])
            .count();
        if subjects > 1 {
            return Err(err(None, "at most one of uid, pid, exe and comm"));
        }
        spec.rule.validate().map_err(|e| err(None, e.describe()))?;
        Ok(spec)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), &'static str> {
        let r = &mut self.rule;
        match key {
            "action" => {
                r.action = match value {
                    "deny" => Action::Deny,
                    "allow" => Action::Allow,
                    _ => return Err("expected deny or allow"),
                }
            }
            "container" => {
                self.scope = match value {
                    "all" => AdminScope::Everyone,
                    "host" => AdminScope::Host,
                    id => AdminScope::Container(ContainerId(
                        id.parse()
                            .map_err(|_| "expected all, host or a container id")?,
                    )),
                }
            }
            "direction" => {
                r.direction = match value {
                    "egress" => DirectionMatch::Egress,
                    "ingress" => DirectionMatch::Ingress,
                    "both" => DirectionMatch::Both,
                    _ => return Err("expected egress, ingress or both"),
                }
            }
            "protocol" => {
                r.protocol = match value {
                    "any" => ProtocolMatch::Any,
                    "arp" => ProtocolMatch::Arp,
                    "icmp" => ProtocolMatch::Icmp,
                    "tcp" => ProtocolMatch::Tcp,
                    "udp" => ProtocolMatch::Udp,
                    "ipv6" => ProtocolMatch::Ipv6,
                    n => ProtocolMatch::IpProtocol(
                        n.parse()
                            .map_err(|_| "expected any, arp, icmp, tcp, udp, ipv6 or 0-255")?,
                    ),
                }
            }
            "remote" => r.remote = parse_cidr(value).ok_or("expected an IPv4 CIDR (a.b.c.d/n)")?,
            "src_port" => {
                r.src_ports = parse_ports(value).ok_or("expected a port or first-last")?
            }
            "dst_port" => {
                r.dst_ports = parse_ports(value).ok_or("expected a port or first-last")?
            }
            "uid" => r.subject = Subject::Uid(value.parse().map_err(|_| "expected a uid")?),
            "pid" => r.subject = Subject::Process(value.parse().map_err(|_| "expected a pid")?),
            "exe" => {
                r.subject = Subject::Executable(
                    value
                        .parse()
                        .map_err(|_| "expected the executable's inode number")?,
                )
            }
            "comm" => {
                let ok = !value.is_empty()
                    && value.len() < COMM_LEN
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
                if !ok {
                    return Err("expected 1 to 15 printable characters");
                }
                let mut name = [0u8; COMM_LEN];
                name[..value.len()].copy_from_slice(value.as_bytes());
                r.subject = Subject::Comm(name);
            }
            "new_only" => match value {
                "true" => r.flags |= RuleFlags::TCP_NEW_ONLY,
                "false" => r.flags -= RuleFlags::TCP_NEW_ONLY,
                _ => return Err("expected true or false"),
            },
            _ => return Err("unknown key"),
        }
        Ok(())
    }
}

fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, p.parse().ok()?),
        None => (s, 32),
    };
    Ipv4Cidr::new(addr.parse().ok()?, prefix)
}

fn parse_ports(s: &str) -> Option<PortRange> {
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let p = s.parse().ok()?;
            (p, p)
        }
    };
    (first <= last).then_some(PortRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_defaults_and_fields() {
        let s = AdminSpec::parse_form(b"uid=1000&protocol=tcp&dst_port=7777").unwrap();
        assert_eq!(s.scope, AdminScope::Everyone);
        assert_eq!(s.rule.action, Action::Deny);
        assert_eq!(s.rule.direction, DirectionMatch::Both);
        assert_eq!(s.rule.protocol, ProtocolMatch::Tcp);
        assert_eq!(s.rule.dst_ports, PortRange::single(7777));
        assert_eq!(s.rule.src_ports, PortRange::ANY);
        assert_eq!(s.rule.subject, Subject::Uid(1000));
        let s = AdminSpec::parse_form(
            b"action=allow&container=7&direction=egress&remote=10.0.2.0/24&protocol=udp&src_port=1-9&new_only=false\r\n",
        )
        .unwrap();
        assert_eq!(s.scope, AdminScope::Container(ContainerId(7)));
        assert_eq!(s.rule.action, Action::Allow);
        assert_eq!(s.rule.direction, DirectionMatch::Egress);
        assert_eq!(
            s.rule.remote,
            Ipv4Cidr::new(Ipv4Addr::new(10, 0, 2, 0), 24).unwrap()
        );
        assert_eq!(s.rule.src_ports, PortRange { first: 1, last: 9 });
        let s = AdminSpec::parse_form(b"container=host&remote=10.0.2.2&protocol=47").unwrap();
        assert_eq!(s.scope, AdminScope::Host);
        assert_eq!(s.rule.remote, Ipv4Cidr::host(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(s.rule.protocol, ProtocolMatch::IpProtocol(47));
        let s = AdminSpec::parse_form(b"comm=wget&protocol=tcp&new_only=true").unwrap();
        let mut name = [0; COMM_LEN];
        name[..4].copy_from_slice(b"wget");
        assert_eq!(s.rule.subject, Subject::Comm(name));
        assert!(s.rule.flags.contains(RuleFlags::TCP_NEW_ONLY));
        let s = AdminSpec::parse_form(b"pid=42").unwrap();
        assert_eq!(s.rule.subject, Subject::Process(42));
        let s = AdminSpec::parse_form(b"exe=1234").unwrap();
        assert_eq!(s.rule.subject, Subject::Executable(1234));
        let s = AdminSpec::parse_form(b"direction=ingress").unwrap();
        assert_eq!(s.rule.direction, DirectionMatch::Ingress);
        for (body, proto) in [
            ("protocol=any", ProtocolMatch::Any),
            ("protocol=arp", ProtocolMatch::Arp),
            ("protocol=icmp", ProtocolMatch::Icmp),
            ("protocol=ipv6", ProtocolMatch::Ipv6),
        ] {
            let s = AdminSpec::parse_form(body.as_bytes()).unwrap();
            assert_eq!(s.rule.protocol, proto, "{body}");
        }
    }

    #[test]
    fn form_refusals_name_the_key() {
        let cases: [(&[u8], Option<&str>); 19] = [
            (b"", None),
            (b"\r\n", None),
            (b"colour=red", Some("colour")),
            (b"uid", Some("uid")),
            (b"uid=1&uid=2", Some("uid")),
            (b"uid=x", Some("uid")),
            (b"uid=1&pid=2", None),
            (b"action=maybe", Some("action")),
            (b"container=b", Some("container")),
            (b"direction=up", Some("direction")),
            (b"protocol=sctp", Some("protocol")),
            (b"remote=10.0.2.1/24", Some("remote")),
            (b"remote=10.0.2.0/33", Some("remote")),
            (b"protocol=tcp&dst_port=9-1", Some("dst_port")),
            (b"dst_port=80", None),
            (b"protocol=6", None),
            (b"new_only=true", None),
            (b"comm=a%20b", Some("comm")),
            (b"comm=0123456789abcdef", Some("comm")),
        ];
        for (body, key) in cases {
            let e = AdminSpec::parse_form(body).unwrap_err();
            assert_eq!(e.key, key, "{:?}: {e}", core::str::from_utf8(body));
            assert!(!e.message.is_empty());
        }
        assert!(AdminSpec::parse_form(&[b'a'; MAX_FORM + 1]).is_err());
        assert_eq!(
            AdminSpec::parse_form(&[0xff]).unwrap_err().message,
            "not UTF-8"
        );
        assert!(AdminSpec::parse_form(b"comm=a\"b").is_err());
        assert!(AdminSpec::parse_form(b"new_only=yes").is_err());
        assert!(AdminSpec::parse_form(b"pid=-1").is_err());
        assert!(AdminSpec::parse_form(b"exe=x").is_err());
        assert!(AdminSpec::parse_form(b"protocol=tcp&src_port=x").is_err());
    }

    #[test]
    fn table_ids_removal_and_limit() {
        let mut t = AdminRules::new();
        let spec = AdminSpec::parse_form(b"uid=1").unwrap();
        let a = t.add(spec, None).unwrap();
        let b = t.add(spec, None).unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(t.remove(a).map(|r| r.id), Some(1));
        assert!(t.remove(a).is_none());
        let c = t.add(spec, None).unwrap();
        assert_eq!(c, 3, "ids are not reused");
        while t.entries().len() < MAX_ADMIN_RULES {
            t.add(spec, None).unwrap();
        }
        assert_eq!(t.add(spec, None), Err(AdminError::Full));
        let mut bad = spec;
        bad.rule.remote = Ipv4Cidr {
            addr: Ipv4Addr::new(10, 0, 0, 1),
            prefix: 8,
        };
        t.remove(2);
        assert_eq!(t.add(bad, None), Err(AdminError::Rule(RuleError::BadCidr)));
        assert_eq!(t.entries().len(), MAX_ADMIN_RULES - 1);
    }

    #[test]
    fn json_lists_every_field() {
        let mut t = AdminRules::new();
        let mut c = ContainerSpec::new(5, 105, [2, 0, 0, 0, 0, 5], Ipv4Addr::new(10, 0, 2, 105));
        c.ipv4.push(Ipv4Addr::new(10, 0, 3, 5)).unwrap();
        t.add(
            AdminSpec::parse_form(b"container=5&protocol=tcp&dst_port=80-81&new_only=true")
                .unwrap(),
            Some(&c),
        )
        .unwrap();
        t.add(
            AdminSpec::parse_form(b"action=allow&container=host&comm=wget&protocol=47").unwrap(),
            Some(&c),
        )
        .unwrap();
        let mut s = std::string::String::new();
        t.write_json(&mut s).unwrap();
        assert_eq!(
            s,
            "{\"rules\":[{\"id\":1,\"action\":\"deny\",\"container\":5,\"direction\":\"both\",\
             \"protocol\":\"tcp\",\"remote\":\"0.0.0.0/0\",\"src_port\":\"0-65535\",\
             \"dst_port\":\"80-81\",\"new_only\":true,\"hits\":0,\
             \"pinned_ipv4\":[\"10.0.2.105\",\"10.0.3.5\"],\"pinned_macs\":[\"02:00:00:00:00:05\"]},\
             {\"id\":2,\"action\":\"allow\",\"container\":\"host\",\"direction\":\"both\",\
             \"protocol\":\"47\",\"remote\":\"0.0.0.0/0\",\"src_port\":\"0-65535\",\
             \"dst_port\":\"0-65535\",\"comm\":\"wget\",\"new_only\":false,\"hits\":0,\
             \"pinned_ipv4\":[],\"pinned_macs\":[]}]}\n"
        );
        let mut s = std::string::String::new();
        AdminRules::new().write_json(&mut s).unwrap();
        assert_eq!(s, "{\"rules\":[]}\n");
    }
}
