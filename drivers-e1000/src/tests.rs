//! Host tests: the engine between a simulated guest driver and a simulated 82540.

use crate::desc::{cmd, popts, rx_sta, tucmd, RxWriteBack};
use crate::engine::{Buffers, Config, Env, E1000};
use crate::offload::crc32;
use crate::regs::{self, Ctrl, Int, Rctl, Tctl};
use crate::sim::{GuestRam, SimDma, SimNic};
use shoji_shared::{
    Direction, DropReason, FrameFilter, FrameMeta, FrameSink, GuestMemory, TaskIdentity, Verdict,
};
use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};
use std::boxed::Box;
use std::vec;
use std::vec::Vec;

pub(crate) const RAM: usize = 8 << 20;
pub(crate) const HV: (u64, u64) = (0x70_0000, 0x78_0000);
const TX_RING: u64 = 0x1_0000;
const RX_RING: u64 = 0x2_0000;
const TX_BUFS: u64 = 0x10_0000;
const RX_BUFS: u64 = 0x40_0000;
const DMA_PHYS: u64 = 0x1_0000_0000;

/// What the recording filter does with frames.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Pass,
    DropAll,
    /// TX frames go to the wire and are also relayed into the guest.
    Hairpin,
    /// TX frames go to the wire twice without their 802.1Q tag, as joined pieces.
    UntagTwice,
    /// RX frames go to the guest in three pieces, cut at bytes 5 and 13.
    SplitRx,
    /// RX frames go to the guest with this 802.1Q VLAN id inserted, as joined pieces.
    TagRx(u16),
}

/// What the filter saw: direction, descriptor VLAN, task pid, frame.
type Seen = (Direction, Option<u16>, Option<u32>, Vec<u8>);

pub(crate) struct Recorder {
    pub mode: Mode,
    pub seen: Vec<Seen>,
}

impl FrameFilter for Recorder {
    fn filter(&mut self, meta: &FrameMeta<'_>, frame: &[u8], out: &mut dyn FrameSink) -> Verdict {
        self.seen.push((
            meta.direction,
            meta.descriptor_vlan,
            meta.task.and_then(|t| t.pid),
            frame.to_vec(),
        ));
        match (self.mode, meta.direction) {
            (Mode::DropAll, _) => return Verdict::Drop(DropReason::PolicyDenied),
            (Mode::UntagTwice, Direction::Tx) => {
                for _ in 0..2 {
                    out.to_wire_joined(&frame[..12], &frame[16..]);
                }
            }
            (_, Direction::Tx) => {
                out.to_wire(frame);
                if self.mode == Mode::Hairpin {
                    out.to_guest(frame);
                }
            }
            (Mode::SplitRx, Direction::Rx) => {
                out.to_guest_joined([&frame[..5], &frame[5..13], &frame[13..]]);
            }
            (Mode::TagRx(vid), Direction::Rx) => {
                let [v0, v1] = vid.to_be_bytes();
                out.to_guest_joined([&frame[..12], &[0x81, 0x00, v0, v1], &frame[12..]]);
            }
            (_, Direction::Rx) => out.to_guest(frame),
        }
        Verdict::Pass
    }
}

pub(crate) struct Rig {
    pub nic: SimNic,
    pub ram: GuestRam,
    pub f: Recorder,
    pub e: E1000<'static, SimNic, SimDma>,
    pub task: Option<TaskIdentity>,
    // Guest driver state.
    pub tx_n: u32,
    pub tx_tail: u32,
    pub rx_n: u32,
    pub rx_clean: u32,
    pub rx_bsize: usize,
    next_buf: u64,
}

fn cfg(ntx: u16, nrx: u16) -> Config {
    Config {
        tx_descs: ntx,
        rx_descs: nrx,
        ..Config::default()
    }
}

impl Rig {
    pub fn new(ntx: u16, nrx: u16) -> Rig {
        Rig::with_config(cfg(ntx, nrx))
    }

    pub fn with_config(c: Config) -> Rig {
        let dma = SimDma::new(c.dma_bytes(), DMA_PHYS);
        let nic = SimNic::new(dma.clone());
        let bufs: &'static mut Buffers = Box::leak(Box::new(Buffers::new()));
        let e = E1000::new(nic.clone(), dma, c, bufs).unwrap();
        Rig {
            nic,
            ram: GuestRam::new(RAM, HV),
            f: Recorder {
                mode: Mode::Pass,
                seen: Vec::new(),
            },
            e,
            task: None,
            tx_n: 0,
            tx_tail: 0,
            rx_n: 0,
            rx_clean: 0,
            rx_bsize: 2048,
            next_buf: TX_BUFS,
        }
    }

    pub fn w(&mut self, off: u32, v: u32) {
        let mut env = Env {
            mem: &mut self.ram,
            filter: &mut self.f,
            task: self.task.as_ref(),
        };
        self.e.mmio_write(&mut env, off, 4, u64::from(v));
    }

    pub fn r(&mut self, off: u32) -> u32 {
        let mut env = Env {
            mem: &mut self.ram,
            filter: &mut self.f,
            task: self.task.as_ref(),
        };
        self.e.mmio_read(&mut env, off, 4) as u32
    }

    pub fn poll(&mut self) {
        let mut env = Env {
            mem: &mut self.ram,
            filter: &mut self.f,
            task: None,
        };
        self.e.poll(&mut env);
    }

    pub fn io_w(&mut self, port: u16, v: u32) {
        let mut env = Env {
            mem: &mut self.ram,
            filter: &mut self.f,
            task: None,
        };
        self.e.io_write(&mut env, port, 4, v);
    }

    pub fn io_r(&mut self, port: u16) -> u32 {
        let mut env = Env {
            mem: &mut self.ram,
            filter: &mut self.f,
            task: None,
        };
        self.e.io_read(&mut env, port, 4)
    }

    /// Configure like Linux's e1000_configure_tx/rx, with `rctl_extra` added to RCTL.
    pub fn up(&mut self, tx_n: u32, rx_n: u32, rctl_extra: u32) {
        self.tx_n = tx_n;
        self.tx_tail = 0;
        self.w(regs::TDBAL, TX_RING as u32);
        self.w(regs::TDBAH, 0);
        self.w(regs::TDLEN, tx_n * 16);
        self.w(regs::TDH, 0);
        self.w(regs::TDT, 0);
        self.w(
            regs::TCTL,
            (Tctl::EN | Tctl::PSP).bits() | (0x0f << 4) | (0x40 << 12),
        );
        self.rx_n = rx_n;
        self.rx_clean = 0;
        let rctl = Rctl::from_bits_retain(Rctl::EN.bits() | Rctl::BAM.bits() | rctl_extra);
        self.rx_bsize = rctl.buffer_size().unwrap() as usize;
        for i in 0..rx_n {
            let d = RX_RING + u64::from(i) * 16;
            self.ram
                .write_u64(d, RX_BUFS + u64::from(i) * 0x4000)
                .unwrap();
            self.ram.write_u64(d + 8, 0).unwrap();
        }
        self.w(regs::RDBAL, RX_RING as u32);
        self.w(regs::RDBAH, 0);
        self.w(regs::RDLEN, rx_n * 16);
        self.w(regs::RDH, 0);
        self.w(regs::RDT, rx_n - 1);
        self.w(regs::RCTL, rctl.bits());
        self.w(
            regs::IMS,
            (Int::TXDW | Int::RXT0 | Int::RXDMT0 | Int::LSC | Int::RXSEQ).bits(),
        );
    }

    /// Copy `data` into guest memory for a TX buffer; returns its address.
    pub fn buf(&mut self, data: &[u8]) -> u64 {
        let a = self.next_buf;
        self.ram.write(a, data).unwrap();
        self.next_buf += (data.len() as u64 + 64) & !63;
        if self.next_buf > 0x3f_0000 {
            self.next_buf = TX_BUFS;
        }
        a
    }

    /// Write raw descriptors at the guest's tail (no doorbell).
    pub fn put(&mut self, descs: &[[u8; 16]]) {
        for d in descs {
            self.ram
                .write(TX_RING + u64::from(self.tx_tail) * 16, d)
                .unwrap();
            self.tx_tail = (self.tx_tail + 1) % self.tx_n;
        }
    }

    /// Post descriptors and ring TDT.
    pub fn send(&mut self, descs: &[[u8; 16]]) {
        self.put(descs);
        let t = self.tx_tail;
        self.w(regs::TDT, t);
    }

    /// One frame in one legacy descriptor.
    pub fn send_frame(&mut self, frame: &[u8]) {
        let a = self.buf(frame);
        let d = legacy(a, frame.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS);
        self.send(&[d]);
    }

    pub fn tx_status(&self, idx: u32) -> u8 {
        self.ram.bytes[(TX_RING + u64::from(idx) * 16 + 12) as usize]
    }

    /// Collect received frames from the guest ring like the driver's clean_rx, then give the
    /// buffers back (RDT write). Returns (data, status of EOP desc, special, errors, descriptors).
    pub fn rx(&mut self) -> Vec<(Vec<u8>, u8, u16, u8, usize)> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        let mut descs = 0;
        let mut errors = 0;
        let mut cleaned = false;
        for _ in 0..self.rx_n {
            let d = RX_RING + u64::from(self.rx_clean) * 16;
            let wb = RxWriteBack::from_u64(self.ram.read_u64(d + 8).unwrap());
            if wb.status & rx_sta::DD == 0 {
                break;
            }
            let a = self.ram.read_u64(d).unwrap();
            let mut b = vec![0; usize::from(wb.len)];
            self.ram.read(a, &mut b).unwrap();
            cur.extend_from_slice(&b);
            descs += 1;
            errors |= wb.errors;
            self.ram.write_u64(d + 8, 0).unwrap();
            self.rx_clean = (self.rx_clean + 1) % self.rx_n;
            cleaned = true;
            if wb.status & rx_sta::EOP != 0 {
                out.push((
                    std::mem::take(&mut cur),
                    wb.status,
                    wb.special,
                    errors,
                    descs,
                ));
                descs = 0;
                errors = 0;
            }
        }
        if cleaned {
            let t = (self.rx_clean + self.rx_n - 1) % self.rx_n;
            self.w(regs::RDT, t);
        }
        out
    }

    pub fn no_violations(&self) {
        let s = self.nic.0.borrow();
        assert!(
            s.violations.is_empty(),
            "NIC protocol violations: {:?}",
            s.violations
        );
    }
}

pub(crate) fn legacy(addr: u64, len: u16, c: u8) -> [u8; 16] {
    crate::desc::TxDesc::legacy_bytes(addr, len, c)
}

fn legacy_vlan(addr: u64, len: u16, c: u8, vlan: u16) -> [u8; 16] {
    let mut d = legacy(addr, len, c | cmd::VLE);
    d[14..16].copy_from_slice(&vlan.to_le_bytes());
    d
}

#[allow(clippy::too_many_arguments)]
fn context(
    ipcss: u8,
    ipcso: u8,
    ipcse: u16,
    tucss: u8,
    tucso: u8,
    paylen: u32,
    tu: u8,
    hdrlen: u8,
    mss: u16,
) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = ipcss;
    c[1] = ipcso;
    c[2..4].copy_from_slice(&ipcse.to_le_bytes());
    c[4] = tucss;
    c[5] = tucso;
    let dw2 = (paylen & 0xf_ffff) | (u32::from(cmd::DEXT | cmd::RS | tu) << 24);
    c[8..12].copy_from_slice(&dw2.to_le_bytes());
    c[13] = hdrlen;
    c[14..16].copy_from_slice(&mss.to_le_bytes());
    c
}

fn data(addr: u64, len: u32, dcmd: u8, po: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    let dw2 = (len & 0xf_ffff) | (1 << 20) | (u32::from(dcmd | cmd::DEXT) << 24);
    d[8..12].copy_from_slice(&dw2.to_le_bytes());
    d[13] = po;
    d
}

const SRC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

