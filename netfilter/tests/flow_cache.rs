//! The TX flow cache changes nothing but the cost: an engine with it and one without, fed the
//! same frames, tasks, clock and policy changes, make the same decisions, emit the same bytes,
//! count the same and record the same events.

#![allow(clippy::too_many_arguments)]

mod common;

use common::*;
use proptest::prelude::*;
use shoji_netfilter::rules::{Action, DirectionMatch, PortRange, ProtocolMatch, Rule, Subject};
use shoji_netfilter::{Engine, EngineConfig, ScanConfig};
use shoji_shared::{
    ContainerId, Direction, DropReason, ExecContext, FrameMeta, TaskIdentity, Verdict,
};
use std::net::Ipv4Addr;

/// One step of a run.
#[derive(Debug, Clone)]
enum Op {
    /// A TX frame: its shape, the acting task, and a corruption.
    Frame {
        vlan: u8,
        src_mac: u8,
        dst_mac: u8,
        src_ip: u8,
        dst_ip: u8,
        udp: bool,
        flags: u8,
        dport: u16,
        ident: u16,
        ttl: u8,
        payload: u8,
        task: u8,
        corrupt: Option<(u8, u8)>,
        truncate: Option<u8>,
    },
    /// Time passes.
    Advance(u64),
    /// A's rules change (deny a port, or deny a user).
    UpdateA(u8),
    /// B leaves or comes back.
    ToggleB,
    /// The operator lifts A's scan block.
    UnblockA,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (
            // Mostly consistent senders, few destinations: flows repeat, so the cache is used.
            (
                0u8..4,
                prop_oneof![4 => Just(9u8), 1 => 0u8..4],
                prop_oneof![4 => Just(0u8), 1 => 0u8..4],
                prop_oneof![4 => Just(9u8), 1 => 0u8..3],
                prop_oneof![4 => 0u8..2, 1 => 0u8..5],
                any::<bool>(),
                0u8..4,
            ),
            (
                prop_oneof![4 => 0u16..3, 1 => 0u16..12],
                any::<u16>(),
                any::<u8>(),
                0u8..3,
                0u8..5,
            ),
            (prop::option::weighted(0.1, (0u8..60, any::<u8>())), prop::option::weighted(0.1, 0u8..70)),
        )
            .prop_map(
                |(
                    (vlan, src_mac, dst_mac, src_ip, dst_ip, udp, flags),
                    (dport, ident, ttl, payload, task),
                    (corrupt, truncate),
                )| Op::Frame {
                    vlan,
                    src_mac,
                    dst_mac,
                    src_ip,
                    dst_ip,
                    udp,
                    flags,
                    dport,
                    ident,
                    ttl,
                    payload,
                    task,
                    corrupt,
                    truncate,
                }
            ),
        2 => prop_oneof![Just(0u64), Just(100), Just(700), Just(3_000)].prop_map(Op::Advance),
        1 => (0u8..3).prop_map(Op::UpdateA),
        1 => Just(Op::ToggleB),
        1 => Just(Op::UnblockA),
    ]
}

fn config(flow_cache: bool) -> EngineConfig {
    EngineConfig {
        scan: ScanConfig {
            window: 1_000,
            port_threshold: 3,
            host_threshold: 3,
            block_for: 2_000,
            inbound_block_for: 2_000,
            ..ScanConfig::default()
        },
        flow_cache,
        ..EngineConfig::default()
    }
}

fn the_task(which: u8) -> Option<TaskIdentity> {
    match which {
        0 => None,
        1 => Some(task(Some(CGROUP_A), Some(NETNS_A), ExecContext::Task)),
        2 => Some(task(Some(CGROUP_B), Some(NETNS_B), ExecContext::Task)),
        3 => Some(task(Some(CGROUP_A), Some(NETNS_A), ExecContext::SoftIrq)),
        _ => Some(TaskIdentity {
            uid: Some(2000),
            ..task(Some(CGROUP_A), Some(NETNS_A), ExecContext::Task)
        }),
    }
}

