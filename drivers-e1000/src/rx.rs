//! Receive: harvest Shoji's real RX ring, filter, and copy allowed frames into the guest's
//! posted buffers honouring its buffer size, CRC and VLAN stripping settings.

use crate::desc::{rx_sta, RxWriteBack, DESC_SIZE, RX_ERR_FRAME, RX_ERR_RXE};
use crate::engine::{Buffers, Core, Env, Guest, Sink, MAX_WIRE_FRAME, REAL_BUF};
use crate::offload::crc32;
use crate::regs::{self, Int, Rctl};
use crate::{DmaRegion, NicRegisters};
use shoji_shared::{Direction, DropReason, FrameMeta, GuestMemory, MemError, Verdict};

/// Why a frame was not delivered into the guest's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deliver {
    /// No room now: keep it and retry.
    Full,
    /// Dropped for this reason.
    Drop(DropReason),
}

/// Minimum Ethernet frame without FCS.
const MIN_FRAME: usize = 60;
/// Largest frame (with FCS) a guest without RCTL.LPE accepts.
const MAX_STD_FRAME: usize = 1522;
static ZEROS: [u8; MIN_FRAME] = [0; MIN_FRAME];

/// The guest RX ring: (base, descriptors, free descriptors, buffer size), or why not.
fn guest_ring(g: &Guest) -> Result<(u64, u32, u32, usize), DropReason> {
    if g.rctl & Rctl::EN.bits() == 0 || !g.bus_master {
        return Err(DropReason::NoDestination);
    }
    let Some((base, n)) = Guest::ring(g.rdbal, g.rdbah, g.rdlen) else {
        return Err(DropReason::NoDestination);
    };
    if g.rdh >= n || g.rdt >= n {
        return Err(DropReason::HostileDescriptor);
    }
    let Some(bsize) = g.rctl().buffer_size() else {
        return Err(DropReason::HostileDescriptor);
    };
    let free = (g.rdt + n - g.rdh) % n;
    Ok((base, n, free, bsize as usize))
}

/// Copy `len` bytes starting at `off` of the concatenation of `parts` to guest `addr`.
fn write_stream(
    mem: &mut dyn GuestMemory,
    addr: u64,
    parts: &[&[u8]],
    off: usize,
    len: usize,
) -> Result<(), MemError> {
    let end = off + len;
    let mut pos = 0usize;
    for p in parts {
        let (ps, pe) = (pos, pos + p.len());
        pos = pe;
        let s = ps.max(off);
        let e = pe.min(end);
        if s >= e {
            continue;
        }
        let dst = addr
            .checked_add((s - off) as u64)
            .ok_or(MemError::BadRange)?;
        mem.write(dst, &p[s - ps..e - ps])?;
    }
    Ok(())
}

/// The bytes `start..end` of the frame made of `parts` laid end to end, as the pieces of each
/// part that fall in that range.
fn range_of<'a>(parts: &[&'a [u8]; 3], start: usize, end: usize) -> [&'a [u8]; 3] {
    let mut at = 0;
    parts.map(|p| {
        let (s, e) = (start.clamp(at, at + p.len()), end.clamp(at, at + p.len()));
        let piece = &p[s - at..e.max(s) - at];
        at += p.len();
        piece
    })
}

/// Byte `i` of the frame made of `parts` (0 beyond its end).
fn byte_of(parts: &[&[u8]; 3], i: usize) -> u8 {
    range_of(parts, i, i + 1)
        .iter()
        .find_map(|p| p.first().copied())
        .unwrap_or(0)
}