pub(crate) fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// RFC 1071 sum, written independently of the engine's.
fn rfc1071(chunks: &[&[u8]]) -> u16 {
    let mut all = Vec::new();
    for c in chunks {
        all.extend_from_slice(c);
    }
    if all.len() % 2 == 1 {
        all.push(0);
    }
    let mut s: u32 = 0;
    for w in all.chunks(2) {
        s += u32::from(u16::from_be_bytes([w[0], w[1]]));
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An IPv4 TCP packet as Linux hands it to e1000 for offload: IP checksum zero, TCP checksum
/// field holding the pseudo-header sum (with the length when `with_len`).
fn ipv4_tcp(payload: &[u8], flags: u8, with_len: bool) -> Vec<u8> {
    let tcp_len = 20 + payload.len();
    let mut ip = vec![
        0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&7u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let len_field = if with_len { tcp_len as u16 } else { 0 };
    let pseudo = rfc1071(&[&ip[12..20], &[0, 6], &len_field.to_be_bytes()]);
    tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
    let mut p = ip;
    p.extend_from_slice(&tcp);
    p.extend_from_slice(payload);
    eth(0x0800, &p)
}

fn ipv6_tcp(payload: &[u8], flags: u8) -> Vec<u8> {
    let tcp_len = 20 + payload.len();
    let mut ip = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
    ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut tcp = vec![0u8; 20];
    tcp[4..8].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    let pseudo = rfc1071(&[&src, &dst, &[0, 6]]);
    tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
    let mut p = ip;
    p.extend_from_slice(&tcp);
    p.extend_from_slice(payload);
    eth(0x86dd, &p)
}

fn check_v4_tcp(frame: &[u8]) -> (u16, u32, u8, Vec<u8>) {
    let ip = Ipv4Packet::new_checked(&frame[14..]).expect("ipv4");
    assert!(ip.verify_checksum(), "IPv4 header checksum");
    assert_eq!(usize::from(ip.total_len()), frame.len() - 14);
    let tcp = TcpPacket::new_checked(ip.payload()).expect("tcp");
    let (s, d) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    assert!(tcp.verify_checksum(&s, &d), "TCP checksum");
    // And independently: the full sum over pseudo-header and segment is 0xffff.
    let seg = ip.payload();
    let total = rfc1071(&[
        &frame[26..34],
        &[0, 6],
        &(seg.len() as u16).to_be_bytes(),
        seg,
    ]);
    assert_eq!(total, 0xffff);
    let flags = seg[13];
    (
        ip.ident(),
        tcp.seq_number().0 as u32,
        flags,
        tcp.payload().to_vec(),
    )
}

// ---- TX --------------------------------------------------------------------------------------

#[test]
fn tx_single_frame_completes_and_interrupts() {
    let mut r = Rig::new(64, 64);
    r.up(8, 8, Rctl::SECRC.bits());
    let irqs = r.nic.0.borrow().irqs;
    let f = eth(0x0800, &pattern(100, 1));
    r.send_frame(&f);
    assert_eq!(r.nic.take_sent(), vec![f.clone()]);
    assert_eq!(r.tx_status(0) & 1, 1, "DD written back");
    assert_eq!(r.r(regs::TDH), 1);
    assert!(
        r.nic.0.borrow().irqs > irqs,
        "guest interrupted through the real ICS"
    );
    let icr = r.r(regs::ICR);
    assert_ne!(icr & Int::TXDW.bits(), 0);
    assert_eq!(r.r(regs::ICR), 0, "ICR clears on read");
    assert_eq!(r.e.counters().tx.frames, 1);
    assert_eq!(r.e.counters().tx.bytes, f.len() as u64);
    assert_eq!(r.e.counters().reg_writes[regs::RegId::Tdt as usize], 2);
    assert_eq!(r.f.seen.len(), 1);
    r.no_violations();
}

#[test]
fn tx_wraps_around_the_guest_ring() {
    let mut r = Rig::new(16, 16);
    r.up(8, 8, Rctl::SECRC.bits());
    let mut expect = Vec::new();
    for batch in 0..7 {
        let mut ds = Vec::new();
        for k in 0..3 {
            let f = eth(0x0800, &pattern(60 + batch * 3 + k, batch as u8));
            let a = r.buf(&f);
            ds.push(legacy(a, f.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS));
            expect.push(f);
        }
        r.send(&ds);
        assert_eq!(r.r(regs::TDH), r.tx_tail);
    }
    assert_eq!(r.nic.take_sent(), expect);
    assert_eq!(r.e.counters().tx.frames, 21);
    r.no_violations();
}

#[test]
fn tx_one_tail_write_sends_every_packet_even_past_one_that_wraps() {
    let mut r = Rig::new(16, 16);
    r.up(8, 8, Rctl::SECRC.bits());
    // Move the guest's ring to descriptor 6.
    for k in 0..6u8 {
        r.send_frame(&eth(0x0800, &pattern(60, k)));
    }
    r.nic.take_sent();
    // A packet in descriptors 6, 7 and 0, then one in descriptor 1: one TDT write.
    let f = eth(0x0800, &pattern(90, 7));
    let (a, b, c) = (r.buf(&f[..30]), r.buf(&f[30..60]), r.buf(&f[60..]));
    let g = eth(0x0800, &pattern(70, 8));
    let d = r.buf(&g);
    r.send(&[
        legacy(a, 30, cmd::IFCS),
        legacy(b, 30, cmd::IFCS),
        legacy(c, (f.len() - 60) as u16, cmd::EOP | cmd::IFCS | cmd::RS),
        legacy(d, g.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS),
    ]);
    assert_eq!(r.r(regs::TDH), 2);
    assert_eq!(r.nic.take_sent(), vec![f, g]);
}

#[test]
fn tx_multi_descriptor_frame_and_partial_packet() {
    let mut r = Rig::new(32, 32);
    r.up(16, 8, Rctl::SECRC.bits());
    let f = eth(0x0800, &pattern(3000 - 14, 9));
    let (a, b, c) = (&f[..100], &f[100..1600], &f[1600..]);
    let (aa, ab, ac) = (r.buf(a), r.buf(b), r.buf(c));
    // Two descriptors without EOP: nothing may go out.
    r.send(&[
        legacy(aa, a.len() as u16, cmd::IFCS),
        legacy(ab, b.len() as u16, cmd::IFCS),
    ]);
    assert!(r.nic.take_sent().is_empty());
    assert_eq!(r.r(regs::TDH), 0, "head stays at the incomplete packet");
    r.send(&[legacy(ac, c.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS)]);
    assert_eq!(r.nic.take_sent(), vec![f]);
    assert_eq!(r.r(regs::TDH), 3);
    assert_eq!(r.tx_status(2) & 1, 1);
    assert_eq!(r.tx_status(0) & 1, 0, "no RS, no write-back");
    r.no_violations();
}

/// `frame` with an 802.1Q tag for `vid` after its addresses.
fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    [
        &frame[..12],
        &[0x81, 0x00],
        &vid.to_be_bytes()[..],
        &frame[12..],
    ]
    .concat()
}

#[test]
fn tx_joined_pieces_reach_the_wire_as_one_frame() {
    // Shoji's 8-entry ring holds 7 buffers; each frame the filter takes leaves twice, so the
    // fourth frame's second copy waits in the wire queue until the NIC has sent the others.
    let mut r = Rig::new(8, 8);
    r.up(32, 8, Rctl::SECRC.bits());
    r.f.mode = Mode::UntagTwice;
    r.nic.0.borrow_mut().auto_tx = false;
    let frames: Vec<Vec<u8>> = (0..4).map(|i| eth(0x0800, &pattern(200, i))).collect();
    for f in &frames {
        r.send_frame(&tagged(f, 101));
    }
    let mut sent = Vec::new();
    for _ in 0..4 {
        r.nic.run_tx();
        sent.extend(r.nic.take_sent());
        r.poll();
    }
    let want: Vec<Vec<u8>> = frames.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
    assert_eq!(
        sent, want,
        "untagged, byte-exact, in order, queued copy included"
    );
    assert_eq!(r.e.counters().tx.dropped_total(), 0);
    // A jumbo frame spans several of Shoji's 2 KiB buffers: the pieces are joined across them.
    let jumbo = eth(0x0800, &pattern(5000, 7));
    let t = tagged(&jumbo, 101);
    let (a, b) = (&t[..3000], &t[3000..]);
    let (aa, ab) = (r.buf(a), r.buf(b));
    r.send(&[
        legacy(aa, a.len() as u16, cmd::IFCS),
        legacy(ab, b.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS),
    ]);
    for _ in 0..4 {
        r.nic.run_tx();
        r.poll();
    }
    r.nic.run_tx();
    assert_eq!(r.nic.take_sent(), vec![jumbo.clone(), jumbo.clone()]);
    // The same jumbo frame when the real ring is short: a small frame's two copies take two
    // buffers, the jumbo frame's first copy three, and its second copy (three more, with two
    // free) waits in the wire queue, joined into one frame there, until the NIC has sent the rest.
    let small = eth(0x0800, &pattern(100, 9));
    r.send_frame(&tagged(&small, 101));
    let (aa, ab) = (r.buf(a), r.buf(b));
    r.send(&[
        legacy(aa, a.len() as u16, cmd::IFCS),
        legacy(ab, b.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS),
    ]);
    r.nic.run_tx();
    assert_eq!(
        r.nic.take_sent(),
        vec![small.clone(), small, jumbo.clone()],
        "the second copy is not on the ring yet"
    );
    for _ in 0..4 {
        r.poll();
        r.nic.run_tx();
    }
    assert_eq!(
        r.nic.take_sent(),
        vec![jumbo],
        "the queued copy, untagged, byte-exact"
    );
    assert_eq!(r.e.counters().tx.dropped_total(), 0);
    r.no_violations();
}

#[test]
fn tx_real_ring_full_stalls_then_resumes_without_loss() {
    let mut r = Rig::new(8, 8);
    r.up(32, 8, Rctl::SECRC.bits());
    r.nic.0.borrow_mut().auto_tx = false;
    let frames: Vec<Vec<u8>> = (0..20).map(|i| eth(0x0800, &pattern(200, i))).collect();
    let mut ds = Vec::new();
    for f in &frames {
        let a = r.buf(f);
        ds.push(legacy(a, f.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS));
    }
    r.send(&ds);
    let head = r.r(regs::TDH);
    assert_eq!(head, 7, "Shoji's 8-entry ring holds 7 frames");
    assert!(r.e.counters().tx_stalls > 0);
    let mut sent = Vec::new();
    for _ in 0..10 {
        r.nic.run_tx();
        sent.extend(r.nic.take_sent());
        r.poll();
    }
    r.nic.run_tx();
    sent.extend(r.nic.take_sent());
    assert_eq!(sent, frames);
    assert_eq!(r.r(regs::TDH), 20);
    assert_eq!(r.e.counters().tx.dropped_total(), 0);
    r.no_violations();
}

#[test]
fn tx_frames_longer_than_one_real_buffer_wait_for_room_without_loss() {
    let mut r = Rig::new(8, 8);
    r.up(32, 8, Rctl::SECRC.bits());
    r.nic.0.borrow_mut().auto_tx = false;
    // 2,050 bytes: two of Shoji's 2 KiB buffers each, so 3 frames fill its 7 usable descriptors.
    let frames: Vec<Vec<u8>> = (0..10).map(|i| eth(0x0800, &pattern(2036, i))).collect();
    let mut ds = Vec::new();
    for f in &frames {
        let a = r.buf(f);
        ds.push(legacy(a, f.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS));
    }
    r.send(&ds);
    assert_eq!(r.r(regs::TDH), 3);
    let mut sent = Vec::new();
    for _ in 0..10 {
        r.nic.run_tx();
        sent.extend(r.nic.take_sent());
        r.poll();
    }
    r.nic.run_tx();
    sent.extend(r.nic.take_sent());
    assert_eq!(sent, frames);
    assert_eq!(r.e.counters().tx.dropped_total(), 0);
    r.no_violations();
}

#[test]
fn tx_a_max_frame_goes_out_one_byte_more_is_oversize() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    let largest = eth(0x0800, &pattern(crate::engine::MAX_FRAME - 14, 1));
    r.send_frame(&largest);
    assert_eq!(r.nic.take_sent(), vec![largest]);
    r.send_frame(&eth(0x0800, &pattern(crate::engine::MAX_FRAME - 13, 2)));
    assert!(r.nic.take_sent().is_empty());
    assert_eq!(r.e.counters().tx.dropped(DropReason::Oversize), 1);
}

#[test]
fn tx_queue_empty_is_signalled_with_the_completion_that_empties_the_ring() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.r(regs::ICR);
    // A packet whose end is not posted yet: its context completes, the ring is not empty.
    let f = eth(0x0800, &pattern(100, 1));
    let a = r.buf(&f);
    let ctx = context(14, 24, 33, 34, 50, 0, tucmd::TCP | tucmd::IP, 0, 0);
    r.send(&[ctx, data(a, 40, cmd::IFCS, 0)]);
    let icr = r.r(regs::ICR);
    assert_ne!(icr & Int::TXDW.bits(), 0);
    assert_eq!(icr & Int::TXQE.bits(), 0, "a descriptor is still pending");
    let b = r.buf(&f[40..]);
    r.send(&[data(
        b,
        (f.len() - 40) as u32,
        cmd::EOP | cmd::IFCS | cmd::RS,
        0,
    )]);
    assert_eq!(r.nic.take_sent(), vec![f]);
    let icr = r.r(regs::ICR);
    assert_ne!(icr & (Int::TXDW | Int::TXQE).bits(), 0);
    assert_eq!(icr & Int::TXQE.bits(), Int::TXQE.bits());
}

#[test]
fn tx_completion_sets_dd_whatever_the_status_byte_held() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    let f = eth(0x0800, &pattern(100, 1));
    let a = r.buf(&f);
    let mut d = legacy(a, f.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS);
    d[12] = 0x01; // DD left over from the descriptor's previous use
    r.send(&[d]);
    assert_eq!(r.nic.take_sent(), vec![f]);
    assert_eq!(r.tx_status(0) & 1, 1);
}

#[test]
fn tx_checksum_offload_with_context() {
    let mut r = Rig::new(32, 32);
    r.up(16, 8, Rctl::SECRC.bits());
    let f = ipv4_tcp(&pattern(333, 4), 0x18, true);
    // Linux e1000_tx_csum: context with TUCSS/TUCSO, data descriptor with TXSM.
    let ctx = context(14, 24, 33, 34, 34 + 16, 0, tucmd::TCP | tucmd::IP, 0, 0);
    let a = r.buf(&f[..54]);
    let b = r.buf(&f[54..]);
    r.send(&[
        ctx,
        data(a, 54, cmd::IFCS, popts::TXSM | popts::IXSM),
        data(b, (f.len() - 54) as u32, cmd::EOP | cmd::IFCS | cmd::RS, 0),
    ]);
    let sent = r.nic.take_sent();
    assert_eq!(sent.len(), 1);
    let (_, _, _, payload) = check_v4_tcp(&sent[0]);
    assert_eq!(payload, pattern(333, 4));
    assert_eq!(
        r.tx_status(0) & 1,
        1,
        "context descriptor with RS reports DD"
    );

    // UDP over IPv4 with TXSM only.
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&53u16.to_be_bytes());
    udp[2..4].copy_from_slice(&5353u16.to_be_bytes());
    let body = pattern(77, 3);
    udp[4..6].copy_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 192, 168, 0, 1, 192, 168, 0, 2,
    ];
    ip[2..4].copy_from_slice(&((20 + 8 + body.len()) as u16).to_be_bytes());
    let ipsum = !rfc1071(&[&ip]);
    ip[10..12].copy_from_slice(&ipsum.to_be_bytes());
    let pseudo = rfc1071(&[
        &ip[12..20],
        &[0, 17],
        &((8 + body.len()) as u16).to_be_bytes(),
    ]);
    udp[6..8].copy_from_slice(&pseudo.to_be_bytes());
    let mut p = ip;
    p.extend_from_slice(&udp);
    p.extend_from_slice(&body);
    let f = eth(0x0800, &p);
    let ctx = context(14, 24, 33, 34, 34 + 6, 0, tucmd::IP, 0, 0);
    let a = r.buf(&f);
    r.send(&[
        ctx,
        data(
            a,
            f.len() as u32,
            cmd::EOP | cmd::IFCS | cmd::RS,
            popts::TXSM,
        ),
    ]);
    let sent = r.nic.take_sent();
    let ipp = Ipv4Packet::new_checked(&sent[0][14..]).unwrap();
    assert!(ipp.verify_checksum());
    let u = UdpPacket::new_checked(ipp.payload()).unwrap();
    assert!(u.verify_checksum(
        &IpAddress::Ipv4(ipp.src_addr()),
        &IpAddress::Ipv4(ipp.dst_addr())
    ));
    r.no_violations();
}

