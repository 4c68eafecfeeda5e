//! Engine behaviour: VLAN edge, relay, spoofing, identity, IPv6, fragments, counters, events.

mod common;

use common::*;
use shoji_netfilter::config::BroadcastScope;
use shoji_netfilter::events::EventKind;
use shoji_netfilter::rules::{
    Action, DirectionMatch, Ipv4Cidr, PortRange, ProtocolMatch, Rule, Subject,
};
use shoji_netfilter::{ContainerSpec, Engine, EngineConfig, HostPolicy};
use shoji_shared::{
    ContainerId, Direction, DropReason, ExecContext, FrameFilter, FrameMeta, Verdict,
};

fn drop(r: DropReason) -> Verdict {
    Verdict::Drop(r)
}

fn spoof_events(e: &Engine<'_>) -> Vec<EventKind> {
    all_events(e)
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| matches!(k, EventKind::Spoof { .. }))
        .collect()
}

// ---------------------------------------------------------------- VLAN edge

#[test]
fn tx_from_container_is_stripped_to_the_wire() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(
        Some(VLAN_A),
        MAC_A,
        MAC_GW,
        IP_A,
        IP_REMOTE,
        40000,
        443,
        SYN,
    );
    let d = e.decide(&tx(), &f, &mut out);
    assert_eq!(d.verdict, Verdict::Pass);
    assert_eq!(d.sender, Some(ContainerId(1)));
    assert!(d.to_wire);
    assert_eq!(out.wire.len(), 1);
    assert!(out.guest.is_empty());
    let (vid, untagged) = untag(&f);
    assert_eq!(vid, Some(VLAN_A));
    assert_eq!(out.wire[0], untagged, "tag stripped, rest unchanged");
    let c = e.container_counters(ContainerId(1)).unwrap();
    assert_eq!((c.tx_passed, c.tx_bytes), (1, f.len() as u64));
}

#[test]
fn untagged_frames_reach_the_wire_whole_and_tagged_ones_joined_around_the_tag() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    // The host's frame has no tag: the sink gets it as it is, in one piece.
    let host = udp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 5000, 53);
    assert_eq!(e.filter(&tx(), &host, &mut out), Verdict::Pass);
    assert_eq!((out.wire.len(), out.joined), (1, 0));
    assert_eq!(out.wire[0], host);
    // A container's frame: the pieces before and after its tag, joined by the sink.
    let tagged = udp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 5000, 53);
    assert_eq!(e.filter(&tx(), &tagged, &mut out), Verdict::Pass);
    assert_eq!((out.wire.len(), out.joined), (2, 1));
    assert_eq!(out.wire[1], untag(&tagged).1);
}

#[test]
fn descriptor_vlan_names_the_container_and_frame_stays_untagged() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(None, MAC_A, MAC_GW, IP_A, IP_REMOTE, 40000, 443, SYN);
    let meta = FrameMeta {
        direction: Direction::Tx,
        descriptor_vlan: Some(VLAN_A),
        task: None,
    };
    assert_eq!(e.filter(&meta, &f, &mut out), Verdict::Pass);
    assert_eq!(out.wire, vec![f.clone()]);
    // Tag in the frame and in the descriptor: ambiguous, refused.
    let tagged = tcp_frame(
        Some(VLAN_A),
        MAC_A,
        MAC_GW,
        IP_A,
        IP_REMOTE,
        40000,
        443,
        SYN,
    );
    assert_eq!(
        e.filter(&meta, &tagged, &mut out),
        drop(DropReason::Malformed)
    );
}

#[test]
fn unknown_vlan_is_dropped() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(Some(999), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, 2, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::UnknownVlan));
    assert_eq!(
        e.counters().unattributed.dropped(DropReason::UnknownVlan),
        1
    );
    assert!(out.wire.is_empty());
}

#[test]
fn untagged_and_priority_tagged_frames_are_the_hosts() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 5000, 22, SYN);
    let d = e.decide(&tx(), &f, &mut out);
    assert_eq!((d.verdict, d.sender), (Verdict::Pass, None));
    let f0 = tcp_frame(Some(0), MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 5000, 22, SYN);
    assert_eq!(e.filter(&tx(), &f0, &mut out), Verdict::Pass);
    assert_eq!(out.wire[1], untag(&f0).1);
    assert_eq!(e.counters().host.tx_passed, 2);
}

#[test]
fn host_policy_applies_to_host_frames() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut host = HostPolicy::default();
    host.rules
        .push(Rule {
            protocol: ProtocolMatch::Tcp,
            dst_ports: PortRange::single(25),
            ..Rule::any(Action::Deny, DirectionMatch::Egress)
        })
        .unwrap();
    e.set_host_policy(host).unwrap();
    let mut out = Sink::default();
    let smtp = tcp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 5000, 25, SYN);
    let d = e.decide(&tx(), &smtp, &mut out);
    assert_eq!(
        (d.verdict, d.rule),
        (drop(DropReason::PolicyDenied), Some(0))
    );
    let ssh = tcp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 5000, 22, SYN);
    assert_eq!(e.filter(&tx(), &ssh, &mut out), Verdict::Pass);
    // The host may use IPv6 (its default is allow).
    assert_eq!(
        e.filter(&tx(), &ndp_frame(None, MAC_HOST), &mut out),
        Verdict::Pass
    );
}

#[test]
fn rx_delivery_adds_the_right_tag() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    // Unicast to B's MAC.
    let mut out = Sink::default();
    let f = tcp_frame(None, MAC_GW, MAC_B, IP_REMOTE, IP_B, 443, 40000, SYN | ACK);
    assert_eq!(e.filter(&rx(), &f, &mut out), Verdict::Pass);
    assert_eq!(out.guest.len(), 1);
    assert_eq!(untag(&out.guest[0]), (Some(VLAN_B), f.clone()));
    // Broadcast ARP for A's address goes to A only.
    let mut out = Sink::default();
    let a = arp_request(None, MAC_GW, IP_GW, IP_A);
    assert_eq!(e.filter(&rx(), &a, &mut out), Verdict::Pass);
    assert_eq!(out.guest.len(), 1);
    assert_eq!(untag(&out.guest[0]).0, Some(VLAN_A));
    // Broadcast ARP for someone else goes to the host, untagged.
    let mut out = Sink::default();
    let h = arp_request(None, MAC_GW, IP_GW, IP_HOST);
    assert_eq!(e.filter(&rx(), &h, &mut out), Verdict::Pass);
    assert_eq!(out.guest, vec![h.clone()]);
    assert_eq!(e.container_counters(ContainerId(2)).unwrap().rx_passed, 1);
    assert_eq!(e.counters().host.rx_passed, 1);
}

#[test]
fn rx_frames_with_a_tag_from_the_wire_are_refused() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(
        Some(VLAN_A),
        MAC_GW,
        MAC_A,
        IP_REMOTE,
        IP_A,
        443,
        40000,
        SYN,
    );
    assert_eq!(e.filter(&rx(), &f, &mut out), drop(DropReason::UnknownVlan));
    let meta = FrameMeta {
        direction: Direction::Rx,
        descriptor_vlan: Some(VLAN_A),
        task: None,
    };
    let f = tcp_frame(None, MAC_GW, MAC_A, IP_REMOTE, IP_A, 443, 40000, SYN);
    assert_eq!(e.filter(&meta, &f, &mut out), drop(DropReason::UnknownVlan));
    assert!(out.guest.is_empty());
}

#[test]
fn rx_unknown_unicast_goes_nowhere_when_host_macs_are_known() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut host = HostPolicy::default();
    host.macs.push(MAC_HOST).unwrap();
    e.set_host_policy(host).unwrap();
    let mut out = Sink::default();
    let f = udp_frame(
        None,
        MAC_GW,
        [0x02, 9, 9, 9, 9, 9],
        IP_REMOTE,
        IP_HOST,
        1,
        2,
    );
    assert_eq!(
        e.filter(&rx(), &f, &mut out),
        drop(DropReason::NoDestination)
    );
    let f = udp_frame(None, MAC_GW, MAC_HOST, IP_REMOTE, IP_HOST, 1, 2);
    assert_eq!(e.filter(&rx(), &f, &mut out), Verdict::Pass);
}

