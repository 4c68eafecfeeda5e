//! The guest's TX ring: walk new descriptors, gather packets, apply offloads, filter, post.

use crate::desc::{cmd, popts, TxContext, TxDesc, DESC_SIZE, TX_STA_DD};
use crate::engine::{
    Buffers, Core, Env, Guest, Sink, GATHER_CAP, HEADROOM, MAX_FRAME, MAX_TSO_SEGMENTS, REAL_BUF,
};
use crate::offload::{self, OffloadError, TsoPlan};
use crate::regs::{Ctrl, Int, Tctl};
use crate::{DmaRegion, NicRegisters};
use shoji_shared::{
    Direction, DropReason, FrameMeta, GuestMemory, MemError, TaskIdentity, Verdict,
};

/// Offload and VLAN settings of one packet.
#[derive(Debug, Clone, Copy, Default)]
struct PacketInfo {
    legacy: bool,
    tse: bool,
    ixsm: bool,
    txsm: bool,
    ic: bool,
    cso: u8,
    css: u8,
    vlan: Option<u16>,
}

fn read_desc(mem: &dyn GuestMemory, base: u64, idx: u32) -> Result<TxDesc, MemError> {
    let off = u64::from(idx) * DESC_SIZE;
    let a = base.checked_add(off).ok_or(MemError::BadRange)?;
    let mut b = [0u8; 16];
    mem.read(a, &mut b)?;
    Ok(TxDesc::parse(&b))
}

/// Write DD into the status byte of descriptor `idx` if its RS bit is set; returns whether it
/// was reported.
fn complete(mem: &mut dyn GuestMemory, base: u64, idx: u32) -> bool {
    let Some(a) = base.checked_add(u64::from(idx) * DESC_SIZE) else {
        return false;
    };
    let (Some(a11), Some(a12)) = (a.checked_add(11), a.checked_add(12)) else {
        return false;
    };
    let mut b = [0u8; 2];
    if mem.read(a11, &mut b).is_err() || b[0] & cmd::RS == 0 {
        return false;
    }
    mem.write(a12, &[b[1] | TX_STA_DD]).is_ok()
}

fn real_descs(frame_len: usize) -> usize {
    (frame_len + 4).div_ceil(REAL_BUF)
}

fn drop_hostile<N: NicRegisters, D: DmaRegion>(core: &mut Core<N, D>, why: &str, idx: u32) {
    core.ctr.drop(Direction::Tx, DropReason::HostileDescriptor);
    if core.logs.tx_hostile.allow() {
        log::warn!("e1000: hostile TX descriptor {idx}: {why}");
    }
}

/// Most guest descriptors one call walks. With [`TX_BYTES_PER_CALL`] this bounds the work of
/// one VM exit whatever ring the guest builds (up to 65,528 descriptors, each a 64 KiB TSO
/// packet the policy may drop without using Shoji's ring): what is left is walked at the next
/// poll or TDT write.
pub const TX_DESCS_PER_CALL: u32 = 256;
/// Most descriptors one packet may span (FreeBSD's em driver posts at most 64; Linux's e1000
/// about 35 for a 64 KiB TSO packet). A longer chain is dropped as hostile in pieces of this
/// size, so no single packet outgrows the per-call bound.
pub const MAX_PACKET_DESCS: u32 = 64;
/// Most packet bytes one call gathers (the last packet may take it past the bound by at most
/// one packet, [`GATHER_CAP`] bytes).
pub const TX_BYTES_PER_CALL: usize = 256 * 1024;