#[test]
fn tx_offloads_do_only_what_the_first_data_descriptor_asks() {
    let mut r = Rig::new(32, 32);
    r.up(16, 8, Rctl::SECRC.bits());
    let f = ipv4_tcp(&pattern(100, 4), 0x18, true);
    let ctx = context(14, 24, 33, 34, 34 + 16, 0, tucmd::TCP | tucmd::IP, 0, 0);
    let a = r.buf(&f);
    let eop = cmd::EOP | cmd::IFCS | cmd::RS;
    // TXSM only: the TCP checksum is inserted, the IP header checksum stays 0.
    r.send(&[ctx, data(a, f.len() as u32, eop, popts::TXSM)]);
    let sent = r.nic.take_sent();
    assert_eq!(&sent[0][24..26], &[0, 0], "IP checksum not inserted");
    let ipp = Ipv4Packet::new_checked(&sent[0][14..]).unwrap();
    let t = TcpPacket::new_checked(ipp.payload()).unwrap();
    assert!(t.verify_checksum(
        &IpAddress::Ipv4(ipp.src_addr()),
        &IpAddress::Ipv4(ipp.dst_addr())
    ));
    // IXSM only: the IP checksum is inserted, the TCP checksum field keeps the guest's value.
    r.send(&[ctx, data(a, f.len() as u32, eop, popts::IXSM)]);
    let sent = r.nic.take_sent();
    assert!(Ipv4Packet::new_checked(&sent[0][14..])
        .unwrap()
        .verify_checksum());
    assert_eq!(&sent[0][50..52], &f[50..52], "TCP checksum not inserted");
    r.no_violations();
}

#[test]
fn tx_the_vlan_tag_comes_from_the_end_of_packet_descriptor() {
    let mut r = Rig::new(32, 32);
    r.up(16, 8, Rctl::SECRC.bits());
    let ctrl = r.r(regs::CTRL);
    r.w(regs::CTRL, ctrl | Ctrl::VME.bits());
    let f = eth(0x0800, &pattern(80, 2));
    let a = r.buf(&f[..40]);
    let b = r.buf(&f[40..]);
    // Legacy: VLE and a tag on the first descriptor only.
    r.send(&[
        legacy_vlan(a, 40, cmd::IFCS, 0x0123),
        legacy(b, (f.len() - 40) as u16, cmd::EOP | cmd::IFCS | cmd::RS),
    ]);
    assert_eq!(r.nic.take_sent(), vec![f.clone()], "legacy: untagged");
    // Data descriptors: the same.
    let mut first = data(a, 40, cmd::IFCS | cmd::VLE, 0);
    first[14..16].copy_from_slice(&0x0123u16.to_le_bytes());
    let mut last = data(b, (f.len() - 40) as u32, cmd::EOP | cmd::IFCS | cmd::RS, 0);
    last[14..16].copy_from_slice(&0x0456u16.to_le_bytes()); // a tag, but no VLE
    r.send(&[first, last]);
    assert_eq!(r.nic.take_sent(), vec![f.clone()], "data: untagged");
    // VLE on the end-of-packet data descriptor: tagged.
    last[11] |= cmd::VLE;
    r.send(&[data(a, 40, cmd::IFCS, 0), last]);
    let mut tagged = f[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x04, 0x56]);
    tagged.extend_from_slice(&f[12..]);
    assert_eq!(r.nic.take_sent(), vec![tagged]);
    r.no_violations();
}

#[test]
fn tx_a_context_or_reserved_descriptor_with_rs_reports_its_completion() {
    let mut r = Rig::new(32, 32);
    r.up(16, 8, Rctl::SECRC.bits());
    r.r(regs::ICR);
    // Context with RS, then a data descriptor without RS.
    let f = eth(0x0800, &pattern(80, 3));
    let a = r.buf(&f);
    let ctx = context(14, 24, 33, 34, 50, 0, tucmd::TCP | tucmd::IP, 0, 0);
    r.send(&[ctx, data(a, f.len() as u32, cmd::EOP | cmd::IFCS, 0)]);
    assert_eq!(r.nic.take_sent().len(), 1);
    assert_ne!(r.r(regs::ICR) & Int::TXDW.bits(), 0, "context");
    assert_eq!(r.tx_status(1) & 1, 0, "no RS, no DD");
    // A reserved descriptor type with RS: refused, but completed and reported.
    let mut reserved = [0u8; 16];
    reserved[8..12]
        .copy_from_slice(&((7u32 << 20) | (u32::from(cmd::DEXT | cmd::RS) << 24)).to_le_bytes());
    r.send(&[reserved]);
    assert_ne!(r.r(regs::ICR) & Int::TXDW.bits(), 0, "reserved");
    assert_eq!(r.tx_status(2) & 1, 1);
}

#[test]
fn tx_tso_packets_wait_until_shojis_ring_has_room_for_every_segment() {
    let mut r = Rig::new(8, 8);
    r.up(32, 8, Rctl::SECRC.bits());
    r.nic.0.borrow_mut().auto_tx = false;
    // Six segments, then eight: Shoji's ring holds 7 frames.
    let first = tso_v4(&mut r, &pattern(3000, 1), 500, 0x18, &[3000]);
    assert!(first.is_empty());
    let second = tso_v4(&mut r, &pattern(1600, 2), 200, 0x18, &[1600]);
    assert!(second.is_empty());
    let mut sent = Vec::new();
    for _ in 0..6 {
        r.nic.run_tx();
        sent.extend(r.nic.take_sent());
        r.poll();
    }
    assert_eq!(sent.len(), 6 + 8);
    assert_eq!(r.e.counters().tso_segments, 14);
    assert_eq!(r.e.counters().tx.dropped_total(), 0);
    r.no_violations();
}

#[test]
fn tx_a_packet_is_taken_as_soon_as_shojis_ring_has_room_for_all_it_becomes() {
    let mut r = Rig::new(8, 8);
    r.up(32, 8, Rctl::SECRC.bits());
    r.nic.0.borrow_mut().auto_tx = false;
    // One small frame waits in Shoji's ring (7 usable descriptors): 6 left.
    r.send_frame(&eth(0x0800, &pattern(60, 1)));
    assert_eq!(r.r(regs::TDH), 1);
    // Six 1,514-byte segments need exactly the 6 left: taken at once.
    tso_v4(&mut r, &pattern(6 * 1460, 2), 1460, 0x18, &[6 * 1460]);
    assert_eq!(
        r.r(regs::TDH),
        1 + 3,
        "context, header and payload descriptors consumed"
    );
    // Two jumbo segments (2 buffers each) do not fit in the 0 left: the packet waits.
    tso_v4(&mut r, &pattern(2 * 3000, 3), 3000, 0x18, &[2 * 3000]);
    assert_eq!(r.r(regs::TDH), 5, "only its context descriptor is consumed");
    let mut sent = Vec::new();
    for _ in 0..4 {
        r.nic.run_tx();
        sent.extend(r.nic.take_sent());
        r.poll();
    }
    assert_eq!(sent.len(), 1 + 6 + 2);
    assert_eq!(r.e.counters().tx.dropped_total(), 0);
    // Three jumbo segments need 6 descriptors; with two small frames waiting only 5 are free.
    let mut r = Rig::new(8, 8);
    r.up(32, 8, Rctl::SECRC.bits());
    r.nic.0.borrow_mut().auto_tx = false;
    r.send_frame(&eth(0x0800, &pattern(60, 6)));
    r.send_frame(&eth(0x0800, &pattern(60, 7)));
    tso_v4(&mut r, &pattern(3 * 3000, 8), 3000, 0x18, &[3 * 3000]);
    assert_eq!(r.r(regs::TDH), 3, "only its context descriptor is consumed");
    r.nic.run_tx();
    r.poll();
    r.nic.run_tx();
    assert_eq!(r.nic.take_sent().len(), 2 + 3);
    r.no_violations();
}

#[test]
fn tx_legacy_insert_checksum() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    let f = ipv4_tcp(&pattern(50, 1), 0x10, true);
    let a = r.buf(&f);
    let mut d = legacy(
        a,
        f.len() as u16,
        cmd::EOP | cmd::IFCS | cmd::RS | cmd::IC_TSE,
    );
    d[10] = 34 + 16; // CSO
    d[13] = 34; // CSS
    r.send(&[d]);
    let sent = r.nic.take_sent();
    let ipp = Ipv4Packet::new_checked(&sent[0][14..]).unwrap();
    let t = TcpPacket::new_checked(ipp.payload()).unwrap();
    assert!(t.verify_checksum(
        &IpAddress::Ipv4(ipp.src_addr()),
        &IpAddress::Ipv4(ipp.dst_addr())
    ));
}

fn tso_v4(r: &mut Rig, payload: &[u8], mss: u16, flags: u8, split: &[usize]) -> Vec<Vec<u8>> {
    let f = ipv4_tcp(payload, flags, false);
    let hdr = 54u8;
    let ctx = context(
        14,
        24,
        33,
        34,
        34 + 16,
        payload.len() as u32,
        tucmd::TCP | tucmd::IP | tucmd::TSE,
        hdr,
        mss,
    );
    let mut ds = vec![ctx];
    let ha = r.buf(&f[..54]);
    ds.push(data(
        ha,
        54,
        cmd::IFCS | cmd::IC_TSE,
        popts::IXSM | popts::TXSM,
    ));
    let mut off = 54;
    for (i, &len) in split.iter().enumerate() {
        let a = r.buf(&f[off..off + len]);
        let last = i + 1 == split.len();
        let c = cmd::IFCS | cmd::IC_TSE | if last { cmd::EOP | cmd::RS } else { 0 };
        ds.push(data(a, len as u32, c, 0));
        off += len;
    }
    assert_eq!(off, f.len());
    r.send(&ds);
    r.nic.take_sent()
}

#[test]
fn tx_the_largest_packet_is_gathered_whole_one_byte_more_is_oversize() {
    let mut r = Rig::new(64, 32);
    r.up(32, 8, Rctl::SECRC.bits());
    let cap = crate::engine::GATHER_CAP;
    // A TSO packet of exactly GATHER_CAP bytes (54 of headers): 46 segments of MSS 1,460.
    let payload = pattern(cap - 54, 9);
    let segs = tso_v4(&mut r, &payload, 1460, 0x10, &[cap - 54]);
    assert_eq!(segs.len(), (cap - 54).div_ceil(1460));
    let joined: Vec<u8> = segs.iter().flat_map(|s| s[54..].to_vec()).collect();
    assert_eq!(joined, payload);
    // One byte more is refused as oversize, nothing of it sent.
    let segs = tso_v4(&mut r, &pattern(cap - 53, 10), 1460, 0x10, &[cap - 53]);
    assert!(segs.is_empty());
    assert_eq!(r.e.counters().tx.dropped(DropReason::Oversize), 1);
    r.no_violations();
}

#[test]
fn tx_tso_ipv4_segments_match_reference() {
    let mut r = Rig::new(64, 32);
    r.up(32, 8, Rctl::SECRC.bits());
    let payload = pattern(4500, 7);
    let segs = tso_v4(
        &mut r,
        &payload,
        1000,
        0x19, /* FIN|PSH|ACK */
        &[1500, 2000, 1000],
    );
    assert_eq!(segs.len(), 5);
    let mut joined = Vec::new();
    for (k, s) in segs.iter().enumerate() {
        let (id, seq, flags, p) = check_v4_tcp(s);
        assert_eq!(id, 0x1234 + k as u16);
        assert_eq!(seq, 0x1000_0000 + 1000 * k as u32);
        if k + 1 < segs.len() {
            assert_eq!(flags, 0x10, "FIN/PSH cleared on segment {k}");
            assert_eq!(s.len(), 54 + 1000);
        } else {
            assert_eq!(flags, 0x19);
            assert_eq!(s.len(), 54 + 500);
        }
        joined.extend_from_slice(&p);
    }
    assert_eq!(joined, payload);
    let c = r.e.counters();
    assert_eq!(
        (
            c.tso_packets,
            c.tso_segments,
            c.tx.frames,
            c.tx_guest_packets
        ),
        (1, 5, 5, 1)
    );
    // A 64 KiB TSO packet.
    let big = pattern(65000, 3);
    let segs = tso_v4(&mut r, &big, 1448, 0x10, &[20000, 20000, 25000]);
    assert_eq!(segs.len(), 65000usize.div_ceil(1448));
    let mut joined = Vec::new();
    for s in &segs {
        joined.extend(check_v4_tcp(s).3);
    }
    assert_eq!(joined, big);
    r.no_violations();
}

#[test]
fn tx_tso_ipv6() {
    let mut r = Rig::new(64, 32);
    r.up(16, 8, Rctl::SECRC.bits());
    let payload = pattern(3000, 5);
    let f = ipv6_tcp(&payload, 0x18);
    let hdr = 14 + 40 + 20;
    let ctx = context(
        14,
        0,
        0,
        54,
        54 + 16,
        payload.len() as u32,
        tucmd::TCP | tucmd::TSE,
        hdr as u8,
        1200,
    );
    let a = r.buf(&f);
    r.send(&[
        ctx,
        data(
            a,
            f.len() as u32,
            cmd::EOP | cmd::IFCS | cmd::RS | cmd::IC_TSE,
            popts::TXSM,
        ),
    ]);
    let segs = r.nic.take_sent();
    assert_eq!(segs.len(), 3);
    let mut joined = Vec::new();
    for (k, s) in segs.iter().enumerate() {
        let ip = Ipv6Packet::new_checked(&s[14..]).unwrap();
        assert_eq!(usize::from(ip.payload_len()), s.len() - 54);
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(
            &IpAddress::Ipv6(ip.src_addr()),
            &IpAddress::Ipv6(ip.dst_addr())
        ));
        assert_eq!(
            t.seq_number().0 as u32,
            0xffff_ff00u32.wrapping_add(1200 * k as u32)
        );
        joined.extend_from_slice(t.payload());
    }
    assert_eq!(joined, payload);
}