fn frame_of(op: &Op) -> Vec<u8> {
    let Op::Frame {
        vlan,
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        udp: is_udp,
        flags,
        dport,
        ident,
        ttl,
        payload,
        corrupt,
        truncate,
        ..
    } = *op
    else {
        unreachable!()
    };
    let vlan_id = [Some(VLAN_A), Some(VLAN_B), None, Some(999)][vlan as usize];
    // 9: the sender's own addresses.
    let owner = match vlan {
        0 => 0,
        1 => 1,
        2 => 2,
        _ => 3,
    };
    let src_mac =
        [MAC_A, MAC_B, MAC_HOST, MAC_EVIL][if src_mac == 9 { owner } else { src_mac } as usize];
    let src_ip = if src_ip == 9 { owner.min(2) } else { src_ip };
    let dst_mac = [MAC_GW, MAC_A, MAC_B, BCAST][dst_mac as usize];
    let src = [IP_A, IP_B, IP_HOST][src_ip as usize];
    let dst = [IP_REMOTE, IP_GW, IP_A, IP_B, Ipv4Addr::new(192, 0, 2, 8)][dst_ip as usize];
    let dport = [53, 80, 9, 22, 443, 1, 2, 3, 4, 5, 6, 7][dport as usize];
    let flags = [SYN, ACK, SYN | ACK, 0x04 | ACK][flags as usize];
    let data = vec![0x5a; [0, 5, 300][payload as usize]];
    let l4 = if is_udp {
        udp(40000, dport, &data)
    } else {
        let mut t = tcp(40000, dport, flags);
        t.extend_from_slice(&data);
        t
    };
    let mut ip = Ip4::new(src, dst, if is_udp { 17 } else { 6 });
    ip.ident = ident;
    let mut ip = ip.build(&l4);
    ip[8] = ttl;
    let mut f = eth(dst_mac, src_mac, vlan_id, 0x0800, &ip);
    if let Some((at, value)) = corrupt {
        if let Some(b) = f.get_mut(at as usize) {
            *b = value;
        }
    }
    if let Some(len) = truncate {
        f.truncate(len as usize);
    }
    f
}

/// Everything observable about an engine besides its decisions and frames.
fn state(e: &Engine<'_>) -> String {
    format!(
        "{:?} {:?} {:?} {:?}",
        e.counters(),
        e.container_counters(ContainerId(1)),
        e.container_counters(ContainerId(2)),
        event_kinds(e)
    )
}

