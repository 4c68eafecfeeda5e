//! The para-pass engine: register shadowing, ICR virtualisation, Shoji's real rings, and the
//! entry points the hypervisor calls on trapped accesses and from its periodic poll.

use crate::counters::{Counters, ExitCause, RateLimit};
use crate::desc::{self, TxContext, TxDesc, DESC_SIZE};
use crate::pci::{PciLayout, PciOutcome, PciState};
use crate::queue::FrameQueue;
use crate::regs::{self, Ctrl, Int, Rctl, RegId};
use crate::{rx, tx, DmaRegion, NicRegisters};
use shoji_shared::{Direction, DropReason, FrameFilter, FrameSink, GuestMemory, TaskIdentity};

/// Size of each buffer of Shoji's real rings.
pub const REAL_BUF: usize = 2048;
/// Largest frame Shoji takes from the guest or the wire (untagged jumbo, no FCS).
pub const MAX_FRAME: usize = 9018;
/// Largest frame on the wire (with an 802.1Q tag).
pub const MAX_WIRE_FRAME: usize = MAX_FRAME + 4;
/// Largest TSO packet gathered from the guest (64 KiB payload plus headers).
pub const GATHER_CAP: usize = 65536 + 256;
/// Most wire frames one TSO packet may become.
pub const MAX_TSO_SEGMENTS: usize = 256;
/// Headroom kept before frames for VLAN insertion.
pub(crate) const HEADROOM: usize = 4;
/// Largest real ring Shoji uses.
pub const MAX_REAL_DESCS: u16 = 4096;

/// Engine configuration.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Descriptors in Shoji's real TX ring (multiple of 8, 8..=4096).
    pub tx_descs: u16,
    /// Descriptors in Shoji's real RX ring (multiple of 8, 8..=4096).
    pub rx_descs: u16,
    /// Where the device's BARs are and what to do when the guest moves one.
    pub pci: PciLayout,
    /// Shoji's own MAC (the management endpoint): the device receives it through receive
    /// address 3, which the guest then sees as a register of its own that receives nothing.
    pub own_mac: Option<[u8; 6]>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tx_descs: 256,
            rx_descs: 256,
            pci: PciLayout::default(),
            own_mac: None,
        }
    }
}

impl Config {
    /// Bytes of DMA memory the engine needs for this configuration (4 KiB aligned base).
    pub const fn dma_bytes(&self) -> usize {
        let t = self.tx_descs as usize;
        let r = self.rx_descs as usize;
        (t + r) * DESC_SIZE as usize + (t + r) * REAL_BUF
    }
}

/// Why the engine could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    /// A ring size is not a multiple of 8 in 8..=4096.
    BadRingSize,
    /// The DMA region is smaller than [`Config::dma_bytes`].
    DmaTooSmall,
    /// The DMA region's bus address is not 4 KiB aligned.
    DmaMisaligned,
}

/// What the hypervisor hands the engine on each call: guest RAM, the filter hook and, on the
/// TX path, the identity of the task running at the exit.
pub struct Env<'a> {
    /// Guest-physical memory (descriptor rings and buffers live there).
    pub mem: &'a mut dyn GuestMemory,
    /// The policy hook, called once per frame in each direction.
    pub filter: &'a mut dyn FrameFilter,
    /// The task that was running at this exit, when known (attribution of TX frames).
    pub task: Option<&'a TaskIdentity>,
}

/// Offsets of Shoji's rings and buffers in the DMA region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub ntx: u16,
    pub nrx: u16,
    pub tx_ring: usize,
    pub rx_ring: usize,
    pub tx_buf: usize,
    pub rx_buf: usize,
    pub phys: u64,
}

/// State of Shoji's real rings.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hw {
    /// Next real TX descriptor to fill.
    pub tx_tail: u16,
    /// Oldest real TX descriptor not yet reclaimed.
    pub tx_clean: u16,
    /// Next real RX descriptor to harvest.
    pub rx_next: u16,
    /// The real rings must be (re)programmed once the device is out of reset.
    pub setup_pending: bool,
    /// The real TDT must be written.
    pub tdt_dirty: bool,
}

/// The guest's view of the shadowed registers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guest {
    pub ctrl: u32,
    pub rctl: u32,
    pub tctl: u32,
    pub vet: u32,
    pub ims: u32,
    pub icr: u32,
    pub itr: u32,
    pub rsrpd: u32,
    pub rdbal: u32,
    pub rdbah: u32,
    pub rdlen: u32,
    pub rdh: u32,
    pub rdt: u32,
    pub tdbal: u32,
    pub tdbah: u32,
    pub tdlen: u32,
    pub tdh: u32,
    pub tdt: u32,
    pub ioaddr: u32,
    pub bus_master: bool,
    pub ctx: TxContext,
    /// FCAL, FCAH and FCT as the guest wrote them; the device keeps the 802.3x values.
    pub fcal: u32,
    pub fcah: u32,
    pub fct: u32,
    /// RAL_OWN/RAH_OWN as the guest wrote them, when Shoji holds entry 3.
    pub ral_own: u32,
    pub rah_own: u32,
}

impl Guest {
    const fn reset() -> Guest {
        Guest {
            ctrl: 0,
            rctl: 0,
            tctl: 0,
            vet: regs::VET_DEFAULT,
            ims: 0,
            icr: 0,
            itr: 0,
            rsrpd: 0,
            rdbal: 0,
            rdbah: 0,
            rdlen: 0,
            rdh: 0,
            rdt: 0,
            tdbal: 0,
            tdbah: 0,
            tdlen: 0,
            tdh: 0,
            tdt: 0,
            ioaddr: 0,
            bus_master: true,
            ctx: TxContext {
                ipcss: 0,
                ipcso: 0,
                ipcse: 0,
                tucss: 0,
                tucso: 0,
                tucse: 0,
                paylen: 0,
                tucmd: 0,
                hdrlen: 0,
                mss: 0,
            },
            fcal: 0,
            fcah: 0,
            fct: 0,
            ral_own: 0,
            rah_own: 0,
        }
    }

