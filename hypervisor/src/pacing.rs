//! Pacing of Shoji's periodic work (the NIC's safety-net poll) against the cost of a VM exit.
//!
//! Shoji arms the VMX preemption timer so that a guest which never reads ICR still gets its
//! received frames. On hardware a VM exit's round trip costs a microsecond or two, far below the
//! poll period. Under nested virtualization (Shoji in a QEMU+KVM guest) one round trip passes
//! through the outer hypervisor and can cost more TSC time than a whole period: a timer armed
//! for "the time left" then fires before the guest executes an instruction, and the guest
//! livelocks (measured: the same RIP at every exit, `platform.md`). [`Pacer`] keeps an estimate
//! of the round trip (the shortest time from a VM entry to the next exit over a window of exits)
//! and never lets the poll period fall below [`ROUND_TRIP_FACTOR`] round trips, nor a timer
//! slice below [`MIN_SLICE_FACTOR`] round trips: the guest always runs at least most of the
//! time, whatever an exit costs on the machine underneath. Pure arithmetic, tested on the host.

/// The poll period is at least this many round trips (the poll then takes at most about
/// 1/16 of the CPU in VM transitions).
pub const ROUND_TRIP_FACTOR: u64 = 16;
/// A preemption-timer slice is at least this many round trips.
pub const MIN_SLICE_FACTOR: u64 = 2;
/// Exits per estimation window: the estimate is the shortest entry-to-exit time seen in the last
/// complete window (so it follows the machine when exits become cheaper or dearer).
pub const WINDOW: u32 = 256;

/// The round-trip estimate and the period derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacer {
    /// The configured poll period in TSC ticks (1 ms, or the fallback).
    base_period: u64,
    /// Estimate of one VM exit's round trip in TSC ticks (0 = nothing measured yet).
    round_trip: u64,
    /// Shortest sample of the current window.
    window_min: u64,
    /// Samples in the current window.
    window_len: u32,
}

impl Pacer {
    /// A pacer for a configured period of `base_period` TSC ticks.
    pub const fn new(base_period: u64) -> Self {
        Self {
            base_period,
            round_trip: 0,
            window_min: u64::MAX,
            window_len: 0,
        }
    }

    /// One exit: the guest was entered at TSC `entered` and left at `exited`; `armed` is the
    /// preemption-timer slice when this exit is the timer's (the guest was meant to run that
    /// long, so only the time past it is the exit's cost: otherwise an idle guest, whose only
    /// exits are the poll's, would make the period grow without bound). Samples whose TSC went
    /// backwards (another CPU's clock, a wrapped counter) are ignored.
    pub fn note_exit(&mut self, entered: u64, exited: u64, armed: Option<u64>) {
        let Some(elapsed) = exited.checked_sub(entered) else {
            return;
        };
        let sample = elapsed.saturating_sub(armed.unwrap_or(0));
        self.window_min = self.window_min.min(sample);
        self.window_len += 1;
        // The first window ends early so that a slow machine is noticed within a few exits.
        let first = self.round_trip == 0 && self.window_len >= 8;
        if first || self.window_len >= WINDOW {
            self.round_trip = self.window_min;
            self.window_min = u64::MAX;
            self.window_len = 0;
        }
    }

    /// The round-trip estimate in TSC ticks (0 until the first window closes).
    pub fn round_trip(&self) -> u64 {
        self.round_trip
    }

    /// The poll period to use: the configured one, or more when exits are dear.
    pub fn period(&self) -> u64 {
        self.base_period
            .max(self.round_trip.saturating_mul(ROUND_TRIP_FACTOR))
    }

    /// The preemption-timer value in TSC ticks for a deadline `left` ticks away: never shorter
    /// than [`MIN_SLICE_FACTOR`] round trips (and at least one tick).
    pub fn slice(&self, left: u64) -> u64 {
        slice(left, self.round_trip)
    }
}