// ---------------------------------------------------------------- relay (hairpin)

#[test]
fn container_to_container_is_relayed_with_the_receivers_tag() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_B, IP_A, IP_B, 40000, 80, SYN);
    let d = e.decide(&tx(), &f, &mut out);
    assert_eq!(d.verdict, Verdict::Pass);
    assert!(!d.to_wire);
    assert_eq!(d.to_guest, 1);
    assert!(out.wire.is_empty());
    let (vid, body) = untag(&out.guest[0]);
    assert_eq!(vid, Some(VLAN_B));
    assert_eq!(body, untag(&f).1);
    assert_eq!(e.container_counters(ContainerId(1)).unwrap().relayed, 1);
    assert_eq!(e.container_counters(ContainerId(2)).unwrap().rx_passed, 1);
}

#[test]
fn relay_applies_both_sides_policy() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    // B refuses inbound TCP 80 from A; A refuses outbound UDP to B.
    let deny_in = Rule {
        protocol: ProtocolMatch::Tcp,
        remote: Ipv4Cidr::host(IP_A),
        dst_ports: PortRange::single(80),
        ..Rule::any(Action::Deny, DirectionMatch::Ingress)
    };
    e.update(with_rules(spec_b(), &[deny_in])).unwrap();
    let deny_out = Rule {
        protocol: ProtocolMatch::Udp,
        remote: Ipv4Cidr::host(IP_B),
        ..Rule::any(Action::Deny, DirectionMatch::Egress)
    };
    e.update(with_rules(spec_a(), &[deny_out])).unwrap();
    let mut out = Sink::default();
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_B, IP_A, IP_B, 40000, 80, SYN);
    assert_eq!(
        e.filter(&tx(), &f, &mut out),
        drop(DropReason::PolicyDenied)
    );
    assert_eq!(
        e.container_counters(ContainerId(2))
            .unwrap()
            .dropped(DropReason::PolicyDenied),
        1
    );
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_B, IP_A, IP_B, 40000, 81, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    let f = udp_frame(Some(VLAN_A), MAC_A, MAC_B, IP_A, IP_B, 1, 2);
    assert_eq!(
        e.filter(&tx(), &f, &mut out),
        drop(DropReason::PolicyDenied)
    );
    assert_eq!(
        e.container_counters(ContainerId(1))
            .unwrap()
            .dropped(DropReason::PolicyDenied),
        1
    );
    assert_eq!(out.guest.len(), 1);
}

#[test]
fn arp_between_containers_is_relayed_not_broadcast_to_the_wire() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = arp_request(Some(VLAN_A), MAC_A, IP_A, IP_B);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    assert!(out.wire.is_empty());
    assert_eq!(untag(&out.guest[0]).0, Some(VLAN_B));
    // ARP for the gateway goes to the wire only (default broadcast scope).
    let mut out = Sink::default();
    let f = arp_request(Some(VLAN_A), MAC_A, IP_A, IP_GW);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    assert_eq!(out.wire, vec![untag(&f).1]);
    assert!(out.guest.is_empty());
}

#[test]
fn broadcast_scope_everyone_copies_to_every_other_party() {
    let mut s = slots(8);
    let config = EngineConfig {
        broadcast: BroadcastScope::Everyone,
        ..EngineConfig::default()
    };
    let mut e = engine_ab_with(&mut s, config);
    let mut out = Sink::default();
    let f = arp_request(Some(VLAN_A), MAC_A, IP_A, IP_GW);
    let d = e.decide(&tx(), &f, &mut out);
    assert_eq!(d.verdict, Verdict::Pass);
    assert_eq!(out.wire.len(), 1);
    let tags: Vec<_> = out.guest.iter().map(|g| untag(g).0).collect();
    assert_eq!(
        tags,
        vec![None, Some(VLAN_B)],
        "host untagged, then B tagged"
    );
    // RX broadcast reaches host and both containers.
    let mut out = Sink::default();
    let f = udp_frame(
        None,
        MAC_GW,
        BCAST,
        IP_GW,
        "10.0.0.255".parse().unwrap(),
        67,
        68,
    );
    assert_eq!(e.filter(&rx(), &f, &mut out), Verdict::Pass);
    assert_eq!(out.guest.len(), 3);
}

#[test]
fn host_reachable_from_containers_by_mac_and_arp() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut host = HostPolicy::default();
    host.macs.push(MAC_HOST).unwrap();
    host.ipv4.push(IP_HOST).unwrap();
    e.set_host_policy(host).unwrap();
    let mut out = Sink::default();
    let f = arp_request(Some(VLAN_A), MAC_A, IP_A, IP_HOST);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    assert_eq!(out.guest, vec![untag(&f).1]);
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_HOST, IP_A, IP_HOST, 1, 22, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    assert_eq!(out.guest[1], untag(&f).1);
    assert!(out.wire.is_empty());
}

// ---------------------------------------------------------------- spoofing

#[test]
fn classic_arp_spoof_is_dropped_and_names_both_containers() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    // A claims B's IP in a gratuitous ARP reply.
    let f = eth(
        BCAST,
        MAC_A,
        Some(VLAN_A),
        0x0806,
        &arp(2, MAC_A, IP_B, BCAST, IP_B),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedArp));
    assert!(out.wire.is_empty() && out.guest.is_empty());
    let ev = spoof_events(&e);
    assert_eq!(ev.len(), 1);
    match ev[0] {
        EventKind::Spoof {
            reason,
            sender,
            claimed,
            ipv4,
            direction,
            ..
        } => {
            assert_eq!(reason, DropReason::SpoofedArp);
            assert_eq!(direction, Direction::Tx);
            assert_eq!(sender, Some(ContainerId(1)));
            assert_eq!(claimed, Some(ContainerId(2)));
            assert_eq!(ipv4, Some(IP_B));
        }
        _ => unreachable!(),
    }
    assert_eq!(
        e.container_counters(ContainerId(1))
            .unwrap()
            .dropped(DropReason::SpoofedArp),
        1
    );
}

#[test]
fn arp_sender_mac_must_match_frame_and_container() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = eth(
        BCAST,
        MAC_A,
        Some(VLAN_A),
        0x0806,
        &arp(1, MAC_EVIL, IP_A, [0; 6], IP_GW),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedArp));
    // ARP probe (sender 0.0.0.0) is fine.
    let probe = eth(
        BCAST,
        MAC_A,
        Some(VLAN_A),
        0x0806,
        &arp(1, MAC_A, "0.0.0.0".parse().unwrap(), [0; 6], IP_A),
    );
    assert_eq!(e.filter(&tx(), &probe, &mut out), Verdict::Pass);
}

#[test]
fn spoofed_source_mac_and_ip_are_dropped() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(Some(VLAN_A), MAC_EVIL, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedMac));
    let f = tcp_frame(
        Some(VLAN_A),
        MAC_A,
        MAC_GW,
        "10.9.9.9".parse().unwrap(),
        IP_REMOTE,
        1,
        80,
        SYN,
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedIp));
    // Multicast source MAC is never a container's.
    let f = tcp_frame(Some(VLAN_A), BCAST, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedMac));
    // DHCP discovery from 0.0.0.0 is allowed.
    let dhcp = udp_frame(
        Some(VLAN_A),
        MAC_A,
        BCAST,
        "0.0.0.0".parse().unwrap(),
        "255.255.255.255".parse().unwrap(),
        68,
        67,
    );
    assert_eq!(e.filter(&tx(), &dhcp, &mut out), Verdict::Pass);
    let not_dhcp = udp_frame(
        Some(VLAN_A),
        MAC_A,
        BCAST,
        "0.0.0.0".parse().unwrap(),
        "255.255.255.255".parse().unwrap(),
        68,
        53,
    );
    assert_eq!(
        e.filter(&tx(), &not_dhcp, &mut out),
        drop(DropReason::SpoofedIp)
    );
    assert_eq!(spoof_events(&e).len(), 4);
}