fn apply(e: &mut Engine<'_>, op: &Op, now: &mut u64, b_on: &mut bool, out: &mut Sink) -> String {
    match op {
        Op::Frame { task, .. } => {
            let t = the_task(*task);
            let meta = FrameMeta {
                direction: Direction::Tx,
                descriptor_vlan: None,
                task: t.as_ref(),
            };
            format!("{:?}", e.decide(&meta, &frame_of(op), out))
        }
        Op::Advance(dt) => {
            *now += dt;
            e.set_now(*now);
            String::new()
        }
        Op::UpdateA(k) => {
            let rules: Vec<Rule> = match k {
                0 => vec![],
                1 => vec![Rule {
                    protocol: ProtocolMatch::Udp,
                    dst_ports: PortRange::single(9),
                    ..Rule::any(Action::Deny, DirectionMatch::Egress)
                }],
                _ => vec![Rule {
                    subject: Subject::Uid(2000),
                    ..Rule::any(Action::Deny, DirectionMatch::Egress)
                }],
            };
            format!("{:?}", e.update(with_rules(spec_a(), &rules)))
        }
        Op::ToggleB => {
            *b_on = !*b_on;
            if *b_on {
                format!("{:?}", e.register(spec_b()))
            } else {
                format!("{:?}", e.unregister(ContainerId(2)).map(|_| ()))
            }
        }
        Op::UnblockA => format!("{}", e.unblock_container(ContainerId(1))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn cache_changes_nothing_but_the_cost(ops in prop::collection::vec(op(), 1..120)) {
        let (mut s1, mut s2) = (slots(4), slots(4));
        let mut cached = engine_ab_with(&mut s1, config(true));
        let mut full = engine_ab_with(&mut s2, config(false));
        let (mut now1, mut now2) = (0u64, 0u64);
        let (mut b1, mut b2) = (true, true);
        for (i, op) in ops.iter().enumerate() {
            let (mut o1, mut o2) = (Sink::default(), Sink::default());
            let r1 = apply(&mut cached, op, &mut now1, &mut b1, &mut o1);
            let r2 = apply(&mut full, op, &mut now2, &mut b2, &mut o2);
            prop_assert_eq!(&r1, &r2, "step {}: {:?}", i, op);
            prop_assert_eq!(&o1.wire, &o2.wire, "step {}: {:?}", i, op);
            prop_assert_eq!(&o1.guest, &o2.guest, "step {}: {:?}", i, op);
            prop_assert_eq!(state(&cached), state(&full), "step {}: {:?}", i, op);
        }
        prop_assert_eq!(full.flow_cache_stats().hits, 0);
    }
}

/// A flood of one flow is decided from the cache after its first frame; a policy change takes
/// effect on the very next frame.
#[test]
fn flood_hits_and_policy_change_takes_effect_at_once() {
    let mut s = slots(4);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = udp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 40000, 9);
    for _ in 0..100 {
        assert!(e.decide(&tx(), &f, &mut out).verdict == Verdict::Pass);
    }
    let st = e.flow_cache_stats();
    assert_eq!((st.hits, st.misses, st.inserts), (99, 1, 1));
    assert_eq!(out.wire.len(), 100);
    assert!(out.wire.iter().all(|w| untag(w).0.is_none()));
    e.update(with_rules(
        spec_a(),
        &[Rule {
            protocol: ProtocolMatch::Udp,
            dst_ports: PortRange::single(9),
            ..Rule::any(Action::Deny, DirectionMatch::Egress)
        }],
    ))
    .unwrap();
    assert_ne!(e.decide(&tx(), &f, &mut out).verdict, Verdict::Pass);
    assert_eq!(e.container_counters(ContainerId(1)).unwrap().tx_passed, 100);
}

/// Only a frame that passed unicast to the wire alone is cached: broadcasts (even those that
/// reach the wire only), relays to another container and drops are decided afresh every time.
#[test]
fn only_unicast_frames_passed_to_the_wire_are_cached() {
    let mut s = slots(4);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let broadcast = udp_frame(
        Some(VLAN_A),
        MAC_A,
        BCAST,
        IP_A,
        Ipv4Addr::new(10, 0, 0, 255),
        68,
        67,
    );
    let relay = udp_frame(Some(VLAN_A), MAC_A, MAC_B, IP_A, IP_B, 40000, 9);
    let spoofed = udp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_B, IP_REMOTE, 40000, 9);
    for _ in 0..3 {
        let d = e.decide(&tx(), &broadcast, &mut out);
        assert_eq!(d.verdict, Verdict::Pass);
        assert!(d.to_wire && d.to_guest == 0);
        let d = e.decide(&tx(), &relay, &mut out);
        assert!(d.verdict == Verdict::Pass && !d.to_wire && d.to_guest == 1);
        assert_ne!(e.decide(&tx(), &spoofed, &mut out).verdict, Verdict::Pass);
    }
    let st = e.flow_cache_stats();
    assert_eq!((st.hits, st.misses, st.inserts), (0, 9, 0));
}