    pub fn rctl(&self) -> Rctl {
        Rctl::from_bits_retain(self.rctl)
    }

    pub fn vme(&self) -> bool {
        self.ctrl & Ctrl::VME.bits() != 0
    }

    /// A guest ring: (base, descriptors), `None` when the length is below one block.
    pub fn ring(bal: u32, bah: u32, len: u32) -> Option<(u64, u32)> {
        let n = (len & 0x000f_ff80) / 16;
        if n == 0 {
            return None;
        }
        Some(((u64::from(bah) << 32) | u64::from(bal & !0xf), n))
    }
}

/// Emulated interrupt throttling (ITR, 82540 manual 13.4.18): the guest's interrupt is
/// asserted at most once per `ITR * 256 ns`; causes that appear inside the interval wait for its
/// end (the hypervisor polls at [`E1000::next_deadline_ns`]), and so do the device's own RX
/// interrupts, which are masked in the real IMS meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Moderation {
    /// When the guest's interrupt was last asserted (ns), if ever (or no clock).
    pub last: Option<u64>,
    /// An unmasked virtual cause waits for the interval to end.
    pub deferred: bool,
    /// The device's RX interrupt (RXT0) is masked until the interval ends.
    pub rx_gated: bool,
}

/// A snapshot of Shoji's ring state ([`E1000::ring_state`]), for the hypervisor's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingState {
    /// Next real TX descriptor Shoji fills.
    pub tx_tail: u16,
    /// Oldest real TX descriptor not yet reclaimed.
    pub tx_clean: u16,
    /// Next real RX descriptor Shoji harvests.
    pub rx_next: u16,
    /// The real rings wait to be programmed (device in reset).
    pub setup_pending: bool,
    /// The device's RX interrupt is masked until the guest's ITR interval ends.
    pub rx_gated: bool,
    /// A virtual interrupt cause waits for the ITR interval to end.
    pub deferred: bool,
    /// The guest's interrupt mask.
    pub guest_ims: u32,
}

/// Per-subsystem log limiters.
#[derive(Debug, Default)]
pub(crate) struct Logs {
    pub tx_hostile: RateLimit,
    pub rx_hostile: RateLimit,
    pub refused: RateLimit,
    pub ring: RateLimit,
}

/// Everything but the large buffers.
pub(crate) struct Core<N, D> {
    pub nic: N,
    pub dma: D,
    pub layout: Layout,
    pub hw: Hw,
    pub g: Guest,
    pub pci: PciState,
    pub ctr: Counters,
    pub cause: ExitCause,
    /// Virtual causes already signalled through the doorbell since the last ICR read.
    pub rung: u32,
    /// Interrupt throttling state.
    pub modr: Moderation,
    pub logs: Logs,
    /// Shoji's own MAC, held in the device's receive address 3.
    pub own_mac: Option<[u8; 6]>,
    /// Set when a walk of the guest's TX ring from its TDT write stopped with descriptors
    /// left: the identity of the task that wrote TDT, for the polls that finish the walk.
    pub tx_carry: Option<Option<TaskIdentity>>,
}

/// The engine's large buffers, kept apart so they can live in a zero-initialised static
/// (`Buffers::new` is `const`) rather than on a stack.
pub struct Buffers {
    /// Frames waiting for room in Shoji's real TX ring.
    pub(crate) wire: FrameQueue,
    /// Frames waiting for room in the guest's RX ring.
    pub(crate) guest: FrameQueue,
    /// Gathered TX packet (with headroom).
    pub(crate) gather: [u8; HEADROOM + GATHER_CAP],
    /// One TSO segment (with headroom).
    pub(crate) seg: [u8; HEADROOM + MAX_FRAME],
    /// One received frame.
    pub(crate) rx: [u8; MAX_WIRE_FRAME],
}

impl Buffers {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        Buffers {
            wire: FrameQueue::new(),
            guest: FrameQueue::new(),
            gather: [0; HEADROOM + GATHER_CAP],
            seg: [0; HEADROOM + MAX_FRAME],
            rx: [0; MAX_WIRE_FRAME],
        }
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::new()
    }
}

/// The mediated e1000: one per NIC.
pub struct E1000<'b, N: NicRegisters, D: DmaRegion> {
    pub(crate) core: Core<N, D>,
    pub(crate) bufs: &'b mut Buffers,
}

/// A frame given as two pieces laid end to end (sent without being copied together first).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Joined<'a> {
    /// The first bytes.
    pub head: &'a [u8],
    /// The bytes after them.
    pub tail: &'a [u8],
}

impl<'a> Joined<'a> {
    /// A frame in one piece.
    pub fn whole(frame: &'a [u8]) -> Self {
        Joined {
            head: frame,
            tail: &[],
        }
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// The bytes of the frame's range `start..end` (within its length), as up to two
    /// (offset from `start`, bytes) pieces.
    pub fn range(&self, start: usize, end: usize) -> impl Iterator<Item = (usize, &'a [u8])> {
        let h = self.head.len();
        let head = self.head.get(start.min(h)..end.min(h)).unwrap_or(&[]);
        let tail = self
            .tail
            .get(start.max(h) - h..end.max(h) - h)
            .unwrap_or(&[]);
        let tail_at = h.saturating_sub(start);
        [(0, head), (tail_at, tail)]
            .into_iter()
            .filter(|(_, b)| !b.is_empty())
    }
}

/// The sink the filter emits frames into.
pub(crate) struct Sink<'a, N, D> {
    pub core: &'a mut Core<N, D>,
    pub wire: &'a mut FrameQueue,
    pub guest: &'a mut FrameQueue,
    pub mem: &'a mut dyn GuestMemory,
    pub dir: Direction,
}

