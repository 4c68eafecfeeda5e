//! Rules of every kind, the scan detector, registry limits, the encoding, and properties.

#![allow(clippy::too_many_arguments)]

mod common;

use common::*;
use proptest::prelude::*;
use shoji_netfilter::encoding::{self, DecodeError};
use shoji_netfilter::events::EventKind;
use shoji_netfilter::rules::{
    Action, DirectionMatch, Ipv4Cidr, PortRange, ProtocolMatch, Rule, RuleError, RuleFlags, Subject,
};
use shoji_netfilter::{
    ContainerSpec, Engine, EngineConfig, RegistryError, ScanConfig, MAX_CONTAINERS,
};
use shoji_shared::{
    ContainerId, DropReason, ExecContext, FrameFilter, FrameMeta, TaskIdentity, Verdict,
};
use std::net::Ipv4Addr;

fn deny() -> Verdict {
    Verdict::Drop(DropReason::PolicyDenied)
}

// ---------------------------------------------------------------- rule kinds

#[test]
fn destination_cidr_rules() {
    let mut s = slots(4);
    let mut e = engine_ab(&mut s);
    let r = Rule {
        remote: Ipv4Cidr::new(Ipv4Addr::new(192, 0, 2, 0), 24).unwrap(),
        ..Rule::any(Action::Deny, DirectionMatch::Egress)
    };
    e.update(with_rules(spec_a(), &[r])).unwrap();
    let mut out = Sink::default();
    let to = |ip: Ipv4Addr| tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, ip, 1, 80, SYN);
    assert_eq!(
        e.filter(&tx(), &to(Ipv4Addr::new(192, 0, 2, 200)), &mut out),
        deny()
    );
    assert_eq!(
        e.filter(&tx(), &to(Ipv4Addr::new(192, 0, 3, 1)), &mut out),
        Verdict::Pass
    );
    // ARP to a denied target is denied too ("the target must be allowed").
    let a = arp_request(Some(VLAN_A), MAC_A, IP_A, Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(e.filter(&tx(), &a, &mut out), deny());
}

#[test]
fn protocol_and_port_rules_first_match_wins() {
    let mut s = slots(4);
    let mut e = engine_ab(&mut s);
    let rules = [
        Rule {
            protocol: ProtocolMatch::Tcp,
            dst_ports: PortRange {
                first: 80,
                last: 443,
            },
            ..Rule::any(Action::Allow, DirectionMatch::Egress)
        },
        Rule {
            protocol: ProtocolMatch::Udp,
            src_ports: PortRange::single(5353),
            ..Rule::any(Action::Allow, DirectionMatch::Egress)
        },
        Rule {
            protocol: ProtocolMatch::Icmp,
            ..Rule::any(Action::Allow, DirectionMatch::Egress)
        },
        Rule {
            protocol: ProtocolMatch::Arp,
            ..Rule::any(Action::Allow, DirectionMatch::Egress)
        },
        Rule {
            protocol: ProtocolMatch::IpProtocol(47),
            ..Rule::any(Action::Allow, DirectionMatch::Egress)
        },
        Rule {
            protocol: ProtocolMatch::Tcp,
            ..Rule::any(Action::Allow, DirectionMatch::Egress)
        }, // shadowed below? no: first match
    ];
    e.update(defaults(
        with_rules(spec_a(), &rules[..5]),
        Action::Deny,
        Action::Allow,
    ))
    .unwrap();
    let mut out = Sink::default();
    let t = |p| tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, p, SYN);
    let d = e.decide(&tx(), &t(443), &mut out);
    assert_eq!((d.verdict, d.rule), (Verdict::Pass, Some(0)));
    let d = e.decide(&tx(), &t(444), &mut out);
    assert_eq!((d.verdict, d.rule), (deny(), None));
    let u = |sp| udp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, sp, 9);
    assert_eq!(e.decide(&tx(), &u(5353), &mut out).rule, Some(1));
    assert_eq!(e.filter(&tx(), &u(5354), &mut out), deny());
    let icmp = eth(
        MAC_GW,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &Ip4::new(IP_A, IP_REMOTE, 1).build(&icmp_echo()),
    );
    assert_eq!(e.decide(&tx(), &icmp, &mut out).rule, Some(2));
    assert_eq!(
        e.decide(
            &tx(),
            &arp_request(Some(VLAN_A), MAC_A, IP_A, IP_GW),
            &mut out
        )
        .rule,
        Some(3)
    );
    let gre = eth(
        MAC_GW,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &Ip4::new(IP_A, IP_REMOTE, 47).build(&[0u8; 4]),
    );
    assert_eq!(e.decide(&tx(), &gre, &mut out).rule, Some(4));
    let esp = eth(
        MAC_GW,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &Ip4::new(IP_A, IP_REMOTE, 50).build(&[0u8; 4]),
    );
    assert_eq!(e.filter(&tx(), &esp, &mut out), deny());
    // Order matters: a deny placed first shadows the allow.
    let mut order = vec![Rule {
        protocol: ProtocolMatch::Tcp,
        ..Rule::any(Action::Deny, DirectionMatch::Egress)
    }];
    order.extend_from_slice(&rules);
    e.update(with_rules(spec_a(), &order)).unwrap();
    assert_eq!(e.decide(&tx(), &t(443), &mut out).rule, Some(0));
}

