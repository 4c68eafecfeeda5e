//! Frame counters: per container, for the host, and in total, by outcome and by drop reason.

use shoji_shared::DropReason;

/// Counters of one party (a container, the host, or everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Frames this party sent that were let through (to the wire or relayed).
    pub tx_passed: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames delivered to this party.
    pub rx_passed: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames this party sent that were relayed to another container or the host.
    pub relayed: u64,
    /// Dropped frames, indexed by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
}

impl Counters {
    /// All zero.
    pub const ZERO: Counters = Counters {
        tx_passed: 0,
        tx_bytes: 0,
        rx_passed: 0,
        rx_bytes: 0,
        relayed: 0,
        drops: [0; DropReason::COUNT],
    };

    /// Count one drop.
    #[inline]
    pub fn count_drop(&mut self, reason: DropReason) {
        let slot = &mut self.drops[reason.index()];
        *slot = slot.wrapping_add(1);
    }

    /// Count one sent frame of `len` bytes.
    #[inline]
    pub fn count_tx(&mut self, len: usize) {
        self.tx_passed = self.tx_passed.wrapping_add(1);
        self.tx_bytes = self.tx_bytes.wrapping_add(len as u64);
    }

    /// Count one delivered frame of `len` bytes.
    #[inline]
    pub fn count_rx(&mut self, len: usize) {
        self.rx_passed = self.rx_passed.wrapping_add(1);
        self.rx_bytes = self.rx_bytes.wrapping_add(len as u64);
    }

    /// Drops for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Drops for every reason together.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }
}

/// The engine-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineCounters {
    /// Frames of the host (untagged TX, RX delivered untagged).
    pub host: Counters,
    /// Frames dropped before any party could be named (malformed RX, unknown VLAN...).
    pub unattributed: Counters,
    /// Every frame decided: `tx_passed`/`rx_passed` count frames, `drops` count verdicts.
    pub total: Counters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let mut c = Counters::ZERO;
        c.count_drop(DropReason::SpoofedArp);
        c.count_drop(DropReason::SpoofedArp);
        c.count_drop(DropReason::Truncated);
        c.count_tx(60);
        c.count_rx(64);
        assert_eq!(c.dropped(DropReason::SpoofedArp), 2);
        assert_eq!(c.dropped(DropReason::Truncated), 1);
        assert_eq!(c.total_drops(), 3);
        assert_eq!(
            (c.tx_passed, c.tx_bytes, c.rx_passed, c.rx_bytes),
            (1, 60, 1, 64)
        );
    }
}