#[test]
fn a_spoofed_mac_event_names_the_frames_address_and_who_owns_it() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let spoof = |reason, claimed, ipv4| EventKind::Spoof {
        reason,
        direction: Direction::Tx,
        sender: Some(ContainerId(1)),
        claimed,
        mac: MAC_EVIL,
        ipv4,
    };
    // A foreign MAC with A's own address: nobody else is claimed.
    let f = tcp_frame(Some(VLAN_A), MAC_EVIL, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedMac));
    // A foreign MAC with B's address: B is claimed.
    let f = tcp_frame(Some(VLAN_A), MAC_EVIL, MAC_GW, IP_B, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedMac));
    // ARP from a foreign MAC: its sender address is the one recorded.
    let f = eth(
        BCAST,
        MAC_EVIL,
        Some(VLAN_A),
        0x0806,
        &arp(1, MAC_EVIL, IP_A, [0; 6], IP_GW),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedMac));
    // A's own MAC with an address nobody owns: a spoofed IP, and nobody is claimed (A is the
    // sender, not a victim).
    let stray = std::net::Ipv4Addr::new(10, 9, 9, 9);
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, stray, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedIp));
    assert_eq!(
        spoof_events(&e),
        vec![
            spoof(DropReason::SpoofedMac, None, Some(IP_A)),
            spoof(DropReason::SpoofedMac, Some(ContainerId(2)), Some(IP_B)),
            spoof(DropReason::SpoofedMac, None, Some(IP_A)),
            EventKind::Spoof {
                reason: DropReason::SpoofedIp,
                direction: Direction::Tx,
                sender: Some(ContainerId(1)),
                claimed: None,
                mac: MAC_A,
                ipv4: Some(stray),
            },
        ]
    );
}

#[test]
fn full_impersonation_is_caught_by_the_port() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    // From A's port, B's MAC and B's IP: everything claims B.
    let f = tcp_frame(Some(VLAN_A), MAC_B, MAC_GW, IP_B, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedMac));
    match spoof_events(&e)[0] {
        EventKind::Spoof {
            sender, claimed, ..
        } => {
            assert_eq!(
                (sender, claimed),
                (Some(ContainerId(1)), Some(ContainerId(2)))
            );
        }
        _ => unreachable!(),
    }
}

#[test]
fn task_identity_naming_another_container_is_a_mismatch() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    // By cgroup.
    let t = task(Some(CGROUP_B), None, ExecContext::Task);
    let meta = FrameMeta {
        task: Some(&t),
        ..tx()
    };
    assert_eq!(
        e.filter(&meta, &f, &mut out),
        drop(DropReason::IdentityMismatch)
    );
    // By network namespace.
    let t = task(None, Some(NETNS_B), ExecContext::Task);
    let meta = FrameMeta {
        task: Some(&t),
        ..tx()
    };
    assert_eq!(
        e.filter(&meta, &f, &mut out),
        drop(DropReason::IdentityMismatch)
    );
    // Agreeing identity passes; identity from softirq is not trusted (port identity only).
    let t = task(Some(CGROUP_A), Some(NETNS_A), ExecContext::Task);
    assert_eq!(
        e.filter(
            &FrameMeta {
                task: Some(&t),
                ..tx()
            },
            &f,
            &mut out
        ),
        Verdict::Pass
    );
    let t = task(Some(CGROUP_B), None, ExecContext::SoftIrq);
    assert_eq!(
        e.filter(
            &FrameMeta {
                task: Some(&t),
                ..tx()
            },
            &f,
            &mut out
        ),
        Verdict::Pass
    );
    // A host task (no container) sending on A's port is not a mismatch.
    let t = task(Some(1), Some(1), ExecContext::Task);
    assert_eq!(
        e.filter(
            &FrameMeta {
                task: Some(&t),
                ..tx()
            },
            &f,
            &mut out
        ),
        Verdict::Pass
    );
    match spoof_events(&e)[0] {
        EventKind::Spoof {
            reason,
            sender,
            claimed,
            ..
        } => {
            assert_eq!(reason, DropReason::IdentityMismatch);
            assert_eq!(
                (sender, claimed),
                (Some(ContainerId(1)), Some(ContainerId(2)))
            );
        }
        _ => unreachable!(),
    }
}

#[test]
fn untagged_frame_from_a_container_task_is_a_mismatch() {
    // A container sharing the host's network namespace sends untagged frames.
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 1, 80, SYN);
    let t = task(Some(CGROUP_A), None, ExecContext::Task);
    assert_eq!(
        e.filter(
            &FrameMeta {
                task: Some(&t),
                ..tx()
            },
            &f,
            &mut out
        ),
        drop(DropReason::IdentityMismatch)
    );
    match spoof_events(&e)[0] {
        EventKind::Spoof {
            sender, claimed, ..
        } => assert_eq!((sender, claimed), (None, Some(ContainerId(1)))),
        _ => unreachable!(),
    }
}

#[test]
fn host_frames_may_not_claim_container_addresses() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(None, MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedMac));
    let f = tcp_frame(None, MAC_HOST, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedIp));
    let f = eth(
        BCAST,
        MAC_HOST,
        None,
        0x0806,
        &arp(2, MAC_HOST, IP_B, BCAST, IP_B),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedArp));
    // The host's own address, but B's MAC as the ARP sender hardware address.
    let f = eth(
        BCAST,
        MAC_HOST,
        None,
        0x0806,
        &arp(2, MAC_B, IP_HOST, BCAST, IP_HOST),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedArp));
}

#[test]
fn rx_arp_claiming_a_container_address_from_a_foreign_mac_is_dropped() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    // Poison the gateway's view... and the containers': "10.0.0.1 is at evil".
    let f = eth(
        BCAST,
        MAC_EVIL,
        None,
        0x0806,
        &arp(2, MAC_EVIL, IP_A, BCAST, IP_GW),
    );
    assert_eq!(e.filter(&rx(), &f, &mut out), drop(DropReason::SpoofedArp));
    assert!(out.guest.is_empty());
    assert_eq!(
        e.container_counters(ContainerId(1))
            .unwrap()
            .dropped(DropReason::SpoofedArp),
        1
    );
    match spoof_events(&e)[0] {
        EventKind::Spoof {
            direction,
            sender,
            claimed,
            mac,
            ..
        } => {
            assert_eq!(
                (direction, sender, claimed, mac),
                (Direction::Rx, None, Some(ContainerId(1)), MAC_EVIL)
            );
        }
        _ => unreachable!(),
    }
    // Nothing from the wire may name A: not its MAC as the frame's source (a spoofed MAC), not
    // its MAC or address in the ARP sender fields.
    for (src, sha, spa, reason) in [
        (MAC_A, MAC_EVIL, IP_A, DropReason::SpoofedMac),
        (MAC_A, MAC_A, IP_A, DropReason::SpoofedMac),
        (MAC_EVIL, MAC_A, IP_A, DropReason::SpoofedArp),
        (MAC_EVIL, MAC_A, IP_REMOTE, DropReason::SpoofedArp),
    ] {
        let f = eth(BCAST, src, None, 0x0806, &arp(2, sha, spa, BCAST, IP_GW));
        assert_eq!(
            e.filter(&rx(), &f, &mut out),
            drop(reason),
            "frame from {src:?}, ARP sender {sha:?} {spa}"
        );
    }
    // Ordinary ARP from the gateway passes.
    let ok = eth(
        MAC_A,
        MAC_GW,
        None,
        0x0806,
        &arp(2, MAC_GW, IP_GW, MAC_A, IP_A),
    );
    assert_eq!(e.filter(&rx(), &ok, &mut out), Verdict::Pass);
}

