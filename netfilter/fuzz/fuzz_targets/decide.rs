//! Fuzz the frame-decision entry point with sequences of frames (so fragment, scan and
//! event state is exercised), and the registration decoder with the same bytes.
//!
//! Input: repeated records `[control: u8][len: u8][frame: len bytes]`. Control bits: 0 = RX,
//! 1 = descriptor VLAN, 2 = task identity present, 3 = trusted context, 4..7 = time step.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use shoji_netfilter::rules::{Action, DirectionMatch, PortRange, ProtocolMatch, Rule, Subject};
use shoji_netfilter::{encoding, ContainerSlot, ContainerSpec, Engine, EngineConfig, HostPolicy};
use shoji_shared::{Direction, ExecContext, FrameFilter, FrameMeta, FrameSink, TaskIdentity, Verdict};

struct Counting(usize);

impl FrameSink for Counting {
    fn to_wire(&mut self, frame: &[u8]) {
        assert!(frame.len() <= shoji_netfilter::parse::FRAME_BUFFER_LEN);
        self.0 += 1;
    }
    fn to_wire_joined(&mut self, head: &[u8], tail: &[u8]) {
        self.to_wire(&[head, tail].concat());
    }
    fn to_guest(&mut self, frame: &[u8]) {
        assert!(frame.len() <= shoji_netfilter::parse::FRAME_BUFFER_LEN);
        self.0 += 1;
    }
    fn to_guest_joined(&mut self, parts: [&[u8]; 3]) {
        self.to_guest(&parts.concat());
    }
}

fn container(n: u8) -> ContainerSpec {
    let mut s = ContainerSpec::new(u32::from(n), 100 + u16::from(n), [2, 0, 0, 0, 0, n], Ipv4Addr::new(10, 0, 0, n));
    s.cgroup_id = Some(1000 + u64::from(n));
    s.netns_id = Some(2000 + u32::from(n));
    let rules = [
        Rule { protocol: ProtocolMatch::Tcp, dst_ports: PortRange { first: 1, last: 1024 }, ..Rule::any(Action::Allow, DirectionMatch::Egress) },
        Rule { protocol: ProtocolMatch::Udp, subject: Subject::Uid(0), ..Rule::any(Action::Deny, DirectionMatch::Both) },
        Rule { protocol: ProtocolMatch::Ipv6, ..Rule::any(Action::Allow, DirectionMatch::Both) },
    ];
    for r in rules.iter().take(usize::from(n % 4)) {
        s.rules.push(*r).unwrap();
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let _ = encoding::decode(data);
    let mut slots = vec![ContainerSlot::EMPTY; 4];
    let mut config = EngineConfig::default();
    config.scan.window = 1_000;
    config.scan.port_threshold = 4;
    config.scan.host_threshold = 4;
    config.drop_sample_every = 3;
    if data.first().is_some_and(|b| b & 1 != 0) {
        config.broadcast = shoji_netfilter::BroadcastScope::Everyone;
    }
    let mut engine = Engine::new(&mut slots, config);
    for n in 1..=3 {
        engine.register(container(n)).unwrap();
    }
    let mut host = HostPolicy::default();
    host.macs.push([2, 0, 0, 0, 0, 0x10]).unwrap();
    host.ipv4.push(Ipv4Addr::new(10, 0, 0, 16)).unwrap();
    engine.set_host_policy(host).unwrap();

    let mut now = 0u64;
    let mut rest = data;
    while rest.len() >= 2 {
        let control = rest[0];
        let len = usize::from(rest[1]).min(rest.len() - 2);
        let frame = &rest[2..2 + len];
        rest = &rest[2 + len..];
        now += u64::from(control >> 4) * 100;
        engine.set_now(now);
        let task = TaskIdentity {
            context: if control & 8 != 0 { ExecContext::Task } else { ExecContext::SoftIrq },
            cgroup_id: Some(1000 + u64::from(control & 3)),
            netns_id: Some(2000 + u32::from(control >> 6)),
            uid: Some(0),
            ..TaskIdentity::default()
        };
        let meta = FrameMeta {
            direction: if control & 1 != 0 { Direction::Rx } else { Direction::Tx },
            descriptor_vlan: if control & 2 != 0 { Some(101) } else { None },
            task: if control & 4 != 0 { Some(&task) } else { None },
        };
        let mut out = Counting(0);
        let verdict = engine.filter(&meta, frame, &mut out);
        assert_eq!(verdict == Verdict::Pass, out.0 > 0);
    }
    // A frame longer than the records allow exercises the oversize path.
    if data.len() > shoji_netfilter::MAX_FRAME {
        let mut out = Counting(0);
        let meta = FrameMeta { direction: Direction::Tx, descriptor_vlan: None, task: None };
        assert_eq!(engine.filter(&meta, data, &mut out), Verdict::Drop(shoji_shared::DropReason::Oversize));
    }
});
