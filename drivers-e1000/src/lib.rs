//! Intel PRO/1000 (e1000) register model and para-passthrough shadow-ring engine.
//!
//! The guest programs descriptor rings that only Shoji reads; the real NIC only ever sees rings
//! and buffers in Shoji's own DMA memory. The engine ([`E1000`]) is written against three small
//! traits so the same code runs in the hypervisor and in host tests:
//! [`shoji_shared::GuestMemory`] (guest RAM), [`NicRegisters`] (the real register file) and
//! [`DmaRegion`] (Shoji-owned DMA memory). See `docs/e1000.md` for the design.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(test, feature = "sim"))]
extern crate std;

pub mod counters;
pub mod desc;
pub mod engine;
pub mod mmio_insn;
pub mod offload;
pub mod pci;
mod queue;
pub mod regs;
mod rx;
mod tx;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

#[cfg(test)]
mod tests;

pub use counters::{Counters, ExitCause};
pub use engine::{Buffers, Config, Env, RingState, SetupError, E1000};
pub use pci::{BarMove, BarMovePolicy, PciLayout, PciOutcome, PciWrite};

/// The real NIC's register file (the memory BAR), accessed by byte offset.
///
/// Only 32-bit accesses are used. Reads may have side effects (ICR clears on read), hence
/// `&mut self`.
pub trait NicRegisters {
    /// Read the 32-bit register at `offset`.
    fn read32(&mut self, offset: u32) -> u32;
    /// Write the 32-bit register at `offset`.
    fn write32(&mut self, offset: u32, value: u32);
    /// Monotonic time in nanoseconds: the clock of the emulated interrupt throttling (ITR).
    /// `None` (the default) means no calibrated clock: interrupts are then not moderated.
    fn now_ns(&mut self) -> Option<u64> {
        None
    }
}

/// Shoji-owned memory the NIC reaches by DMA: Shoji's real descriptor rings and frame buffers.
///
/// One physically contiguous region. The engine only passes in-range offsets computed from its
/// own layout; an implementation may treat an out-of-range access as a bug (it never comes from
/// guest data). Access goes through copies rather than slices so that the hypervisor's
/// implementation can use volatile accesses and fences for memory the device writes.
pub trait DmaRegion {
    /// Length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bus address the NIC uses for byte 0 of the region.
    fn phys_base(&self) -> u64;
    /// Copy `buf.len()` bytes at `offset` into `buf`.
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Copy `data` into the region at `offset`.
    fn write(&mut self, offset: usize, data: &[u8]);
}