/// The cache answers TX frames only: the same bytes arriving from the wire (a reflection) are
/// decided as received frames, never replayed to the wire as the sender's.
#[test]
fn a_received_frame_is_never_answered_from_the_tx_cache() {
    let mut s = slots(4);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let f = udp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 40000, 9);
    for _ in 0..2 {
        assert!(e.decide(&tx(), &f, &mut out).to_wire);
    }
    assert_eq!(e.flow_cache_stats().hits, 1);
    let d = e.decide(&rx(), &f, &mut out);
    assert_eq!(d.verdict, Verdict::Pass);
    assert!(!d.to_wire && d.to_guest == 1, "{d:?}");
    assert_eq!(e.flow_cache_stats().hits, 1);
    assert_eq!(out.wire.len(), 2);
    // A TX frame whose tag is in its descriptor is not answered from the cache either.
    let meta = FrameMeta {
        descriptor_vlan: Some(VLAN_A),
        ..tx()
    };
    let a = udp_frame(None, MAC_A, MAC_GW, IP_A, IP_REMOTE, 40000, 9);
    for _ in 0..2 {
        assert_eq!(e.decide(&meta, &a, &mut out).verdict, Verdict::Pass);
    }
    assert_eq!(e.flow_cache_stats().hits, 1);
}

/// A flow cached before its sender was blocked as a scanner is dropped like any other frame of
/// it; a probe cached in an earlier scan window is recorded again in the next one.
#[test]
fn scan_blocks_and_windows_apply_to_cached_flows() {
    let mut s = slots(4);
    let mut e = engine_ab_with(&mut s, config(true));
    let mut out = Sink::default();
    let to = |port| udp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_REMOTE, 40000, port);
    // An established TCP flow (no probe) and a UDP flow, both cached.
    let ack = tcp_frame(
        Some(VLAN_A),
        MAC_A,
        MAC_GW,
        IP_A,
        IP_REMOTE,
        40001,
        443,
        ACK,
    );
    for _ in 0..3 {
        assert_eq!(e.decide(&tx(), &ack, &mut out).verdict, Verdict::Pass);
        assert_eq!(e.decide(&tx(), &to(1), &mut out).verdict, Verdict::Pass);
    }
    // The TCP entry made before the probe window opened is stale once, then hits.
    assert_eq!(e.flow_cache_stats().hits, 3);
    // Two more ports in the same window: a scan (threshold 3); A is blocked.
    assert_eq!(e.decide(&tx(), &to(2), &mut out).verdict, Verdict::Pass);
    assert_ne!(e.decide(&tx(), &to(3), &mut out).verdict, Verdict::Pass);
    assert_ne!(e.decide(&tx(), &ack, &mut out).verdict, Verdict::Pass);
    assert_ne!(e.decide(&tx(), &to(1), &mut out).verdict, Verdict::Pass);
    // The block ends; port 1 opens a new window, cached or not, and counts in it.
    e.set_now(10_000);
    e.unblock_container(ContainerId(1));
    assert_eq!(e.decide(&tx(), &to(1), &mut out).verdict, Verdict::Pass);
    assert_eq!(e.decide(&tx(), &to(1), &mut out).verdict, Verdict::Pass);
    e.set_now(12_000);
    // Window over: port 1 again (a hit before), then two new ports make a scan in this window.
    assert_eq!(e.decide(&tx(), &to(1), &mut out).verdict, Verdict::Pass);
    assert_eq!(e.decide(&tx(), &to(4), &mut out).verdict, Verdict::Pass);
    assert_ne!(e.decide(&tx(), &to(5), &mut out).verdict, Verdict::Pass);

    // B's TCP flow is cached while no probe window is open; B's scan blocks it too.
    let b_ack = tcp_frame(
        Some(VLAN_B),
        MAC_B,
        MAC_GW,
        IP_B,
        IP_REMOTE,
        40001,
        443,
        ACK,
    );
    for _ in 0..2 {
        assert_eq!(e.decide(&tx(), &b_ack, &mut out).verdict, Verdict::Pass);
    }
    for port in 1..=3 {
        let probe = udp_frame(Some(VLAN_B), MAC_B, MAC_GW, IP_B, IP_REMOTE, 40000, port);
        e.decide(&tx(), &probe, &mut out);
    }
    assert_eq!(
        e.decide(&tx(), &b_ack, &mut out).verdict,
        Verdict::Drop(DropReason::PortScanBlocked)
    );
}