#[test]
fn rx_ipv4_claiming_a_container_source_is_refused_and_counted() {
    // A sender on the LAN forges container A's address to reach B, whose rules admit A only.
    let allow_a = Rule {
        remote: Ipv4Cidr::host(IP_A),
        ..Rule::any(Action::Allow, DirectionMatch::Ingress)
    };
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    e.update(defaults(
        with_rules(spec_b(), &[allow_a]),
        Action::Allow,
        Action::Deny,
    ))
    .unwrap();
    let mut out = Sink::default();
    let forged = udp_frame(None, MAC_EVIL, MAC_B, IP_A, IP_B, 5000, 53);
    assert_eq!(
        e.filter(&rx(), &forged, &mut out),
        drop(DropReason::SpoofedIp)
    );
    assert!(out.guest.is_empty());
    // Counted on the container whose address was claimed, with an event naming it.
    let a = e.container_counters(ContainerId(1)).unwrap();
    assert_eq!(a.dropped(DropReason::SpoofedIp), 1);
    match spoof_events(&e).last() {
        Some(EventKind::Spoof {
            direction,
            claimed,
            ipv4,
            ..
        }) => assert_eq!(
            (*direction, *claimed, *ipv4),
            (Direction::Rx, Some(ContainerId(1)), Some(IP_A))
        ),
        other => panic!("no spoof event: {other:?}"),
    }
    // The same datagram from an address nobody registered is B's rules' business: denied by
    // policy, not as a spoof; and from the gateway's own address it is not admitted either.
    let other = udp_frame(None, MAC_GW, MAC_B, IP_REMOTE, IP_B, 5000, 53);
    assert_eq!(
        e.filter(&rx(), &other, &mut out),
        drop(DropReason::PolicyDenied)
    );
    assert_eq!(spoof_events(&e).len(), 1);
}

// ---------------------------------------------------------------- IPv6

#[test]
fn ipv6_and_ndp_are_denied_for_containers_without_a_rule() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    assert_eq!(
        e.filter(&tx(), &ndp_frame(Some(VLAN_A), MAC_A), &mut out),
        drop(DropReason::Ipv6Denied)
    );
    assert_eq!(
        e.filter(
            &tx(),
            &ipv6_udp_frame(Some(VLAN_A), MAC_A, MAC_GW),
            &mut out
        ),
        drop(DropReason::Ipv6Denied)
    );
    assert_eq!(
        e.filter(&rx(), &ipv6_udp_frame(None, MAC_GW, MAC_A), &mut out),
        drop(DropReason::Ipv6Denied)
    );
    // A deny rule for IPv6 also reads as Ipv6Denied; an allow rule opens it.
    let allow6 = Rule {
        protocol: ProtocolMatch::Ipv6,
        ..Rule::any(Action::Allow, DirectionMatch::Both)
    };
    e.update(with_rules(spec_a(), &[allow6])).unwrap();
    assert_eq!(
        e.filter(&tx(), &ndp_frame(Some(VLAN_A), MAC_A), &mut out),
        Verdict::Pass
    );
    assert_eq!(
        e.filter(&rx(), &ipv6_udp_frame(None, MAC_GW, MAC_A), &mut out),
        Verdict::Pass
    );
    // An IPv4 "any" rule does not open IPv6.
    let any = Rule::any(Action::Allow, DirectionMatch::Both);
    e.update(with_rules(spec_a(), &[any])).unwrap();
    assert_eq!(
        e.filter(&tx(), &ndp_frame(Some(VLAN_A), MAC_A), &mut out),
        drop(DropReason::Ipv6Denied)
    );
}

#[test]
fn other_ethertypes_are_denied_for_containers() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let lldp = eth(
        [0x01, 0x80, 0xc2, 0, 0, 0x0e],
        MAC_A,
        Some(VLAN_A),
        0x88cc,
        &[0u8; 32],
    );
    assert_eq!(
        e.filter(&tx(), &lldp, &mut out),
        drop(DropReason::PolicyDenied)
    );
    let host_lldp = eth(
        [0x01, 0x80, 0xc2, 0, 0, 0x0e],
        MAC_HOST,
        None,
        0x88cc,
        &[0u8; 32],
    );
    assert_eq!(e.filter(&tx(), &host_lldp, &mut out), Verdict::Pass);
}

// ---------------------------------------------------------------- IPv4 options and fragments

#[test]
fn source_routed_datagrams_are_denied_by_default() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let mut ip = Ip4::new(IP_A, IP_REMOTE, 17);
    ip.options = vec![131, 7, 4, 10, 0, 0, 9, 1]; // LSRR + NOP
    let f = eth(
        MAC_GW,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &ip.build(&udp(1, 2, b"")),
    );
    assert_eq!(
        e.filter(&tx(), &f, &mut out),
        drop(DropReason::PolicyDenied)
    );
    // Harmless options (NOPs, record-route-like unknown option) pass.
    ip.options = vec![1, 1, 1, 0];
    let f = eth(
        MAC_GW,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &ip.build(&udp(1, 2, b"")),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    // From the wire too: a source-routed datagram for A is denied, unless configured.
    let mut inbound = Ip4::new(IP_REMOTE, IP_A, 17);
    inbound.options = vec![131, 7, 4, 10, 0, 0, 9, 1];
    let f = eth(MAC_A, MAC_GW, None, 0x0800, &inbound.build(&udp(1, 2, b"")));
    assert_eq!(
        e.filter(&rx(), &f, &mut out),
        drop(DropReason::PolicyDenied)
    );
    assert!(out.guest.is_empty());
    e.set_config(EngineConfig {
        allow_source_route: true,
        ..EngineConfig::default()
    });
    assert_eq!(e.filter(&rx(), &f, &mut out), Verdict::Pass);
    assert_eq!(out.guest.len(), 1);
}

#[test]
fn a_container_frame_for_its_own_mac_goes_nowhere() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = udp_frame(Some(VLAN_A), MAC_A, MAC_A, IP_A, IP_B, 5000, 53);
    assert_eq!(
        e.filter(&tx(), &f, &mut out),
        drop(DropReason::NoDestination)
    );
    assert!(out.wire.is_empty() && out.guest.is_empty());
}