impl<N: NicRegisters, D: DmaRegion> FrameSink for Sink<'_, N, D> {
    fn to_wire(&mut self, frame: &[u8]) {
        self.core.send_wire(self.wire, Joined::whole(frame));
    }

    fn to_wire_joined(&mut self, head: &[u8], tail: &[u8]) {
        self.core.send_wire(self.wire, Joined { head, tail });
    }

    fn to_guest(&mut self, frame: &[u8]) {
        self.to_guest_joined([frame, &[], &[]]);
    }

    fn to_guest_joined(&mut self, parts: [&[u8]; 3]) {
        if self.dir == Direction::Tx {
            self.core.ctr.hairpin_frames += 1;
        }
        self.core.send_guest(self.guest, self.mem, parts);
    }
}

impl<N: NicRegisters, D: DmaRegion> Core<N, D> {
    // ---- Shoji's real rings -------------------------------------------------------------

    fn tx_desc_off(&self, i: u16) -> usize {
        self.layout.tx_ring + usize::from(i) * DESC_SIZE as usize
    }

    pub(crate) fn rx_desc_off(&self, i: u16) -> usize {
        self.layout.rx_ring + usize::from(i) * DESC_SIZE as usize
    }

    pub(crate) fn rx_buf_off(&self, i: u16) -> usize {
        self.layout.rx_buf + usize::from(i) * REAL_BUF
    }

    /// Program the real rings (after attach or a device reset).
    fn program_real_rings(&mut self) {
        let l = self.layout;
        let zero = [0u8; 16];
        for i in 0..l.ntx {
            let off = self.tx_desc_off(i);
            self.dma.write(off, &zero);
        }
        for i in 0..l.nrx {
            let buf = l.phys + (l.rx_buf + usize::from(i) * REAL_BUF) as u64;
            let off = self.rx_desc_off(i);
            self.dma.write(off, &TxDesc::legacy_bytes(buf, 0, 0));
        }
        let txp = l.phys + l.tx_ring as u64;
        let rxp = l.phys + l.rx_ring as u64;
        self.nic.write32(regs::TDBAL, txp as u32);
        self.nic.write32(regs::TDBAH, (txp >> 32) as u32);
        self.nic.write32(regs::TDLEN, u32::from(l.ntx) * 16);
        self.nic.write32(regs::TDH, 0);
        self.nic.write32(regs::TDT, 0);
        self.nic.write32(regs::RDBAL, rxp as u32);
        self.nic.write32(regs::RDBAH, (rxp >> 32) as u32);
        self.nic.write32(regs::RDLEN, u32::from(l.nrx) * 16);
        self.nic.write32(regs::RDH, 0);
        self.nic.write32(regs::RDT, u32::from(l.nrx) - 1);
        self.nic.write32(regs::RSRPD, 0);
        self.hw.tx_tail = 0;
        self.hw.tx_clean = 0;
        self.hw.rx_next = 0;
        self.hw.tdt_dirty = false;
        self.write_real_ctrl();
        self.write_real_rctl();
        self.nic.write32(regs::TCTL, self.g.tctl);
        self.write_real_ims();
        self.write_real_flow_control();
        self.write_real_own_address();
    }

    /// Receive address 15 = Shoji's own MAC (when it has one).
    fn write_real_own_address(&mut self) {
        if let Some(m) = self.own_mac {
            let low = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
            let high = u32::from(u16::from_le_bytes([m[4], m[5]])) | regs::RAH_AV;
            self.nic.write32(regs::RAL_OWN, low);
            self.nic.write32(regs::RAH_OWN, high);
        }
    }

    /// The frames the NIC makes itself (802.3x PAUSE, from TCTL.SWXOFF or a full receive FIFO)
    /// pass no policy, so their destination and type stay the standard's whatever the guest
    /// writes: a link-local MAC-control frame that no bridge forwards, never a frame with a
    /// guest-chosen address or Ether type.
    fn write_real_flow_control(&mut self) {
        self.nic.write32(regs::FCAL, regs::FCAL_8023X);
        self.nic.write32(regs::FCAH, regs::FCAH_8023X);
        self.nic.write32(regs::FCT, regs::FCT_8023X);
    }

    /// Program the real rings once the device has left reset. Returns whether they are ready.
    pub(crate) fn ensure_ready(&mut self) -> bool {
        if !self.hw.setup_pending {
            return true;
        }
        if self.nic.read32(regs::CTRL) & Ctrl::RST.bits() != 0 {
            return false;
        }
        self.hw.setup_pending = false;
        // The device came out of reset with its default TCTL; the guest sees that unless it
        // already wrote its own.
        if self.g.tctl == 0 {
            self.g.tctl = self.nic.read32(regs::TCTL);
        }
        self.program_real_rings();
        true
    }

    fn write_real_ctrl(&mut self) {
        let v = self.g.ctrl & !(Ctrl::VME | Ctrl::RST).bits();
        self.nic.write32(regs::CTRL, v);
    }

    /// Real RCTL: the guest's, with Shoji's buffer size (2048), CRC stripped, long packets
    /// accepted (the guest's LPE is applied in software) and no VLAN filtering.
    pub(crate) fn write_real_rctl(&mut self) {
        let g = self.g.rctl();
        let clear = Rctl::BSIZE | Rctl::BSEX | Rctl::VFE | Rctl::CFIEN | Rctl::CFI;
        let mut v = (g - clear) | Rctl::SECRC | Rctl::LPE;
        // The guest asked for an address in entry 3, which holds Shoji's: receive every
        // unicast frame instead, so that the guest's address is received as it expects.
        if self.own_mac.is_some() && self.g.rah_own & regs::RAH_AV != 0 {
            v |= Rctl::UPE;
        }
        self.nic.write32(regs::RCTL, v.bits());
    }