#[test]
fn direction_rules_and_inbound_semantics() {
    let mut s = slots(4);
    let mut e = engine_ab(&mut s);
    // Inbound: only TCP 22 from 192.0.2.0/24; outbound unrestricted. Replies pass by TCP_NEW_ONLY.
    let rules = [
        Rule {
            protocol: ProtocolMatch::Tcp,
            remote: Ipv4Cidr::new(Ipv4Addr::new(192, 0, 2, 0), 24).unwrap(),
            dst_ports: PortRange::single(22),
            ..Rule::any(Action::Allow, DirectionMatch::Ingress)
        },
        Rule {
            protocol: ProtocolMatch::Tcp,
            flags: RuleFlags::TCP_NEW_ONLY,
            ..Rule::any(Action::Deny, DirectionMatch::Ingress)
        },
    ];
    e.update(with_rules(spec_a(), &rules)).unwrap();
    let mut out = Sink::default();
    let inbound =
        |src, dport, flags| tcp_frame(None, MAC_GW, MAC_A, src, IP_A, 50000, dport, flags);
    assert_eq!(
        e.filter(&rx(), &inbound(IP_REMOTE, 22, SYN), &mut out),
        Verdict::Pass
    );
    assert_eq!(
        e.filter(
            &rx(),
            &inbound(Ipv4Addr::new(198, 51, 100, 1), 22, SYN),
            &mut out
        ),
        deny()
    );
    assert_eq!(
        e.filter(&rx(), &inbound(IP_REMOTE, 80, SYN), &mut out),
        deny()
    );
    // A reply (SYN+ACK / ACK) to an outbound connection is not a new connection.
    assert_eq!(
        e.filter(
            &rx(),
            &inbound(Ipv4Addr::new(198, 51, 100, 1), 40000, SYN | ACK),
            &mut out
        ),
        Verdict::Pass
    );
    // Egress unaffected by ingress rules.
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    assert_eq!(
        e.container_counters(ContainerId(1))
            .unwrap()
            .dropped(DropReason::PolicyDenied),
        2
    );
}

fn actor(uid: u32, tgid: u32, exe: u64, comm: &[u8]) -> TaskIdentity {
    let mut name = [0u8; 16];
    name[..comm.len()].copy_from_slice(comm);
    TaskIdentity {
        uid: Some(uid),
        tgid: Some(tgid),
        exe_inode: Some(exe),
        comm: Some(name),
        cgroup_id: Some(CGROUP_A),
        ..task(None, None, ExecContext::Task)
    }
}

#[test]
fn user_process_and_application_rules() {
    let mut s = slots(4);
    let mut e = engine_ab(&mut s);
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"nmap");
    let rules = [
        Rule {
            subject: Subject::Uid(1001),
            ..Rule::any(Action::Deny, DirectionMatch::Egress)
        },
        Rule {
            subject: Subject::Process(666),
            ..Rule::any(Action::Deny, DirectionMatch::Egress)
        },
        Rule {
            subject: Subject::Executable(31337),
            ..Rule::any(Action::Deny, DirectionMatch::Egress)
        },
        Rule {
            subject: Subject::Comm(comm),
            ..Rule::any(Action::Deny, DirectionMatch::Egress)
        },
    ];
    e.update(with_rules(spec_a(), &rules)).unwrap();
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    let mut out = Sink::default();
    let mut check = |t: &TaskIdentity, expect: Option<u16>| {
        let d = e.decide(
            &FrameMeta {
                task: Some(t),
                ..tx()
            },
            &f,
            &mut out,
        );
        assert_eq!(d.rule, expect, "{t:?}");
        assert_eq!(d.verdict == Verdict::Pass, expect.is_none());
    };
    check(&actor(1001, 1, 1, b"sh"), Some(0));
    check(&actor(1000, 666, 1, b"sh"), Some(1));
    check(&actor(1000, 1, 31337, b"sh"), Some(2));
    check(&actor(1000, 1, 1, b"nmap"), Some(3));
    check(&actor(1000, 1, 1, b"curl"), None);
    // Untrusted context: subject rules cannot match, the port identity alone decides.
    let mut soft = actor(1001, 666, 31337, b"nmap");
    soft.context = ExecContext::SoftIrq;
    check(&soft, None);
    // No identity at all: same.
    let d = e.decide(&tx(), &f, &mut out);
    assert_eq!(d.verdict, Verdict::Pass);
}

#[test]
fn invalid_rules_are_refused_with_their_index() {
    let mut s = slots(4);
    let mut e = engine_ab(&mut s);
    let cases = [
        (
            Rule {
                remote: Ipv4Cidr {
                    addr: Ipv4Addr::new(10, 0, 0, 1),
                    prefix: 24,
                },
                ..Rule::any(Action::Deny, DirectionMatch::Both)
            },
            RuleError::BadCidr,
        ),
        (
            Rule {
                remote: Ipv4Cidr {
                    addr: Ipv4Addr::UNSPECIFIED,
                    prefix: 33,
                },
                ..Rule::any(Action::Deny, DirectionMatch::Both)
            },
            RuleError::BadCidr,
        ),
        (
            Rule {
                protocol: ProtocolMatch::Tcp,
                dst_ports: PortRange { first: 9, last: 1 },
                ..Rule::any(Action::Deny, DirectionMatch::Both)
            },
            RuleError::BadPortRange,
        ),
        (
            Rule {
                protocol: ProtocolMatch::Icmp,
                dst_ports: PortRange::single(1),
                ..Rule::any(Action::Deny, DirectionMatch::Both)
            },
            RuleError::PortsWithoutTcpOrUdp,
        ),
        (
            // A range open at one end is a restriction too (not "any port").
            Rule {
                protocol: ProtocolMatch::Icmp,
                src_ports: PortRange { first: 0, last: 80 },
                ..Rule::any(Action::Deny, DirectionMatch::Both)
            },
            RuleError::PortsWithoutTcpOrUdp,
        ),
        (
            Rule {
                protocol: ProtocolMatch::Arp,
                dst_ports: PortRange {
                    first: 1024,
                    last: u16::MAX,
                },
                ..Rule::any(Action::Deny, DirectionMatch::Both)
            },
            RuleError::PortsWithoutTcpOrUdp,
        ),
        (
            Rule {
                protocol: ProtocolMatch::Udp,
                flags: RuleFlags::TCP_NEW_ONLY,
                ..Rule::any(Action::Deny, DirectionMatch::Both)
            },
            RuleError::TcpFlagWithoutTcp,
        ),
        (
            Rule {
                protocol: ProtocolMatch::IpProtocol(6),
                ..Rule::any(Action::Deny, DirectionMatch::Both)
            },
            RuleError::ProtocolNumberHasName,
        ),
    ];
    for (rule, error) in cases {
        let spec = with_rules(
            spec_a(),
            &[Rule::any(Action::Allow, DirectionMatch::Both), rule],
        );
        assert_eq!(
            e.update(spec),
            Err(RegistryError::InvalidRule { index: 1, error })
        );
        assert!(!error.describe().is_empty());
    }
}