fn frag(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    ident: u16,
    offset: u16,
    more: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = Ip4::new(src, dst, 17);
    ip.ident = ident;
    ip.frag_offset = offset;
    ip.more = more;
    ip.build(payload)
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let deny53 = Rule {
        protocol: ProtocolMatch::Udp,
        dst_ports: PortRange::single(53),
        ..Rule::any(Action::Deny, DirectionMatch::Egress)
    };
    e.update(with_rules(spec_a(), &[deny53])).unwrap();
    let mut out = Sink::default();
    let send = |e: &mut Engine<'_>, out: &mut Sink, ip: Vec<u8>| {
        e.filter(&tx(), &eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &ip), out)
    };
    // Allowed datagram (port 80): first and later fragments pass.
    let mut first = udp(1000, 80, &[0u8; 8]);
    first.truncate(16);
    assert_eq!(
        send(&mut e, &mut out, frag(IP_A, IP_REMOTE, 1, 0, true, &first)),
        Verdict::Pass
    );
    assert_eq!(
        send(
            &mut e,
            &mut out,
            frag(IP_A, IP_REMOTE, 1, 16, false, &[1u8; 8])
        ),
        Verdict::Pass
    );
    // Denied datagram (port 53): later fragments dropped with the first one's reason.
    let first = udp(1000, 53, &[0u8; 8]);
    assert_eq!(
        send(&mut e, &mut out, frag(IP_A, IP_REMOTE, 2, 0, true, &first)),
        drop(DropReason::PolicyDenied)
    );
    assert_eq!(
        send(
            &mut e,
            &mut out,
            frag(IP_A, IP_REMOTE, 2, 16, false, &[1u8; 8])
        ),
        drop(DropReason::PolicyDenied)
    );
    // Orphan later fragment: the stated default (deny).
    assert_eq!(
        send(
            &mut e,
            &mut out,
            frag(IP_A, IP_REMOTE, 3, 64, false, &[1u8; 8])
        ),
        drop(DropReason::BadFragment)
    );
    // Overlap: a fragment rewriting bytes already sent.
    assert_eq!(
        send(
            &mut e,
            &mut out,
            frag(IP_A, IP_REMOTE, 4, 0, true, &udp(1000, 80, &[0u8; 8]))
        ),
        Verdict::Pass
    );
    assert_eq!(
        send(
            &mut e,
            &mut out,
            frag(IP_A, IP_REMOTE, 4, 8, true, &[0u8; 16])
        ),
        drop(DropReason::BadFragment)
    );
    assert_eq!(
        send(
            &mut e,
            &mut out,
            frag(IP_A, IP_REMOTE, 4, 16, false, &[0u8; 8])
        ),
        drop(DropReason::BadFragment),
        "poisoned"
    );
    // Later fragments of an allowed datagram keep their delivery (relay to B).
    let first = udp(1000, 80, &[0u8; 8]);
    let f1 = eth(
        MAC_B,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &frag(IP_A, IP_B, 5, 0, true, &first),
    );
    let f2 = eth(
        MAC_B,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &frag(IP_A, IP_B, 5, 16, false, &[7u8; 4]),
    );
    let mut relay = Sink::default();
    assert_eq!(e.filter(&tx(), &f1, &mut relay), Verdict::Pass);
    assert_eq!(e.filter(&tx(), &f2, &mut relay), Verdict::Pass);
    assert_eq!(relay.guest.len(), 2);
}

#[test]
fn orphan_fragments_can_be_allowed_by_configuration() {
    let mut s = slots(8);
    let config = EngineConfig {
        orphan_fragments: Action::Allow,
        ..EngineConfig::default()
    };
    let mut e = engine_ab_with(&mut s, config);
    let mut out = Sink::default();
    let f = eth(
        MAC_GW,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &frag(IP_A, IP_REMOTE, 9, 64, false, &[1u8; 8]),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
}

#[test]
fn tiny_and_header_overwriting_fragments_are_dropped() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    // First fragment too small for the TCP header.
    let mut ip = Ip4::new(IP_A, IP_REMOTE, 6);
    ip.more = true;
    let f = eth(
        MAC_GW,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &ip.build(&tcp(1, 80, SYN)[..8]),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::BadFragment));
    // A TCP fragment at offset 8 (inside the TCP header, RFC 1858).
    ip.frag_offset = 8;
    ip.more = false;
    let f = eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &ip.build(&[0u8; 16]));
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::BadFragment));
    // A non-last fragment whose length is not a multiple of 8.
    let f = eth(
        MAC_GW,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &frag(IP_A, IP_REMOTE, 7, 0, true, &udp(1, 2, b"abc")),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::BadFragment));
    // Reaching past 65535 bytes.
    let f = eth(
        MAC_GW,
        MAC_A,
        Some(VLAN_A),
        0x0800,
        &frag(IP_A, IP_REMOTE, 8, 65528, false, &[0u8; 16]),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::BadFragment));
    assert_eq!(
        e.container_counters(ContainerId(1))
            .unwrap()
            .dropped(DropReason::BadFragment),
        4
    );
}

#[test]
fn rx_fragments_are_tracked_too() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f1 = eth(
        MAC_A,
        MAC_GW,
        None,
        0x0800,
        &frag(IP_REMOTE, IP_A, 11, 0, true, &udp(53, 1000, &[0u8; 8])),
    );
    let f2 = eth(
        MAC_A,
        MAC_GW,
        None,
        0x0800,
        &frag(IP_REMOTE, IP_A, 11, 16, false, &[0u8; 8]),
    );
    let dup = eth(
        MAC_A,
        MAC_GW,
        None,
        0x0800,
        &frag(IP_REMOTE, IP_A, 11, 16, false, &[0u8; 8]),
    );
    assert_eq!(e.filter(&rx(), &f1, &mut out), Verdict::Pass);
    assert_eq!(e.filter(&rx(), &f2, &mut out), Verdict::Pass);
    assert_eq!(
        e.filter(&rx(), &dup, &mut out),
        drop(DropReason::BadFragment)
    );
    assert!(out.guest.iter().all(|g| untag(g).0 == Some(VLAN_A)));
}

// ---------------------------------------------------------------- malformed input

#[test]
fn a_frame_of_exactly_max_frame_bytes_is_decided_one_byte_more_is_oversize() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    // 14 + 4 (tag) + 20 + 8 + data = MAX_FRAME.
    let data = vec![0x5a; shoji_netfilter::MAX_FRAME - 46];
    let ip = Ip4::new(IP_A, IP_REMOTE, 17).build(&udp(5000, 53, &data));
    let f = eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &ip);
    assert_eq!(f.len(), shoji_netfilter::MAX_FRAME);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    assert_eq!(out.wire.len(), 1);
    let mut longer = f.clone();
    longer.push(0);
    assert_eq!(
        e.filter(&tx(), &longer, &mut out),
        drop(DropReason::Oversize)
    );
}

