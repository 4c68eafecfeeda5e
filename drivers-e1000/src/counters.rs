//! Counters: frames and bytes each way, drops by reason, exits by cause and register, and the
//! per-cause cost the hypervisor records (cycles, instructions) to compute cost per frame.

use crate::regs::RegId;
use shoji_shared::{Direction, DropReason};

/// Why the hypervisor called into the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCause {
    /// Trapped MMIO read.
    MmioRead,
    /// Trapped MMIO write.
    MmioWrite,
    /// I/O BAR access (IOADDR/IODATA).
    IoBar,
    /// PCI configuration access.
    PciConfig,
    /// Periodic poll (preemption timer).
    Poll,
}

impl ExitCause {
    /// Number of causes.
    pub const COUNT: usize = 5;
    /// Every cause, in index order.
    pub const ALL: [ExitCause; Self::COUNT] = [
        ExitCause::MmioRead,
        ExitCause::MmioWrite,
        ExitCause::IoBar,
        ExitCause::PciConfig,
        ExitCause::Poll,
    ];
    /// Short stable name.
    pub fn name(self) -> &'static str {
        match self {
            ExitCause::MmioRead => "mmio_read",
            ExitCause::MmioWrite => "mmio_write",
            ExitCause::IoBar => "io_bar",
            ExitCause::PciConfig => "pci_config",
            ExitCause::Poll => "poll",
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirCounters {
    /// Frames delivered (TX: posted to the real ring; RX: written into the guest's ring).
    pub frames: u64,
    /// Bytes of those frames (without FCS).
    pub bytes: u64,
    /// Frames dropped, indexed by `DropReason::index()`.
    pub drops: [u64; DropReason::COUNT],
}

impl DirCounters {
    /// Drops for one reason.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r.index()]
    }
    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Cost the hypervisor measured for one exit cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Calls recorded.
    pub calls: u64,
    /// Frames those calls moved (either way, including drops).
    pub frames: u64,
    /// Cycles spent (as measured by the caller, e.g. TSC deltas).
    pub cycles: u64,
    /// Instructions retired (e.g. a fixed-function PMC), if the caller measures them.
    pub instructions: u64,
}

/// Every counter of one mediated NIC.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Transmit direction.
    pub tx: DirCounters,
    /// Receive direction.
    pub rx: DirCounters,
    /// Guest TX packets taken from the guest ring (before segmentation).
    pub tx_guest_packets: u64,
    /// Guest packets that used TSO.
    pub tso_packets: u64,
    /// Wire frames produced by TSO.
    pub tso_segments: u64,
    /// Frames a filter relayed from TX into the guest (hairpin).
    pub hairpin_frames: u64,
    /// Times TX processing stopped because Shoji's real ring was full (resumed later).
    pub tx_stalls: u64,
    /// Times one call stopped walking the guest's TX ring at its work bound (resumed at the
    /// next poll or TDT write).
    pub tx_budget_cuts: u64,
    /// Times RX harvest stopped because the guest's ring had no room (resumed later).
    pub rx_stalls: u64,
    /// Guest RX descriptors whose buffer or write-back failed validation (reported to the
    /// guest as RXE).
    pub rx_hostile_descs: u64,
    /// Guest ring registers found inconsistent (head or tail beyond the ring) at a doorbell.
    pub ring_errors: u64,
    /// Virtual interrupts raised through the real ICS.
    pub virq_raised: u64,
    /// Interrupts the emulated ITR postponed to the end of the throttling interval.
    pub virq_deferred: u64,
    /// Interrupts asserted by the device itself for received frames (real RXT0/RXO).
    pub real_rx_irqs: u64,
    /// Frames of Shoji's own (the management endpoint) sent on the wire.
    pub own_tx_frames: u64,
    /// Frames of Shoji's own the device could not take (not ready, transmit off, ring full).
    pub own_tx_refused: u64,
    /// Guest resets (CTRL.RST).
    pub guest_resets: u64,
    /// Guest accesses refused (FIFO/packet buffer, unaligned or out-of-range).
    pub refused_accesses: u64,
    /// Trapped MMIO instructions that could not be emulated (reported by the hypervisor).
    pub insn_refused: u64,
    /// Exits by cause.
    pub exits: [u64; ExitCause::COUNT],
    /// Register reads by register.
    pub reg_reads: [u64; RegId::COUNT],
    /// Register writes by register.
    pub reg_writes: [u64; RegId::COUNT],
    /// Frames moved per exit cause (attribution for cost per frame).
    pub cost: [Cost; ExitCause::COUNT],
}

impl Counters {
    /// Counters of one direction.
    pub fn dir(&self, d: Direction) -> &DirCounters {
        match d {
            Direction::Tx => &self.tx,
            Direction::Rx => &self.rx,
        }
    }

    /// Count a drop.
    pub fn drop(&mut self, d: Direction, r: DropReason) {
        let c = match d {
            Direction::Tx => &mut self.tx,
            Direction::Rx => &mut self.rx,
        };
        c.drops[r.index()] = c.drops[r.index()].wrapping_add(1);
    }