#[test]
fn tx_vlan_from_descriptor_and_in_frame() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    let f = eth(0x0800, &pattern(80, 2));
    // VME clear: VLE is ignored, as on hardware.
    let a = r.buf(&f);
    r.send(&[legacy_vlan(
        a,
        f.len() as u16,
        cmd::EOP | cmd::IFCS | cmd::RS,
        100,
    )]);
    assert_eq!(r.nic.take_sent(), vec![f.clone()]);
    // VME set: the tag is inserted; the filter sees it in the frame, not out of band.
    let ctrl = r.r(regs::CTRL);
    r.w(regs::CTRL, ctrl | Ctrl::VME.bits());
    assert_eq!(
        r.nic.reg(regs::CTRL) & Ctrl::VME.bits(),
        0,
        "real VME stays off"
    );
    assert_ne!(r.r(regs::CTRL) & Ctrl::VME.bits(), 0, "guest sees its VME");
    r.send(&[legacy_vlan(
        a,
        f.len() as u16,
        cmd::EOP | cmd::IFCS | cmd::RS,
        0x2064,
    )]);
    let sent = r.nic.take_sent();
    let mut tagged = f[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x20, 0x64]);
    tagged.extend_from_slice(&f[12..]);
    assert_eq!(sent, vec![tagged.clone()]);
    assert_eq!(r.f.seen.last().unwrap().1, None);
    assert_eq!(r.f.seen.last().unwrap().3, tagged);
    // Tag in the frame itself: passes unchanged, no descriptor VLAN.
    let a = r.buf(&tagged);
    r.send(&[legacy(
        a,
        tagged.len() as u16,
        cmd::EOP | cmd::IFCS | cmd::RS,
    )]);
    assert_eq!(r.nic.take_sent(), vec![tagged]);
    assert_eq!(r.f.seen.last().unwrap().1, None);
    // TSO with a descriptor VLAN: every segment tagged.
    let payload = pattern(2500, 1);
    let fr = ipv4_tcp(&payload, 0x10, false);
    let ctx = context(
        14,
        24,
        33,
        34,
        50,
        2500,
        tucmd::TCP | tucmd::IP | tucmd::TSE,
        54,
        1000,
    );
    let a = r.buf(&fr);
    let mut d = data(
        a,
        fr.len() as u32,
        cmd::EOP | cmd::IFCS | cmd::RS | cmd::IC_TSE | cmd::VLE,
        popts::IXSM | popts::TXSM,
    );
    d[14..16].copy_from_slice(&7u16.to_le_bytes());
    r.send(&[ctx, d]);
    let segs = r.nic.take_sent();
    assert_eq!(segs.len(), 3);
    for s in &segs {
        assert_eq!(&s[12..16], &[0x81, 0, 0, 7]);
        let mut untagged = s[..12].to_vec();
        untagged.extend_from_slice(&s[16..]);
        check_v4_tcp(&untagged);
    }
    r.no_violations();
}

#[test]
fn tx_task_identity_reaches_the_filter() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.task = Some(TaskIdentity {
        pid: Some(4242),
        ..Default::default()
    });
    r.send_frame(&eth(0x0800, &pattern(60, 0)));
    assert_eq!(r.f.seen[0].2, Some(4242));
    assert_eq!(r.f.seen[0].0, Direction::Tx);
}

/// One TDT write never walks more than the per-call bound, however many packets it posts (here
/// packets the policy drops, so Shoji's own ring never pushes back): the polls that follow
/// finish the ring, each bounded too, with the identity of the task that wrote TDT.
#[test]
fn tx_one_exit_walks_at_most_the_bound_and_polls_finish_with_the_writers_identity() {
    use crate::tx::TX_DESCS_PER_CALL;
    let mut r = Rig::new(32, 32);
    r.up(1024, 8, Rctl::SECRC.bits());
    r.f.mode = Mode::DropAll;
    let frame = eth(0x0800, &pattern(60, 0));
    let a = r.buf(&frame);
    let d = legacy(a, frame.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS);
    let total = 2 * TX_DESCS_PER_CALL as usize + 88;
    r.put(&vec![d; total]);
    r.task = Some(TaskIdentity {
        pid: Some(7),
        ..Default::default()
    });
    let t = r.tx_tail;
    r.w(regs::TDT, t);
    r.task = None;
    assert_eq!(
        r.f.seen.len(),
        TX_DESCS_PER_CALL as usize,
        "one exit's share"
    );
    assert_eq!(r.e.counters().tx_budget_cuts, 1);
    assert_eq!(r.r(regs::TDH), TX_DESCS_PER_CALL);
    r.poll();
    assert_eq!(r.f.seen.len(), 2 * TX_DESCS_PER_CALL as usize);
    r.poll();
    assert_eq!(r.f.seen.len(), total, "the polls finish the ring");
    assert_eq!(r.r(regs::TDH), t);
    assert_eq!(r.e.counters().tx_budget_cuts, 2);
    assert!(
        r.f.seen.iter().all(|s| s.2 == Some(7)),
        "every frame carries the identity of the task that wrote TDT"
    );
    assert_eq!(
        r.e.counters().tx.dropped(DropReason::PolicyDenied),
        total as u64
    );
    // The ring is drained: a later poll walks nothing and carries no identity on.
    r.poll();
    assert_eq!(r.f.seen.len(), total);
    r.f.mode = Mode::Pass;
    r.send(&[d]);
    assert_eq!(r.f.seen.last().map(|s| s.2), Some(None));
    r.no_violations();
}

/// The worst one TDT write can make Shoji do, for measurement (README, "Bounded work per
/// exit"): a ring full of the largest TSO packets, cut into the most segments Shoji makes, all
/// dropped by the policy so Shoji's own ring never pushes back. Run under callgrind with
/// `--toggle-collect='*E1000*mmio_write*'` for the instructions of the one call.
#[test]
#[ignore = "measurement: run by hand under callgrind"]
fn tx_worst_case_single_exit_for_measurement() {
    use crate::engine::{GATHER_CAP, MAX_TSO_SEGMENTS};
    let mut r = Rig::new(32, 32);
    r.up(4096, 8, Rctl::SECRC.bits());
    r.f.mode = Mode::DropAll;
    let payload_len = GATHER_CAP - 54;
    let mss = payload_len.div_ceil(MAX_TSO_SEGMENTS) as u16;
    let f = ipv4_tcp(&pattern(payload_len, 5), 0x10, false);
    let ha = r.buf(&f[..54]);
    let pa = r.buf(&f[54..]);
    let ctx = context(
        14,
        24,
        33,
        34,
        34 + 16,
        payload_len as u32,
        tucmd::TCP | tucmd::IP | tucmd::TSE,
        54,
        mss,
    );
    let mut ds = Vec::new();
    for _ in 0..1000 {
        ds.push(ctx);
        ds.push(data(
            ha,
            54,
            cmd::IFCS | cmd::IC_TSE,
            popts::IXSM | popts::TXSM,
        ));
        ds.push(data(
            pa,
            payload_len as u32,
            cmd::IFCS | cmd::IC_TSE | cmd::EOP | cmd::RS,
            0,
        ));
    }
    r.put(&ds);
    let t = r.tx_tail;
    r.w(regs::TDT, t);
    let c = r.e.counters();
    assert_eq!(c.tx_budget_cuts, 1, "the walk stopped at its bound");
    std::eprintln!(
        "one TDT write: {} packets, {} segments filtered (mss {mss})",
        c.tx_guest_packets,
        r.f.seen.len()
    );
}

/// The byte bound: large frames stop a walk before the descriptor bound does.
#[test]
fn tx_one_exit_gathers_at_most_the_byte_bound() {
    use crate::engine::MAX_FRAME;
    use crate::tx::TX_BYTES_PER_CALL;
    let mut r = Rig::new(32, 32);
    r.up(256, 8, Rctl::SECRC.bits());
    r.f.mode = Mode::DropAll;
    let frame = eth(0x0800, &pattern(MAX_FRAME - 14, 1));
    let a = r.buf(&frame);
    let d = legacy(a, frame.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS);
    r.send(&vec![d; 100]);
    let per_call = TX_BYTES_PER_CALL.div_ceil(MAX_FRAME);
    assert_eq!(r.f.seen.len(), per_call);
    for _ in 0..100 {
        r.poll();
    }
    assert_eq!(r.f.seen.len(), 100);
    r.no_violations();
}

/// A packet chained over more descriptors than any driver posts is dropped as hostile in
/// pieces of the bound, so one packet cannot make one exit walk the whole ring.
#[test]
fn tx_a_chain_longer_than_the_packet_bound_is_dropped_in_pieces() {
    use crate::tx::MAX_PACKET_DESCS;
    let mut r = Rig::new(32, 32);
    r.up(1024, 8, Rctl::SECRC.bits());
    let piece = r.buf(&pattern(16, 2));
    let mut chain = vec![legacy(piece, 16, cmd::IFCS); 3 * MAX_PACKET_DESCS as usize + 8];
    let good = eth(0x0800, &pattern(60, 3));
    let ga = r.buf(&good);
    chain.push(legacy(
        ga,
        good.len() as u16,
        cmd::EOP | cmd::IFCS | cmd::RS,
    ));
    r.send(&chain);
    for _ in 0..8 {
        r.poll();
    }
    assert_eq!(
        r.e.counters().tx.dropped(DropReason::HostileDescriptor),
        3,
        "three pieces of 64 descriptors"
    );
    assert_eq!(r.r(regs::TDH), r.tx_tail, "the ring is consumed");
    assert_eq!(
        r.f.seen.len(),
        1,
        "the last 9 descriptors end in EOP: one packet"
    );
    r.no_violations();
}

#[test]
fn tx_hostile_descriptors_are_dropped_and_counted() {
    let mut r = Rig::new(32, 32);
    r.up(16, 8, Rctl::SECRC.bits());
    let good = eth(0x0800, &pattern(64, 0));
    let ga = r.buf(&good);
    let ok = legacy(ga, good.len() as u16, cmd::EOP | cmd::IFCS | cmd::RS);
    let rs = cmd::EOP | cmd::IFCS | cmd::RS;
    let cases: Vec<[u8; 16]> = vec![
        legacy(HV.0 + 0x100, 64, rs),              // Shoji's memory
        legacy(HV.0 - 10, 64, rs),                 // straddles into Shoji's memory
        legacy(RAM as u64 + 0x1000, 64, rs),       // beyond RAM (MMIO)
        legacy(u64::MAX - 8, 64, rs),              // wraps
        legacy(ga, 0, rs),                         // zero length
        data(ga, 0xf_ffff, cmd::EOP | cmd::RS, 0), // overlong (1 MiB)
    ];
    let n = cases.len() as u64;
    for c in cases {
        r.send(&[c, ok]);
    }
    assert_eq!(
        r.nic.take_sent().len() as u64,
        n,
        "each good frame after a hostile one goes out"
    );
    let c = r.e.counters();
    assert_eq!(c.tx.dropped(DropReason::HostileDescriptor), n - 1);
    assert_eq!(c.tx.dropped(DropReason::Oversize), 1);
    for i in 0..(2 * n as u32) {
        assert_eq!(r.tx_status(i) & 1, 1, "descriptor {i} completed");
    }
    // Bad offload requests.
    let f = ipv4_tcp(&pattern(100, 0), 0x10, false);
    let a = r.buf(&f);
    let rs_tse = cmd::EOP | cmd::IFCS | cmd::RS | cmd::IC_TSE;
    r.send(&[
        context(
            14,
            24,
            33,
            34,
            50,
            100,
            tucmd::TCP | tucmd::IP | tucmd::TSE,
            54,
            0,
        ),
        data(a, f.len() as u32, rs_tse, 3),
    ]);
    r.send(&[
        context(
            14,
            24,
            33,
            34,
            50,
            100,
            tucmd::TCP | tucmd::IP | tucmd::TSE,
            255,
            100,
        ),
        data(a, f.len() as u32, rs_tse, 3),
    ]);
    r.send(&[
        context(14, 24, 33, 34, 250, 0, tucmd::TCP | tucmd::IP, 0, 0),
        data(a, f.len() as u32, rs, popts::TXSM),
    ]);
    let mut legacy_bad = legacy(a, f.len() as u16, rs | cmd::IC_TSE);
    legacy_bad[10] = 200; // CSO beyond the frame
    r.send(&[legacy_bad]);
    // Context descriptor inside a packet, reserved descriptor type.
    let mut reserved = [0u8; 16];
    reserved[8..12]
        .copy_from_slice(&((7u32 << 20) | (u32::from(cmd::DEXT | cmd::RS) << 24)).to_le_bytes());
    r.send(&[legacy(a, 20, cmd::IFCS), context(0, 0, 0, 0, 0, 0, 0, 0, 0)]);
    r.send(&[reserved]);
    assert!(r.nic.take_sent().is_empty());
    assert_eq!(
        r.e.counters().tx.dropped(DropReason::HostileDescriptor),
        n - 1 + 6
    );
    r.send(&[ok]);
    assert_eq!(r.nic.take_sent().len(), 1);
    // Transmission writes guest memory only in the ring it just read (DD status): however
    // hostile the buffer addresses, the engine never attempted a write the RAM refused.
    assert_eq!(r.ram.refused, []);
    r.no_violations();
}

#[test]
fn tx_ring_reprogramming_and_bad_ring_registers() {
    let mut r = Rig::new(32, 32);
    r.up(16, 8, Rctl::SECRC.bits());
    r.send_frame(&eth(0x0800, &pattern(60, 1)));
    // Tail beyond the ring: ignored and counted, never a panic.
    r.w(regs::TDT, 4000);
    assert_eq!(r.e.counters().ring_errors, 1);
    // Ring shrinks under head/tail.
    r.w(regs::TDT, 12);
    r.w(regs::TDLEN, 8 * 16);
    r.w(regs::TDT, 13);
    assert!(r.e.counters().ring_errors >= 2);
    // Ring base pointed into Shoji's memory: descriptors unreadable, consumed and counted.
    r.w(regs::TDLEN, 8 * 16);
    r.w(regs::TDBAL, HV.0 as u32);
    r.w(regs::TDH, 0);
    r.w(regs::TDT, 3);
    assert_eq!(r.r(regs::TDH), 3);
    assert!(r.e.counters().tx.dropped(DropReason::HostileDescriptor) >= 3);
    // Re-program properly (as after ifdown/ifup) and traffic flows again.
    r.nic.take_sent();
    r.up(8, 8, Rctl::SECRC.bits());
    r.send_frame(&eth(0x0800, &pattern(70, 2)));
    assert_eq!(r.nic.take_sent().len(), 1);
    r.no_violations();
}