#[test]
fn malformed_frames_of_every_layer_have_their_own_reasons() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let t = |e: &mut Engine<'_>, f: &[u8], out: &mut Sink| e.filter(&tx(), f, out);
    let good_arp = arp(1, MAC_A, IP_A, [0; 6], IP_GW);
    let good_ip = Ip4::new(IP_A, IP_REMOTE, 6).build(&tcp(1, 80, SYN));
    let cases: Vec<(Vec<u8>, DropReason, &str)> = vec![
        (vec![0u8; 13], DropReason::Truncated, "short ethernet"),
        (vec![0u8; 1523], DropReason::Oversize, "oversize"),
        (
            {
                let mut f = eth(MAC_GW, MAC_A, None, 0x8100, &[]);
                f.extend_from_slice(&[0, 101]);
                f
            },
            DropReason::Truncated,
            "truncated tag",
        ),
        (
            eth(MAC_GW, MAC_A, Some(VLAN_A), 0x8100, &[0, 5, 8, 0]),
            DropReason::Malformed,
            "double tag",
        ),
        (
            {
                let mut f = eth(MAC_GW, MAC_A, None, 0x88a8, &[0, 5]);
                f.extend_from_slice(&[0x81, 0, 0, 101, 8, 0]);
                f
            },
            DropReason::Malformed,
            "QinQ",
        ),
        (
            eth(MAC_GW, MAC_A, Some(0xfff), 0x0800, &good_ip),
            DropReason::Malformed,
            "VID 4095",
        ),
        (
            eth(BCAST, MAC_A, Some(VLAN_A), 0x0806, &good_arp[..20]),
            DropReason::Truncated,
            "truncated ARP",
        ),
        (
            eth(BCAST, MAC_A, Some(VLAN_A), 0x0806, &good_arp[..6]),
            DropReason::Truncated,
            "ARP fixed part",
        ),
        (
            {
                let mut a = good_arp.clone();
                a[4] = 8;
                eth(BCAST, MAC_A, Some(VLAN_A), 0x0806, &a)
            },
            DropReason::Malformed,
            "ARP hlen",
        ),
        (
            {
                let mut a = good_arp.clone();
                a[7] = 9;
                eth(BCAST, MAC_A, Some(VLAN_A), 0x0806, &a)
            },
            DropReason::Malformed,
            "ARP op",
        ),
        (
            eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &good_ip[..19]),
            DropReason::Truncated,
            "short IPv4",
        ),
        (
            {
                let mut p = good_ip.clone();
                p[0] = 0x65;
                eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &p)
            },
            DropReason::Malformed,
            "IPv4 version",
        ),
        (
            {
                let mut p = good_ip.clone();
                p[0] = 0x44;
                eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &p)
            },
            DropReason::Malformed,
            "IHL < 5",
        ),
        (
            {
                let mut p = good_ip.clone();
                p[0] = 0x4f;
                eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &p)
            },
            DropReason::Truncated,
            "IHL past the end",
        ),
        (
            {
                let mut p = good_ip.clone();
                p[3] = 200;
                eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &p)
            },
            DropReason::Truncated,
            "total length past the end",
        ),
        (
            {
                let mut p = good_ip.clone();
                p[2] = 0;
                p[3] = 10;
                eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &p)
            },
            DropReason::Malformed,
            "total length < header",
        ),
        (
            {
                let mut ip = Ip4::new(IP_A, IP_REMOTE, 17);
                ip.options = vec![7, 9, 0, 0];
                eth(
                    MAC_GW,
                    MAC_A,
                    Some(VLAN_A),
                    0x0800,
                    &ip.build(&udp(1, 2, b"")),
                )
            },
            DropReason::Malformed,
            "IPv4 option past the header",
        ),
        (
            {
                let mut ip = Ip4::new(IP_A, IP_REMOTE, 17);
                ip.options = vec![7, 1, 0, 0];
                eth(
                    MAC_GW,
                    MAC_A,
                    Some(VLAN_A),
                    0x0800,
                    &ip.build(&udp(1, 2, b"")),
                )
            },
            DropReason::Malformed,
            "IPv4 option length 1",
        ),
        (
            eth(
                MAC_GW,
                MAC_A,
                Some(VLAN_A),
                0x0800,
                &Ip4::new(IP_A, IP_REMOTE, 6).build(&tcp(1, 80, SYN)[..12]),
            ),
            DropReason::Truncated,
            "short TCP",
        ),
        (
            {
                let mut t = tcp(1, 80, SYN);
                t[12] = 0x40;
                eth(
                    MAC_GW,
                    MAC_A,
                    Some(VLAN_A),
                    0x0800,
                    &Ip4::new(IP_A, IP_REMOTE, 6).build(&t),
                )
            },
            DropReason::Malformed,
            "TCP data offset < 5",
        ),
        (
            {
                let mut t = tcp(1, 80, SYN);
                t[12] = 0xf0;
                eth(
                    MAC_GW,
                    MAC_A,
                    Some(VLAN_A),
                    0x0800,
                    &Ip4::new(IP_A, IP_REMOTE, 6).build(&t),
                )
            },
            DropReason::Truncated,
            "TCP options past the end",
        ),
        (
            eth(
                MAC_GW,
                MAC_A,
                Some(VLAN_A),
                0x0800,
                &Ip4::new(IP_A, IP_REMOTE, 17).build(&[0u8; 5]),
            ),
            DropReason::Truncated,
            "short UDP",
        ),
        (
            {
                let mut u = udp(1, 2, b"x");
                u[5] = 3;
                eth(
                    MAC_GW,
                    MAC_A,
                    Some(VLAN_A),
                    0x0800,
                    &Ip4::new(IP_A, IP_REMOTE, 17).build(&u),
                )
            },
            DropReason::Malformed,
            "UDP length < 8",
        ),
        (
            {
                let mut u = udp(1, 2, b"x");
                u[5] = 99;
                eth(
                    MAC_GW,
                    MAC_A,
                    Some(VLAN_A),
                    0x0800,
                    &Ip4::new(IP_A, IP_REMOTE, 17).build(&u),
                )
            },
            DropReason::Truncated,
            "UDP length past the end",
        ),
        (
            eth(
                MAC_GW,
                MAC_A,
                Some(VLAN_A),
                0x0800,
                &Ip4::new(IP_A, IP_REMOTE, 1).build(&[8, 0, 0]),
            ),
            DropReason::Truncated,
            "short ICMP",
        ),
        (
            eth(
                MAC_GW,
                MAC_A,
                Some(VLAN_A),
                0x86dd,
                &ipv6_packet(17, &udp(1, 2, b""))[..30],
            ),
            DropReason::Truncated,
            "short IPv6",
        ),
        (
            {
                let mut p = ipv6_packet(17, &udp(1, 2, b""));
                p[0] = 0x40;
                eth(MAC_GW, MAC_A, Some(VLAN_A), 0x86dd, &p)
            },
            DropReason::Malformed,
            "IPv6 version",
        ),
        (
            {
                let mut p = ipv6_packet(17, &udp(1, 2, b""));
                p[5] = 200;
                eth(MAC_GW, MAC_A, Some(VLAN_A), 0x86dd, &p)
            },
            DropReason::Truncated,
            "IPv6 payload length",
        ),
        (
            eth(
                MAC_GW,
                MAC_A,
                Some(VLAN_A),
                0x86dd,
                &ipv6_packet(0, &[17, 5, 0, 0]),
            ),
            DropReason::Truncated,
            "IPv6 extension header",
        ),
        (
            eth(
                MAC_GW,
                MAC_A,
                Some(VLAN_A),
                0x86dd,
                &ipv6_packet(58, &[135]),
            ),
            DropReason::Truncated,
            "short ICMPv6",
        ),
    ];
    for (frame, reason, what) in &cases {
        assert_eq!(t(&mut e, frame, &mut out), drop(*reason), "{what}");
    }
    // Even the IPv6 rule cannot make a malformed IPv6 packet pass; nothing was emitted.
    assert!(out.wire.is_empty() && out.guest.is_empty());
    // Frames that could be attributed were counted on A.
    assert!(e.container_counters(ContainerId(1)).unwrap().total_drops() >= 20);
    // RX malformed frames are unattributed.
    assert_eq!(
        e.filter(&rx(), &[0u8; 10], &mut out),
        drop(DropReason::Truncated)
    );
    assert_eq!(e.counters().unattributed.dropped(DropReason::Truncated), 1);
}

#[test]
fn an_unparseable_tagged_frame_is_counted_on_the_container_its_tag_names() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    // Priority bits set in the tag; the VLAN id is A's. The IPv4 header is cut short.
    let f = eth(MAC_GW, MAC_A, Some(0xa000 | VLAN_A), 0x0800, &[0x45, 0]);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::Truncated));
    let a = e.container_counters(ContainerId(1)).unwrap();
    assert_eq!(a.dropped(DropReason::Truncated), 1);
    // The same from an untagged frame whose descriptor carries the tag.
    let meta = FrameMeta {
        descriptor_vlan: Some(0xa000 | VLAN_A),
        ..tx()
    };
    let f = eth(MAC_GW, MAC_A, None, 0x0800, &[0x45, 0]);
    assert_eq!(e.filter(&meta, &f, &mut out), drop(DropReason::Truncated));
    let a = e.container_counters(ContainerId(1)).unwrap();
    assert_eq!(a.dropped(DropReason::Truncated), 2);
    assert_eq!(e.counters().unattributed.dropped(DropReason::Truncated), 0);
}

// ---------------------------------------------------------------- counters and events