    /// Frames seen by the engine so far (delivered or dropped, both ways).
    pub fn frames_seen(&self) -> u64 {
        self.tx.frames + self.rx.frames + self.tx.dropped_total() + self.rx.dropped_total()
    }

    /// Record what one call of `cause` cost, as measured by the hypervisor around the call.
    /// Frames are attributed automatically by the engine.
    pub fn record_cost(&mut self, cause: ExitCause, cycles: u64, instructions: u64) {
        let c = &mut self.cost[cause as usize];
        c.cycles = c.cycles.wrapping_add(cycles);
        c.instructions = c.instructions.wrapping_add(instructions);
    }

    /// What happened since `earlier` (a snapshot of these counters): every count as a
    /// difference, so one phase of a measurement can be reported on its own.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let d = |a: u64, b: u64| a.wrapping_sub(b);
        let dir = |a: &DirCounters, b: &DirCounters| DirCounters {
            frames: d(a.frames, b.frames),
            bytes: d(a.bytes, b.bytes),
            drops: core::array::from_fn(|i| d(a.drops[i], b.drops[i])),
        };
        let cost = |a: &Cost, b: &Cost| Cost {
            calls: d(a.calls, b.calls),
            frames: d(a.frames, b.frames),
            cycles: d(a.cycles, b.cycles),
            instructions: d(a.instructions, b.instructions),
        };
        Counters {
            tx: dir(&self.tx, &earlier.tx),
            rx: dir(&self.rx, &earlier.rx),
            tx_guest_packets: d(self.tx_guest_packets, earlier.tx_guest_packets),
            tso_packets: d(self.tso_packets, earlier.tso_packets),
            tso_segments: d(self.tso_segments, earlier.tso_segments),
            hairpin_frames: d(self.hairpin_frames, earlier.hairpin_frames),
            tx_stalls: d(self.tx_stalls, earlier.tx_stalls),
            tx_budget_cuts: d(self.tx_budget_cuts, earlier.tx_budget_cuts),
            rx_stalls: d(self.rx_stalls, earlier.rx_stalls),
            rx_hostile_descs: d(self.rx_hostile_descs, earlier.rx_hostile_descs),
            ring_errors: d(self.ring_errors, earlier.ring_errors),
            virq_raised: d(self.virq_raised, earlier.virq_raised),
            virq_deferred: d(self.virq_deferred, earlier.virq_deferred),
            real_rx_irqs: d(self.real_rx_irqs, earlier.real_rx_irqs),
            own_tx_frames: d(self.own_tx_frames, earlier.own_tx_frames),
            own_tx_refused: d(self.own_tx_refused, earlier.own_tx_refused),
            guest_resets: d(self.guest_resets, earlier.guest_resets),
            refused_accesses: d(self.refused_accesses, earlier.refused_accesses),
            insn_refused: d(self.insn_refused, earlier.insn_refused),
            exits: core::array::from_fn(|i| d(self.exits[i], earlier.exits[i])),
            reg_reads: core::array::from_fn(|i| d(self.reg_reads[i], earlier.reg_reads[i])),
            reg_writes: core::array::from_fn(|i| d(self.reg_writes[i], earlier.reg_writes[i])),
            cost: core::array::from_fn(|i| cost(&self.cost[i], &earlier.cost[i])),
        }
    }

    /// Average cycles and instructions per frame for a cause (`None` before any frame).
    pub fn cost_per_frame(&self, cause: ExitCause) -> Option<(u64, u64)> {
        let c = &self.cost[cause as usize];
        if c.frames == 0 {
            return None;
        }
        Some((c.cycles / c.frames, c.instructions / c.frames))
    }
}

/// Log limiter: lets the first 8 events through, then every power of two.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimit(u64);

impl RateLimit {
    /// Count an event; whether to log it.
    pub fn allow(&mut self) -> bool {
        self.0 = self.0.wrapping_add(1);
        self.0 <= 8 || self.0.is_power_of_two()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_the_difference_of_every_counter() {
        let mut a = Counters::default();
        a.tx.frames = 5;
        a.virq_raised = 2;
        a.reg_writes[RegId::Tdt as usize] = 4;
        a.cost[ExitCause::Poll as usize].cycles = 100;
        let mut b = a.clone();
        b.tx.frames = 12;
        b.virq_raised = 3;
        b.virq_deferred = 6;
        b.reg_writes[RegId::Tdt as usize] = 6;
        b.cost[ExitCause::Poll as usize].cycles = 250;
        b.drop(Direction::Rx, DropReason::NoBuffer);
        let d = b.since(&a);
        assert_eq!(d.tx.frames, 7);
        assert_eq!(d.virq_raised, 1);
        assert_eq!(d.virq_deferred, 6);
        assert_eq!(d.reg_writes[RegId::Tdt as usize], 2);
        assert_eq!(d.cost[ExitCause::Poll as usize].cycles, 150);
        assert_eq!(d.rx.dropped(DropReason::NoBuffer), 1);
        assert_eq!(b.since(&b).frames_seen(), 0);
    }
}