#[test]
fn tx_disabled_or_no_bus_master_holds_frames() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.w(regs::TCTL, 0);
    r.send_frame(&eth(0x0800, &pattern(60, 1)));
    assert!(r.nic.take_sent().is_empty());
    assert_eq!(r.r(regs::TDH), 0, "the descriptor is not consumed");
    assert_eq!(r.tx_status(0) & 1, 0);
    r.w(regs::TCTL, Tctl::EN.bits());
    assert_eq!(r.nic.take_sent().len(), 1);
    let out = r.e.pci_config_write(0x04, 2, 0x0003, 0x0000_0007);
    assert_eq!(out.write, crate::pci::PciWrite::Replace(0x7));
    r.send_frame(&eth(0x0800, &pattern(60, 2)));
    assert!(
        r.nic.take_sent().is_empty(),
        "guest turned bus mastering off"
    );
    r.e.pci_config_write(0x04, 2, 0x0007, 0x0000_0007);
    r.poll();
    assert_eq!(r.nic.take_sent().len(), 1);
}

// ---- RX --------------------------------------------------------------------------------------

#[test]
fn rx_delivery_at_icr_read_poll_and_rdt() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    let f1 = eth(0x0800, &pattern(100, 1));
    r.nic.inject(&f1);
    assert!(r.nic.irq_asserted(), "real RX interrupt reaches the guest");
    let icr = r.r(regs::ICR);
    assert_ne!(icr & Int::RXT0.bits(), 0);
    let got = r.rx();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, f1);
    assert_eq!(
        got[0].1 & (rx_sta::EOP | rx_sta::IXSM | rx_sta::DD),
        rx_sta::EOP | rx_sta::IXSM | rx_sta::DD
    );
    // Delivered by the periodic poll.
    let f2 = eth(0x0800, &pattern(200, 2));
    r.nic.inject(&f2);
    r.poll();
    assert_eq!(r.rx()[0].0, f2);
    // Short frames are padded to 60 bytes like the wire would.
    r.nic.inject(&eth(0x0806, &[1, 2, 3]));
    r.poll();
    let got = r.rx();
    assert_eq!(got[0].0.len(), 60);
    assert_eq!(r.e.counters().rx.frames, 3);
    r.no_violations();
}

#[test]
fn rx_keeps_crc_when_guest_asks() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, 0);
    let f = eth(0x0800, &pattern(100, 3));
    r.nic.inject(&f);
    r.poll();
    let got = r.rx();
    assert_eq!(got[0].0.len(), f.len() + 4);
    assert_eq!(&got[0].0[..f.len()], &f[..]);
    assert_eq!(
        crate::offload::crc32(&[&got[0].0]),
        0x2144_df1c,
        "FCS residue"
    );
    assert_eq!(
        r.nic.reg(regs::RCTL) & Rctl::SECRC.bits(),
        Rctl::SECRC.bits(),
        "real NIC strips"
    );
}

#[test]
fn rx_honours_guest_buffer_size_and_lpe() {
    let mut r = Rig::new(32, 32);
    r.up(16, 16, Rctl::SECRC.bits() | (3 << 16)); // 256-byte buffers
    let f = eth(0x0800, &pattern(1000, 1));
    r.nic.inject(&f);
    r.poll();
    let got = r.rx();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, f);
    assert_eq!(got[0].4, 4, "1014 bytes over 256-byte buffers");
    // A jumbo frame without LPE is dropped; with LPE it arrives.
    let j = eth(0x0800, &pattern(3000, 2));
    r.nic.inject(&j);
    r.poll();
    assert!(r.rx().is_empty());
    assert_eq!(r.e.counters().rx.dropped(DropReason::Oversize), 1);
    r.w(
        regs::RCTL,
        Rctl::EN.bits() | Rctl::SECRC.bits() | Rctl::LPE.bits() | Rctl::BSEX.bits() | (3 << 16),
    );
    r.rx_bsize = 4096;
    r.nic.inject(&j);
    r.poll();
    let got = r.rx();
    assert_eq!(got[0].0, j);
    assert_eq!(got[0].4, 1);
    r.no_violations();
}

#[test]
fn rx_vlan_stripping_follows_guest_vme() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    let inner = eth(0x0800, &pattern(100, 5));
    let tagged = with_tag(&inner, 0x2a);
    r.nic.inject(&tagged);
    r.poll();
    let got = r.rx();
    assert_eq!(got[0].0, tagged, "VME clear: tag stays in the frame");
    assert_eq!(got[0].1 & rx_sta::VP, 0);
    let ctrl = r.r(regs::CTRL);
    r.w(regs::CTRL, ctrl | Ctrl::VME.bits());
    r.nic.inject(&tagged);
    r.poll();
    let got = r.rx();
    assert_eq!(got[0].0, inner);
    assert_ne!(got[0].1 & rx_sta::VP, 0);
    assert_eq!(got[0].2, 0x2a);
    assert_eq!(r.f.seen.last().unwrap().3, tagged, "the filter saw the tag");
    r.no_violations();
}

/// `inner` with an 802.1Q tag of VLAN `vid` after its MAC addresses.
fn with_tag(inner: &[u8], vid: u16) -> Vec<u8> {
    let mut tagged = inner[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, (vid >> 8) as u8, vid as u8]);
    tagged.extend_from_slice(&inner[12..]);
    tagged
}

#[test]
fn rx_frame_in_pieces_reaches_the_guest_whole() {
    // Without SECRC the guest keeps the FCS: it must cover the joined bytes.
    let mut r = Rig::new(32, 32);
    r.f.mode = Mode::SplitRx;
    r.up(8, 8, 0);
    let inner = eth(0x0800, &pattern(100, 7));
    let tagged = with_tag(&inner, 0x2a);
    r.nic.inject(&tagged);
    r.poll();
    let got = r.rx();
    let mut want = tagged.clone();
    want.extend_from_slice(&crc32(&[&tagged]).to_le_bytes());
    assert_eq!(
        got[0].0, want,
        "VME clear: the pieces in order, FCS over all of them"
    );
    assert_eq!(got[0].1 & rx_sta::VP, 0);
    // VME set: the tag (bytes 12..16, across the cut at 13) is stripped, the FCS covers what
    // the guest gets.
    let ctrl = r.r(regs::CTRL);
    r.w(regs::CTRL, ctrl | Ctrl::VME.bits());
    r.nic.inject(&tagged);
    r.poll();
    let got = r.rx();
    let mut want = inner.clone();
    want.extend_from_slice(&crc32(&[&inner]).to_le_bytes());
    assert_eq!(got[0].0, want);
    assert_ne!(got[0].1 & rx_sta::VP, 0);
    assert_eq!(got[0].2, 0x2a);
    r.no_violations();
}

#[test]
fn rx_tag_added_by_the_filter_is_seen_or_stripped_by_the_guest() {
    let mut r = Rig::new(32, 32);
    r.f.mode = Mode::TagRx(0x123);
    r.up(8, 8, Rctl::SECRC.bits());
    let inner = eth(0x0800, &pattern(64, 3));
    r.nic.inject(&inner);
    r.poll();
    let got = r.rx();
    assert_eq!(
        got[0].0,
        with_tag(&inner, 0x123),
        "VME clear: the tag in the frame"
    );
    let ctrl = r.r(regs::CTRL);
    r.w(regs::CTRL, ctrl | Ctrl::VME.bits());
    r.nic.inject(&inner);
    r.poll();
    let got = r.rx();
    assert_eq!(got[0].0, inner, "VME set: stripped again");
    assert_ne!(got[0].1 & rx_sta::VP, 0);
    assert_eq!(got[0].2, 0x123);
    // A frame shorter than the minimum once untagged is padded to 60 bytes.
    let short = eth(0x0800, &pattern(10, 4));
    r.nic.inject(&short);
    r.poll();
    let got = r.rx();
    let mut want = short.clone();
    want.resize(60, 0);
    assert_eq!(got[0].0, want);
    r.no_violations();
}

#[test]
fn rx_joined_frames_queued_behind_a_full_guest_ring_arrive_whole() {
    let mut r = Rig::new(32, 16);
    r.f.mode = Mode::TagRx(7);
    r.up(8, 8, Rctl::SECRC.bits());
    let frames: Vec<Vec<u8>> = (0..12).map(|i| eth(0x0800, &pattern(300, i))).collect();
    for f in &frames {
        r.nic.inject(f);
    }
    r.poll();
    assert!(r.e.counters().rx_stalls > 0, "the guest ring filled up");
    let mut got = Vec::new();
    for _ in 0..6 {
        got.extend(r.rx().into_iter().map(|x| x.0));
        r.poll();
    }
    let want: Vec<Vec<u8>> = frames.iter().map(|f| with_tag(f, 7)).collect();
    assert_eq!(got, want);
    assert_eq!(r.e.counters().rx.dropped_total(), 0);
    r.no_violations();
}

#[test]
fn rx_guest_ring_full_backpressures_without_loss() {
    let mut r = Rig::new(32, 16);
    r.up(8, 8, Rctl::SECRC.bits());
    let frames: Vec<Vec<u8>> = (0..12).map(|i| eth(0x0800, &pattern(300, i))).collect();
    for f in &frames {
        r.nic.inject(f);
    }
    r.poll();
    assert!(r.e.counters().rx_stalls > 0);
    let mut got = Vec::new();
    for _ in 0..6 {
        got.extend(r.rx().into_iter().map(|x| x.0));
        r.poll();
    }
    assert_eq!(got, frames);
    assert_eq!(r.e.counters().rx.dropped_total(), 0);
    // Real ring full too: 40 frames into a 16-entry real ring.
    let frames: Vec<Vec<u8>> = (0..40).map(|i| eth(0x0800, &pattern(64, i))).collect();
    for f in &frames {
        r.nic.inject(f);
    }
    let mut got = Vec::new();
    for _ in 0..20 {
        r.poll();
        got.extend(r.rx().into_iter().map(|x| x.0));
    }
    assert_eq!(got, frames);
    r.no_violations();
}

#[test]
fn rx_hostile_guest_buffers() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    // Descriptor 0 points into Shoji's memory, descriptor 1 beyond RAM.
    r.ram.write_u64(RX_RING, HV.0).unwrap();
    r.ram.write_u64(RX_RING + 16, RAM as u64 - 10).unwrap();
    for i in 0..3 {
        r.nic.inject(&eth(0x0800, &pattern(100, i)));
    }
    r.poll();
    let got = r.rx();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].3 & crate::desc::RX_ERR_RXE, crate::desc::RX_ERR_RXE);
    assert_eq!(got[1].3 & crate::desc::RX_ERR_RXE, crate::desc::RX_ERR_RXE);
    assert_eq!(got[2].3, 0);
    assert_eq!(got[2].0, eth(0x0800, &pattern(100, 2)));
    assert_eq!(r.e.counters().rx.dropped(DropReason::HostileDescriptor), 2);
    // Exactly the two hostile buffers were attempted (one write each, refused, then reported
    // with RXE and counted), nothing else: the refusal is the simulated RAM's, so the count and
    // the addresses are what shows the engine stopped at the first refused write.
    assert_eq!(r.ram.refused, [(HV.0, 114), (RAM as u64 - 10, 114)]); // 14 + 100 bytes
                                                                      // Ring registers out of range: frames dropped, counted, no panic.
    r.w(regs::RDT, 9999);
    r.nic.inject(&eth(0x0800, &pattern(100, 9)));
    r.poll();
    assert!(r.e.counters().rx.dropped(DropReason::HostileDescriptor) >= 3);
    r.no_violations();
}

#[test]
fn rx_disabled_drops_and_filter_drops_are_counted() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.w(regs::RCTL, Rctl::SECRC.bits());
    r.w(regs::RCTL, Rctl::SECRC.bits() | Rctl::EN.bits());
    r.f.mode = Mode::DropAll;
    r.nic.inject(&eth(0x0800, &pattern(100, 1)));
    r.poll();
    assert!(r.rx().is_empty());
    assert_eq!(r.e.counters().rx.dropped(DropReason::PolicyDenied), 1);
    r.send_frame(&eth(0x0800, &pattern(100, 1)));
    assert!(r.nic.take_sent().is_empty());
    assert_eq!(r.e.counters().tx.dropped(DropReason::PolicyDenied), 1);
    assert_eq!(
        r.tx_status(0) & 1,
        1,
        "a filtered frame still completes its descriptor"
    );
}

#[test]
fn rx_frames_the_nic_reports_broken_are_dropped_checksum_errors_are_not() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    // CE, SE, SEQ, CXE, RXE: the frame itself is bad.
    for (k, bit) in [0x01u8, 0x02, 0x04, 0x10, 0x80].into_iter().enumerate() {
        r.nic.0.borrow_mut().rx_errors = bit;
        r.nic.inject(&eth(0x0800, &pattern(100, k as u8)));
        r.poll();
        assert!(r.rx().is_empty(), "error bit {bit:#x}");
        assert_eq!(
            r.e.counters().rx.dropped(DropReason::Malformed),
            k as u64 + 1
        );
    }
    // TCPE, IPE: only a checksum the NIC checked is wrong; the guest checks it again.
    for bit in [0x20u8, 0x40] {
        r.nic.0.borrow_mut().rx_errors = bit;
        let f = eth(0x0800, &pattern(100, bit));
        r.nic.inject(&f);
        r.poll();
        assert_eq!(r.rx()[0].0, f, "error bit {bit:#x}");
    }
    assert_eq!(r.e.counters().rx.dropped(DropReason::Malformed), 5);
    r.no_violations();
}

#[test]
fn rx_nothing_reaches_a_guest_with_receive_or_bus_mastering_off() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    // Receive disabled (RCTL.EN clear), bus mastering on: a frame relayed into the guest (the
    // real NIC receives nothing meanwhile) is not written into its ring.
    r.w(regs::RCTL, Rctl::SECRC.bits());
    r.f.mode = Mode::Hairpin;
    r.send_frame(&eth(0x0800, &pattern(100, 1)));
    assert_eq!(r.nic.take_sent().len(), 1);
    r.poll();
    assert!(r.rx().is_empty());
    assert_eq!(r.e.counters().rx.dropped(DropReason::NoDestination), 1);
    r.f.mode = Mode::Pass;
    // Receive enabled, bus mastering off.
    r.w(regs::RCTL, Rctl::SECRC.bits() | Rctl::EN.bits());
    r.e.pci_config_write(0x04, 2, 0x0003, 0x0000_0007);
    r.nic.inject(&eth(0x0800, &pattern(100, 2)));
    r.poll();
    assert!(r.rx().is_empty());
    assert_eq!(r.e.counters().rx.dropped(DropReason::NoDestination), 2);
    // Both on: frames flow again.
    r.e.pci_config_write(0x04, 2, 0x0007, 0x0000_0007);
    let f = eth(0x0800, &pattern(100, 3));
    r.nic.inject(&f);
    r.poll();
    assert_eq!(r.rx()[0].0, f);
    r.no_violations();
}

