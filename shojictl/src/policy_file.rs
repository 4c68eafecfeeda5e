//! The TOML policy file (`[[container]]` tables with `[[container.rule]]`s) and the inline
//! policy of the OCI annotation `org.shoji.policy`, turned into netfilter registrations.
//!
//! Every error names the line and the key (`container[0].rule[1].protocol`) it is about;
//! unknown keys are errors.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;

use serde::Deserialize;
use shoji_netfilter::registry::{ContainerSpec, MAX_IPV4, MAX_MACS};
use shoji_netfilter::rules::{
    Action, DirectionMatch, Ipv4Cidr, PortRange, ProtocolMatch, Rule, RuleFlags, Subject, MAX_RULES,
};
use shoji_netfilter::MacAddr;
use shoji_shared::identity::COMM_LEN;
use shoji_shared::ContainerId;
use toml::Spanned;

/// A problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key concerned (`container[0].vlan`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The policy part of a container: defaults and rules (what the OCI annotation carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// What happens to frames the container sends that no rule matches.
    pub default_egress: Action,
    /// What happens to frames for the container that no rule matches.
    pub default_ingress: Action,
    /// Ordered rules.
    pub rules: heapless::Vec<Rule, MAX_RULES>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_egress: Action::Allow,
            default_ingress: Action::Allow,
            rules: heapless::Vec::new(),
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ActionDoc {
    Allow,
    Deny,
}

