//! Per-frame decision cost for a realistic mix (ARP, TCP SYN, established TCP, UDP, IPv6, and
//! inbound TCP) at 1, 64 and 1,024 registered containers with 32 rules each, and at 1,024
//! containers once more with the TX flow cache off (every frame decided the full way).
//!
//! Run: `cargo bench -p shoji-netfilter --bench decide`. For instruction counts per decision see
//! [`profile`].

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use shoji_netfilter::rules::{
    Action, DirectionMatch, Ipv4Cidr, PortRange, ProtocolMatch, Rule, RuleFlags, Subject,
};
use shoji_netfilter::{ContainerSlot, ContainerSpec, Engine, EngineConfig, MacAddr};
use shoji_shared::{Direction, FrameMeta, FrameSink};

struct NullSink;
impl FrameSink for NullSink {
    fn to_wire(&mut self, frame: &[u8]) {
        black_box(frame);
    }
    fn to_wire_joined(&mut self, head: &[u8], tail: &[u8]) {
        black_box((head, tail));
    }
    fn to_guest(&mut self, frame: &[u8]) {
        black_box(frame);
    }
    fn to_guest_joined(&mut self, parts: [&[u8]; 3]) {
        black_box(parts);
    }
}

const GW_MAC: MacAddr = [2, 0, 0, 0, 0xff, 0xfe];

fn mac_of(n: u32) -> MacAddr {
    [2, 0x42, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8]
}
fn ip_of(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 64 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}
fn vlan_of(n: u32) -> u16 {
    (n + 1) as u16
}

/// 32 rules: 8 deny prefixes, 8 per-port allows, per-user/app denies, ingress rules, a few
/// broad allows near the end (so typical frames walk most of the list).
fn rules() -> Vec<Rule> {
    let mut r = Vec::new();
    for i in 0..8u8 {
        r.push(Rule {
            remote: Ipv4Cidr::new(Ipv4Addr::new(172, 16 + i, 0, 0), 16).unwrap(),
            ..Rule::any(Action::Deny, DirectionMatch::Egress)
        });
    }
    for i in 0..8u16 {
        r.push(Rule {
            protocol: ProtocolMatch::Tcp,
            dst_ports: PortRange::single(8000 + i),
            remote: Ipv4Cidr::new(Ipv4Addr::new(198, 51, 100, 0), 24).unwrap(),
            ..Rule::any(Action::Allow, DirectionMatch::Egress)
        });
    }
    for i in 0..4u32 {
        r.push(Rule {
            subject: Subject::Uid(2000 + i),
            ..Rule::any(Action::Deny, DirectionMatch::Egress)
        });
        r.push(Rule {
            subject: Subject::Executable(9000 + u64::from(i)),
            ..Rule::any(Action::Deny, DirectionMatch::Egress)
        });
    }
    for i in 0..4u16 {
        r.push(Rule {
            protocol: ProtocolMatch::Tcp,
            dst_ports: PortRange::single(22 + i),
            flags: RuleFlags::TCP_NEW_ONLY,
            ..Rule::any(Action::Deny, DirectionMatch::Ingress)
        });
    }
    r.push(Rule {
        protocol: ProtocolMatch::Udp,
        dst_ports: PortRange::single(53),
        ..Rule::any(Action::Allow, DirectionMatch::Egress)
    });
    r.push(Rule {
        protocol: ProtocolMatch::Tcp,
        dst_ports: PortRange {
            first: 443,
            last: 443,
        },
        ..Rule::any(Action::Allow, DirectionMatch::Egress)
    });
    r.push(Rule {
        protocol: ProtocolMatch::Arp,
        ..Rule::any(Action::Allow, DirectionMatch::Both)
    });
    r.push(Rule {
        protocol: ProtocolMatch::Icmp,
        ..Rule::any(Action::Allow, DirectionMatch::Both)
    });
    assert_eq!(r.len(), 32);
    r
}