#[test]
fn rx_a_standard_guest_takes_1518_byte_frames_not_one_byte_more() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    let largest = eth(0x0800, &pattern(1518 - 14, 1));
    r.nic.inject(&largest);
    r.poll();
    assert_eq!(r.rx()[0].0, largest);
    r.nic.inject(&eth(0x0800, &pattern(1519 - 14, 2)));
    r.poll();
    assert!(r.rx().is_empty());
    assert_eq!(r.e.counters().rx.dropped(DropReason::Oversize), 1);
    r.no_violations();
}

#[test]
fn rx_the_largest_frame_reaches_a_jumbo_guest_one_byte_more_is_oversize() {
    let mut r = Rig::new(32, 32);
    let jumbo = Rctl::SECRC.bits() | Rctl::LPE.bits() | Rctl::BSEX.bits() | (1 << 16);
    r.up(8, 8, jumbo); // 16 KiB buffers
    let largest = eth(0x0800, &pattern(crate::engine::MAX_WIRE_FRAME - 14, 1));
    r.nic.inject(&largest);
    r.poll();
    let got = r.rx();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, largest);
    let over = eth(0x0800, &pattern(crate::engine::MAX_WIRE_FRAME - 13, 2));
    r.nic.inject(&over);
    r.poll();
    assert!(r.rx().is_empty());
    assert_eq!(r.e.counters().rx.dropped(DropReason::Oversize), 1);
    r.no_violations();
}

#[test]
fn rx_delivered_frames_and_bytes_are_counted_on_the_cause_that_moved_them() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.nic.inject(&eth(0x0800, &pattern(100, 1)));
    r.nic.inject(&eth(0x0806, &[1, 2, 3])); // padded to 60 bytes
    r.poll();
    assert_eq!(r.rx().len(), 2);
    let c = r.e.counters();
    assert_eq!((c.rx.frames, c.rx.bytes), (2, 114 + 60));
    assert_eq!(c.cost[crate::ExitCause::Poll as usize].frames, 2);
    // Frames the filter drops were moved too.
    r.f.mode = Mode::DropAll;
    r.nic.inject(&eth(0x0800, &pattern(100, 2)));
    r.poll();
    assert_eq!(
        r.e.counters().cost[crate::ExitCause::Poll as usize].frames,
        3
    );
}

#[test]
fn rx_descriptor_minimum_threshold_is_signalled_when_half_the_ring_is_used() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits()); // RDMTS 1/2: 4 of 8 descriptors
    assert_eq!(r.r(regs::ICR), 0);
    r.nic.inject(&eth(0x0800, &pattern(100, 1)));
    r.poll();
    let icr = r.r(regs::ICR);
    assert_ne!(icr & Int::RXT0.bits(), 0);
    assert_eq!(icr & Int::RXDMT0.bits(), 0, "6 of 8 descriptors still free");
    r.nic.inject(&eth(0x0800, &pattern(100, 2)));
    r.poll();
    assert_eq!(r.r(regs::ICR) & Int::RXDMT0.bits(), 0, "5 free");
    r.nic.inject(&eth(0x0800, &pattern(100, 3)));
    r.poll();
    assert_ne!(
        r.r(regs::ICR) & Int::RXDMT0.bits(),
        0,
        "4 free: the threshold"
    );
    assert_eq!(r.rx().len(), 3);
}

#[test]
fn rx_a_descriptor_whose_status_the_guest_may_not_address_is_hostile() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    // Descriptor 0's buffer address is readable, its write-back half is not.
    let hv = r.ram.hv;
    r.ram.hv = (RX_RING + 8, RX_RING + 16);
    r.nic.inject(&eth(0x0800, &pattern(100, 1)));
    r.poll();
    r.ram.hv = hv;
    assert_eq!(r.e.counters().rx_hostile_descs, 1);
    assert_eq!(r.e.counters().rx.dropped(DropReason::HostileDescriptor), 1);
    assert_eq!(r.e.counters().rx.frames, 0);
}

#[test]
fn rx_frames_wait_in_the_real_ring_until_the_guest_has_room_for_them_and_their_fcs() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, 3 << 16); // 256-byte buffers, the guest keeps the FCS
    r.w(regs::RDT, 4); // 4 descriptors free
                       // 1,022 bytes + FCS need 5 descriptors: none may leave the real ring yet.
    let frames: Vec<Vec<u8>> = (0..6).map(|i| eth(0x0800, &pattern(1008, i))).collect();
    for f in &frames {
        r.nic.inject(f);
    }
    r.poll();
    assert!(r.e.counters().rx_stalls > 0);
    assert_eq!(r.e.counters().rx.frames, 0);
    r.w(regs::RDT, 7);
    let mut got = Vec::new();
    for _ in 0..12 {
        r.poll();
        got.extend(r.rx().into_iter().map(|x| x.0[..x.0.len() - 4].to_vec()));
    }
    assert_eq!(got, frames);
    assert_eq!(r.e.counters().rx.dropped_total(), 0);
    r.no_violations();
}

#[test]
fn rx_a_frame_that_needs_exactly_the_free_descriptors_is_delivered() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, 3 << 16); // 256-byte buffers, the guest keeps the FCS
    r.w(regs::RDT, 5); // 5 descriptors free
                       // 1,018 bytes: room kept for a tag and the FCS, 1,034 bytes, exactly 5 buffers.
    let f = eth(0x0800, &pattern(1004, 1));
    r.nic.inject(&f);
    r.poll();
    let got = r.rx();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].0[..f.len()], &f[..]);
}

#[test]
fn rx_the_real_tail_trails_the_next_descriptor_to_harvest() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    for k in 0..3u32 {
        r.nic.inject(&eth(0x0800, &pattern(100, k as u8)));
        r.poll();
        r.rx();
        assert_eq!(r.nic.reg(regs::RDT), k, "after {} frames", k + 1);
    }
}

#[test]
fn rx_every_real_descriptor_is_given_back_empty_so_no_frame_is_received_twice() {
    let mut r = Rig::new(32, 16);
    r.up(8, 8, Rctl::SECRC.bits());
    // One frame at a time, round Shoji's 16-entry real ring three times.
    for k in 0..48u8 {
        let f = eth(0x0800, &pattern(100, k));
        r.nic.inject(&f);
        r.poll();
        let got: Vec<Vec<u8>> = r.rx().into_iter().map(|x| x.0).collect();
        assert_eq!(got, vec![f], "frame {k}");
    }
    r.no_violations();
}

#[test]
fn rx_frames_queued_for_a_full_guest_ring_count_a_stall_per_attempt() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.w(regs::RDT, 0); // no descriptor free
    r.f.mode = Mode::Hairpin;
    let f = eth(0x0800, &pattern(90, 1));
    r.send_frame(&f);
    let stalls = r.e.counters().rx_stalls;
    r.poll();
    r.poll();
    assert_eq!(
        r.e.counters().rx_stalls,
        stalls + 2,
        "one per poll that found it waiting"
    );
    r.w(regs::RDT, 7);
    r.poll();
    assert_eq!(r.rx()[0].0, f);
    assert_eq!(r.e.counters().rx.dropped_total(), 0);
}

#[test]
fn hairpin_relays_tx_into_guest_rx() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.f.mode = Mode::Hairpin;
    let f = eth(0x0800, &pattern(90, 1));
    r.send_frame(&f);
    assert_eq!(r.nic.take_sent(), vec![f.clone()]);
    let icr = r.r(regs::ICR);
    assert_ne!(icr & Int::RXT0.bits(), 0);
    assert_eq!(r.rx()[0].0, f);
    assert_eq!(r.e.counters().hairpin_frames, 1);
}

#[test]
fn hairpin_frames_wait_for_a_full_guest_ring_in_order_and_overflow_is_counted() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.f.mode = Mode::Hairpin;
    // The guest's 8-descriptor ring takes 7 frames; the guest does not clean them yet.
    let first: Vec<Vec<u8>> = (0..7).map(|i| eth(0x0800, &pattern(80, i))).collect();
    for f in &first {
        r.nic.inject(f);
    }
    r.poll();
    // Three relayed frames find the ring full: they wait in Shoji's guest queue.
    let relayed: Vec<Vec<u8>> = (10..13).map(|i| eth(0x0800, &pattern(90, i))).collect();
    for f in &relayed {
        r.send_frame(f);
    }
    // A frame from the wire behind them must not overtake them.
    let later = eth(0x0800, &pattern(70, 20));
    r.nic.inject(&later);
    r.poll();
    let mut got: Vec<Vec<u8>> = Vec::new();
    for _ in 0..4 {
        got.extend(r.rx().into_iter().map(|x| x.0));
        r.poll();
    }
    let want: Vec<Vec<u8>> = first
        .iter()
        .chain(&relayed)
        .chain([&later])
        .cloned()
        .collect();
    assert_eq!(got, want);
    assert_eq!(r.e.counters().rx.dropped_total(), 0);
    // Six relayed frames behind a full ring: the queue holds four, two are dropped as NoBuffer.
    for i in 0..7 {
        r.nic.inject(&eth(0x0800, &pattern(80, 30 + i)));
    }
    r.poll();
    let more: Vec<Vec<u8>> = (40..46).map(|i| eth(0x0800, &pattern(90, i))).collect();
    for f in &more {
        r.send_frame(f);
    }
    assert_eq!(r.e.counters().rx.dropped(DropReason::NoBuffer), 2);
    let mut got: Vec<Vec<u8>> = Vec::new();
    for _ in 0..4 {
        got.extend(r.rx().into_iter().map(|x| x.0));
        r.poll();
    }
    assert_eq!(got.len(), 7 + 4);
    assert_eq!(got[7..], more[..4]);
    r.no_violations();
}

#[test]
fn rx_frame_size_limits_for_the_guest_are_exact() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits() | Rctl::BSEX.bits() | (1 << 16)); // 16 KiB buffers
    r.rx_bsize = 16384;
    // Without LPE: 1518 bytes (1522 with the FCS) arrive, 1519 do not.
    let fits = eth(0x0800, &pattern(1518 - 14, 1));
    let over = eth(0x0800, &pattern(1519 - 14, 2));
    r.nic.inject(&fits);
    r.nic.inject(&over);
    r.poll();
    let got = r.rx();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, fits);
    assert_eq!(r.e.counters().rx.dropped(DropReason::Oversize), 1);
    // With LPE: a tag added by the filter may take a frame to the largest the guest takes
    // (MAX_WIRE_FRAME), not beyond.
    r.w(
        regs::RCTL,
        Rctl::EN.bits() | Rctl::SECRC.bits() | Rctl::LPE.bits() | Rctl::BSEX.bits() | (1 << 16),
    );
    r.f.mode = Mode::TagRx(5);
    let largest = eth(0x0800, &pattern(crate::engine::MAX_WIRE_FRAME - 4 - 14, 3));
    r.nic.inject(&largest);
    r.poll();
    let got = r.rx();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.len(), crate::engine::MAX_WIRE_FRAME);
    let beyond = eth(0x0800, &pattern(crate::engine::MAX_WIRE_FRAME - 3 - 14, 4));
    r.nic.inject(&beyond);
    r.poll();
    assert!(r.rx().is_empty());
    assert_eq!(r.e.counters().rx.dropped(DropReason::Oversize), 2);
    r.no_violations();
}

// ---- registers, interrupts, reset ------------------------------------------------------------

#[test]
fn icr_virtualisation_no_spurious_no_lost() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.w(regs::IMC, u32::MAX);
    assert_eq!(r.nic.reg(regs::IMS), 0);
    r.send_frame(&eth(0x0800, &pattern(60, 1)));
    assert!(!r.nic.irq_asserted(), "masked: no interrupt");
    r.w(regs::IMS, Int::TXDW.bits());
    assert!(r.nic.irq_asserted(), "pending cause raised when unmasked");
    assert_eq!(r.r(regs::IMS), Int::TXDW.bits());
    let icr = r.r(regs::ICR);
    assert_eq!(icr & Int::TXDW.bits(), Int::TXDW.bits());
    assert_eq!(icr & Int::DOORBELL.bits(), 0, "the doorbell is invisible");
    assert!(!r.nic.irq_asserted(), "reading ICR deasserts");
    assert_eq!(r.r(regs::ICR), 0);
    // Link status change passes through.
    r.w(regs::IMS, Int::LSC.bits());
    {
        let mut n = r.nic.clone();
        crate::NicRegisters::write32(&mut n, regs::ICS, Int::LSC.bits());
    }
    assert!(r.nic.irq_asserted());
    assert_eq!(r.r(regs::ICR), Int::LSC.bits());
    // Guest ICS raises a virtual cause.
    r.w(regs::ICS, Int::RXDMT0.bits());
    let icr = r.r(regs::ICR);
    assert_eq!(icr, Int::RXDMT0.bits());
    // ICR write-one-to-clear.
    r.w(regs::ICS, (Int::TXDW | Int::RXT0).bits());
    r.w(regs::ICR, Int::TXDW.bits());
    assert_eq!(r.r(regs::ICR), Int::RXT0.bits());
    // Clearing every pending cause by writing ICR withdraws the interrupt.
    r.w(regs::ICS, Int::TXDW.bits());
    assert!(r.nic.irq_asserted());
    r.w(regs::ICR, u32::MAX);
    assert!(!r.nic.irq_asserted());
    // Real TX completions never interrupt the guest by themselves.
    assert_eq!(r.nic.reg(regs::IMS) & (Int::TXDW | Int::TXQE).bits(), 0);
}