#[test]
fn every_rule_error_has_its_own_description() {
    let errors = [
        RuleError::BadCidr,
        RuleError::BadPortRange,
        RuleError::PortsWithoutTcpOrUdp,
        RuleError::TcpFlagWithoutTcp,
        RuleError::ProtocolNumberHasName,
        RuleError::TooMany,
    ];
    let texts: Vec<&str> = errors.iter().map(|e| e.describe()).collect();
    for (i, t) in texts.iter().enumerate() {
        assert!(!t.is_empty());
        assert!(!texts[..i].contains(t), "{t:?} describes two errors");
    }
    assert!(RuleError::BadCidr.describe().contains("CIDR"));
    assert!(RuleError::TooMany.describe().contains("too many"));
}

/// A later fragment carries no transport header, but its flow still has its datagram's
/// protocol class (from the IP protocol number).
#[test]
fn a_later_fragments_flow_has_the_class_of_its_protocol() {
    use shoji_netfilter::parse::parse_frame;
    use shoji_netfilter::rules::{Flow, ProtocolClass, Side};
    for (proto, class) in [
        (1, ProtocolClass::Icmp),
        (6, ProtocolClass::Tcp),
        (17, ProtocolClass::Udp),
        (47, ProtocolClass::OtherIp),
    ] {
        let mut ip = Ip4::new(IP_A, IP_REMOTE, proto);
        ip.frag_offset = 64;
        let f = eth(MAC_GW, MAC_A, None, 0x0800, &ip.build(&[0u8; 16]));
        let parsed = parse_frame(&f).unwrap();
        let flow = Flow::of(&parsed, Side::Egress);
        assert_eq!(flow.class, class, "protocol {proto}");
        assert_eq!((flow.ip_protocol, flow.remote), (proto, Some(IP_REMOTE)));
        assert_eq!((flow.src_port, flow.dst_port, flow.tcp_new), (0, 0, false));
    }
}

// ---------------------------------------------------------------- scan detector

fn scan_config() -> EngineConfig {
    let mut scan = ScanConfig {
        window: 1_000,
        port_threshold: 10,
        host_threshold: 8,
        block_for: 5_000,
        inbound_block_for: 5_000,
        ..ScanConfig::default()
    };
    scan.allow_list.push(Ipv4Cidr::host(IP_GW)).unwrap();
    EngineConfig {
        scan,
        ..EngineConfig::default()
    }
}

#[test]
fn outbound_port_scan_blocks_the_container_until_expiry() {
    let mut s = slots(4);
    let mut e = engine_ab_with(&mut s, scan_config());
    let mut out = Sink::default();
    let syn = |p| tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 40000, p, SYN);
    e.set_now(100);
    for p in 1..10 {
        assert_eq!(
            e.filter(&tx(), &syn(p), &mut out),
            Verdict::Pass,
            "port {p}"
        );
    }
    // Repeating a port does not count twice.
    assert_eq!(e.filter(&tx(), &syn(1), &mut out), Verdict::Pass);
    assert_eq!(
        e.filter(&tx(), &syn(10), &mut out),
        Verdict::Drop(DropReason::PortScanBlocked)
    );
    assert_eq!(e.scan_blocked_until(ContainerId(1)), Some(5_100));
    // Everything outbound is blocked, even non-probes; B is unaffected.
    let ack = tcp_frame(
        Some(VLAN_A),
        MAC_A,
        MAC_GW,
        IP_A,
        IP_REMOTE,
        40000,
        443,
        ACK,
    );
    assert_eq!(
        e.filter(&tx(), &ack, &mut out),
        Verdict::Drop(DropReason::PortScanBlocked)
    );
    let b = tcp_frame(Some(VLAN_B), MAC_B, MAC_GW, IP_B, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &b, &mut out), Verdict::Pass);
    let ev = event_kinds(&e);
    assert!(ev.iter().any(|k| matches!(
        k,
        EventKind::OutboundScan {
            container: ContainerId(1),
            distinct_ports: 10,
            blocked_until: 5_100,
            ..
        }
    )));
    // Expiry.
    e.set_now(5_100);
    assert_eq!(e.filter(&tx(), &ack, &mut out), Verdict::Pass);
    assert_eq!(e.scan_blocked_until(ContainerId(1)), None);
}

#[test]
fn slow_scans_spread_over_windows_are_not_scans() {
    let mut s = slots(4);
    let mut e = engine_ab_with(&mut s, scan_config());
    let mut out = Sink::default();
    for p in 0..100u16 {
        e.set_now(u64::from(p) * 200); // 5 probes per 1,000-unit window
        let f = tcp_frame(
            Some(VLAN_A),
            MAC_A,
            MAC_GW,
            IP_A,
            IP_REMOTE,
            40000,
            1000 + p,
            SYN,
        );
        assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    }
}