/// Write one frame, given as up to three pieces laid end to end, into the guest's RX ring.
pub(crate) fn deliver<N: NicRegisters, D: DmaRegion>(
    core: &mut Core<N, D>,
    mem: &mut dyn GuestMemory,
    frame: [&[u8]; 3],
) -> Result<(), Deliver> {
    let (base, n, free, bsize) = guest_ring(&core.g).map_err(Deliver::Drop)?;
    let g = &core.g;
    let rctl = g.rctl();
    let len: usize = frame.iter().map(|p| p.len()).sum();
    if len == 0 {
        return Err(Deliver::Drop(DropReason::Truncated));
    }
    if len > MAX_WIRE_FRAME || (!rctl.contains(Rctl::LPE) && len + 4 > MAX_STD_FRAME) {
        return Err(Deliver::Drop(DropReason::Oversize));
    }
    // VLAN stripping (guest CTRL.VME) with the guest's VET.
    let be16 = |at: usize| u16::from_be_bytes([byte_of(&frame, at), byte_of(&frame, at + 1)]);
    let tag = if g.vme() && len >= 18 && u32::from(be16(12)) == g.vet & 0xffff {
        Some(be16(14))
    } else {
        None
    };
    // The bytes the guest gets: the whole frame, or the frame without its tag.
    let (a, b) = match tag {
        Some(_) => (range_of(&frame, 0, 12), range_of(&frame, 16, len)),
        None => (frame, [&[][..]; 3]),
    };
    let [a0, a1, a2] = a;
    let [b0, b1, b2] = b;
    let body = len - if tag.is_some() { 4 } else { 0 };
    let pad = &ZEROS[..MIN_FRAME.saturating_sub(body)];
    let fcs = if rctl.contains(Rctl::SECRC) {
        None
    } else {
        Some(crc32(&[a0, a1, a2, b0, b1, b2, pad]).to_le_bytes())
    };
    let fcs_bytes: &[u8] = match &fcs {
        Some(f) => f,
        None => &[],
    };
    let parts = [a0, a1, a2, b0, b1, b2, pad, fcs_bytes];
    let total = body + pad.len() + fcs_bytes.len();
    let need = total.div_ceil(bsize);
    if need > free as usize {
        return Err(Deliver::Full);
    }
    let mut written = 0usize;
    for k in 0..need {
        let idx = core.g.rdh;
        core.g.rdh = if idx + 1 == n { 0 } else { idx + 1 };
        let Some(daddr) = base.checked_add(u64::from(idx) * DESC_SIZE) else {
            return Err(Deliver::Drop(DropReason::HostileDescriptor));
        };
        let wb_addr = daddr.checked_add(8);
        let clen = bsize.min(total - written);
        let last = k + 1 == need;
        let ok = mem
            .read_u64(daddr)
            .and_then(|buf| write_stream(mem, buf, &parts, written, clen));
        if ok.is_err() {
            // Report the failure on this descriptor as a receive error, as a DMA fault would.
            let wb = RxWriteBack {
                len: 0,
                csum: 0,
                status: rx_sta::DD | rx_sta::EOP,
                errors: RX_ERR_RXE,
                special: 0,
            };
            if let Some(w) = wb_addr {
                let _ = mem.write_u64(w, wb.to_u64());
            }
            core.ctr.rx_hostile_descs += 1;
            if core.logs.rx_hostile.allow() {
                log::warn!("e1000: hostile RX descriptor {idx}");
            }
            signal_rx(core, n);
            return Err(Deliver::Drop(DropReason::HostileDescriptor));
        }
        let mut status = rx_sta::DD | rx_sta::IXSM;
        if last {
            status |= rx_sta::EOP;
        }
        if tag.is_some() {
            status |= rx_sta::VP;
        }
        let wb = RxWriteBack {
            len: clen as u16,
            csum: 0,
            status,
            errors: 0,
            special: tag.unwrap_or(0),
        };
        let wrote = wb_addr.map(|w| mem.write_u64(w, wb.to_u64()));
        if !matches!(wrote, Some(Ok(()))) {
            core.ctr.rx_hostile_descs += 1;
            return Err(Deliver::Drop(DropReason::HostileDescriptor));
        }
        written += clen;
    }
    core.ctr.rx.frames += 1;
    core.ctr.rx.bytes += (body + pad.len()) as u64;
    core.ctr.cost[core.cause as usize].frames += 1;
    signal_rx(core, n);
    Ok(())
}