#[test]
fn guest_reset_through_io_bar_and_reinit() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    r.send_frame(&eth(0x0800, &pattern(60, 1)));
    r.nic.take_sent();
    r.nic.0.borrow_mut().reset_delay = 2;
    // Linux resets the 82540 through IOADDR/IODATA.
    r.io_w(0, regs::CTRL);
    let ctrl = r.io_r(4);
    r.io_w(4, ctrl | Ctrl::RST.bits());
    assert_eq!(r.nic.0.borrow().resets, 1);
    assert_eq!(r.io_r(0), regs::CTRL);
    assert_eq!(r.e.counters().guest_resets, 1);
    // Shadows are back to defaults.
    assert_eq!(r.r(regs::TDLEN), 0);
    assert_eq!(r.r(regs::RCTL), 0);
    assert_eq!(r.r(regs::IMS), 0);
    assert_eq!(r.r(regs::VET), regs::VET_DEFAULT);
    r.poll();
    r.poll();
    r.poll();
    assert_ne!(
        r.r(regs::TCTL) & (0xff << 4),
        0,
        "device default TCTL visible after reset"
    );
    for _ in 0..3 {
        r.poll();
    }
    // The real rings were re-programmed at Shoji's DMA region once the device left reset.
    assert_eq!(
        u64::from(r.nic.reg(regs::TDBAL)) | (u64::from(r.nic.reg(regs::TDBAH)) << 32),
        DMA_PHYS
    );
    assert_eq!(r.nic.reg(regs::RDLEN), 32 * 16);
    r.up(8, 8, Rctl::SECRC.bits());
    let f = eth(0x0800, &pattern(70, 2));
    r.send_frame(&f);
    assert_eq!(r.nic.take_sent(), vec![f.clone()]);
    r.nic.inject(&f);
    r.poll();
    assert_eq!(r.rx()[0].0, f);
    r.no_violations();
}

#[test]
fn ring_registers_never_reach_the_device() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    // Direct and 82542-alias writes of the ring base stay in the shadow.
    r.w(regs::TDBAL, 0x1234_0000);
    r.w(0x0420, 0x5678_0000);
    r.w(0x0110, 0x9abc_0000);
    assert_eq!(r.r(regs::TDBAL), 0x5678_0000);
    assert_eq!(r.r(regs::RDBAL), 0x9abc_0000);
    assert_eq!(u64::from(r.nic.reg(regs::TDBAL)), DMA_PHYS & 0xffff_ffff);
    assert_eq!(
        u64::from(r.nic.reg(regs::RDBAL)),
        (DMA_PHYS + 32 * 16) & 0xffff_ffff
    );
    // FIFO and packet-buffer access is refused.
    r.w(0x3410, 1);
    r.w(0x8000, 1);
    r.w(0x1_0000, 0xdead_beef);
    assert_eq!(r.r(0x3418), 0);
    assert_eq!(r.nic.reg(0x1_0000), 0);
    assert_eq!(r.e.counters().refused_accesses, 4);
    // RSRPD is shadowed so the doorbell bit is never raised by the device.
    r.w(regs::RSRPD, 100);
    assert_eq!(r.r(regs::RSRPD), 100);
    assert_eq!(r.nic.reg(regs::RSRPD), 0);
    // Pass-through registers on trapped pages reach the device.
    r.w(regs::TIPG, 0x0060_200a);
    assert_eq!(r.nic.reg(regs::TIPG), 0x0060_200a);
    assert_eq!(r.r(regs::STATUS), 0x83);
    // Real RCTL uses Shoji's buffer size; the guest sees its own.
    r.w(
        regs::RCTL,
        Rctl::EN.bits() | Rctl::BSEX.bits() | (1 << 16) | Rctl::VFE.bits(),
    );
    assert_eq!(
        r.r(regs::RCTL),
        Rctl::EN.bits() | Rctl::BSEX.bits() | (1 << 16) | Rctl::VFE.bits()
    );
    let real = Rctl::from_bits_retain(r.nic.reg(regs::RCTL));
    assert_eq!(real.buffer_size(), Some(2048));
    assert!(!real.contains(Rctl::VFE));
}

#[test]
fn partial_and_wide_accesses() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    let mut env = Env {
        mem: &mut r.ram,
        filter: &mut r.f,
        task: None,
    };
    r.e.mmio_write(&mut env, regs::TDBAL, 8, 0x0000_0001_2345_6780);
    assert_eq!(r.e.mmio_read(&mut env, regs::TDBAH, 4), 1);
    assert_eq!(
        r.e.mmio_read(&mut env, regs::TDBAL, 8),
        0x0000_0001_2345_6780
    );
    r.e.mmio_write(&mut env, regs::TDBAL + 1, 1, 0xaa);
    assert_eq!(r.e.mmio_read(&mut env, regs::TDBAL, 4), 0x2345_aa80);
    assert_eq!(r.e.mmio_read(&mut env, regs::TDBAL + 2, 2), 0x2345);
    // Unaligned across a register boundary: refused.
    let before = r.e.counters().refused_accesses;
    r.e.mmio_write(&mut env, regs::TDBAL + 2, 4, 0);
    assert_eq!(
        r.e.mmio_read(&mut env, regs::TDBAL + 3, 2),
        0xffff_ffff_ffff_ffff
    );
    assert_eq!(r.e.counters().refused_accesses, before + 2);
    assert_eq!(r.e.mmio_read(&mut env, 0x2_0000, 4), 0xffff_ffff);
}

/// The trapped pages, found from the engine's behaviour instead of from the list: a page must
/// be trapped exactly when the engine does something other than pass a guest access straight to
/// the device at some register of it (a page mapped through would bypass that handling; a page
/// trapped for nothing costs an exit per access).
#[test]
fn trapped_pages_are_the_pages_the_engine_mediates() {
    for own_mac in [None, Some(OWN_MAC)] {
        trapped_pages_are_mediated_pages(Config {
            own_mac,
            ..cfg(32, 32)
        });
    }
}

fn trapped_pages_are_mediated_pages(c: Config) {
    use crate::regs::{BAR_SIZE, PAGE_SIZE};
    let mut r = Rig::with_config(c);
    let mut mediated = Vec::new();
    for off in (0..BAR_SIZE).step_by(4) {
        let page = off / PAGE_SIZE;
        if mediated.contains(&page) {
            continue;
        }
        // Distinct per offset; bit 26 (CTRL.RST) clear.
        let (device, guest) = (0x5a00_0000 | off, 0x2100_0000 | off);
        r.nic.set_reg(off, device);
        let read_through = r.r(off) == device;
        r.w(off, guest);
        let written_through = r.nic.reg(off) == guest;
        if !(read_through && written_through) {
            mediated.push(page);
        }
    }
    let trapped: Vec<u32> = (0..BAR_SIZE / PAGE_SIZE)
        .filter(|p| E1000::<SimNic, SimDma>::page_is_trapped(&c, *p))
        .collect();
    assert_eq!(trapped, mediated);
    // And the registers the shadow rings rest on are among them.
    for off in [regs::ICR, regs::TDT, regs::RDT, regs::RCTL, regs::PBM_START] {
        assert!(trapped.contains(&(off / PAGE_SIZE)), "{off:#x}");
    }
}

#[test]
fn counters_and_cost_hooks() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    for i in 0..4 {
        r.send_frame(&eth(0x0800, &pattern(60, i)));
    }
    let c = r.e.counters_mut();
    c.record_cost(crate::ExitCause::MmioWrite, 40_000, 8_000);
    assert!(c.cost[crate::ExitCause::MmioWrite as usize].frames >= 4);
    let (cyc, ins) = c.cost_per_frame(crate::ExitCause::MmioWrite).unwrap();
    assert_eq!((cyc, ins), (10_000, 2_000));
    assert!(c.exits[crate::ExitCause::MmioWrite as usize] > 0);
    assert_eq!(c.reg_writes[regs::RegId::Tdt as usize], 5);
    assert!(c.cost_per_frame(crate::ExitCause::IoBar).is_none());
    // A frame the filter drops was moved too: it counts for its cause.
    let before = c.cost[crate::ExitCause::MmioWrite as usize].frames;
    r.f.mode = Mode::DropAll;
    r.send_frame(&eth(0x0800, &pattern(60, 9)));
    let c = r.e.counters_mut();
    assert_eq!(
        c.cost[crate::ExitCause::MmioWrite as usize].frames,
        before + 1
    );
    r.e.note_refused_instruction();
    assert_eq!(r.e.counters().insn_refused, 1);
}

#[test]
fn setup_validates_config() {
    let dma = SimDma::new(1 << 20, DMA_PHYS);
    let nic = SimNic::new(dma.clone());
    let b = Box::leak(Box::new(Buffers::new()));
    assert!(matches!(
        E1000::new(nic.clone(), dma, cfg(12, 8), b),
        Err(crate::SetupError::BadRingSize)
    ));
    let dma = SimDma::new(100, DMA_PHYS);
    let b = Box::leak(Box::new(Buffers::new()));
    assert!(matches!(
        E1000::new(nic.clone(), dma, cfg(8, 8), b),
        Err(crate::SetupError::DmaTooSmall)
    ));
    let dma = SimDma::new(1 << 20, DMA_PHYS + 8);
    let b = Box::leak(Box::new(Buffers::new()));
    assert!(matches!(
        E1000::new(nic, dma, cfg(8, 8), b),
        Err(crate::SetupError::DmaMisaligned)
    ));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Arbitrary descriptors, ring registers and register writes never panic, never make
        /// the NIC touch memory outside Shoji's region and never write Shoji's memory.
        #[test]
        fn hostile_guest_never_breaks_the_engine(
            descs in proptest::collection::vec(any::<[u8; 16]>(), 1..24),
            writes in proptest::collection::vec((0usize..14, any::<u32>()), 0..24),
            injected in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1600), 0..6),
        ) {
            let mut r = Rig::new(8, 8);
            r.up(16, 8, Rctl::SECRC.bits());
            // Make descriptor addresses point at interesting places half the time.
            for (i, d) in descs.iter().enumerate() {
                let mut d = *d;
                if i % 2 == 0 {
                    let a = [TX_BUFS, HV.0 - 8, RAM as u64 - 4, 0][i % 4];
                    d[..8].copy_from_slice(&a.to_le_bytes());
                }
                r.put(&[d]);
            }
            let t = r.tx_tail;
            r.w(regs::TDT, t);
            let offs = [regs::TDT, regs::TDH, regs::TDLEN, regs::TDBAL, regs::RDT, regs::RDH,
                regs::RDLEN, regs::RCTL, regs::CTRL, regs::IMS, regs::ICS, regs::TCTL, regs::ICR, regs::VET];
            for (k, v) in &writes {
                let v = if offs[*k] == regs::CTRL { v & !Ctrl::RST.bits() } else { *v };
                r.w(offs[*k], v);
                r.poll();
            }
            for f in &injected {
                r.nic.inject(f);
            }
            r.poll();
            let _ = r.r(regs::ICR);
            let _ = r.rx();
            r.no_violations();
            // Every refused write is one the engine noticed and reported as a hostile RX
            // descriptor; transmission never writes outside the ring it just read.
            prop_assert_eq!(r.ram.refused.len() as u64, r.e.counters().rx_hostile_descs);
        }

        /// Random guest RX ring contents never let a frame escape guest RAM.
        #[test]
        fn hostile_rx_descriptors(addrs in proptest::collection::vec(any::<u64>(), 8), bsize in 0u32..8) {
            let mut r = Rig::new(8, 8);
            let b = bsize & 3;
            let bsex = if bsize >= 4 && b != 0 { Rctl::BSEX.bits() } else { 0 };
            r.up(8, 8, Rctl::SECRC.bits() | Rctl::LPE.bits() | (b << 16) | bsex);
            for (i, a) in addrs.iter().enumerate() {
                r.ram.write_u64(RX_RING + i as u64 * 16, *a).unwrap();
            }
            for k in 0..6u8 {
                r.nic.inject(&eth(0x0800, &pattern(100 + 700 * usize::from(k), k)));
                r.poll();
            }
            r.no_violations();
            // The ring is valid, so each refused write is a buffer write, and each one was
            // noticed: reported with RXE and counted as a hostile descriptor, once.
            prop_assert_eq!(r.ram.refused.len() as u64, r.e.counters().rx_hostile_descs);
        }
    }
}

#[test]
fn rx_interrupt_reenable_is_a_sync_point() {
    let mut r = Rig::new(32, 32);
    r.up(8, 8, Rctl::SECRC.bits());
    // NAPI: interrupts masked while polling; a frame arrives meanwhile.
    r.w(regs::IMC, u32::MAX);
    let f = eth(0x0800, &pattern(120, 4));
    r.nic.inject(&f);
    assert!(!r.nic.irq_asserted());
    // Re-enabling interrupts harvests and raises RXT0 for the guest.
    assert_eq!(
        r.e.counters().rx.frames,
        0,
        "nothing harvested while masked"
    );
    r.w(regs::IMS, (Int::RXT0 | Int::TXDW).bits());
    assert_eq!(r.e.counters().rx.frames, 1);
    assert!(r.nic.irq_asserted(), "pending RX cause signalled on unmask");
    assert_ne!(r.r(regs::ICR) & Int::RXT0.bits(), 0);
    assert_eq!(r.rx()[0].0, f);
}

// ---- interrupt throttling (ITR) ------------------------------------------------------------

impl Rig {
    fn set_clock(&mut self, ns: u64) {
        self.nic.0.borrow_mut().clock = Some(ns);
    }

    /// TX descriptors the engine completed (DD) among the guest's first `n`.
    fn tx_done(&self, n: u32) -> u32 {
        (0..n)
            .filter(|&i| self.tx_status(i) & crate::desc::TX_STA_DD != 0)
            .count() as u32
    }
}

/// ITR 100 = 25.6 us between interrupts.
const ITR_100_NS: u64 = 100 * 256;