    /// Real IMS: pass-through causes the guest enabled, real RX causes when the guest wants RX
    /// interrupts (so Shoji harvests at the guest's ICR read), and the doorbell when the guest
    /// enabled any virtual cause.
    pub(crate) fn write_real_ims(&mut self) {
        let g = Int::from_bits_retain(self.g.ims);
        let mut m = g & Int::PASSTHRU;
        if g.intersects(Int::REAL_RX) {
            m |= Int::RXO;
            if !self.modr.rx_gated {
                m |= Int::RXT0;
            }
        }
        if g.intersects(!Int::PASSTHRU) {
            m |= Int::DOORBELL;
        }
        self.nic.write32(regs::IMC, !m.bits());
        self.nic.write32(regs::IMS, m.bits());
    }

    /// Free descriptors in the real TX ring.
    pub(crate) fn real_tx_free(&self) -> usize {
        let n = usize::from(self.layout.ntx);
        let used = (usize::from(self.hw.tx_tail) + n - usize::from(self.hw.tx_clean)) % n;
        n - 1 - used
    }

    /// Whether the real TX ring holds nothing unreclaimed.
    pub(crate) fn real_tx_empty(&self) -> bool {
        self.hw.tx_tail == self.hw.tx_clean
    }

    /// Reclaim real TX descriptors the NIC has completed.
    pub(crate) fn reclaim_tx(&mut self) {
        let n = self.layout.ntx;
        for _ in 0..n {
            if self.hw.tx_clean == self.hw.tx_tail {
                break;
            }
            let off = self.tx_desc_off(self.hw.tx_clean) + 12;
            let mut sta = [0u8; 1];
            self.dma.read(off, &mut sta);
            if sta[0] & desc::TX_STA_DD == 0 {
                break;
            }
            self.hw.tx_clean = (self.hw.tx_clean + 1) % n;
        }
    }

    /// Put one frame on the real TX ring, joining its pieces in Shoji's buffers; false when
    /// there is no room.
    pub(crate) fn post_real(&mut self, frame: Joined<'_>) -> bool {
        if !self.post_uncounted(frame) {
            return false;
        }
        self.ctr.tx.frames += 1;
        self.ctr.tx.bytes += frame.len() as u64;
        self.ctr.cost[self.cause as usize].frames += 1;
        true
    }

    /// [`Self::post_real`] without counting the frame as the guest's.
    fn post_uncounted(&mut self, frame: Joined<'_>) -> bool {
        let len = frame.len();
        let need = len.div_ceil(REAL_BUF);
        if need > self.real_tx_free() {
            self.reclaim_tx();
            if need > self.real_tx_free() {
                return false;
            }
        }
        let n = self.layout.ntx;
        let mut start = 0;
        while start < len {
            let end = (start + REAL_BUF).min(len);
            let i = self.hw.tx_tail;
            let boff = self.layout.tx_buf + usize::from(i) * REAL_BUF;
            if len <= REAL_BUF {
                // The usual frame: one buffer, each piece written where it belongs.
                self.dma.write(boff, frame.head);
                if !frame.tail.is_empty() {
                    self.dma.write(boff + frame.head.len(), frame.tail);
                }
            } else {
                for (at, bytes) in frame.range(start, end) {
                    self.dma.write(boff + at, bytes);
                }
            }
            let mut cmd = desc::cmd::IFCS | desc::cmd::RS;
            if end == len {
                cmd |= desc::cmd::EOP;
            }
            let d = TxDesc::legacy_bytes(self.layout.phys + boff as u64, (end - start) as u16, cmd);
            let doff = self.tx_desc_off(i);
            self.dma.write(doff, &d);
            self.hw.tx_tail = (i + 1) % n;
            start = end;
        }
        self.hw.tdt_dirty = true;
        true
    }

    /// Tell the NIC about newly posted frames.
    pub(crate) fn kick_tx(&mut self) {
        if self.hw.tdt_dirty {
            self.hw.tdt_dirty = false;
            self.nic.write32(regs::TDT, u32::from(self.hw.tx_tail));
        }
    }

    /// Send a frame the filter let through to the wire (or queue it behind earlier ones).
    pub(crate) fn send_wire(&mut self, q: &mut FrameQueue, frame: Joined<'_>) {
        if frame.len() == 0 {
            self.ctr.drop(Direction::Tx, DropReason::Truncated);
            return;
        }
        if frame.len() > MAX_WIRE_FRAME {
            self.ctr.drop(Direction::Tx, DropReason::Oversize);
            return;
        }
        if q.is_empty() && self.post_real(frame) {
            return;
        }
        if !q.push_joined(&[frame.head, frame.tail]) {
            self.ctr.drop(Direction::Tx, DropReason::NoBuffer);
        }
    }

    /// Retry queued wire frames; true when the queue is empty.
    pub(crate) fn flush_wire(&mut self, q: &mut FrameQueue) -> bool {
        while let Some(f) = q.front() {
            if !self.post_real(Joined::whole(f)) {
                return false;
            }
            q.pop();
        }
        true
    }

    /// Deliver a frame the filter let through into the guest (or queue it).
    pub(crate) fn send_guest(
        &mut self,
        q: &mut FrameQueue,
        mem: &mut dyn GuestMemory,
        frame: [&[u8]; 3],
    ) {
        if q.is_empty() {
            match rx::deliver(self, mem, frame) {
                Ok(()) => return,
                Err(rx::Deliver::Drop(r)) => {
                    self.ctr.drop(Direction::Rx, r);
                    return;
                }
                Err(rx::Deliver::Full) => {}
            }
        }
        if !q.push_joined(&frame) {
            self.ctr.drop(Direction::Rx, DropReason::NoBuffer);
        }
    }

    /// Retry queued guest frames; true when the queue is empty.
    pub(crate) fn flush_guest(&mut self, q: &mut FrameQueue, mem: &mut dyn GuestMemory) -> bool {
        while let Some(f) = q.front() {
            match rx::deliver(self, mem, [f, &[], &[]]) {
                Ok(()) => {}
                Err(rx::Deliver::Drop(r)) => self.ctr.drop(Direction::Rx, r),
                Err(rx::Deliver::Full) => return false,
            }
            q.pop();
        }
        true
    }