#[test]
fn host_sweep_is_detected_and_operator_can_unblock() {
    let mut s = slots(4);
    let mut e = engine_ab_with(&mut s, scan_config());
    let mut out = Sink::default();
    let mut last = Verdict::Pass;
    for h in 1..=8u8 {
        let icmp = eth(
            MAC_GW,
            MAC_A,
            Some(VLAN_A),
            0x0800,
            &Ip4::new(IP_A, Ipv4Addr::new(192, 0, 2, h), 1).build(&icmp_echo()),
        );
        last = e.filter(&tx(), &icmp, &mut out);
    }
    assert_eq!(last, Verdict::Drop(DropReason::PortScanBlocked));
    assert!(e.unblock_container(ContainerId(1)));
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, 80, ACK);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
}

#[test]
fn inbound_scans_block_the_source_but_never_an_allow_listed_one() {
    let mut s = slots(4);
    let mut e = engine_ab_with(&mut s, scan_config());
    let mut out = Sink::default();
    let from = |src, p| tcp_frame(None, MAC_GW, MAC_A, src, IP_A, 50000, p, SYN);
    let mut verdicts = vec![];
    for p in 1..=12 {
        verdicts.push(e.filter(&rx(), &from(IP_REMOTE, p), &mut out));
    }
    assert!(verdicts[..9].iter().all(|v| *v == Verdict::Pass));
    assert_eq!(verdicts[9], Verdict::Drop(DropReason::ScanSourceBlocked));
    assert_eq!(verdicts[11], Verdict::Drop(DropReason::ScanSourceBlocked));
    assert!(e.is_source_blocked(IP_REMOTE));
    // Its ARP is refused too (the ARP sender address is its source).
    let arp_from = eth(
        BCAST,
        MAC_GW,
        None,
        0x0806,
        &arp(1, MAC_GW, IP_REMOTE, [0; 6], IP_A),
    );
    assert_eq!(
        e.filter(&rx(), &arp_from, &mut out),
        Verdict::Drop(DropReason::ScanSourceBlocked)
    );
    // Gateway scans too (or someone spoofs it): recorded, never blocked.
    for p in 1..=30 {
        assert_eq!(e.filter(&rx(), &from(IP_GW, p), &mut out), Verdict::Pass);
    }
    assert!(!e.is_source_blocked(IP_GW));
    let ev = event_kinds(&e);
    assert!(ev.iter().any(|k| matches!(k, EventKind::InboundScan { source, blocked_until: Some(_), .. } if *source == IP_REMOTE)));
    assert!(ev.iter().any(|k| matches!(k, EventKind::InboundScan { source, blocked_until: None, .. } if *source == IP_GW)));
    // Expiry and unblock.
    e.set_now(5_000);
    assert!(!e.is_source_blocked(IP_REMOTE));
    assert_eq!(
        e.filter(&rx(), &from(IP_REMOTE, 1), &mut out),
        Verdict::Pass
    );
    assert!(!e.unblock_source(IP_REMOTE));
    // A new scan blocks it again; the operator's unblock reports that it lifted a block.
    e.set_now(7_000);
    assert_eq!(e.now(), 7_000);
    for p in 1..=10 {
        e.filter(&rx(), &from(IP_REMOTE, p), &mut out);
    }
    assert!(e.is_source_blocked(IP_REMOTE));
    assert!(e.unblock_source(IP_REMOTE));
    assert!(!e.is_source_blocked(IP_REMOTE));
    assert_eq!(
        e.filter(&rx(), &from(IP_REMOTE, 11), &mut out),
        Verdict::Pass
    );
}

#[test]
fn inbound_blocking_can_be_disabled_and_detection_turned_off() {
    let mut s = slots(4);
    let mut config = scan_config();
    config.scan.block_inbound_sources = false;
    let mut e = engine_ab_with(&mut s, config.clone());
    let mut out = Sink::default();
    for p in 1..=40 {
        let f = tcp_frame(None, MAC_GW, MAC_A, IP_REMOTE, IP_A, 50000, p, SYN);
        assert_eq!(e.filter(&rx(), &f, &mut out), Verdict::Pass);
    }
    assert!(event_kinds(&e)
        .iter()
        .any(|k| matches!(k, EventKind::InboundScan { .. })));
    config.scan.enabled = false;
    e.set_config(config);
    for p in 1..=40 {
        let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, p, SYN);
        assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    }
}

// ---------------------------------------------------------------- registry

fn numbered(n: u32) -> ContainerSpec {
    let mac = [0x02, 0x10, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8];
    let ip = Ipv4Addr::new(10, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8 | 1);
    let mut s = ContainerSpec::new(n, (n % 4094 + 1) as u16, mac, ip);
    s.ipv4[0] = Ipv4Addr::new(10, 100, (n >> 8) as u8, n as u8);
    s.cgroup_id = Some(u64::from(n) + 1_000_000);
    s.netns_id = Some(n + 5_000_000);
    s
}

#[test]
fn registry_holds_1024_containers_and_refuses_more() {
    let mut s = slots(MAX_CONTAINERS + 10);
    let mut e = Engine::new(&mut s, EngineConfig::default());
    for n in 0..MAX_CONTAINERS as u32 {
        e.register(numbered(n)).unwrap();
    }
    assert_eq!(e.registry().len(), MAX_CONTAINERS);
    assert_eq!(e.register(numbered(3000)), Err(RegistryError::Full));
    // Lookups by every key.
    let r = e.registry();
    let spec = numbered(777);
    let slot = r.slot_of(ContainerId(777)).unwrap();
    assert_eq!(r.by_vlan(spec.vlan), Some(slot));
    assert_eq!(r.by_mac(&spec.macs[0]), Some(slot));
    assert_eq!(r.by_ipv4(spec.ipv4[0]), Some(slot));
    assert_eq!(r.by_cgroup(spec.cgroup_id.unwrap()), Some(slot));
    assert_eq!(r.by_netns(spec.netns_id.unwrap()), Some(slot));
    // Remove one: room for exactly one more.
    e.unregister(ContainerId(777)).unwrap();
    assert_eq!(e.registry().by_vlan(spec.vlan), None);
    e.register(numbered(3000)).unwrap();
    assert_eq!(e.register(numbered(3001)), Err(RegistryError::Full));
}