#[test]
fn itr_throttles_tx_interrupts_and_signals_at_interval_end() {
    let mut r = Rig::new(32, 32);
    r.set_clock(1_000_000);
    r.up(16, 8, Rctl::SECRC.bits());
    r.w(regs::ITR, 100);
    assert_eq!(r.r(regs::ITR), 100, "the guest reads its ITR back");
    assert_eq!(
        r.nic.reg(regs::ITR),
        0,
        "the device never throttles the doorbell"
    );
    let t0 = 1_000_000;
    r.send_frame(&eth(0x0800, &pattern(60, 1)));
    assert!(r.nic.irq_asserted(), "first completion interrupts at once");
    assert_ne!(r.r(regs::ICR) & Int::TXDW.bits(), 0);
    assert!(!r.nic.irq_asserted());
    // Four more frames inside the interval: completed at once, interrupt deferred.
    for k in 0..4u64 {
        r.set_clock(t0 + 1_000 + k * 1_000);
        r.send_frame(&eth(0x0800, &pattern(60, 2)));
        assert!(
            !r.nic.irq_asserted(),
            "no interrupt inside the ITR interval"
        );
    }
    assert_eq!(r.tx_done(5), 5, "completion itself is not delayed");
    assert_eq!(r.e.counters().virq_deferred, 1);
    assert_eq!(r.e.next_deadline_ns(), Some(t0 + ITR_100_NS));
    r.set_clock(t0 + ITR_100_NS - 1);
    r.poll();
    assert!(!r.nic.irq_asserted());
    r.set_clock(t0 + ITR_100_NS);
    r.poll();
    assert!(
        r.nic.irq_asserted(),
        "deferred cause signalled at the interval's end"
    );
    assert_eq!(r.r(regs::ICR) & Int::TXDW.bits(), Int::TXDW.bits());
    assert_eq!(r.e.counters().virq_raised, 2, "five frames, two interrupts");
    assert_eq!(r.r(regs::ICR), 0, "nothing left: no spurious cause");
    r.no_violations();
}

#[test]
fn itr_masks_device_rx_interrupt_inside_interval() {
    let mut r = Rig::new(32, 32);
    r.set_clock(0);
    r.up(8, 8, Rctl::SECRC.bits());
    r.w(regs::ITR, 100);
    r.send_frame(&eth(0x0800, &pattern(60, 1)));
    assert!(r.nic.irq_asserted());
    r.r(regs::ICR);
    assert_eq!(
        r.nic.reg(regs::IMS) & Int::RXT0.bits(),
        0,
        "device RX interrupt masked inside the interval"
    );
    // A frame arrives inside the interval: harvested by the poll, signalled at the end.
    r.set_clock(1_000);
    let f = eth(0x0800, &pattern(100, 3));
    r.nic.inject(&f);
    assert!(!r.nic.irq_asserted());
    r.set_clock(2_000);
    r.poll();
    assert_eq!(r.e.counters().rx.frames, 1);
    assert!(!r.nic.irq_asserted());
    r.set_clock(ITR_100_NS);
    r.poll();
    assert!(r.nic.irq_asserted());
    assert_ne!(r.r(regs::ICR) & Int::RXT0.bits(), 0);
    assert_eq!(r.rx()[0].0, f);
    // The doorbell at ITR_100_NS started a new interval; after it the device's own RX
    // interrupt is unmasked again and interrupts directly.
    assert_eq!(r.e.next_deadline_ns(), Some(2 * ITR_100_NS));
    r.set_clock(2 * ITR_100_NS);
    r.poll();
    assert_eq!(r.e.next_deadline_ns(), None);
    assert_ne!(r.nic.reg(regs::IMS) & Int::RXT0.bits(), 0);
    r.nic.inject(&f);
    assert!(
        r.nic.irq_asserted(),
        "open interval: the device interrupts at once"
    );
    assert_ne!(r.r(regs::ICR) & Int::RXT0.bits(), 0);
    assert_eq!(r.e.counters().real_rx_irqs, 1);
    assert_eq!(r.rx().len(), 1);
    // That interrupt started an interval too.
    assert_eq!(r.nic.reg(regs::IMS) & Int::RXT0.bits(), 0);
    assert_eq!(r.e.next_deadline_ns(), Some(3 * ITR_100_NS));
    r.no_violations();
}

#[test]
fn itr_zero_or_no_clock_means_no_throttling() {
    for (clock, itr) in [(Some(0), 0), (None, 100)] {
        let mut r = Rig::new(32, 32);
        r.nic.0.borrow_mut().clock = clock;
        r.up(8, 8, Rctl::SECRC.bits());
        r.w(regs::ITR, itr);
        for k in 0..3 {
            r.send_frame(&eth(0x0800, &pattern(60, k)));
            assert!(r.nic.irq_asserted(), "clock {clock:?} itr {itr}: frame {k}");
            r.r(regs::ICR);
        }
        assert_eq!(r.e.counters().virq_raised, 3);
        assert_eq!(r.e.counters().virq_deferred, 0);
        assert_eq!(r.e.next_deadline_ns(), None);
    }
}

#[test]
fn itr_deferred_cause_masked_meanwhile_is_not_raised() {
    let mut r = Rig::new(32, 32);
    r.set_clock(0);
    r.up(8, 8, Rctl::SECRC.bits());
    r.w(regs::ITR, 100);
    r.send_frame(&eth(0x0800, &pattern(60, 1)));
    r.r(regs::ICR);
    r.send_frame(&eth(0x0800, &pattern(60, 2)));
    assert!(!r.nic.irq_asserted());
    // The guest masks everything (NAPI) before the interval ends.
    r.w(regs::IMC, u32::MAX);
    r.set_clock(ITR_100_NS);
    r.poll();
    assert!(!r.nic.irq_asserted(), "masked cause: no interrupt");
    // Unmasking after the interval signals the cause at once.
    r.w(regs::IMS, Int::TXDW.bits());
    assert!(r.nic.irq_asserted());
    assert_ne!(r.r(regs::ICR) & Int::TXDW.bits(), 0);
    // A reset forgets the throttling state.
    r.w(regs::CTRL, Ctrl::RST.bits());
    assert_eq!(r.r(regs::ITR), 0);
    assert_eq!(r.e.next_deadline_ns(), None);
}

mod itr_props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Send,
        Advance(u64),
        Poll,
        Inject,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Send),
            3 => (1u64..40_000).prop_map(Op::Advance),
            1 => Just(Op::Poll),
            2 => Just(Op::Inject),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A driver that services every interrupt at once: interrupts are at least one ITR
        /// interval apart, every frame is eventually completed and signalled (no lost
        /// interrupt), and every interrupt carries a cause (no spurious one).
        #[test]
        fn throttled_interrupts_are_spaced_never_lost_never_spurious(
            ops in proptest::collection::vec(op(), 1..120),
            itr in 1u32..400,
        ) {
            let mut r = Rig::new(64, 64);
            let mut now = 10_000_000u64;
            r.set_clock(now);
            r.up(32, 32, Rctl::SECRC.bits());
            r.w(regs::ITR, itr);
            let interval = u64::from(itr) * 256;
            let mut last_irq: Option<u64> = None;
            let (mut sent, mut injected, mut received) = (0u32, 0usize, 0usize);
            let mut outstanding_tx = false;
            let service = |r: &mut Rig, now: u64, last: &mut Option<u64>,
                           received: &mut usize, outstanding: &mut bool| {
                if r.nic.irq_asserted() {
                    if let Some(l) = *last {
                        assert!(now >= l + interval, "interrupts {} ns apart", now - l);
                    }
                    *last = Some(now);
                    let icr = r.r(regs::ICR);
                    assert_ne!(icr, 0, "spurious interrupt");
                    if icr & Int::TXDW.bits() != 0 {
                        *outstanding = false;
                    }
                    *received += r.rx().len();
                }
            };
            for o in ops {
                match o {
                    Op::Send => {
                        if sent < 31 {
                            r.send_frame(&eth(0x0800, &pattern(60, sent as u8)));
                            sent += 1;
                            outstanding_tx = true;
                        }
                    }
                    Op::Advance(d) => {
                        now += d;
                        r.set_clock(now);
                    }
                    Op::Poll => r.poll(),
                    Op::Inject => {
                        if injected < 24 {
                            r.nic.inject(&eth(0x0800, &pattern(80, injected as u8)));
                            injected += 1;
                        }
                    }
                }
                service(&mut r, now, &mut last_irq, &mut received, &mut outstanding_tx);
            }
            // Quiesce: past any interval, the poll signals whatever waited.
            for _ in 0..3 {
                now += interval + 1;
                r.set_clock(now);
                r.poll();
                service(&mut r, now, &mut last_irq, &mut received, &mut outstanding_tx);
            }
            prop_assert_eq!(r.tx_done(32), sent);
            prop_assert!(!outstanding_tx, "a TX completion was never signalled");
            prop_assert_eq!(received, injected, "an RX frame was never signalled");
            prop_assert_eq!(r.e.next_deadline_ns(), None);
            r.no_violations();
        }
    }
}

/// The PAUSE frames the NIC sends by itself pass no policy: whatever the guest writes to FCAL,
/// FCAH and FCT, the device keeps 802.3x's destination and type (also after a device reset);
/// the guest reads back what it wrote.
#[test]
fn flow_control_address_and_type_stay_8023x_on_the_device() {
    let mut r = Rig::new(64, 64);
    let standard = |r: &Rig| {
        (
            r.nic.reg(regs::FCAL),
            r.nic.reg(regs::FCAH),
            r.nic.reg(regs::FCT),
        ) == (regs::FCAL_8023X, regs::FCAH_8023X, regs::FCT_8023X)
    };
    assert!(standard(&r), "after attach");
    // A container's MAC 02:00:00:00:00:0a as the destination, IPv4 as the type.
    r.w(regs::FCAL, 0x0000_0002);
    r.w(regs::FCAH, 0x0000_0a00);
    r.w(regs::FCT, 0x0800);
    assert!(standard(&r), "after the guest's writes");
    assert_eq!(
        (r.r(regs::FCAL), r.r(regs::FCAH), r.r(regs::FCT)),
        (0x0000_0002, 0x0a00, 0x0800)
    );
    // The upper halves of FCAH and FCT are reserved: they read back as zero.
    r.w(regs::FCT, 0xffff_8808);
    assert_eq!(r.r(regs::FCT), 0x8808);
    // A device reset (which clears them on the device) and the guest's re-programming.
    r.nic.0.borrow_mut().reset_delay = 1;
    let ctrl = r.r(regs::CTRL);
    r.w(regs::CTRL, ctrl | Ctrl::RST.bits());
    r.poll();
    r.poll();
    r.w(regs::FCAL, 0xdead_beef);
    assert!(standard(&r), "after a reset");
    assert_eq!(r.r(regs::FCAL), 0xdead_beef);
}

// ---- Shoji's own address (the management endpoint) ---------------------------------------

const OWN_MAC: [u8; 6] = [0x02, 0x54, 0x00, 0x12, 0x34, 0xd6];

fn own_rig() -> Rig {
    let mut r = Rig::with_config(Config {
        own_mac: Some(OWN_MAC),
        ..cfg(64, 64)
    });
    r.up(8, 8, Rctl::SECRC.bits());
    r
}

fn real_ra15(r: &Rig) -> (u32, u32) {
    (r.nic.reg(regs::RAL_OWN), r.nic.reg(regs::RAH_OWN))
}

#[test]
fn own_mac_is_received_through_entry_15_which_the_guest_sees_as_its_own() {
    let mut r = own_rig();
    let want = (0x1200_5402, 0x8000_d634);
    assert_eq!(real_ra15(&r), want);
    assert_eq!(r.r(regs::RAL_OWN), 0, "the guest sees an empty entry");
    assert_eq!(r.nic.reg(regs::RCTL) & Rctl::UPE.bits(), 0);
    // The guest programs entry 3: it reads back its value, the device keeps Shoji's, and
    // the device now receives every unicast frame so the guest's address still arrives.
    r.w(regs::RAL_OWN, 0x0403_0201);
    r.w(regs::RAH_OWN, 0x8000_0605);
    assert_eq!(
        (r.r(regs::RAL_OWN), r.r(regs::RAH_OWN)),
        (0x0403_0201, 0x8000_0605)
    );
    assert_eq!(real_ra15(&r), want);
    assert_ne!(r.nic.reg(regs::RCTL) & Rctl::UPE.bits(), 0);
    assert_eq!(
        r.r(regs::RCTL) & Rctl::UPE.bits(),
        0,
        "the guest's RCTL is its own"
    );
    r.w(regs::RAH_OWN, 0x0000_0605);
    assert_eq!(r.nic.reg(regs::RCTL) & Rctl::UPE.bits(), 0);
    // Other receive addresses are the guest's, on the device.
    r.w(regs::RAL0 + 8, 0x0a0b_0c0d);
    assert_eq!(r.nic.reg(regs::RAL0 + 8), 0x0a0b_0c0d);
    // After a device reset Shoji's address is back in entry 3.
    r.nic.0.borrow_mut().reset_delay = 1;
    r.nic.set_reg(regs::RAL_OWN, 0);
    r.nic.set_reg(regs::RAH_OWN, 0);
    let ctrl = r.r(regs::CTRL);
    r.w(regs::CTRL, ctrl | Ctrl::RST.bits());
    r.poll();
    r.poll();
    assert_eq!(real_ra15(&r), want);
    assert_eq!(r.r(regs::RAH_OWN), 0);
}

#[test]
fn without_an_own_mac_entry_15_is_the_guests() {
    let mut r = Rig::new(64, 64);
    r.up(8, 8, Rctl::SECRC.bits());
    r.w(regs::RAL_OWN, 0x0403_0201);
    r.w(regs::RAH_OWN, 0x8000_0605);
    assert_eq!(real_ra15(&r), (0x0403_0201, 0x8000_0605));
    assert_eq!(r.nic.reg(regs::RCTL) & Rctl::UPE.bits(), 0);
}

#[test]
fn own_frames_go_out_uncounted_as_the_guests() {
    let mut r = own_rig();
    let f = eth(0x0800, &pattern(80, 3));
    assert!(r.e.send_own(&f));
    assert_eq!(r.nic.take_sent(), vec![f.clone()]);
    assert_eq!(r.e.counters().tx.frames, 0, "not the guest's frame");
    assert_eq!(r.e.counters().own_tx_frames, 1);
    assert!(
        r.f.seen.is_empty(),
        "Shoji's own frames pass no guest policy"
    );
    // The guest's frames still go out and complete normally around it.
    let g = eth(0x0800, &pattern(90, 4));
    r.send_frame(&g);
    assert_eq!(r.nic.take_sent(), vec![g]);
    assert_eq!(r.e.counters().tx.frames, 1);
    // Refused: empty, oversize, transmit off.
    assert!(!r.e.send_own(&[]));
    assert!(!r.e.send_own(&vec![0u8; crate::engine::MAX_FRAME + 1]));
    r.w(regs::TCTL, 0);
    assert!(!r.e.send_own(&f));
    assert_eq!(r.e.counters().own_tx_refused, 3);
    assert!(r.nic.take_sent().is_empty());
    r.no_violations();
}