    // ---- interrupts ------------------------------------------------------------------------

    /// Raise a virtual cause; rings the doorbell if the guest has it unmasked.
    pub(crate) fn raise(&mut self, causes: Int) {
        self.g.icr |= causes.bits();
        self.ring_doorbell();
    }

    /// Interrupt the guest through the real ICS for unmasked virtual causes not yet signalled,
    /// unless the throttling interval since the last interrupt is still running (then the
    /// causes wait for its end).
    pub(crate) fn ring_doorbell(&mut self) {
        let pending = self.g.icr & self.g.ims & !self.rung;
        if pending == 0 {
            self.modr.deferred = false;
            return;
        }
        let now = self.nic.now_ns();
        if self.interval_end(now).is_some() {
            if !self.modr.deferred {
                self.modr.deferred = true;
                self.ctr.virq_deferred += 1;
            }
            return;
        }
        self.modr.deferred = false;
        self.rung |= pending;
        self.ctr.virq_raised += 1;
        self.nic.write32(regs::ICS, Int::DOORBELL.bits());
        self.interrupt_asserted(now);
    }

    /// The guest's ITR interval in nanoseconds (0: no throttling).
    fn itr_ns(&self) -> u64 {
        u64::from(self.g.itr & 0xffff) * 256
    }

    /// End of the throttling interval running at `now`, if one is.
    pub(crate) fn interval_end(&self, now: Option<u64>) -> Option<u64> {
        let (now, last) = (now?, self.modr.last?);
        let end = last.saturating_add(self.itr_ns());
        (now < end).then_some(end)
    }

    /// The guest's interrupt was asserted at `now`: a throttling interval starts, during which
    /// the device's own RX interrupt stays masked.
    pub(crate) fn interrupt_asserted(&mut self, now: Option<u64>) {
        self.modr.last = now;
        if now.is_some() && self.itr_ns() != 0 && !self.modr.rx_gated {
            self.modr.rx_gated = true;
            self.write_real_ims();
        }
    }

    /// Once the throttling interval is over: signal the causes that waited and unmask the
    /// device's RX interrupt again (unless signalling started a new interval).
    pub(crate) fn moderate(&mut self) {
        if !self.modr.deferred && !self.modr.rx_gated {
            return;
        }
        let now = self.nic.now_ns();
        if self.interval_end(now).is_some() {
            return;
        }
        if self.modr.deferred {
            self.ring_doorbell();
        }
        if self.modr.rx_gated && self.interval_end(now).is_none() {
            self.modr.rx_gated = false;
            self.write_real_ims();
        }
    }

    fn guest_reset(&mut self, q: &mut [&mut FrameQueue; 2], value: u32) {
        self.ctr.guest_resets += 1;
        self.nic
            .write32(regs::CTRL, (value & !Ctrl::VME.bits()) | Ctrl::RST.bits());
        let bus_master = self.g.bus_master;
        self.g = Guest::reset();
        self.g.bus_master = bus_master;
        self.rung = 0;
        self.modr = Moderation::default();
        self.hw = Hw {
            setup_pending: true,
            ..Hw::default()
        };
        let lost = q[0].clear();
        for _ in 0..lost {
            self.ctr.drop(Direction::Tx, DropReason::NoBuffer);
        }
        let lost = q[1].clear();
        for _ in 0..lost {
            self.ctr.drop(Direction::Rx, DropReason::NoBuffer);
        }
    }
}

/// How a partial or oversized access maps onto 32-bit registers.
fn lane(offset: u32, size: u8) -> Option<(u32, u32, u32)> {
    let shift = (offset & 3) * 8;
    let mask: u32 = match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => return None,
    };
    if (offset & 3) + u32::from(size) > 4 {
        return None;
    }
    Some((offset & !3, shift, mask))
}

impl<'b, N: NicRegisters, D: DmaRegion> E1000<'b, N, D> {
    /// Take over the NIC: capture the guest-visible state the device holds now, then point the
    /// device at Shoji's rings in `dma`.
    pub fn new(mut nic: N, dma: D, cfg: Config, bufs: &'b mut Buffers) -> Result<Self, SetupError> {
        let ok = |n: u16| n & 7 == 0 && (8..=MAX_REAL_DESCS).contains(&n);
        if !ok(cfg.tx_descs) || !ok(cfg.rx_descs) {
            return Err(SetupError::BadRingSize);
        }
        if dma.len() < cfg.dma_bytes() {
            return Err(SetupError::DmaTooSmall);
        }
        if dma.phys_base() & 0xfff != 0 {
            return Err(SetupError::DmaMisaligned);
        }
        let t = usize::from(cfg.tx_descs);
        let r = usize::from(cfg.rx_descs);
        let layout = Layout {
            ntx: cfg.tx_descs,
            nrx: cfg.rx_descs,
            tx_ring: 0,
            rx_ring: t * 16,
            tx_buf: (t + r) * 16,
            rx_buf: (t + r) * 16 + t * REAL_BUF,
            phys: dma.phys_base(),
        };
        // Stop the device's DMA into whatever rings it had, keeping the guest's view.
        let mut g = Guest::reset();
        g.ctrl = nic.read32(regs::CTRL) & !Ctrl::RST.bits();
        g.rctl = nic.read32(regs::RCTL);
        g.tctl = nic.read32(regs::TCTL);
        g.vet = nic.read32(regs::VET) & 0xffff;
        g.ims = nic.read32(regs::IMS);
        // Shoji throttles the guest's interrupts itself; the device must not add its own delay
        // to the doorbell.
        g.itr = nic.read32(regs::ITR) & 0xffff;
        nic.write32(regs::ITR, 0);
        g.rdbal = nic.read32(regs::RDBAL);
        g.rdbah = nic.read32(regs::RDBAH);
        g.rdlen = nic.read32(regs::RDLEN);
        g.rdh = nic.read32(regs::RDH) & 0xffff;
        g.rdt = nic.read32(regs::RDT) & 0xffff;
        g.tdbal = nic.read32(regs::TDBAL);
        g.tdbah = nic.read32(regs::TDBAH);
        g.tdlen = nic.read32(regs::TDLEN);
        g.tdh = nic.read32(regs::TDH) & 0xffff;
        g.tdt = nic.read32(regs::TDT) & 0xffff;
        g.fcal = nic.read32(regs::FCAL);
        g.fcah = nic.read32(regs::FCAH) & 0xffff;
        g.fct = nic.read32(regs::FCT) & 0xffff;
        if cfg.own_mac.is_some() {
            g.ral_own = nic.read32(regs::RAL_OWN);
            g.rah_own = nic.read32(regs::RAH_OWN);
        }
        nic.write32(regs::RCTL, g.rctl & !Rctl::EN.bits());
        nic.write32(regs::TCTL, g.tctl & !regs::Tctl::EN.bits());
        let mut core = Core {
            nic,
            dma,
            layout,
            hw: Hw::default(),
            g,
            pci: PciState::new(cfg.pci),
            ctr: Counters::default(),
            cause: ExitCause::Poll,
            rung: 0,
            modr: Moderation::default(),
            logs: Logs::default(),
            tx_carry: None,
            own_mac: cfg.own_mac,
        };
        core.program_real_rings();
        bufs.wire.clear();
        bufs.guest.clear();
        Ok(E1000 { core, bufs })
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.core.ctr
    }