/// Walk the guest's TX ring from TDH to TDT, at most [`TX_DESCS_PER_CALL`] descriptors and
/// [`TX_BYTES_PER_CALL`] bytes. `from_exit` is true on the guest's own TDT/TCTL write (the task
/// identity applies and ring errors are counted). When such a walk leaves descriptors behind,
/// the calls that finish them (polls) carry its task identity, so a frame is attributed to the
/// task whose TDT write posted it however the walk was divided.
pub(crate) fn run_guest_tx<N: NicRegisters, D: DmaRegion>(
    core: &mut Core<N, D>,
    bufs: &mut Buffers,
    env: &mut Env<'_>,
    from_exit: bool,
) {
    let carried = if from_exit { None } else { core.tx_carry };
    let task = if from_exit {
        env.task.copied()
    } else {
        carried.flatten()
    };
    let attributed = from_exit || carried.is_some();
    walk(core, bufs, env, task.as_ref(), attributed);
    core.tx_carry = (attributed && core.g.tdh != core.g.tdt).then_some(task);
}

fn walk<N: NicRegisters, D: DmaRegion>(
    core: &mut Core<N, D>,
    bufs: &mut Buffers,
    env: &mut Env<'_>,
    task: Option<&TaskIdentity>,
    from_exit: bool,
) {
    let g = &core.g;
    if g.tctl & Tctl::EN.bits() == 0 || !g.bus_master || g.tdh == g.tdt {
        return;
    }
    let Some((base, n)) = Guest::ring(g.tdbal, g.tdbah, g.tdlen) else {
        return;
    };
    if g.tdh >= n || g.tdt >= n {
        if from_exit {
            core.ctr.ring_errors += 1;
            if core.logs.ring.allow() {
                log::warn!(
                    "e1000: guest TX ring head/tail {}/{} beyond {n}",
                    g.tdh,
                    g.tdt
                );
            }
        }
        return;
    }
    let next = |i: u32| if i + 1 == n { 0 } else { i + 1 };
    let mut reported = false;
    let mut budget = n.min(TX_DESCS_PER_CALL);
    let mut bytes = 0usize;
    while core.g.tdh != core.g.tdt {
        if budget == 0 || bytes >= TX_BYTES_PER_CALL {
            core.ctr.tx_budget_cuts += 1;
            break;
        }
        budget -= 1;
        let first = core.g.tdh;
        let tdt = core.g.tdt;
        let d = match read_desc(&*env.mem, base, first) {
            Ok(d) => d,
            Err(_) => {
                drop_hostile(core, "descriptor not in guest RAM", first);
                core.g.tdh = next(first);
                continue;
            }
        };
        match d {
            TxDesc::Context(c) => {
                core.g.ctx = c;
                reported |= complete(env.mem, base, first);
                core.g.tdh = next(first);
                continue;
            }
            TxDesc::Reserved { .. } => {
                drop_hostile(core, "reserved descriptor type", first);
                reported |= complete(env.mem, base, first);
                core.g.tdh = next(first);
                continue;
            }
            _ => {}
        }

        // Gather one packet, first..=last.
        let mut info = PacketInfo::default();
        let mut bad: Option<(DropReason, &'static str)> = None;
        let mut total = 0usize;
        let mut idx = first;
        let mut cur = Some(d);
        let mut descs = 0u32;
        let last = loop {
            descs += 1;
            if idx == tdt {
                // The packet is not complete yet: wait for the guest to post the rest.
                finish(core, reported);
                return;
            }
            let d = match cur.take() {
                Some(d) => d,
                None => match read_desc(&*env.mem, base, idx) {
                    Ok(d) => d,
                    Err(_) => {
                        bad = bad.or(Some((
                            DropReason::HostileDescriptor,
                            "descriptor unreadable",
                        )));
                        break idx;
                    }
                },
            };
            let (addr, len, dcmd, is_legacy) = match d {
                TxDesc::Legacy {
                    addr,
                    len,
                    cso,
                    cmd: c,
                    css,
                    special,
                } => {
                    if idx == first {
                        info.legacy = true;
                    }
                    if c & cmd::EOP != 0 {
                        info.ic = c & cmd::IC_TSE != 0;
                        info.cso = cso;
                        info.css = css;
                        if c & cmd::VLE != 0 {
                            info.vlan = Some(special);
                        }
                    }
                    (addr, len as usize, c, true)
                }
                TxDesc::Data {
                    addr,
                    len,
                    dcmd,
                    popts: p,
                    special,
                } => {
                    if idx == first {
                        info.tse = dcmd & cmd::IC_TSE != 0;
                        info.ixsm = p & popts::IXSM != 0;
                        info.txsm = p & popts::TXSM != 0;
                    }
                    if dcmd & cmd::EOP != 0 && dcmd & cmd::VLE != 0 {
                        info.vlan = Some(special);
                    }
                    (addr, len as usize, dcmd, false)
                }
                _ => {
                    bad = bad.or(Some((
                        DropReason::HostileDescriptor,
                        "context inside a packet",
                    )));
                    break idx;
                }
            };
            if bad.is_none() {
                if is_legacy != info.legacy {
                    bad = Some((DropReason::HostileDescriptor, "mixed descriptor formats"));
                } else if len == 0 {
                    bad = Some((DropReason::HostileDescriptor, "zero-length buffer"));
                } else if total + len > GATHER_CAP {
                    bad = Some((DropReason::Oversize, "packet too large"));
                } else {
                    let dst = &mut bufs.gather[HEADROOM + total..HEADROOM + total + len];
                    if env.mem.read(addr, dst).is_err() {
                        bad = Some((DropReason::HostileDescriptor, "buffer not in guest RAM"));
                    }
                    total += len;
                }
            }
            if dcmd & cmd::EOP != 0 {
                break idx;
            }
            if descs == MAX_PACKET_DESCS {
                bad = bad.or(Some((
                    DropReason::HostileDescriptor,
                    "packet spans more than 64 descriptors",
                )));
                break idx;
            }
            idx = next(idx);
        };

        // Back-pressure: only take the packet when Shoji's ring can hold what it becomes.
        if bad.is_none() {
            let ctx = core.g.ctx;
            let need = if info.tse && ctx.mss > 0 {
                let seg = usize::from(ctx.hdrlen) + usize::from(ctx.mss);
                let payload = total.saturating_sub(usize::from(ctx.hdrlen)).max(1);
                payload.div_ceil(usize::from(ctx.mss)) * real_descs(seg)
            } else {
                real_descs(total)
            };
            if need > core.real_tx_free() {
                core.reclaim_tx();
                if need > core.real_tx_free() && !core.real_tx_empty() {
                    core.ctr.tx_stalls += 1;
                    finish(core, reported);
                    return;
                }
            }
        }

        // Consume the descriptors.
        let mut i = first;
        loop {
            reported |= complete(env.mem, base, i);
            if i == last {
                break;
            }
            i = next(i);
        }
        core.g.tdh = next(last);
        budget = budget.saturating_sub(ring_distance(first, last, n));
        bytes += total;

        if let Some((reason, why)) = bad {
            if reason == DropReason::HostileDescriptor {
                drop_hostile(core, why, first);
            } else {
                core.ctr.drop(Direction::Tx, reason);
            }
            continue;
        }
        core.ctr.tx_guest_packets += 1;
        emit_packet(core, bufs, env.mem, env.filter, task, &info, total, first);
    }
    finish(core, reported);
}

fn ring_distance(a: u32, b: u32, n: u32) -> u32 {
    if b >= a {
        b - a
    } else {
        n - a + b
    }
}

fn finish<N: NicRegisters, D: DmaRegion>(core: &mut Core<N, D>, reported: bool) {
    let mut causes = Int::empty();
    if reported {
        causes |= Int::TXDW;
    }
    if core.g.tdh == core.g.tdt {
        causes |= Int::TXQE;
    }
    if reported {
        core.g.icr |= causes.bits();
    }
    core.ring_doorbell();
    core.kick_tx();
}

/// Offloads, segmentation and VLAN insertion for a gathered packet; each wire frame goes to
/// the filter.
#[allow(clippy::too_many_arguments)]
fn emit_packet<N: NicRegisters, D: DmaRegion>(
    core: &mut Core<N, D>,
    bufs: &mut Buffers,
    mem: &mut dyn GuestMemory,
    filter: &mut dyn shoji_shared::FrameFilter,
    task: Option<&TaskIdentity>,
    info: &PacketInfo,
    total: usize,
    first: u32,
) {
    let ctx: TxContext = core.g.ctx;
    let Buffers {
        wire,
        guest,
        gather,
        seg,
        ..
    } = bufs;
    if info.tse {
        core.ctr.tso_packets += 1;
        let plan = match TsoPlan::new(&ctx, total, MAX_FRAME, MAX_TSO_SEGMENTS) {
            Ok(p) => p,
            Err(e) => {
                offload_drop(core, e, first);
                return;
            }
        };
        let pkt = &gather[HEADROOM..HEADROOM + total];
        for k in 0..plan.segments {
            let len = match plan.segment(&ctx, info.ixsm, info.txsm, pkt, k, &mut seg[HEADROOM..]) {
                Ok(l) => l,
                Err(e) => {
                    offload_drop(core, e, first);
                    return;
                }
            };
            core.ctr.tso_segments += 1;
            emit_frame(
                core,
                wire,
                guest,
                mem,
                filter,
                task,
                &mut seg[..],
                len,
                info.vlan,
            );
        }
        return;
    }
    if total > MAX_FRAME {
        core.ctr.drop(Direction::Tx, DropReason::Oversize);
        return;
    }
    let frame = &mut gather[HEADROOM..HEADROOM + total];
    let r = if info.legacy {
        if info.ic {
            offload::insert_checksum(frame, usize::from(info.css), None, usize::from(info.cso), 0)
        } else {
            Ok(())
        }
    } else {
        offload::checksum_with_context(frame, &ctx, info.ixsm, info.txsm)
    };
    if let Err(e) = r {
        offload_drop(core, e, first);
        return;
    }
    emit_frame(
        core,
        wire,
        guest,
        mem,
        filter,
        task,
        &mut gather[..],
        total,
        info.vlan,
    );
}

fn offload_drop<N: NicRegisters, D: DmaRegion>(core: &mut Core<N, D>, e: OffloadError, idx: u32) {
    match e {
        OffloadError::SegmentTooLarge => core.ctr.drop(Direction::Tx, DropReason::Oversize),
        OffloadError::BadOffset => drop_hostile(core, "checksum offsets outside the frame", idx),
        OffloadError::BadTso => drop_hostile(core, "unusable TSO context", idx),
    }
}

/// Insert the descriptor's VLAN tag (guest CTRL.VME) and hand one wire frame, found at
/// `buf[HEADROOM..HEADROOM+len]`, to the filter.
#[allow(clippy::too_many_arguments)]
fn emit_frame<N: NicRegisters, D: DmaRegion>(
    core: &mut Core<N, D>,
    wire: &mut crate::queue::FrameQueue,
    guest: &mut crate::queue::FrameQueue,
    mem: &mut dyn GuestMemory,
    filter: &mut dyn shoji_shared::FrameFilter,
    task: Option<&TaskIdentity>,
    buf: &mut [u8],
    len: usize,
    vlan: Option<u16>,
) {
    let mut start = HEADROOM;
    let mut len = len;
    if let Some(tci) = vlan {
        if core.g.ctrl & Ctrl::VME.bits() != 0 {
            match offload::insert_vlan(buf, start, len, core.g.vet as u16, tci) {
                // The tag is now in the frame: the filter sees it in band (a
                // `descriptor_vlan` would mean a second, out-of-band tag).
                Some(s) => {
                    start = s;
                    len += 4;
                }
                None => {
                    core.ctr.drop(Direction::Tx, DropReason::Truncated);
                    return;
                }
            }
        }
    }
    let meta = FrameMeta {
        direction: Direction::Tx,
        descriptor_vlan: None,
        task,
    };
    let frame = &buf[start..start + len];
    let mut sink = Sink {
        core,
        wire,
        guest,
        mem,
        dir: Direction::Tx,
    };
    if let Verdict::Drop(r) = filter.filter(&meta, frame, &mut sink) {
        sink.core.ctr.drop(Direction::Tx, r);
        sink.core.ctr.cost[sink.core.cause as usize].frames += 1;
    }
}