#[test]
fn counters_and_policy_events_and_drop_samples() {
    let mut s = slots(8);
    let config = EngineConfig {
        drop_sample_every: 2,
        ..EngineConfig::default()
    };
    let mut e = engine_ab_with(&mut s, config);
    let mut out = Sink::default();
    let spoof = tcp_frame(Some(VLAN_A), MAC_EVIL, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    for _ in 0..4 {
        e.filter(&tx(), &spoof, &mut out);
    }
    let ok = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, 80, ACK);
    e.filter(&tx(), &ok, &mut out);
    let c = *e.container_counters(ContainerId(1)).unwrap();
    assert_eq!(c.dropped(DropReason::SpoofedMac), 4);
    assert_eq!(c.tx_passed, 1);
    assert_eq!(e.counters().total.dropped(DropReason::SpoofedMac), 4);
    assert_eq!(e.counters().total.tx_passed, 1);
    let kinds: Vec<_> = all_events(&e).into_iter().map(|e| e.kind).collect();
    assert!(matches!(
        kinds[0],
        EventKind::Policy {
            container: Some(ContainerId(1)),
            change: shoji_netfilter::PolicyChange::Registered
        }
    ));
    let samples = kinds
        .iter()
        .filter(|k| {
            matches!(
                k,
                EventKind::DropSample {
                    reason: DropReason::SpoofedMac,
                    ..
                }
            )
        })
        .count();
    assert_eq!(samples, 2);
    let final_counters = e.unregister(ContainerId(1)).unwrap();
    assert_eq!(final_counters, c);
    assert!(e.container_counters(ContainerId(1)).is_none());
    // A's VLAN is now unknown.
    assert_eq!(
        e.filter(&tx(), &ok, &mut out),
        drop(DropReason::UnknownVlan)
    );
}

#[test]
fn event_ring_overwrite_is_reported_and_frame_path_never_blocks() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let spoof = eth(
        BCAST,
        MAC_A,
        Some(VLAN_A),
        0x0806,
        &arp(2, MAC_A, IP_B, BCAST, IP_B),
    );
    for _ in 0..1000 {
        assert_eq!(
            e.filter(&tx(), &spoof, &mut out),
            drop(DropReason::SpoofedArp)
        );
    }
    assert!(e.events().overwritten() > 0);
    let blank = all_events(&e)[0];
    let mut buf = vec![blank; 4];
    let r = e.read_events(1, &mut buf);
    assert!(r.missed > 0);
    assert_eq!(buf[0].seq, 1 + r.missed);
}

#[test]
fn registration_replaces_rules_at_run_time() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 1, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    e.update(defaults(spec_a(), Action::Deny, Action::Deny))
        .unwrap();
    assert_eq!(
        e.filter(&tx(), &f, &mut out),
        drop(DropReason::PolicyDenied)
    );
    // Addresses can change too: A moves to 10.0.0.3.
    let mut moved = spec_a();
    moved.ipv4[0] = "10.0.0.3".parse().unwrap();
    e.update(moved).unwrap();
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::SpoofedIp));
    let f3 = tcp_frame(
        Some(VLAN_A),
        MAC_A,
        MAC_GW,
        "10.0.0.3".parse().unwrap(),
        IP_REMOTE,
        1,
        80,
        SYN,
    );
    assert_eq!(e.filter(&tx(), &f3, &mut out), Verdict::Pass);
    let _ = ContainerSpec::new(9, 9, MAC_EVIL, IP_GW);
    let _ = Subject::Anyone;
}

#[test]
fn container_membership_is_by_cgroup_or_network_namespace() {
    use shoji_shared::ContainerMembership;
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let t = |cgroup, netns| task(cgroup, netns, ExecContext::Task);
    assert_eq!(
        e.container_of(&t(Some(CGROUP_A), None)),
        Some(ContainerId(1))
    );
    assert_eq!(
        e.container_of(&t(None, Some(NETNS_B))),
        Some(ContainerId(2))
    );
    // Either one is enough, in any context (the agent check asks about any caller).
    assert_eq!(
        e.container_of(&t(Some(999), Some(NETNS_A))),
        Some(ContainerId(1))
    );
    let irq = task(Some(CGROUP_B), None, ExecContext::SoftIrq);
    assert_eq!(e.container_of(&irq), Some(ContainerId(2)));
    // The host's own task, and one with nothing known: no container.
    assert_eq!(e.container_of(&t(Some(999), Some(0xF000_0999))), None);
    assert_eq!(e.container_of(&t(None, None)), None);
    // Gone once unregistered.
    assert!(!e.none_registered());
    e.unregister(ContainerId(1)).unwrap();
    assert_eq!(e.container_of(&t(Some(CGROUP_A), Some(NETNS_A))), None);
    e.unregister(ContainerId(2)).unwrap();
    assert!(e.none_registered());
}

/// A first fragment decided for the wire, then later fragments addressed to another container's
/// MAC: they must not reach that container, whose ingress policy never saw the datagram.
#[test]
fn later_fragments_reach_only_the_first_fragments_receivers() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    // A admits nothing from B.
    let deny_b = Rule {
        remote: Ipv4Cidr::host(IP_B),
        ..Rule::any(Action::Deny, DirectionMatch::Ingress)
    };
    e.update(with_rules(spec_a(), &[deny_b])).unwrap();
    let mut out = Sink::default();
    let from_b = |dst_mac, ip: Vec<u8>| eth(dst_mac, MAC_B, Some(VLAN_B), 0x0800, &ip);
    let mut first = udp(1000, 80, &[0u8; 8]);
    first.truncate(16);
    // To the wire (the gateway's MAC): B's egress allows it.
    let f = from_b(MAC_GW, frag(IP_B, IP_A, 7, 0, true, &first));
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    assert_eq!((out.wire.len(), out.guest.len()), (1, 0));
    // The rest, addressed to A's MAC: dropped, A gets nothing.
    let later = from_b(MAC_A, frag(IP_B, IP_A, 7, 16, false, &[1u8; 8]));
    assert_eq!(
        e.filter(&tx(), &later, &mut out),
        drop(DropReason::BadFragment)
    );
    assert!(out.guest.is_empty(), "a later fragment reached A");
    assert_eq!(
        e.container_counters(ContainerId(2))
            .unwrap()
            .dropped(DropReason::BadFragment),
        1,
        "counted on the sender"
    );
    // The same later fragment to the gateway, as its first fragment went, passes.
    let later = from_b(MAC_GW, frag(IP_B, IP_A, 7, 24, false, &[2u8; 8]));
    assert_eq!(e.filter(&tx(), &later, &mut out), Verdict::Pass);
    assert_eq!((out.wire.len(), out.guest.len()), (2, 0));
    assert_eq!(e.container_counters(ContainerId(1)).unwrap().rx_passed, 0);
}

/// From the wire: a first fragment admitted to A, later fragments redirected to B's MAC.
#[test]
fn inbound_later_fragments_do_not_change_receiver() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    e.update(defaults(spec_b(), Action::Allow, Action::Deny))
        .unwrap();
    let mut out = Sink::default();
    let mut first = udp(1000, 80, &[0u8; 8]);
    first.truncate(16);
    let to = |mac, ip: Vec<u8>| eth(mac, MAC_GW, None, 0x0800, &ip);
    let f = to(MAC_A, frag(IP_REMOTE, IP_A, 9, 0, true, &first));
    assert_eq!(e.filter(&rx(), &f, &mut out), Verdict::Pass);
    assert_eq!(untag(&out.guest[0]).0, Some(VLAN_A));
    let later = to(MAC_B, frag(IP_REMOTE, IP_A, 9, 16, false, &[1u8; 8]));
    assert_eq!(
        e.filter(&rx(), &later, &mut out),
        drop(DropReason::BadFragment)
    );
    assert_eq!(out.guest.len(), 1, "B got a fragment its policy denies");
    let later = to(MAC_A, frag(IP_REMOTE, IP_A, 9, 24, false, &[1u8; 8]));
    assert_eq!(e.filter(&rx(), &later, &mut out), Verdict::Pass);
    assert_eq!(untag(&out.guest[1]).0, Some(VLAN_A));
}