#[test]
fn registry_refuses_conflicts_and_invalid_specs() {
    let mut s = slots(4);
    let mut e = engine_ab(&mut s);
    let a = ContainerId(1);
    let mut c = ContainerSpec::new(3, 103, [2, 3, 3, 3, 3, 3], Ipv4Addr::new(10, 0, 0, 3));
    assert_eq!(e.register(spec_a()), Err(RegistryError::DuplicateId(a)));
    c.vlan = VLAN_A;
    assert_eq!(
        e.register(c.clone()),
        Err(RegistryError::VlanInUse(VLAN_A, a))
    );
    c.vlan = 103;
    c.macs.push(MAC_A).unwrap();
    assert_eq!(
        e.register(c.clone()),
        Err(RegistryError::MacInUse(MAC_A, a))
    );
    c.macs.pop();
    c.ipv4.push(IP_A).unwrap();
    assert_eq!(
        e.register(c.clone()),
        Err(RegistryError::Ipv4InUse(IP_A, a))
    );
    c.ipv4.pop();
    c.cgroup_id = Some(CGROUP_A);
    assert_eq!(
        e.register(c.clone()),
        Err(RegistryError::CgroupInUse(CGROUP_A, a))
    );
    c.cgroup_id = None;
    c.netns_id = Some(NETNS_A);
    assert_eq!(
        e.register(c.clone()),
        Err(RegistryError::NetnsInUse(NETNS_A, a))
    );
    c.netns_id = None;
    for bad_vlan in [0, 4095] {
        let mut v = c.clone();
        v.vlan = bad_vlan;
        assert_eq!(e.register(v), Err(RegistryError::InvalidVlan(bad_vlan)));
    }
    let mut m = c.clone();
    m.macs[0] = BCAST;
    assert_eq!(e.register(m), Err(RegistryError::InvalidMac(BCAST)));
    let mut m = c.clone();
    m.macs.clear();
    assert_eq!(e.register(m), Err(RegistryError::NoMac));
    let mut i = c.clone();
    i.ipv4[0] = Ipv4Addr::BROADCAST;
    assert_eq!(
        e.register(i),
        Err(RegistryError::InvalidIpv4(Ipv4Addr::BROADCAST))
    );
    let mut d = c.clone();
    d.ipv4.push(d.ipv4[0]).unwrap();
    assert!(matches!(
        e.register(d),
        Err(RegistryError::DuplicateIpv4(_))
    ));
    assert_eq!(
        e.update(ContainerSpec::new(
            9,
            109,
            [2, 9, 9, 9, 9, 9],
            Ipv4Addr::new(10, 0, 0, 9)
        )),
        Err(RegistryError::NotFound(ContainerId(9)))
    );
    assert_eq!(
        e.unregister(ContainerId(9)),
        Err(RegistryError::NotFound(ContainerId(9)))
    );
    e.register(c).unwrap();
    // An update may keep its own addresses but not take B's.
    let mut a2 = spec_a();
    e.update(a2.clone()).unwrap();
    a2.ipv4.push(IP_B).unwrap();
    assert_eq!(
        e.update(a2),
        Err(RegistryError::Ipv4InUse(IP_B, ContainerId(2)))
    );
    // A refused update left A intact.
    let mut out = Sink::default();
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
}

// ---------------------------------------------------------------- encoding

fn rich_spec() -> ContainerSpec {
    let mut s = spec_a();
    s.macs.push([2, 0, 0, 0, 0, 0x11]).unwrap();
    s.ipv4.push(Ipv4Addr::new(10, 0, 1, 1)).unwrap();
    s.default_egress = Action::Deny;
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"nmap");
    let rules = [
        Rule {
            protocol: ProtocolMatch::Tcp,
            dst_ports: PortRange {
                first: 80,
                last: 443,
            },
            src_ports: PortRange::single(1),
            flags: RuleFlags::TCP_NEW_ONLY,
            remote: Ipv4Cidr::new(Ipv4Addr::new(192, 0, 2, 0), 24).unwrap(),
            ..Rule::any(Action::Allow, DirectionMatch::Egress)
        },
        Rule {
            protocol: ProtocolMatch::IpProtocol(47),
            subject: Subject::Uid(1000),
            ..Rule::any(Action::Deny, DirectionMatch::Ingress)
        },
        Rule {
            protocol: ProtocolMatch::Ipv6,
            subject: Subject::Process(42),
            ..Rule::any(Action::Allow, DirectionMatch::Both)
        },
        Rule {
            protocol: ProtocolMatch::Arp,
            subject: Subject::Executable(u64::MAX - 1),
            ..Rule::any(Action::Allow, DirectionMatch::Both)
        },
        Rule {
            protocol: ProtocolMatch::Icmp,
            subject: Subject::Comm(comm),
            ..Rule::any(Action::Deny, DirectionMatch::Both)
        },
        Rule {
            protocol: ProtocolMatch::Udp,
            ..Rule::any(Action::Allow, DirectionMatch::Both)
        },
    ];
    with_rules(s, &rules)
}

#[test]
fn encoding_round_trips_and_has_the_documented_layout() {
    let spec = rich_spec();
    let mut buf = [0u8; encoding::MAX_ENCODED_LEN];
    let n = encoding::encode(&spec, &mut buf).unwrap();
    assert_eq!(n, encoding::encoded_len(&spec));
    assert_eq!(n, 32 + 2 * 6 + 2 * 4 + 6 * 36);
    assert_eq!(&buf[0..4], b"SHJC");
    assert_eq!(buf[4], 1);
    assert_eq!(buf[5], 3);
    assert_eq!(u16::from_le_bytes([buf[10], buf[11]]), VLAN_A);
    assert_eq!(&buf[32..38], &MAC_A);
    assert_eq!(&buf[44..48], &[10, 0, 0, 1]);
    assert_eq!(encoding::decode(&buf[..n]).unwrap(), spec);
    assert_eq!(
        encoding::encode(&spec, &mut buf[..10]),
        Err(encoding::EncodeError::BufferTooSmall(n))
    );
}