impl From<ActionDoc> for Action {
    fn from(a: ActionDoc) -> Action {
        match a {
            ActionDoc::Allow => Action::Allow,
            ActionDoc::Deny => Action::Deny,
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum DirectionDoc {
    Egress,
    Ingress,
    Both,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    container: Vec<Spanned<ContainerDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerDoc {
    id: Spanned<u32>,
    vlan: Spanned<u16>,
    macs: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    ipv4: Vec<Spanned<String>>,
    cgroup_id: Option<u64>,
    netns_id: Option<u32>,
    default_egress: Option<ActionDoc>,
    default_ingress: Option<ActionDoc>,
    #[serde(default)]
    rule: Vec<Spanned<RuleDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineDoc {
    default_egress: Option<ActionDoc>,
    default_ingress: Option<ActionDoc>,
    #[serde(default)]
    rule: Vec<Spanned<RuleDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    action: ActionDoc,
    direction: Option<DirectionDoc>,
    protocol: Option<Spanned<toml::Value>>,
    remote: Option<Spanned<String>>,
    dst_ports: Option<Spanned<toml::Value>>,
    src_ports: Option<Spanned<toml::Value>>,
    tcp_new_only: Option<bool>,
    uid: Option<Spanned<u32>>,
    pid: Option<Spanned<u32>>,
    exe: Option<Spanned<toml::Value>>,
    comm: Option<Spanned<String>>,
}

/// Maps byte offsets of the source to lines.
struct Source<'a>(&'a str);

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.0.len());
        self.0.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn err(&self, offset: usize, key: String, message: impl Into<String>) -> PolicyError {
        PolicyError {
            line: Some(self.line(offset)),
            key: Some(key),
            message: message.into(),
        }
    }
}

fn toml_error(src: &Source<'_>, e: &toml::de::Error) -> PolicyError {
    PolicyError {
        line: e.span().map(|s| src.line(s.start)),
        key: None,
        message: e.message().trim().replace('\n', " "),
    }
}

/// Parse a policy file's text into registrations (in file order).
pub fn parse_file(text: &str) -> Result<Vec<ContainerSpec>, PolicyError> {
    let src = Source(text);
    let doc: FileDoc = toml::from_str(text).map_err(|e| toml_error(&src, &e))?;
    if doc.container.is_empty() {
        return Err(PolicyError {
            line: None,
            key: Some("container".into()),
            message: "no [[container]] table".into(),
        });
    }
    let mut specs: Vec<ContainerSpec> = Vec::new();
    for (i, c) in doc.container.iter().enumerate() {
        let key = format!("container[{i}]");
        let spec = container_spec(&src, &key, c)?;
        if let Some(other) = specs.iter().position(|s| s.id == spec.id) {
            return Err(src.err(
                c.get_ref().id.span().start,
                format!("{key}.id"),
                format!("id {} already used by container[{other}]", spec.id.0),
            ));
        }
        if let Some(other) = specs.iter().position(|s| s.vlan == spec.vlan) {
            return Err(src.err(
                c.get_ref().vlan.span().start,
                format!("{key}.vlan"),
                format!("VLAN {} already used by container[{other}]", spec.vlan),
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Parse the inline policy of one container (no id, VLAN, MACs or addresses: the OCI hook
/// finds those).
pub fn parse_inline(text: &str) -> Result<Policy, PolicyError> {
    let src = Source(text);
    // Say plainly why the identity keys are refused (serde would only call them unknown).
    if let Ok(table) = text.parse::<toml::Table>() {
        for k in ["id", "vlan", "macs", "ipv4", "cgroup_id", "netns_id"] {
            if table.contains_key(k) {
                return Err(PolicyError {
                    line: None,
                    key: Some(k.into()),
                    message: "not allowed in an inline policy: the OCI hook finds id, vlan, \
                              macs, ipv4, cgroup_id and netns_id itself"
                        .into(),
                });
            }
        }
    }
    let doc: InlineDoc = toml::from_str(text).map_err(|e| toml_error(&src, &e))?;
    let mut policy = Policy {
        default_egress: doc.default_egress.map_or(Action::Allow, Action::from),
        default_ingress: doc.default_ingress.map_or(Action::Allow, Action::from),
        rules: heapless::Vec::new(),
    };
    rules_into(&src, "", &doc.rule, &mut policy.rules)?;
    Ok(policy)
}

fn container_spec(
    src: &Source<'_>,
    key: &str,
    c: &Spanned<ContainerDoc>,
) -> Result<ContainerSpec, PolicyError> {
    let at = c.span().start;
    let c = c.get_ref();
    let vlan = *c.vlan.get_ref();
    if !(1..=shoji_netfilter::registry::MAX_VLAN).contains(&vlan) {
        return Err(src.err(
            c.vlan.span().start,
            format!("{key}.vlan"),
            format!("VLAN {vlan} out of range (1..4094)"),
        ));
    }
    let mut macs: heapless::Vec<MacAddr, MAX_MACS> = heapless::Vec::new();
    if c.macs.get_ref().is_empty() {
        return Err(src.err(
            c.macs.span().start,
            format!("{key}.macs"),
            "at least one MAC address is needed",
        ));
    }
    for (j, m) in c.macs.get_ref().iter().enumerate() {
        let k = format!("{key}.macs[{j}]");
        let mac = parse_mac(m.get_ref()).map_err(|e| src.err(m.span().start, k.clone(), e))?;
        macs.push(mac).map_err(|_| {
            src.err(
                m.span().start,
                k,
                format!("too many MAC addresses (at most {MAX_MACS})"),
            )
        })?;
    }
    let mut ipv4: heapless::Vec<Ipv4Addr, MAX_IPV4> = heapless::Vec::new();
    for (j, a) in c.ipv4.iter().enumerate() {
        let k = format!("{key}.ipv4[{j}]");
        let ip: Ipv4Addr = a.get_ref().trim().parse().map_err(|_| {
            src.err(
                a.span().start,
                k.clone(),
                format!("{:?} is not an IPv4 address", a.get_ref()),
            )
        })?;
        ipv4.push(ip).map_err(|_| {
            src.err(
                a.span().start,
                k,
                format!("too many IPv4 addresses (at most {MAX_IPV4})"),
            )
        })?;
    }
    let mut spec = ContainerSpec {
        id: ContainerId(*c.id.get_ref()),
        vlan,
        cgroup_id: c.cgroup_id,
        netns_id: c.netns_id,
        macs,
        ipv4,
        default_egress: c.default_egress.map_or(Action::Allow, Action::from),
        default_ingress: c.default_ingress.map_or(Action::Allow, Action::from),
        rules: heapless::Vec::new(),
    };
    rules_into(src, &format!("{key}."), &c.rule, &mut spec.rules)?;
    spec.validate()
        .map_err(|e| src.err(at, key.to_string(), registry_message(&e)))?;
    Ok(spec)
}

/// A registry error with its payload spelled out.
pub fn registry_message(e: &shoji_netfilter::RegistryError) -> String {
    use shoji_netfilter::RegistryError as E;
    match e {
        E::InvalidMac(m) => format!("{}: {}", e.describe(), format_mac(m)),
        E::DuplicateMac(m) => format!("{}: {}", e.describe(), format_mac(m)),
        E::InvalidIpv4(ip) | E::DuplicateIpv4(ip) => format!("{}: {ip}", e.describe()),
        E::InvalidVlan(v) => format!("{}: {v}", e.describe()),
        E::InvalidRule { index, error } => format!("rule[{index}]: {}", error.describe()),
        _ => e.describe().to_string(),
    }
}

fn rules_into(
    src: &Source<'_>,
    prefix: &str,
    docs: &[Spanned<RuleDoc>],
    out: &mut heapless::Vec<Rule, MAX_RULES>,
) -> Result<(), PolicyError> {
    for (i, r) in docs.iter().enumerate() {
        let key = format!("{prefix}rule[{i}]");
        let rule = rule_of(src, &key, r)?;
        out.push(rule).map_err(|_| {
            src.err(
                r.span().start,
                key,
                format!("too many rules (at most {MAX_RULES})"),
            )
        })?;
    }
    Ok(())
}

fn rule_of(src: &Source<'_>, key: &str, r: &Spanned<RuleDoc>) -> Result<Rule, PolicyError> {
    let at = r.span().start;
    let r = r.get_ref();
    let field = |name: &str| format!("{key}.{name}");
    let protocol = match &r.protocol {
        None => ProtocolMatch::Any,
        Some(p) => parse_protocol(p.get_ref())
            .map_err(|e| src.err(p.span().start, field("protocol"), e))?,
    };
    let remote = match &r.remote {
        None => Ipv4Cidr::ANY,
        Some(s) => {
            parse_cidr(s.get_ref()).map_err(|e| src.err(s.span().start, field("remote"), e))?
        }
    };
    let ports = |v: &Option<Spanned<toml::Value>>, name: &str| match v {
        None => Ok(PortRange::ANY),
        Some(v) => parse_ports(v.get_ref()).map_err(|e| src.err(v.span().start, field(name), e)),
    };
    let dst_ports = ports(&r.dst_ports, "dst_ports")?;
    let src_ports = ports(&r.src_ports, "src_ports")?;
    let mut subjects = Vec::new();
    if let Some(u) = &r.uid {
        subjects.push((u.span().start, Subject::Uid(*u.get_ref())));
    }
    if let Some(p) = &r.pid {
        subjects.push((p.span().start, Subject::Process(*p.get_ref())));
    }
    if let Some(e) = &r.exe {
        let ino = parse_exe(e.get_ref()).map_err(|m| src.err(e.span().start, field("exe"), m))?;
        subjects.push((e.span().start, Subject::Executable(ino)));
    }
    if let Some(c) = &r.comm {
        let name =
            parse_comm(c.get_ref()).map_err(|m| src.err(c.span().start, field("comm"), m))?;
        subjects.push((c.span().start, Subject::Comm(name)));
    }
    if subjects.len() > 1 {
        return Err(src.err(
            subjects[1].0,
            key.to_string(),
            "at most one of uid, pid, exe and comm",
        ));
    }
    let mut flags = RuleFlags::empty();
    if r.tcp_new_only == Some(true) {
        flags |= RuleFlags::TCP_NEW_ONLY;
    }
    let rule = Rule {
        action: r.action.into(),
        direction: match r.direction.unwrap_or(DirectionDoc::Both) {
            DirectionDoc::Egress => DirectionMatch::Egress,
            DirectionDoc::Ingress => DirectionMatch::Ingress,
            DirectionDoc::Both => DirectionMatch::Both,
        },
        protocol,
        remote,
        src_ports,
        dst_ports,
        subject: subjects.first().map_or(Subject::Anyone, |s| s.1),
        flags,
    };
    rule.validate()
        .map_err(|e| src.err(at, key.to_string(), e.describe()))?;
    Ok(rule)
}

/// Parse `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Result<MacAddr, String> {
    let bad = || format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &MacAddr) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn parse_protocol(v: &toml::Value) -> Result<ProtocolMatch, String> {
    let number = |n: i64| -> Result<ProtocolMatch, String> {
        let n = u8::try_from(n).map_err(|_| format!("protocol number {n} out of range 0..255"))?;
        Ok(match n {
            1 => ProtocolMatch::Icmp,
            6 => ProtocolMatch::Tcp,
            17 => ProtocolMatch::Udp,
            n => ProtocolMatch::IpProtocol(n),
        })
    };
    match v {
        toml::Value::Integer(n) => number(*n),
        toml::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "any" => Ok(ProtocolMatch::Any),
            "arp" => Ok(ProtocolMatch::Arp),
            "icmp" => Ok(ProtocolMatch::Icmp),
            "tcp" => Ok(ProtocolMatch::Tcp),
            "udp" => Ok(ProtocolMatch::Udp),
            "ip" => Ok(ProtocolMatch::Any),
            "ipv6" => Ok(ProtocolMatch::Ipv6),
            other => match other.parse::<i64>() {
                Ok(n) => number(n),
                Err(_) => Err(format!(
                    "unknown protocol {s:?} (any, arp, icmp, tcp, udp, ip, ipv6 or a number)"
                )),
            },
        },
        _ => Err("protocol must be a name or a number".into()),
    }
}

fn parse_cidr(s: &str) -> Result<Ipv4Cidr, String> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (
            a,
            p.parse::<u8>()
                .map_err(|_| format!("{s:?}: bad prefix length"))?,
        ),
        None => (s, 32),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR (a.b.c.d/n)"))?;
    if prefix > 32 {
        return Err(format!("{s:?}: prefix longer than 32"));
    }
    Ipv4Cidr::new(addr, prefix).ok_or_else(|| format!("{s:?}: host bits set after the prefix"))
}

fn parse_ports(v: &toml::Value) -> Result<PortRange, String> {
    let port = |t: &str| -> Result<u16, String> {
        t.trim()
            .parse::<u16>()
            .map_err(|_| format!("{t:?} is not a port (0..65535)"))
    };
    match v {
        toml::Value::Integer(n) => u16::try_from(*n)
            .map(PortRange::single)
            .map_err(|_| format!("port {n} out of range 0..65535")),
        toml::Value::String(s) => {
            let range = match s.split_once('-') {
                Some((a, b)) => PortRange {
                    first: port(a)?,
                    last: port(b)?,
                },
                None => PortRange::single(port(s)?),
            };
            if range.first > range.last {
                return Err(format!("{s:?}: first port above last"));
            }
            Ok(range)
        }
        _ => Err("ports must be \"N\" or \"N-M\"".into()),
    }
}

/// `exe`: an inode number, or a path whose inode is taken (on this system's file system).
fn parse_exe(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(n) => {
            u64::try_from(*n).map_err(|_| format!("inode {n} must not be negative"))
        }
        toml::Value::String(path) => std::fs::metadata(path)
            .map(|m| m.ino())
            .map_err(|e| format!("cannot stat {path:?}: {e}")),
        _ => Err("exe must be an inode number or a path".into()),
    }
}

fn parse_comm(s: &str) -> Result<[u8; COMM_LEN], String> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() >= COMM_LEN || b.contains(&0) {
        return Err(format!(
            "{s:?}: a comm is 1 to {} bytes without NUL",
            COMM_LEN - 1
        ));
    }
    let mut name = [0u8; COMM_LEN];
    name[..b.len()].copy_from_slice(b);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[container]]
id = 1
vlan = 101
macs = ["02:00:00:00:01:0a"]
ipv4 = ["10.0.2.21"]
cgroup_id = 1234        # optional
netns_id = 4026532200   # optional
default_egress = "deny"   # allow | deny
default_ingress = "allow"
[[container.rule]]
action = "allow"          # allow | deny
direction = "egress"      # egress | ingress | both
protocol = "tcp"
remote = "10.0.2.2/32"
dst_ports = "80"
src_ports = "1024-65535"
uid = 1000

[[container]]
id = 2
vlan = 102
macs = ["02:00:00:00:01:0b", "02-00-00-00-01-0c"]
[[container.rule]]
action = "deny"
protocol = 47
"#;

    #[test]
    fn parses_the_documented_example() {
        let specs = parse_file(EXAMPLE).unwrap();
        assert_eq!(specs.len(), 2);
        let a = &specs[0];
        assert_eq!(a.id, ContainerId(1));
        assert_eq!(a.vlan, 101);
        assert_eq!(a.macs[0], [2, 0, 0, 0, 1, 0x0a]);
        assert_eq!(a.ipv4[0], Ipv4Addr::new(10, 0, 2, 21));
        assert_eq!(a.cgroup_id, Some(1234));
        assert_eq!(a.netns_id, Some(4026532200));
        assert_eq!(a.default_egress, Action::Deny);
        let r = a.rules[0];
        assert_eq!(r.action, Action::Allow);
        assert_eq!(r.direction, DirectionMatch::Egress);
        assert_eq!(r.protocol, ProtocolMatch::Tcp);
        assert_eq!(r.remote, Ipv4Cidr::host(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.dst_ports, PortRange::single(80));
        assert_eq!(
            r.src_ports,
            PortRange {
                first: 1024,
                last: 65535
            }
        );
        assert_eq!(r.subject, Subject::Uid(1000));
        let b = &specs[1];
        assert_eq!(b.macs.len(), 2);
        assert!(b.ipv4.is_empty());
        assert_eq!(b.default_egress, Action::Allow);
        assert_eq!(b.rules[0].protocol, ProtocolMatch::IpProtocol(47));
        assert_eq!(b.rules[0].direction, DirectionMatch::Both);
        // The result encodes.
        let mut buf = vec![0u8; shoji_netfilter::encoding::MAX_ENCODED_LEN];
        let n = shoji_netfilter::encoding::encode(a, &mut buf).unwrap();
        assert_eq!(shoji_netfilter::encoding::decode(&buf[..n]).unwrap(), *a);
    }

    fn err(text: &str) -> PolicyError {
        parse_file(text).unwrap_err()
    }

    const HEAD: &str = "[[container]]\nid = 1\nvlan = 101\nmacs = [\"02:00:00:00:01:0a\"]\n";

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&format!("{HEAD}colour = \"red\"\n"));
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("colour"), "{e}");
        let e = err(&format!(
            "{HEAD}[[container.rule]]\naction = \"allow\"\nport = 80\n"
        ));
        assert_eq!(e.line, Some(7));
        assert!(e.message.contains("port"), "{e}");
        let e = err("[[containers]]\nid = 1\n");
        assert!(e.message.contains("containers"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                format!("{HEAD}ipv4 = [\"10.0.2.300\"]\n"),
                "container[0].ipv4[0]",
                5,
            ),
            (
                "[[container]]\nid = 1\nvlan = 4095\nmacs = [\"02:00:00:00:01:0a\"]\n".into(),
                "container[0].vlan",
                3,
            ),
            (
                "[[container]]\nid = 1\nvlan = 5\nmacs = [\"02:00:00:00:01\"]\n".into(),
                "container[0].macs[0]",
                4,
            ),
            (
                format!("{HEAD}[[container.rule]]\naction = \"allow\"\nprotocol = \"tcpx\"\n"),
                "container[0].rule[0].protocol",
                7,
            ),
            (
                format!("{HEAD}[[container.rule]]\naction = \"allow\"\nremote = \"10.0.0.1/8\"\n"),
                "container[0].rule[0].remote",
                7,
            ),
            (
                format!("{HEAD}[[container.rule]]\naction = \"allow\"\nprotocol = \"tcp\"\ndst_ports = \"90-80\"\n"),
                "container[0].rule[0].dst_ports",
                8,
            ),
            (
                format!("{HEAD}[[container.rule]]\naction = \"allow\"\nprotocol = \"icmp\"\ndst_ports = \"80\"\n"),
                "container[0].rule[0]",
                5,
            ),
            (
                format!("{HEAD}[[container.rule]]\naction = \"allow\"\nuid = 1\npid = 2\n"),
                "container[0].rule[0]",
                8,
            ),
            (
                format!("{HEAD}[[container.rule]]\naction = \"allow\"\ncomm = \"a-very-long-command-name\"\n"),
                "container[0].rule[0].comm",
                7,
            ),
        ];
        for (text, key, line) in cases {
            let e = err(&text);
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert_eq!(e.line, Some(line), "{e}");
        }
        // Type errors and bad enum values come from the TOML layer, with a line.
        let e = err(&format!("{HEAD}default_egress = \"maybe\"\n"));
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("maybe"), "{e}");
        let e = err("[[container]]\nid = -1\nvlan = 5\nmacs = [\"02:00:00:00:01:0a\"]\n");
        assert_eq!(e.line, Some(2));
        let e = err("[[container]]\nvlan = 5\nmacs = [\"02:00:00:00:01:0a\"]\n");
        assert!(e.message.contains("id"), "{e}");
        let e = err("[[container]\n");
        assert_eq!(e.line, Some(1));
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn registry_checks_and_duplicates() {
        let e = err("[[container]]\nid = 1\nvlan = 5\nmacs = [\"01:00:5e:00:00:01\"]\n");
        assert_eq!(e.key.as_deref(), Some("container[0]"));
        assert!(e.message.contains("01:00:5e:00:00:01"), "{e}");
        let e = err("[[container]]\nid = 1\nvlan = 5\nmacs = [\"02:00:00:00:00:01\"]\n[[container]]\nid = 1\nvlan = 6\nmacs = [\"02:00:00:00:00:02\"]\n");
        assert_eq!(e.key.as_deref(), Some("container[1].id"));
        assert_eq!(e.line, Some(6));
        let e = err("[[container]]\nid = 1\nvlan = 5\nmacs = []\n");
        assert_eq!(e.key.as_deref(), Some("container[0].macs"));
        assert!(err("# nothing\n").message.contains("no [[container]]"));
    }

