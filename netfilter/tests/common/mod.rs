//! Frame builders and fixtures shared by the integration tests.
#![allow(dead_code, clippy::too_many_arguments)]

use std::net::Ipv4Addr;
use std::vec::Vec;

use shoji_netfilter::rules::{Action, Rule};
use shoji_netfilter::{ContainerSlot, ContainerSpec, Engine, EngineConfig, MacAddr};
use shoji_shared::{Direction, ExecContext, FrameMeta, FrameSink, TaskIdentity};

pub const MAC_A: MacAddr = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_B: MacAddr = [0x02, 0, 0, 0, 0, 0x02];
pub const MAC_HOST: MacAddr = [0x02, 0, 0, 0, 0, 0x10];
pub const MAC_GW: MacAddr = [0x02, 0, 0, 0, 0, 0xfe];
pub const MAC_EVIL: MacAddr = [0x02, 0xee, 0xee, 0xee, 0xee, 0xee];
pub const BCAST: MacAddr = [0xff; 6];
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const IP_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 16);
pub const IP_GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const IP_REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
pub const VLAN_A: u16 = 101;
pub const VLAN_B: u16 = 102;
pub const CGROUP_A: u64 = 1001;
pub const CGROUP_B: u64 = 1002;
pub const NETNS_A: u32 = 2001;
pub const NETNS_B: u32 = 2002;

/// Collects what the engine emits.
#[derive(Default, Debug)]
pub struct Sink {
    pub wire: Vec<Vec<u8>>,
    pub guest: Vec<Vec<u8>>,
    /// How many of the wire frames came as two joined pieces (`to_wire_joined`).
    pub joined: usize,
}

impl FrameSink for Sink {
    fn to_wire(&mut self, frame: &[u8]) {
        self.wire.push(frame.to_vec());
    }
    fn to_wire_joined(&mut self, head: &[u8], tail: &[u8]) {
        self.joined += 1;
        self.wire.push([head, tail].concat());
    }
    fn to_guest(&mut self, frame: &[u8]) {
        self.guest.push(frame.to_vec());
    }
    fn to_guest_joined(&mut self, parts: [&[u8]; 3]) {
        self.guest.push(parts.concat());
    }
}

pub fn slots(n: usize) -> Vec<ContainerSlot> {
    vec![ContainerSlot::EMPTY; n]
}

pub fn spec_a() -> ContainerSpec {
    let mut s = ContainerSpec::new(1, VLAN_A, MAC_A, IP_A);
    s.cgroup_id = Some(CGROUP_A);
    s.netns_id = Some(NETNS_A);
    s
}

pub fn spec_b() -> ContainerSpec {
    let mut s = ContainerSpec::new(2, VLAN_B, MAC_B, IP_B);
    s.cgroup_id = Some(CGROUP_B);
    s.netns_id = Some(NETNS_B);
    s
}

/// An engine with containers A and B registered (allow-all defaults). Boxed: an engine is about
/// half a MiB, and a test compares two of them on one thread's stack.
pub fn engine_ab(slots: &mut [ContainerSlot]) -> Box<Engine<'_>> {
    engine_ab_with(slots, EngineConfig::default())
}

pub fn engine_ab_with(slots: &mut [ContainerSlot], config: EngineConfig) -> Box<Engine<'_>> {
    let mut e = Box::new(Engine::new(slots, config));
    e.register(spec_a()).unwrap();
    e.register(spec_b()).unwrap();
    e
}

pub fn with_rules(mut spec: ContainerSpec, rules: &[Rule]) -> ContainerSpec {
    spec.rules.clear();
    for r in rules {
        spec.rules.push(*r).unwrap();
    }
    spec
}

pub fn defaults(mut spec: ContainerSpec, egress: Action, ingress: Action) -> ContainerSpec {
    spec.default_egress = egress;
    spec.default_ingress = ingress;
    spec
}

pub fn tx() -> FrameMeta<'static> {
    FrameMeta {
        direction: Direction::Tx,
        descriptor_vlan: None,
        task: None,
    }
}

pub fn rx() -> FrameMeta<'static> {
    FrameMeta {
        direction: Direction::Rx,
        descriptor_vlan: None,
        task: None,
    }
}

pub fn task(cgroup: Option<u64>, netns: Option<u32>, context: ExecContext) -> TaskIdentity {
    TaskIdentity {
        task: 0xffff_8880_0000_1000,
        context,
        pid: Some(4242),
        tgid: Some(4242),
        uid: Some(1000),
        euid: Some(1000),
        netns_id: netns,
        cgroup_id: cgroup,
        exe_inode: Some(777),
        comm: Some(*b"curl\0\0\0\0\0\0\0\0\0\0\0\0"),
        ..TaskIdentity::default()
    }
}