#[test]
fn decoder_refuses_every_kind_of_bad_input() {
    let spec = rich_spec();
    let mut buf = [0u8; encoding::MAX_ENCODED_LEN];
    let n = encoding::encode(&spec, &mut buf).unwrap();
    let good = buf[..n].to_vec();
    let with = |at: usize, v: u8| {
        let mut b = good.clone();
        b[at] = v;
        encoding::decode(&b)
    };
    assert_eq!(encoding::decode(&good[..31]), Err(DecodeError::Truncated));
    assert_eq!(
        encoding::decode(&good[..n - 1]),
        Err(DecodeError::Truncated)
    );
    let mut long = good.clone();
    long.push(0);
    assert_eq!(encoding::decode(&long), Err(DecodeError::TrailingBytes));
    assert_eq!(with(0, b'X'), Err(DecodeError::BadMagic));
    assert_eq!(with(4, 2), Err(DecodeError::UnsupportedVersion(2)));
    assert_eq!(with(5, 7), Err(DecodeError::UnknownFlags(7)));
    assert_eq!(with(6, 0), Err(DecodeError::BadCount));
    assert_eq!(with(6, 3), Err(DecodeError::BadCount));
    assert_eq!(with(7, 5), Err(DecodeError::BadCount));
    assert_eq!(with(8, 65), Err(DecodeError::BadCount));
    assert_eq!(with(28, 2), Err(DecodeError::BadDefaultAction(2)));
    assert_eq!(with(30, 1), Err(DecodeError::NonZeroReserved(30)));
    assert_eq!(
        with(31, 1),
        Err(DecodeError::NonZeroReserved(31)),
        "the offset of the first non-zero reserved byte, not of its field"
    );
    // A whole header is read for itself: exactly 32 bytes with a bad magic is a bad magic.
    let mut header = good[..32].to_vec();
    header[0] = b'X';
    assert_eq!(encoding::decode(&header), Err(DecodeError::BadMagic));
    assert_eq!(
        with(10, 0),
        Err(DecodeError::Invalid(RegistryError::InvalidVlan(0)))
    );
    assert_eq!(
        with(5, 1),
        Err(DecodeError::NonZeroReserved(24)),
        "netns value without its flag"
    );
    let r0 = 32 + 12 + 8;
    assert_eq!(
        with(r0, 2),
        Err(DecodeError::BadRuleField {
            rule: 0,
            field: "action"
        })
    );
    assert_eq!(
        with(r0 + 1, 3),
        Err(DecodeError::BadRuleField {
            rule: 0,
            field: "direction"
        })
    );
    assert_eq!(
        with(r0 + 2, 9),
        Err(DecodeError::BadRuleField {
            rule: 0,
            field: "protocol"
        })
    );
    assert_eq!(with(r0 + 3, 9), Err(DecodeError::NonZeroReserved(r0 + 3)));
    assert_eq!(
        with(r0 + 8, 40),
        Err(DecodeError::Invalid(RegistryError::InvalidRule {
            index: 0,
            error: RuleError::BadCidr
        }))
    );
    assert_eq!(
        with(r0 + 9, 2),
        Err(DecodeError::BadRuleField {
            rule: 0,
            field: "flags"
        })
    );
    assert_eq!(
        with(r0 + 10, 9),
        Err(DecodeError::BadRuleField {
            rule: 0,
            field: "subject"
        })
    );
    assert_eq!(with(r0 + 11, 1), Err(DecodeError::NonZeroReserved(r0 + 11)));
    assert_eq!(with(r0 + 20, 1), Err(DecodeError::NonZeroReserved(r0 + 20)));
    // The unused tail of a subject value: rule 1 a uid, rule 2 a process (4 bytes used), rule 3
    // an executable (8 bytes used); the error names the byte.
    let (r1, r2, r3) = (r0 + 36, r0 + 72, r0 + 108);
    assert_eq!(with(r1 + 25, 1), Err(DecodeError::NonZeroReserved(r1 + 25)));
    assert_eq!(with(r2 + 24, 1), Err(DecodeError::NonZeroReserved(r2 + 24)));
    assert_eq!(with(r3 + 30, 1), Err(DecodeError::NonZeroReserved(r3 + 30)));
    assert_eq!(
        with(r0 + 12, 0xff),
        Err(DecodeError::Invalid(RegistryError::InvalidRule {
            index: 0,
            error: RuleError::BadPortRange
        }))
    );
    assert_eq!(
        with(32, 0x01),
        Err(DecodeError::Invalid(RegistryError::InvalidMac([
            1, 0, 0, 0, 0, 1
        ])))
    );
    for e in [DecodeError::Truncated, DecodeError::BadCount] {
        assert!(!e.describe().is_empty());
    }
}

#[test]
fn the_largest_registration_fills_max_encoded_len_exactly() {
    use shoji_netfilter::registry::{MAX_IPV4, MAX_MACS};
    use shoji_netfilter::rules::MAX_RULES;
    let mut s = spec_a();
    while s.macs.len() < MAX_MACS {
        s.macs.push([2, 0, 0, 0, 1, s.macs.len() as u8]).unwrap();
    }
    while s.ipv4.len() < MAX_IPV4 {
        s.ipv4
            .push(Ipv4Addr::new(10, 1, 0, s.ipv4.len() as u8 + 1))
            .unwrap();
    }
    let rules = vec![Rule::any(Action::Allow, DirectionMatch::Both); MAX_RULES];
    let spec = with_rules(s, &rules);
    let mut buf = vec![0u8; encoding::MAX_ENCODED_LEN];
    let n = encoding::encode(&spec, &mut buf).unwrap();
    assert_eq!(
        n,
        encoding::MAX_ENCODED_LEN,
        "the longest encoding fills the buffer"
    );
    assert_eq!(n, 32 + 2 * 6 + 4 * 4 + 64 * 36);
    assert_eq!(encoding::decode(&buf).unwrap(), spec);
}