/// [`Pacer::slice`] for a round-trip estimate `round_trip`.
pub fn slice(left: u64, round_trip: u64) -> u64 {
    left.max(round_trip.saturating_mul(MIN_SLICE_FACTOR)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `n` exits, each `rt` ticks after its entry, starting at TSC `t`.
    fn feed(p: &mut Pacer, n: u32, rt: u64) {
        let mut t = 1_000_000u64;
        for _ in 0..n {
            p.note_exit(t, t + rt, None);
            t += rt * 3;
        }
    }

    #[test]
    fn cheap_exits_keep_the_configured_period() {
        let mut p = Pacer::new(3_500_000);
        feed(&mut p, 300, 2_000);
        assert_eq!(p.round_trip(), 2_000);
        assert_eq!(p.period(), 3_500_000);
        assert_eq!(p.slice(500_000), 500_000);
        assert_eq!(p.slice(0), 4_000);
    }

    #[test]
    fn dear_exits_stretch_the_period_and_the_slice() {
        // The nested bed's case: the fallback period (100,000 ticks) is shorter than one round
        // trip, so a slice of "the time left" would end before the guest ran at all.
        let mut p = Pacer::new(100_000);
        feed(&mut p, 8, 1_500_000);
        assert_eq!(p.round_trip(), 1_500_000);
        assert_eq!(p.period(), 1_500_000 * ROUND_TRIP_FACTOR);
        assert_eq!(p.slice(1), 3_000_000);
        // The guest's share of a period is at least (F - 1) / F.
        let guest = p.period() - p.round_trip();
        assert!(guest * ROUND_TRIP_FACTOR >= p.period() * (ROUND_TRIP_FACTOR - 1));
    }

    #[test]
    fn the_estimate_is_the_shortest_sample_and_follows_the_machine() {
        let mut p = Pacer::new(1);
        assert_eq!(p.round_trip(), 0);
        assert_eq!(p.slice(0), 1);
        // First window: 8 exits; the long ones (guest work between exits) do not count.
        for (i, rt) in [90_000u64, 5_000, 70_000, 6_000, 80_000, 5_500, 9_000, 7_000]
            .into_iter()
            .enumerate()
        {
            assert_eq!(p.round_trip(), 0, "estimate published early at sample {i}");
            p.note_exit(10, 10 + rt, None);
        }
        assert_eq!(p.round_trip(), 5_000);
        // Later windows are WINDOW exits long; exits became dearer.
        feed(&mut p, WINDOW - 1, 50_000);
        assert_eq!(p.round_trip(), 5_000, "window closed one exit early");
        feed(&mut p, 1, 50_000);
        assert_eq!(p.round_trip(), 50_000);
        // ... and cheaper again.
        feed(&mut p, WINDOW, 800);
        assert_eq!(p.round_trip(), 800);
    }

    #[test]
    fn an_idle_guest_does_not_stretch_the_period() {
        // Only the poll's own exits, each arriving a little after its slice: the estimate is
        // the time past the slice, so the period stays the configured one window after window.
        let mut p = Pacer::new(3_500_000);
        let mut t = 0u64;
        for _ in 0..(WINDOW * 4) {
            let slice = p.slice(p.period());
            p.note_exit(t, t + slice + 900, Some(slice));
            t += slice + 5_000;
        }
        assert_eq!(p.round_trip(), 900);
        assert_eq!(p.period(), 3_500_000);
        // The nested livelock: a 100,000-tick slice answered 3,000,000 ticks later.
        let mut p = Pacer::new(100_000);
        for _ in 0..8 {
            p.note_exit(0, 3_000_000, Some(100_000));
        }
        assert_eq!(p.round_trip(), 2_900_000);
        assert_eq!(p.period(), 2_900_000 * ROUND_TRIP_FACTOR);
        // A timer exit that came early (a slice the guest cut short) counts as free.
        let mut p = Pacer::new(10);
        for _ in 0..8 {
            p.note_exit(0, 50, Some(100));
        }
        assert_eq!(p.round_trip(), 0);
        assert_eq!(p.period(), 10);
    }

    #[test]
    fn a_clock_going_backwards_is_ignored() {
        let mut p = Pacer::new(10);
        for _ in 0..20 {
            p.note_exit(100, 50, None);
        }
        assert_eq!(p.round_trip(), 0);
        assert_eq!(p.period(), 10);
        // Huge samples saturate instead of overflowing.
        for _ in 0..8 {
            p.note_exit(0, u64::MAX / 3, None);
        }
        assert_eq!(p.period(), u64::MAX);
        assert_eq!(p.slice(0), u64::MAX / 3 * MIN_SLICE_FACTOR);
    }
}