pub fn eth(
    dst: MacAddr,
    src: MacAddr,
    vlan: Option<u16>,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn arp(op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa.octets());
    p
}

/// ARP request from `sha`/`spa` for `tpa`, broadcast, with `vlan`.
pub fn arp_request(vlan: Option<u16>, sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    eth(BCAST, sha, vlan, 0x0806, &arp(1, sha, spa, [0; 6], tpa))
}

pub struct Ip4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ident: u16,
    pub frag_offset: u16,
    pub more: bool,
    pub options: Vec<u8>,
}

impl Ip4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ip4 {
        Ip4 {
            src,
            dst,
            proto,
            ident: 0x1234,
            frag_offset: 0,
            more: false,
            options: Vec::new(),
        }
    }
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let hl = 20 + self.options.len();
        assert_eq!(hl & 3, 0);
        let total = hl + payload.len();
        let mut p = vec![0x40 | (hl / 4) as u8, 0];
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&self.ident.to_be_bytes());
        let flags = (self.frag_offset / 8) | if self.more { 0x2000 } else { 0 };
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&[64, self.proto, 0, 0]);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&self.options);
        p.extend_from_slice(payload);
        p
    }
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

pub fn icmp_echo() -> Vec<u8> {
    vec![8, 0, 0, 0, 0, 1, 0, 1]
}

/// An Ethernet frame carrying IPv4/TCP.
pub fn tcp_frame(
    vlan: Option<u16>,
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let ip = Ip4::new(src, dst, 6).build(&tcp(sport, dport, flags));
    eth(dst_mac, src_mac, vlan, 0x0800, &ip)
}

/// An Ethernet frame carrying IPv4/UDP.
pub fn udp_frame(
    vlan: Option<u16>,
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let ip = Ip4::new(src, dst, 17).build(&udp(sport, dport, b"hello"));
    eth(dst_mac, src_mac, vlan, 0x0800, &ip)
}

pub fn ipv6_packet(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.push(next);
    p.push(255);
    let mut src = [0u8; 16];
    src[0] = 0xfe;
    src[1] = 0x80;
    src[15] = 1;
    let mut dst = [0u8; 16];
    dst[0] = 0xff;
    dst[1] = 0x02;
    dst[15] = 1;
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// An NDP neighbour solicitation (ICMPv6 type 135).
pub fn ndp_frame(vlan: Option<u16>, src_mac: MacAddr) -> Vec<u8> {
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&[0u8; 16]);
    eth(
        [0x33, 0x33, 0xff, 0, 0, 1],
        src_mac,
        vlan,
        0x86dd,
        &ipv6_packet(58, &icmp),
    )
}

/// An IPv6/UDP frame (unicast to `dst_mac`).
pub fn ipv6_udp_frame(vlan: Option<u16>, src_mac: MacAddr, dst_mac: MacAddr) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        vlan,
        0x86dd,
        &ipv6_packet(17, &udp(1000, 53, b"q")),
    )
}

/// Strip an 802.1Q tag, returning (vid, untagged frame).
pub fn untag(frame: &[u8]) -> (Option<u16>, Vec<u8>) {
    if frame.len() >= 18 && frame[12] == 0x81 && frame[13] == 0x00 {
        let vid = u16::from_be_bytes([frame[14], frame[15]]) & 0xfff;
        let mut f = frame[..12].to_vec();
        f.extend_from_slice(&frame[16..]);
        (Some(vid), f)
    } else {
        (None, frame.to_vec())
    }
}

/// Every event the engine holds (up to 1,024), oldest first.
pub fn all_events(e: &shoji_netfilter::Engine<'_>) -> Vec<shoji_netfilter::Event> {
    let blank = shoji_netfilter::Event {
        seq: 0,
        time: 0,
        kind: shoji_netfilter::EventKind::Policy {
            container: None,
            change: shoji_netfilter::PolicyChange::Config,
        },
    };
    let mut buf = vec![blank; 1024];
    let r = e.read_events(1, &mut buf);
    buf.truncate(r.copied);
    buf
}

/// The kinds of [`all_events`].
pub fn event_kinds(e: &shoji_netfilter::Engine<'_>) -> Vec<shoji_netfilter::EventKind> {
    all_events(e).into_iter().map(|ev| ev.kind).collect()
}