/// Every decode error (payloads zeroed, as a detail code carries none).
fn every_decode_error() -> [DecodeError; 9] {
    [
        DecodeError::Truncated,
        DecodeError::TrailingBytes,
        DecodeError::BadMagic,
        DecodeError::UnsupportedVersion(0),
        DecodeError::UnknownFlags(0),
        DecodeError::NonZeroReserved(0),
        DecodeError::BadCount,
        DecodeError::BadDefaultAction(0),
        DecodeError::BadRuleField {
            rule: 0,
            field: "?",
        },
    ]
}

#[test]
fn decode_error_detail_codes_are_1000_plus_index_and_read_back() {
    for (i, e) in every_decode_error().into_iter().enumerate() {
        assert_eq!(e.code(), 1000 + i as u64, "{e:?}");
        assert_eq!(DecodeError::from_code(e.code()), Some(e), "{e:?}");
    }
    // Codes outside 1000..=1008 are not decode errors; a registry refusal keeps its own code.
    assert_eq!(DecodeError::from_code(999), None);
    assert_eq!(DecodeError::from_code(1009), None);
    assert_eq!(DecodeError::from_code(2000), None);
    let invalid = DecodeError::Invalid(RegistryError::InvalidVlan(0));
    assert_eq!(invalid.code(), RegistryError::InvalidVlan(0).code());
    assert!(invalid.code() >= 2000);
}

#[test]
fn every_decode_error_has_its_own_description() {
    let errors = every_decode_error();
    let texts: Vec<&str> = errors.iter().map(|e| e.describe()).collect();
    for (i, t) in texts.iter().enumerate() {
        assert!(!t.is_empty());
        assert!(!texts[..i].contains(t), "{t:?} describes two errors");
    }
    assert!(DecodeError::Truncated.describe().contains("shorter"));
    assert!(DecodeError::BadMagic.describe().contains("magic"));
    // A registry inconsistency is described by the registry error itself.
    let e = RegistryError::InvalidVlan(0);
    assert_eq!(DecodeError::Invalid(e).describe(), e.describe());
}

// ---------------------------------------------------------------- properties