fn spec(n: u32, rules: &[Rule]) -> ContainerSpec {
    let mut s = ContainerSpec::new(n, vlan_of(n), mac_of(n), ip_of(n));
    s.cgroup_id = Some(100_000 + u64::from(n));
    s.netns_id = Some(200_000 + n);
    for r in rules {
        s.rules.push(*r).unwrap();
    }
    s
}

fn eth(dst: MacAddr, src: MacAddr, vlan: Option<u16>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0, (v >> 8) as u8, v as u8]);
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = 20 + l4.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(l4);
    p
}

fn tcp(sport: u16, dport: u16, flags: u8, data: usize) -> Vec<u8> {
    let mut t = vec![0u8; 20 + data];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t
}

fn udp(sport: u16, dport: u16, data: usize) -> Vec<u8> {
    let mut u = vec![0u8; 8 + data];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + data) as u16).to_be_bytes());
    u
}

/// The mix for container `n`: (direction, frame).
fn mix(n: u32) -> Vec<(Direction, Vec<u8>)> {
    let (mac, ip, vlan) = (mac_of(n), ip_of(n), Some(vlan_of(n)));
    let remote = Ipv4Addr::new(203, 0, 113, 10);
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&ip.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&Ipv4Addr::new(10, 255, 255, 254).octets());
    let mut ipv6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    ipv6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ipv6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    ipv6.extend_from_slice(&udp(1000, 53, 0));
    vec![
        (Direction::Tx, eth([0xff; 6], mac, vlan, 0x0806, &arp)),
        (
            Direction::Tx,
            eth(
                GW_MAC,
                mac,
                vlan,
                0x0800,
                &ipv4(ip, remote, 6, &tcp(40000, 443, 0x02, 0)),
            ),
        ),
        (
            Direction::Tx,
            eth(
                GW_MAC,
                mac,
                vlan,
                0x0800,
                &ipv4(ip, remote, 6, &tcp(40000, 443, 0x18, 1200)),
            ),
        ),
        (
            Direction::Tx,
            eth(
                GW_MAC,
                mac,
                vlan,
                0x0800,
                &ipv4(ip, remote, 17, &udp(5000, 53, 40)),
            ),
        ),
        (Direction::Tx, eth(GW_MAC, mac, vlan, 0x86dd, &ipv6)),
        (
            Direction::Rx,
            eth(
                mac,
                GW_MAC,
                None,
                0x0800,
                &ipv4(remote, ip, 6, &tcp(443, 40000, 0x10, 1200)),
            ),
        ),
    ]
}