/// A container registered after the first fragment, into the slot of the one that received it,
/// does not receive the later fragments.
#[test]
fn a_container_registered_since_the_first_fragment_is_not_its_receiver() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let mut first = udp(1000, 80, &[0u8; 8]);
    first.truncate(16);
    let to_a = |ip: Vec<u8>| eth(MAC_A, MAC_GW, None, 0x0800, &ip);
    let f = to_a(frag(IP_REMOTE, IP_A, 11, 0, true, &first));
    assert_eq!(e.filter(&rx(), &f, &mut out), Verdict::Pass);
    // A leaves; a new container with A's addresses takes its place (and slot).
    e.unregister(ContainerId(1)).unwrap();
    let mut newcomer = spec_a();
    newcomer.id = ContainerId(9);
    e.register(newcomer).unwrap();
    let later = to_a(frag(IP_REMOTE, IP_A, 11, 16, false, &[1u8; 8]));
    assert_eq!(
        e.filter(&rx(), &later, &mut out),
        drop(DropReason::BadFragment)
    );
    assert_eq!(out.guest.len(), 1);
}

/// One container flooding first fragments cannot make another's datagram an orphan.
#[test]
fn a_container_cannot_evict_anothers_fragmented_datagram() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let mut first = udp(1000, 80, &[0u8; 8]);
    first.truncate(16);
    let from = |mac, vlan, src, ident, off, more, p: &[u8]| {
        eth(
            MAC_GW,
            mac,
            Some(vlan),
            0x0800,
            &frag(src, IP_REMOTE, ident, off, more, p),
        )
    };
    let f = from(MAC_A, VLAN_A, IP_A, 1, 0, true, &first);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    for ident in 0..500u16 {
        let f = from(MAC_B, VLAN_B, IP_B, ident, 0, true, &first);
        assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    }
    let later = from(MAC_A, VLAN_A, IP_A, 1, 16, false, &[1u8; 8]);
    assert_eq!(e.filter(&tx(), &later, &mut out), Verdict::Pass);
}

/// The first fragment of a UDP datagram larger than one fragment: its UDP length counts the
/// bytes of the later fragments too. It is a valid first fragment, not a tiny or bad one, and
/// its datagram's later fragments follow it.
#[test]
fn a_first_fragment_whose_udp_length_spans_the_datagram_passes() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    // UDP header (length 24: 8 + 16 data bytes) and the first 8 data bytes; 8 more follow.
    let mut first = udp(40000, 7000, &[0u8; 16]);
    first.truncate(16);
    assert_eq!(u16::from_be_bytes([first[4], first[5]]), 24);
    let f = eth(
        MAC_A,
        MAC_B,
        Some(VLAN_B),
        0x0800,
        &frag(IP_B, IP_A, 0xd000, 0, true, &first),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    let later = eth(
        MAC_A,
        MAC_B,
        Some(VLAN_B),
        0x0800,
        &frag(IP_B, IP_A, 0xd000, 16, false, &[7u8; 8]),
    );
    assert_eq!(e.filter(&tx(), &later, &mut out), Verdict::Pass);
    assert_eq!(out.guest.len(), 2);
    // Unfragmented, the same UDP length over 8 data bytes is a truncated datagram.
    let lying = eth(
        MAC_A,
        MAC_B,
        Some(VLAN_B),
        0x0800,
        &Ip4::new(IP_B, IP_A, 17).build(&first),
    );
    assert_ne!(e.filter(&tx(), &lying, &mut out), Verdict::Pass);
}

// ---------------------------------------------------------------- first-hop guards

#[test]
fn a_container_cannot_answer_as_dhcp_server_or_router_the_host_can() {
    use shoji_netfilter::rules::ProtocolMatch;
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    // A may speak IPv6 (so the guards, not the IPv6 default, are what stops it).
    let mut allow6 = Rule::any(Action::Allow, DirectionMatch::Both);
    allow6.protocol = ProtocolMatch::Ipv6;
    e.update(with_rules(spec_a(), &[allow6])).unwrap();
    let mut out = Sink::default();
    let bcast = [0xff; 6];
    // DHCPv4: an answer from port 67 is refused, the client's request from 68 passes.
    let offer = udp_frame(
        Some(VLAN_A),
        MAC_A,
        bcast,
        IP_A,
        [255, 255, 255, 255].into(),
        67,
        68,
    );
    assert_eq!(
        e.filter(&tx(), &offer, &mut out),
        drop(DropReason::RogueDhcp)
    );
    let relay = udp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_GW, 67, 67);
    assert_eq!(
        e.filter(&tx(), &relay, &mut out),
        drop(DropReason::RogueDhcp)
    );
    let discover = udp_frame(
        Some(VLAN_A),
        MAC_A,
        bcast,
        [0, 0, 0, 0].into(),
        [255, 255, 255, 255].into(),
        68,
        67,
    );
    assert_eq!(e.filter(&tx(), &discover, &mut out), Verdict::Pass);
    // An ICMP redirect (type 5) is a router's message.
    let mut redirect = vec![5, 1, 0, 0];
    redirect.extend_from_slice(&[0; 32]);
    let ip = Ip4::new(IP_A, IP_REMOTE, 1).build(&redirect);
    let f = eth(MAC_GW, MAC_A, Some(VLAN_A), 0x0800, &ip);
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::RogueRouter));
    // IPv6: router advertisement and redirect refused, neighbour solicitation passes; DHCPv6
    // from the server port refused, from the client port passes.
    let icmp6 = |t: u8| {
        let mut m = vec![t, 0, 0, 0];
        m.extend_from_slice(&[0; 20]);
        eth(
            [0x33, 0x33, 0, 0, 0, 1],
            MAC_A,
            Some(VLAN_A),
            0x86dd,
            &ipv6_packet(58, &m),
        )
    };
    assert_eq!(
        e.filter(&tx(), &icmp6(134), &mut out),
        drop(DropReason::RogueRouter)
    );
    assert_eq!(
        e.filter(&tx(), &icmp6(137), &mut out),
        drop(DropReason::RogueRouter)
    );
    assert_eq!(e.filter(&tx(), &icmp6(135), &mut out), Verdict::Pass);
    assert_eq!(e.filter(&tx(), &icmp6(133), &mut out), Verdict::Pass);
    let udp6 = |sport: u16, dport: u16| {
        eth(
            [0x33, 0x33, 0, 1, 0, 2],
            MAC_A,
            Some(VLAN_A),
            0x86dd,
            &ipv6_packet(17, &udp(sport, dport, b"x")),
        )
    };
    assert_eq!(
        e.filter(&tx(), &udp6(547, 546), &mut out),
        drop(DropReason::RogueDhcp)
    );
    assert_eq!(e.filter(&tx(), &udp6(546, 547), &mut out), Verdict::Pass);
    // Counted on A, with spoof-style events naming A.
    let c = e.container_counters(ContainerId(1)).unwrap();
    assert_eq!(c.drops[DropReason::RogueDhcp.index()], 3);
    assert_eq!(c.drops[DropReason::RogueRouter.index()], 3);
    let guard_events = spoof_events(&e)
        .into_iter()
        .filter(|k| {
            matches!(
                k,
                EventKind::Spoof {
                    reason: DropReason::RogueDhcp | DropReason::RogueRouter,
                    sender: Some(ContainerId(1)),
                    ..
                }
            )
        })
        .count();
    assert_eq!(guard_events, 6);
    // The host is the network's own: its DHCP answers and router messages are not refused.
    let host_offer = udp_frame(
        None,
        MAC_HOST,
        bcast,
        IP_HOST,
        [255, 255, 255, 255].into(),
        67,
        68,
    );
    assert_eq!(e.filter(&tx(), &host_offer, &mut out), Verdict::Pass);
    let mut m = vec![134, 0, 0, 0];
    m.extend_from_slice(&[0; 20]);
    let host_ra = eth(
        [0x33, 0x33, 0, 0, 0, 1],
        MAC_HOST,
        None,
        0x86dd,
        &ipv6_packet(58, &m),
    );
    assert_eq!(e.filter(&tx(), &host_ra, &mut out), Verdict::Pass);
}

#[test]
fn an_ipv6_udp_header_cut_short_is_truncated() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = eth(
        MAC_GW,
        MAC_HOST,
        None,
        0x86dd,
        &ipv6_packet(17, &[0, 53, 0]),
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), drop(DropReason::Truncated));
}