fn arb_rule() -> impl Strategy<Value = Rule> {
    let proto = prop_oneof![
        Just(ProtocolMatch::Any),
        Just(ProtocolMatch::Arp),
        Just(ProtocolMatch::Icmp),
        Just(ProtocolMatch::Tcp),
        Just(ProtocolMatch::Udp),
        Just(ProtocolMatch::IpProtocol(47)),
        Just(ProtocolMatch::Ipv6),
    ];
    let subject = prop_oneof![
        Just(Subject::Anyone),
        (1000u32..1003).prop_map(Subject::Uid),
        (1u32..4).prop_map(Subject::Process),
        (1u64..4).prop_map(Subject::Executable),
    ];
    (
        any::<bool>(),
        0u8..3,
        proto,
        0u8..=32,
        any::<u32>(),
        (0u16..100, 0u16..100),
        (0u16..100, 0u16..100),
        subject,
        any::<bool>(),
    )
        .prop_map(
            |(allow, dir, protocol, prefix, addr, sp, dp, subject, new_only)| {
                let remote = Ipv4Cidr {
                    addr: Ipv4Addr::from(
                        addr & Ipv4Cidr {
                            addr: Ipv4Addr::UNSPECIFIED,
                            prefix,
                        }
                        .mask(),
                    ),
                    prefix,
                };
                let ports_ok = matches!(protocol, ProtocolMatch::Tcp | ProtocolMatch::Udp);
                let range = |(a, b): (u16, u16)| {
                    if ports_ok {
                        PortRange {
                            first: a.min(b),
                            last: a.max(b),
                        }
                    } else {
                        PortRange::ANY
                    }
                };
                Rule {
                    action: if allow { Action::Allow } else { Action::Deny },
                    direction: DirectionMatch::from_u8(dir).unwrap(),
                    protocol,
                    remote,
                    src_ports: range(sp),
                    dst_ports: range(dp),
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

/// The reference model: first match over every rule, written independently of the bitmaps.
fn model(
    rules: &[Rule],
    egress: bool,
    proto: u8,
    remote: Ipv4Addr,
    sp: u16,
    dp: u16,
    syn_only: bool,
    t: Option<&TaskIdentity>,
) -> Option<usize> {
    rules.iter().position(|r| {
        let dir_ok = match r.direction {
            DirectionMatch::Both => true,
            DirectionMatch::Egress => egress,
            DirectionMatch::Ingress => !egress,
        };
        let proto_ok = match r.protocol {
            ProtocolMatch::Any => true,
            ProtocolMatch::Tcp => proto == 6,
            ProtocolMatch::Udp => proto == 17,
            ProtocolMatch::Icmp => proto == 1,
            ProtocolMatch::IpProtocol(p) => proto == p,
            _ => false,
        };
        let (sp, dp) = if proto == 6 || proto == 17 {
            (sp, dp)
        } else {
            (0, 0)
        };
        let mask = if r.remote.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - r.remote.prefix as u32)
        };
        let cidr_ok = u32::from(remote) & mask == u32::from(r.remote.addr);
        let ports_ok = r.src_ports.first <= sp
            && sp <= r.src_ports.last
            && r.dst_ports.first <= dp
            && dp <= r.dst_ports.last;
        let flag_ok = !r.flags.contains(RuleFlags::TCP_NEW_ONLY) || syn_only;
        let subject_ok = match (r.subject, t) {
            (Subject::Anyone, _) => true,
            (_, None) => false,
            (Subject::Uid(u), Some(t)) => t.uid == Some(u),
            (Subject::Process(p), Some(t)) => t.tgid == Some(p),
            (Subject::Executable(x), Some(t)) => t.exe_inode == Some(x),
            (Subject::Comm(c), Some(t)) => t.comm == Some(c),
        };
        dir_ok && proto_ok && cidr_ok && ports_ok && flag_ok && subject_ok
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rule_evaluation_matches_the_reference_model(
        rules in proptest::collection::vec(arb_rule(), 0..20),
        egress in any::<bool>(),
        proto in prop_oneof![Just(6u8), Just(17u8), Just(1u8), Just(47u8)],
        remote in prop_oneof![any::<u32>(), (0u32..256).prop_map(|x| 0xc000_0200 | x)],
        sp in 0u16..100, dp in 0u16..100, syn_only in any::<bool>(),
        uid in 1000u32..1003, tgid in 1u32..4, exe in 1u64..4, with_task in any::<bool>(),
        default_allow in any::<bool>(),
    ) {
        let remote = Ipv4Addr::from(remote);
        let mut s = slots(2);
        let mut e = Engine::new(&mut s, EngineConfig { scan: ScanConfig { enabled: false, ..ScanConfig::default() }, ..EngineConfig::default() });
        let default = if default_allow { Action::Allow } else { Action::Deny };
        e.register(defaults(with_rules(spec_a(), &rules), default, default)).unwrap();
        let t = TaskIdentity { uid: Some(uid), tgid: Some(tgid), exe_inode: Some(exe), ..task(Some(CGROUP_A), None, ExecContext::Task) };
        let task_ref = if with_task { Some(&t) } else { None };
        let payload = match proto {
            6 => tcp(sp, dp, if syn_only { SYN } else { SYN | ACK }),
            17 => udp(sp, dp, b""),
            1 => icmp_echo(),
            _ => vec![0u8; 8],
        };
        let mut out = Sink::default();
        let d = if egress {
            let f = eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &Ip4::new(IP_A, remote, proto).build(&payload));
            e.decide(&FrameMeta { task: task_ref, ..tx() }, &f, &mut out)
        } else {
            let f = eth(MAC_A, MAC_GW, None, 0x0800, &Ip4::new(remote, IP_A, proto).build(&payload));
            e.decide(&rx(), &f, &mut out)
        };
        // The first-hop guard comes before every rule: a container never sends UDP from port 67
        // (a DHCP server's answers), whatever its rules allow.
        if egress && proto == 17 && sp == 67 {
            prop_assert_eq!(d.verdict, Verdict::Drop(DropReason::RogueDhcp));
            prop_assert_eq!(d.rule, None);
            return Ok(());
        }
        // Subject rules never match on ingress (no task identity there).
        let expect = model(&rules, egress, proto, remote, sp, dp, syn_only && proto == 6, if egress { task_ref } else { None });
        let action = expect.map(|i| rules[i].action).unwrap_or(default);
        let pass = action == Action::Allow;
        prop_assert_eq!(d.verdict == Verdict::Pass, pass, "rule {:?} verdict {:?}", expect, d.verdict);
        if egress {
            prop_assert_eq!(d.rule, expect.map(|i| i as u16));
        }
    }

    #[test]
    fn encoding_round_trips_any_valid_spec(
        rules in proptest::collection::vec(arb_rule(), 0..10),
        id in any::<u32>(), vlan in 1u16..=4094, cg in proptest::option::of(any::<u64>()), ns in proptest::option::of(any::<u32>()),
    ) {
        let mut spec = with_rules(ContainerSpec::new(id, vlan, MAC_A, IP_A), &rules);
        spec.cgroup_id = cg;
        spec.netns_id = ns;
        let mut buf = [0u8; encoding::MAX_ENCODED_LEN];
        let n = encoding::encode(&spec, &mut buf).unwrap();
        prop_assert_eq!(encoding::decode(&buf[..n]).unwrap(), spec);
    }

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = encoding::decode(&bytes);
    }

    #[test]
    fn arbitrary_frames_never_panic_and_passing_frames_are_accounted(
        frame in proptest::collection::vec(any::<u8>(), 0..200),
        tagged in any::<bool>(), rx_dir in any::<bool>(),
    ) {
        let mut s = slots(4);
        let mut e = engine_ab(&mut s);
        let mut out = Sink::default();
        let mut f = frame.clone();
        if tagged && f.len() >= 18 {
            f[12] = 0x81; f[13] = 0; f[14] = 0; f[15] = VLAN_A as u8;
        }
        let meta = if rx_dir { rx() } else { tx() };
        let d = e.decide(&meta, &f, &mut out);
        let emitted = out.wire.len() + out.guest.len();
        prop_assert_eq!(d.verdict == Verdict::Pass, emitted > 0);
        for g in out.wire.iter().chain(out.guest.iter()) {
            prop_assert!(g.len() <= shoji_netfilter::parse::FRAME_BUFFER_LEN);
        }
        // Wire copies are never tagged.
        for w in &out.wire {
            prop_assert!(!(w.len() >= 14 && w[12] == 0x81 && w[13] == 0));
        }
    }

    #[test]
    fn vlan_strip_and_add_preserve_the_payload(payload in proptest::collection::vec(any::<u8>(), 0..64), port in 1u16..1024) {
        let mut s = slots(4);
        let mut e = engine_ab(&mut s);
        let mut out = Sink::default();
        let ip = Ip4::new(IP_A, IP_B, 17).build(&udp(9, port, &payload));
        let f = eth(MAC_B, MAC_A, Some(VLAN_A), 0x0800, &ip);
        prop_assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
        let (vid, body) = untag(&out.guest[0]);
        prop_assert_eq!(vid, Some(VLAN_B));
        prop_assert_eq!(body, untag(&f).1);
    }
}