    /// The counters, for the hypervisor to record costs and refused instructions.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.core.ctr
    }

    /// The real NIC (for the hypervisor's own use, e.g. reading statistics).
    pub fn nic_mut(&mut self) -> &mut N {
        &mut self.core.nic
    }

    /// Whether the 4 KiB page `page_index` of the memory BAR must be trapped.
    pub fn page_is_trapped(cfg: &Config, page_index: u32) -> bool {
        regs::page_is_trapped_with(page_index, cfg.own_mac.is_some())
    }

    /// Shoji's own ring state, for diagnostics: where the engine stands against the real
    /// NIC's head and tail registers.
    pub fn ring_state(&self) -> RingState {
        RingState {
            tx_tail: self.core.hw.tx_tail,
            tx_clean: self.core.hw.tx_clean,
            rx_next: self.core.hw.rx_next,
            setup_pending: self.core.hw.setup_pending,
            rx_gated: self.core.modr.rx_gated,
            deferred: self.core.modr.deferred,
            guest_ims: self.core.g.ims,
        }
    }

    /// Frames waiting in Shoji's queues: (for the wire, for the guest).
    pub fn pending_frames(&self) -> (usize, usize) {
        (self.bufs.wire.len(), self.bufs.guest.len())
    }

    /// When the engine next needs a [`E1000::poll`] for interrupt throttling (ns on the
    /// [`NicRegisters::now_ns`] clock): the end of the running ITR interval while causes wait
    /// for it or the device's RX interrupt is masked; `None` when nothing waits.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let m = &self.core.modr;
        if !m.deferred && !m.rx_gated {
            return None;
        }
        Some(m.last?.saturating_add(self.core.itr_ns()))
    }

    /// The current virtual interrupt cause (diagnostics; does not clear it).
    pub fn virtual_icr(&self) -> u32 {
        self.core.g.icr
    }

    fn enter(&mut self, cause: ExitCause) -> bool {
        self.core.cause = cause;
        self.core.ctr.exits[cause as usize] += 1;
        self.core.ctr.cost[cause as usize].calls += 1;
        self.core.ensure_ready()
    }

    /// A trapped read of `size` bytes (1, 2, 4 or 8) at `offset` in the memory BAR.
    pub fn mmio_read(&mut self, env: &mut Env<'_>, offset: u32, size: u8) -> u64 {
        self.enter(ExitCause::MmioRead);
        if size == 8 {
            if offset & 7 != 0 {
                return self.refuse(offset, u64::MAX);
            }
            let lo = self.read_reg(env, offset);
            let hi = self.read_reg(env, offset + 4);
            return u64::from(lo) | (u64::from(hi) << 32);
        }
        let Some((reg, shift, mask)) = lane(offset, size) else {
            return self.refuse(offset, u64::MAX);
        };
        let v = u64::from((self.read_reg(env, reg) >> shift) & mask);
        self.core.moderate();
        v
    }

    /// A trapped write of `size` bytes (1, 2, 4 or 8) at `offset` in the memory BAR.
    pub fn mmio_write(&mut self, env: &mut Env<'_>, offset: u32, size: u8, value: u64) {
        self.enter(ExitCause::MmioWrite);
        self.write_sized(env, offset, size, value);
        self.core.kick_tx();
        self.core.moderate();
    }

    fn write_sized(&mut self, env: &mut Env<'_>, offset: u32, size: u8, value: u64) {
        if size == 8 {
            if offset & 7 != 0 {
                self.refuse(offset, 0);
                return;
            }
            self.write_reg(env, offset, value as u32);
            self.write_reg(env, offset + 4, (value >> 32) as u32);
            return;
        }
        let Some((reg, shift, mask)) = lane(offset, size) else {
            self.refuse(offset, 0);
            return;
        };
        let v = if mask == u32::MAX {
            value as u32
        } else {
            let old = self.peek_reg(reg);
            (old & !(mask << shift)) | (((value as u32) & mask) << shift)
        };
        self.write_reg(env, reg, v);
    }

    /// An access to the I/O BAR: `port` is the offset in the BAR (IOADDR at 0, IODATA at 4).
    pub fn io_read(&mut self, env: &mut Env<'_>, port: u16, size: u8) -> u32 {
        self.enter(ExitCause::IoBar);
        let Some((reg, shift, mask)) = lane(u32::from(port), size) else {
            return self.refuse(u32::from(port), u64::MAX) as u32;
        };
        let v = match reg {
            0 => self.core.g.ioaddr,
            4 => {
                let target = self.core.g.ioaddr & 0x1_fffc;
                self.read_reg(env, target)
            }
            _ => u32::MAX,
        };
        (v >> shift) & mask
    }

    /// A write to the I/O BAR.
    pub fn io_write(&mut self, env: &mut Env<'_>, port: u16, size: u8, value: u32) {
        self.enter(ExitCause::IoBar);
        let Some((reg, shift, mask)) = lane(u32::from(port), size) else {
            self.refuse(u32::from(port), 0);
            return;
        };
        match reg {
            0 => {
                let old = self.core.g.ioaddr;
                self.core.g.ioaddr = (old & !(mask << shift)) | ((value & mask) << shift);
            }
            4 => {
                let target = self.core.g.ioaddr & 0x1_fffc;
                let v = if mask == u32::MAX {
                    value
                } else {
                    let old = self.peek_reg(target);
                    (old & !(mask << shift)) | ((value & mask) << shift)
                };
                self.write_reg(env, target, v);
                self.core.kick_tx();
                self.core.moderate();
            }
            _ => {}
        }
    }

    /// A guest read of PCI configuration space: `real` is the dword the device returned for
    /// the aligned dword containing `offset`; returns the `size`-byte value the guest sees.
    pub fn pci_config_read(&mut self, offset: u16, size: u8, real: u32) -> u32 {
        self.enter(ExitCause::PciConfig);
        self.core.pci.read(offset, size, real)
    }

    /// A guest write to PCI configuration space. `real` is the current dword at the aligned
    /// offset. The outcome says what to write to the device and whether a BAR moved.
    pub fn pci_config_write(&mut self, offset: u16, size: u8, value: u32, real: u32) -> PciOutcome {
        self.enter(ExitCause::PciConfig);
        let out = self.core.pci.write(offset, size, value, real);
        self.core.g.bus_master = self.core.pci.guest_bus_master();
        out
    }

    /// The periodic harvest (VMX preemption timer): reclaims the real TX ring, resumes guest
    /// TX stalled on a full ring, moves received frames into the guest and raises interrupts.
    pub fn poll(&mut self, env: &mut Env<'_>) {
        if !self.enter(ExitCause::Poll) {
            return;
        }
        self.sync_tx(env, false);
        self.sync_rx(env);
        self.core.kick_tx();
        self.core.moderate();
    }

    /// Send a frame of Shoji's own (the management endpoint's) on the wire, through Shoji's
    /// real TX ring. It passes no guest policy and is not counted as the guest's; false when
    /// the device cannot take it now (not set up, transmit off, ring full).
    pub fn send_own(&mut self, frame: &[u8]) -> bool {
        let c = &mut self.core;
        let sent = !frame.is_empty()
            && frame.len() <= MAX_FRAME
            && c.ensure_ready()
            && c.g.tctl & regs::Tctl::EN.bits() != 0
            && c.post_uncounted(Joined::whole(frame));
        if sent {
            c.ctr.own_tx_frames += 1;
            c.kick_tx();
        } else {
            c.ctr.own_tx_refused += 1;
        }
        sent
    }

    /// Record that the hypervisor refused a trapped instruction it could not emulate.
    pub fn note_refused_instruction(&mut self) {
        self.core.ctr.insn_refused += 1;
    }

    fn refuse(&mut self, offset: u32, v: u64) -> u64 {
        self.core.ctr.refused_accesses += 1;
        if self.core.logs.refused.allow() {
            log::warn!("e1000: refused guest access at {offset:#x}");
        }
        v
    }

    /// TX work: reclaim, flush queued frames, walk the guest's ring.
    fn sync_tx(&mut self, env: &mut Env<'_>, doorbell: bool) {
        let c = &mut self.core;
        c.reclaim_tx();
        if !c.flush_wire(&mut self.bufs.wire) {
            c.ctr.tx_stalls += 1;
            return;
        }
        tx::run_guest_tx(&mut self.core, self.bufs, env, doorbell);
    }

    /// RX work: flush queued frames and harvest the real ring into the guest.
    fn sync_rx(&mut self, env: &mut Env<'_>) {
        rx::harvest(&mut self.core, self.bufs, env);
        self.core.ring_doorbell();
    }

    /// The guest-visible value of a register without side effects (for partial writes).
    fn peek_reg(&mut self, reg: u32) -> u32 {
        let reg = regs::canonical(reg);
        let g = &self.core.g;
        match reg {
            regs::CTRL => g.ctrl,
            regs::ICR => g.icr,
            regs::ICS | regs::IMC => 0,
            regs::IMS => g.ims,
            regs::RCTL => g.rctl,
            regs::TCTL => g.tctl,
            regs::ITR => g.itr,
            regs::VET => g.vet,
            regs::RSRPD => g.rsrpd,
            regs::RDBAL => g.rdbal,
            regs::RDBAH => g.rdbah,
            regs::RDLEN => g.rdlen,
            regs::RDH => g.rdh,
            regs::RDT => g.rdt,
            regs::TDBAL => g.tdbal,
            regs::TDBAH => g.tdbah,
            regs::TDLEN => g.tdlen,
            regs::TDH => g.tdh,
            regs::TDT => g.tdt,
            regs::FCAL => g.fcal,
            regs::FCAH => g.fcah,
            regs::FCT => g.fct,
            regs::RAL_OWN if self.core.own_mac.is_some() => g.ral_own,
            regs::RAH_OWN if self.core.own_mac.is_some() => g.rah_own,
            o if regs::is_raw_fifo(o) || o >= regs::BAR_SIZE => 0,
            o => self.core.nic.read32(o),
        }
    }

    fn read_reg(&mut self, env: &mut Env<'_>, offset: u32) -> u32 {
        let reg = regs::canonical(offset);
        let id = RegId::of(reg);
        self.core.ctr.reg_reads[id as usize] += 1;
        if reg >= regs::BAR_SIZE {
            return self.refuse(reg, u64::from(u32::MAX)) as u32;
        }
        match reg {
            regs::CTRL => {
                let real = self.core.nic.read32(regs::CTRL);
                (real & !Ctrl::VME.bits()) | (self.core.g.ctrl & Ctrl::VME.bits())
            }
            regs::ICR => self.read_icr(env),
            regs::ICS | regs::IMC => 0,
            o if regs::is_raw_fifo(o) => self.refuse(o, 0) as u32,
            o => self.peek_reg(o),
        }
    }

    /// ICR read: collect the real pass-through causes, synchronise both rings, return the
    /// virtual causes and clear them.
    fn read_icr(&mut self, env: &mut Env<'_>) -> u32 {
        let real = self.core.nic.read32(regs::ICR);
        self.core.g.icr |= real & Int::PASSTHRU.bits();
        if self.core.ensure_ready() {
            self.sync_tx(env, false);
            rx::harvest(&mut self.core, self.bufs, env);
            self.core.kick_tx();
        }
        let v = self.core.g.icr;
        if v != 0 && self.core.rung == 0 {
            // Shoji did not ring: the device's own RX interrupt brought the guest here. Its
            // throttling interval starts now.
            self.core.ctr.real_rx_irqs += 1;
            let now = self.core.nic.now_ns();
            self.core.interrupt_asserted(now);
        }
        self.core.g.icr = 0;
        self.core.rung = 0;
        self.core.modr.deferred = false;
        v
    }

    fn write_reg(&mut self, env: &mut Env<'_>, offset: u32, v: u32) {
        let reg = regs::canonical(offset);
        let id = RegId::of(reg);
        self.core.ctr.reg_writes[id as usize] += 1;
        if reg >= regs::BAR_SIZE || regs::is_raw_fifo(reg) {
            self.refuse(reg, 0);
            return;
        }
        let ready = !self.core.hw.setup_pending;
        let c = &mut self.core;
        match reg {
            regs::CTRL => {
                if v & Ctrl::RST.bits() != 0 {
                    let mut qs = [&mut self.bufs.wire, &mut self.bufs.guest];
                    c.guest_reset(&mut qs, v);
                } else {
                    c.g.ctrl = v;
                    c.write_real_ctrl();
                }
            }
            regs::ICR => {
                c.g.icr &= !v;
                if c.g.icr & c.g.ims == 0 {
                    // Nothing left for the guest: withdraw the doorbell (write one to clear).
                    c.nic.write32(regs::ICR, Int::DOORBELL.bits());
                    c.rung = 0;
                }
            }
            regs::ICS => c.raise(Int::from_bits_retain(v)),
            regs::IMS => {
                c.g.ims |= v;
                c.write_real_ims();
                if ready {
                    self.sync_rx(env);
                }
            }
            regs::IMC => {
                c.g.ims &= !v;
                c.write_real_ims();
            }
            regs::RCTL => {
                let was = c.g.rctl;
                c.g.rctl = v;
                c.write_real_rctl();
                if ready && v & Rctl::EN.bits() != 0 && was & Rctl::EN.bits() == 0 {
                    self.sync_rx(env);
                }
            }
            regs::TCTL => {
                c.g.tctl = v;
                c.nic.write32(regs::TCTL, v);
                if ready && v & regs::Tctl::EN.bits() != 0 {
                    self.sync_tx(env, true);
                }
            }
            regs::ITR => c.g.itr = v & 0xffff,
            regs::VET => {
                c.g.vet = v & 0xffff;
                c.nic.write32(regs::VET, v);
            }
            regs::RSRPD => c.g.rsrpd = v,
            regs::RDBAL => c.g.rdbal = v,
            regs::RDBAH => c.g.rdbah = v,
            regs::RDLEN => c.g.rdlen = v & 0x000f_ff80,
            regs::RDH => c.g.rdh = v & 0xffff,
            regs::RDT => {
                c.g.rdt = v & 0xffff;
                if ready {
                    self.sync_rx(env);
                }
            }
            regs::TDBAL => c.g.tdbal = v,
            regs::TDBAH => c.g.tdbah = v,
            regs::TDLEN => c.g.tdlen = v & 0x000f_ff80,
            regs::TDH => c.g.tdh = v & 0xffff,
            // Kept for the guest to read back; the device keeps 802.3x's values.
            regs::FCAL => c.g.fcal = v,
            regs::FCAH => c.g.fcah = v & 0xffff,
            regs::FCT => c.g.fct = v & 0xffff,
            // Entry 15 is Shoji's: the guest keeps its own copy.
            regs::RAL_OWN if c.own_mac.is_some() => c.g.ral_own = v,
            regs::RAH_OWN if c.own_mac.is_some() => {
                c.g.rah_own = v;
                c.write_real_rctl();
            }
            regs::TDT => {
                c.g.tdt = v & 0xffff;
                if ready {
                    self.sync_tx(env, true);
                }
            }
            o => c.nic.write32(o, v),
        }
    }
}

#[cfg(test)]
mod joined_tests {
    use super::Joined;
    use proptest::prelude::*;
    use std::vec::Vec;

    proptest! {
        /// Any split of a frame into two pieces, read back in any chunking, gives the frame.
        #[test]
        fn ranges_cover_the_joined_frame(
            frame in proptest::collection::vec(any::<u8>(), 0..300),
            split in 0usize..300,
            chunk in 1usize..64,
        ) {
            let split = split.min(frame.len());
            let j = Joined { head: &frame[..split], tail: &frame[split..] };
            prop_assert_eq!(j.len(), frame.len());
            let mut out = Vec::new();
            let mut start = 0;
            while start < j.len() {
                let end = (start + chunk).min(j.len());
                let mut buf = std::vec![0u8; end - start];
                for (at, bytes) in j.range(start, end) {
                    prop_assert!(!bytes.is_empty());
                    buf[at..at + bytes.len()].copy_from_slice(bytes);
                }
                out.extend(buf);
                start = end;
            }
            prop_assert_eq!(out, frame);
        }
    }
}