    #[test]
    fn inline_policy() {
        let p = parse_inline(
            "default_egress = \"deny\"\n[[rule]]\naction = \"allow\"\ndirection = \"egress\"\nprotocol = \"udp\"\ndst_ports = 53\n",
        )
        .unwrap();
        assert_eq!(p.default_egress, Action::Deny);
        assert_eq!(p.default_ingress, Action::Allow);
        assert_eq!(p.rules[0].dst_ports, PortRange::single(53));
        assert_eq!(parse_inline("").unwrap(), Policy::default());
        let e = parse_inline("vlan = 5\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("vlan"));
        let e = parse_inline("[[rule]]\naction = \"allow\"\nprotocol = \"nope\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("rule[0].protocol"));
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn small_parsers() {
        assert_eq!(parse_mac("02:00:00:00:01:0A"), Ok([2, 0, 0, 0, 1, 10]));
        assert!(parse_mac("02:00:00:00:01:0g").is_err());
        assert!(parse_mac("2:00:00:00:01:0a").is_err());
        assert_eq!(format_mac(&[2, 0, 0, 0, 1, 10]), "02:00:00:00:01:0a");
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok(Ipv4Cidr::ANY));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert_eq!(
            parse_protocol(&toml::Value::String("6".into())),
            Ok(ProtocolMatch::Tcp)
        );
        assert!(parse_protocol(&toml::Value::Integer(300)).is_err());
        assert!(parse_ports(&toml::Value::Integer(70000)).is_err());
        assert_eq!(parse_exe(&toml::Value::Integer(77)), Ok(77));
    }
}