/// A registry of `count` containers (leaked: the engine borrows its slots for the whole run)
/// and the frames to decide, interleaved so consecutive frames differ in kind and container.
fn setup(count: u32, flow_cache: bool) -> (Engine<'static>, Vec<(Direction, Vec<u8>)>) {
    let rules = rules();
    let slots: &'static mut [ContainerSlot] = Vec::leak(vec![ContainerSlot::EMPTY; count as usize]);
    let config = EngineConfig {
        flow_cache,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(slots, config);
    for n in 0..count {
        engine.register(spec(n, &rules)).unwrap();
    }
    // Frames from up to 256 containers spread over the registry, interleaved.
    let step = (count / 256).max(1);
    let senders: Vec<u32> = (0..count).step_by(step as usize).collect();
    let per: Vec<Vec<(Direction, Vec<u8>)>> = senders.iter().map(|&n| mix(n)).collect();
    let mut frames = Vec::new();
    for kind in 0..6 {
        for m in &per {
            frames.push(m[kind].clone());
        }
    }
    // Interleave kinds so consecutive frames differ in kind and container.
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.sort_by_key(|&i| (i * 2654435761usize) % frames.len());
    let frames = order.into_iter().map(|i| frames[i].clone()).collect();
    (engine, frames)
}

/// Decide frame `i` of `frames`; returns the next index.
#[inline(always)]
fn decide_one(
    engine: &mut Engine<'_>,
    frames: &[(Direction, Vec<u8>)],
    i: usize,
    sink: &mut NullSink,
) -> usize {
    let (direction, frame) = &frames[i];
    let meta = FrameMeta {
        direction: *direction,
        descriptor_vlan: None,
        task: None,
    };
    black_box(engine.decide(&meta, black_box(frame), sink));
    if i + 1 == frames.len() {
        0
    } else {
        i + 1
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_mix");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(50);
    for (count, flow_cache) in [(1u32, true), (64, true), (1024, true), (1024, false)] {
        let (mut engine, frames) = setup(count, flow_cache);
        group.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        let mut sink = NullSink;
        let name = match flow_cache {
            true => format!("{count}_containers_32_rules"),
            false => format!("{count}_containers_32_rules_no_flow_cache"),
        };
        group.bench_function(name, |b| {
            b.iter(|| i = decide_one(&mut engine, &frames, i, &mut sink))
        });
    }
    group.finish();
}

/// The decisions alone, for instruction counters: `decide_loop` is what callgrind's
/// `--toggle-collect` names.
#[inline(never)]
fn decide_loop(engine: &mut Engine<'_>, frames: &[(Direction, Vec<u8>)], decisions: u64) {
    let mut sink = NullSink;
    let mut i = 0;
    for _ in 0..decisions {
        i = decide_one(engine, frames, i, &mut sink);
    }
}

/// `SHOJI_DECIDE_PROFILE=<containers>:<decisions>` runs one warm-up pass over the frames, then
/// `decide_loop` for that many decisions, instead of criterion. For example:
///
/// ```text
/// SHOJI_DECIDE_PROFILE=1024:200000 valgrind --tool=callgrind --toggle-collect='*decide_loop*' \
///     target/release/deps/decide-<hash> --bench     # "Collected" / 200000 = Ir per decision
/// ```
///
/// (see `docs/policy.md`, Performance).
fn profile(spec: &str) {
    let (count, decisions) = spec
        .split_once(':')
        .and_then(|(c, d)| Some((c.parse::<u32>().ok()?, d.parse::<u64>().ok()?)))
        .expect("SHOJI_DECIDE_PROFILE=<containers>:<decisions>");
    // SHOJI_DECIDE_FLOW_CACHE=0 decides every frame the full way.
    let flow_cache = std::env::var("SHOJI_DECIDE_FLOW_CACHE").map_or(true, |v| v != "0");
    let (mut engine, mut frames) = setup(count, flow_cache);
    // SHOJI_DECIDE_ADMIN=<n> adds n administrator deny rules for everyone that match no frame
    // of the mix (TCP to port 1, each from another uid): every frame is then judged by them.
    if let Ok(n) = std::env::var("SHOJI_DECIDE_ADMIN") {
        let n: u32 = n.parse().expect("SHOJI_DECIDE_ADMIN=<rules>");
        for uid in 0..n {
            let form = format!("protocol=tcp&dst_port=1&uid={}", 50_000 + uid);
            let spec = shoji_netfilter::AdminSpec::parse_form(form.as_bytes()).expect("rule");
            engine.add_admin_rule(spec).expect("room for the rule");
        }
    }
    // SHOJI_DECIDE_KIND=<0..5> keeps one kind of the mix (3: a container's UDP datagram to the
    // wire, like the emulator's flood).
    if let Ok(kind) = std::env::var("SHOJI_DECIDE_KIND") {
        let kind: usize = kind.parse().expect("SHOJI_DECIDE_KIND=<0..5>");
        let wanted = mix(0)[kind].1.len();
        frames.retain(|(_, f)| f.len() == wanted);
    }
    let mut sink = NullSink;
    let mut i = 0;
    for _ in 0..frames.len() {
        i = decide_one(&mut engine, &frames, i, &mut sink);
    }
    decide_loop(&mut engine, &frames, decisions);
    let stats = engine.flow_cache_stats();
    println!(
        "{count} containers: {decisions} decisions over {} frames; flow cache {} hits, {} misses",
        frames.len(),
        stats.hits,
        stats.misses
    );
}

criterion_group!(benches, bench);

fn main() {
    match std::env::var("SHOJI_DECIDE_PROFILE") {
        Ok(spec) => profile(&spec),
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