fn signal_rx<N: NicRegisters, D: DmaRegion>(core: &mut Core<N, D>, n: u32) {
    let g = &core.g;
    let free = (g.rdt + n - g.rdh) % n;
    let mut causes = Int::RXT0;
    if free <= n >> g.rctl().rdmts_shift() {
        causes |= Int::RXDMT0;
    }
    core.g.icr |= causes.bits();
}

/// Guest descriptors a frame of `len` bytes (no FCS) may need, allowing for a tag the filter
/// may add and the FCS the guest may keep.
fn guest_need(len: usize, bsize: usize) -> usize {
    (len.max(MIN_FRAME) + 8).div_ceil(bsize)
}

/// Move completed frames from Shoji's real RX ring through the filter into the guest.
pub(crate) fn harvest<N: NicRegisters, D: DmaRegion>(
    core: &mut Core<N, D>,
    bufs: &mut Buffers,
    env: &mut Env<'_>,
) {
    if core.hw.setup_pending {
        return;
    }
    let Buffers {
        wire, guest, rx, ..
    } = bufs;
    if !core.flush_guest(guest, env.mem) {
        core.ctr.rx_stalls += 1;
        return;
    }
    let n = core.layout.nrx;
    let next = |i: u16| if i + 1 == n { 0 } else { i + 1 };
    let mut consumed = false;
    let mut budget = n;
    while budget > 0 {
        // Peek one complete frame.
        let start = core.hw.rx_next;
        let mut i = start;
        let mut total = 0usize;
        let mut errors = 0u8;
        let mut oversize = false;
        let mut descs = 0u16;
        let mut complete = false;
        while descs < n {
            let mut wbb = [0u8; 8];
            core.dma.read(core.rx_desc_off(i) + 8, &mut wbb);
            let wb = RxWriteBack::from_u64(u64::from_le_bytes(wbb));
            if wb.status & rx_sta::DD == 0 {
                break;
            }
            let len = usize::from(wb.len).min(REAL_BUF);
            if total + len <= MAX_WIRE_FRAME {
                core.dma
                    .read(core.rx_buf_off(i), &mut rx[total..total + len]);
            } else {
                oversize = true;
            }
            total += len;
            errors |= wb.errors;
            descs += 1;
            if wb.status & rx_sta::EOP != 0 {
                complete = true;
                break;
            }
            i = next(i);
        }
        if !complete {
            break;
        }
        if let Ok((_, _, free, bsize)) = guest_ring(&core.g) {
            if guest_need(total, bsize) > free as usize {
                core.ctr.rx_stalls += 1;
                break;
            }
        }
        // Give the descriptors back to the NIC.
        let mut j = start;
        for _ in 0..descs {
            let off = core.rx_desc_off(j) + 8;
            core.dma.write(off, &[0u8; 8]);
            j = next(j);
        }
        core.hw.rx_next = j;
        consumed = true;
        budget = budget.saturating_sub(descs);

        let reason = if errors & RX_ERR_FRAME != 0 {
            Some(DropReason::Malformed)
        } else if oversize {
            Some(DropReason::Oversize)
        } else if total == 0 {
            Some(DropReason::Truncated)
        } else {
            None
        };
        if let Some(r) = reason {
            core.ctr.drop(Direction::Rx, r);
            continue;
        }
        let meta = FrameMeta {
            direction: Direction::Rx,
            descriptor_vlan: None,
            task: None,
        };
        let mut sink = Sink {
            core: &mut *core,
            wire,
            guest,
            mem: &mut *env.mem,
            dir: Direction::Rx,
        };
        if let Verdict::Drop(r) = env.filter.filter(&meta, &rx[..total], &mut sink) {
            core.ctr.drop(Direction::Rx, r);
            core.ctr.cost[core.cause as usize].frames += 1;
        }
    }
    if consumed {
        let n = core.layout.nrx;
        let tail = (core.hw.rx_next + n - 1) % n;
        core.nic.write32(regs::RDT, u32::from(tail));
    }
}
