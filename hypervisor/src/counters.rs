//! Per-exit-reason counters and the rate limiter for guest-triggerable log lines.

use core::sync::atomic::{AtomicU64, Ordering};

/// Number of basic exit reasons tracked (the SDM defines reasons 0..=69 so far).
pub const EXIT_REASONS: usize = 80;

/// Short name of a basic exit reason (SDM Appendix C).
pub fn exit_reason_name(reason: u32) -> &'static str {
    match reason {
        0 => "exception_nmi",
        1 => "external_interrupt",
        2 => "triple_fault",
        3 => "init",
        4 => "sipi",
        7 => "interrupt_window",
        8 => "nmi_window",
        9 => "task_switch",
        10 => "cpuid",
        12 => "hlt",
        13 => "invd",
        14 => "invlpg",
        16 => "rdtsc",
        18 => "vmcall",
        19 => "vmclear",
        20 => "vmlaunch",
        21 => "vmptrld",
        22 => "vmptrst",
        23 => "vmread",
        24 => "vmresume",
        25 => "vmwrite",
        26 => "vmxoff",
        27 => "vmxon",
        28 => "cr_access",
        29 => "dr_access",
        30 => "io",
        31 => "rdmsr",
        32 => "wrmsr",
        33 => "entry_fail_guest_state",
        34 => "entry_fail_msr_load",
        36 => "mwait",
        37 => "monitor_trap",
        39 => "monitor",
        40 => "pause",
        48 => "ept_violation",
        49 => "ept_misconfig",
        50 => "invept",
        51 => "rdtscp",
        52 => "preemption_timer",
        53 => "invvpid",
        54 => "wbinvd",
        55 => "xsetbv",
        57 => "rdrand",
        58 => "invpcid",
        59 => "vmfunc",
        61 => "rdseed",
        63 => "xsaves",
        64 => "xrstors",
        _ => "other",
    }
}

/// Exit counters of one CPU.
pub struct ExitCounters {
    counts: [AtomicU64; EXIT_REASONS],
}

impl ExitCounters {
    /// All zero.
    pub const fn new() -> Self {
        ExitCounters {
            counts: [const { AtomicU64::new(0) }; EXIT_REASONS],
        }
    }

    /// Count one exit of `reason` (reasons beyond the table count as the last slot).
    pub fn record(&self, reason: u32) {
        let i = (reason as usize).min(EXIT_REASONS - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Count of `reason`.
    pub fn get(&self, reason: u32) -> u64 {
        self.counts[(reason as usize).min(EXIT_REASONS - 1)].load(Ordering::Relaxed)
    }

    /// Total exits.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The non-zero counters as (reason, count), in reason order.
    pub fn nonzero(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u32, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c != 0)
    }
}

impl Default for ExitCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// Lets the first `burst` events through, then one in every power-of-two count, so a guest that
/// triggers an event in a loop cannot flood Shoji's log but its persistence stays visible.
pub struct RateLimiter {
    seen: AtomicU64,
    burst: u64,
}

impl RateLimiter {
    /// A limiter passing the first `burst` events.
    pub const fn new(burst: u64) -> Self {
        RateLimiter {
            seen: AtomicU64::new(0),
            burst,
        }
    }

    /// Record one event; returns `Some(n)` (the event's ordinal) when it should be logged.
    pub fn allow(&self) -> Option<u64> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        (n <= self.burst || n.is_power_of_two()).then_some(n)
    }
}

/// A token bucket on a nanosecond clock: up to `burst` events at once, then one per `every_ns`.
/// Unlike [`RateLimiter`] it refills with time, so a caller that was limited is served again
/// once it slows down; each class of caller gets a bucket of its own, so one class cannot spend
/// another's budget.
pub struct TokenBucket {
    /// (tokens, time of the last refill).
    state: spin::Mutex<(u64, u64)>,
    burst: u64,
    every_ns: u64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens, one more every `every_ns` nanoseconds.
    pub const fn new(burst: u64, every_ns: u64) -> Self {
        TokenBucket {
            state: spin::Mutex::new((burst, 0)),
            burst,
            every_ns,
        }
    }

    /// Take a token at time `now_ns`; false when the bucket is empty.
    pub fn take(&self, now_ns: u64) -> bool {
        let mut st = self.state.lock();
        let (tokens, last) = *st;
        let every = self.every_ns.max(1);
        let earned = now_ns.saturating_sub(last) / every;
        // Keep the remainder: the next token comes `every_ns` after the last one earned.
        let last = last.saturating_add(earned.saturating_mul(every));
        let tokens = tokens.saturating_add(earned).min(self.burst);
        if tokens == 0 {
            *st = (0, last);
            return false;
        }
        *st = (tokens - 1, last);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_bursts_then_refills_with_time() {
        const MS: u64 = 1_000_000;
        let b = TokenBucket::new(3, 100 * MS);
        let t0 = 5_000 * MS;
        // The first burst, then refused.
        assert_eq!((0..10).filter(|_| b.take(t0)).count(), 3);
        assert!(!b.take(t0 + 99 * MS));
        // One token per 100 ms.
        assert!(b.take(t0 + 100 * MS));
        assert!(!b.take(t0 + 150 * MS));
        assert!(b.take(t0 + 200 * MS));
        // A long pause refills to the burst, no more.
        assert_eq!((0..10).filter(|_| b.take(t0 + 60_000 * MS)).count(), 3);
        // A clock that goes backwards earns nothing and panics nowhere.
        assert!(!b.take(t0));
    }

    #[test]
    fn token_buckets_are_independent() {
        let host = TokenBucket::new(2, 1_000);
        let container = TokenBucket::new(2, 1_000);
        assert_eq!((0..100).filter(|_| container.take(10)).count(), 2);
        assert!(host.take(10) && host.take(10));
    }

    #[test]
    fn counters_count_and_clamp() {
        let c = ExitCounters::new();
        c.record(10);
        c.record(10);
        c.record(1000);
        assert_eq!(c.get(10), 2);
        assert_eq!(c.get(EXIT_REASONS as u32 - 1), 1);
        assert_eq!(c.total(), 3);
        assert_eq!(c.nonzero().count(), 2);
        assert_eq!(exit_reason_name(10), "cpuid");
    }

    #[test]
    fn rate_limiter_bounds_output() {
        let r = RateLimiter::new(3);
        let logged = (0..10_000).filter(|_| r.allow().is_some()).count();
        // 3 burst + powers of two from 4 to 8192 (4,8,...,8192 = 12 values).
        assert_eq!(logged, 3 + 12);
    }
}
