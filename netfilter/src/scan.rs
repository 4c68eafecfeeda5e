//! Port-scan detection: distinct destination ports and hosts probed within a time window.
//!
//! A *probe* is a TCP connection attempt (SYN without ACK), a UDP datagram or an ICMP echo
//! request. Each tracked party keeps a fixed window: when the window has elapsed, the next probe
//! starts a new one. A party that reaches either threshold within one window is a scanner.
//!
//! Outbound, the scanner is a container (attributed by its port identity, which it cannot
//! forge) and is blocked outbound for a configured time. Inbound, the scanner is a source
//! address on the wire, which may be spoofed: it is recorded, and blocked only when the
//! configuration says so and the address is not on the allow-list (the gateway, say).

use core::net::Ipv4Addr;

use crate::index::IndexKey;
use crate::rules::Ipv4Cidr;

/// Most distinct ports or hosts a window tracks; thresholds are clamped to this.
pub const PROBE_SET_CAPACITY: usize = 64;
/// Number of inbound sources tracked at once.
pub const INBOUND_SOURCES: usize = 128;
/// Number of inbound sources that can be blocked at once.
pub const BLOCKED_SOURCES: usize = 64;
/// Number of allow-list entries.
pub const ALLOW_LIST_LEN: usize = 16;

/// Scan-detector settings. Times are in the engine's time unit (nanoseconds by convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanConfig {
    /// Whether detection runs at all.
    pub enabled: bool,
    /// Length of a window.
    pub window: u64,
    /// Distinct destination ports in one window that make a scan (2 to 64).
    pub port_threshold: u16,
    /// Distinct destination hosts in one window that make a scan (2 to 64).
    pub host_threshold: u16,
    /// How long a scanning container stays blocked outbound.
    pub block_for: u64,
    /// Whether an inbound scanner's source address is blocked (else only recorded).
    pub block_inbound_sources: bool,
    /// How long an inbound scanner stays blocked.
    pub inbound_block_for: u64,
    /// Addresses never blocked as inbound scanners, whatever they seem to do.
    pub allow_list: heapless::Vec<Ipv4Cidr, ALLOW_LIST_LEN>,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            enabled: true,
            window: 2_000_000_000,
            port_threshold: 24,
            host_threshold: 48,
            block_for: 60_000_000_000,
            block_inbound_sources: true,
            inbound_block_for: 60_000_000_000,
            allow_list: heapless::Vec::new(),
        }
    }
}

impl ScanConfig {
    /// Whether `ip` is on the allow-list.
    pub fn is_allow_listed(&self, ip: Ipv4Addr) -> bool {
        self.allow_list.iter().any(|c| c.contains(ip))
    }

    fn port_limit(&self) -> usize {
        (self.port_threshold as usize).clamp(2, PROBE_SET_CAPACITY)
    }

    fn host_limit(&self) -> usize {
        (self.host_threshold as usize).clamp(2, PROBE_SET_CAPACITY)
    }
}

/// One probe: a destination host, and a port when the protocol has ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Destination address.
    pub host: Ipv4Addr,
    /// Destination port (TCP/UDP).
    pub port: Option<u16>,
}

/// Distinct ports and hosts seen in the current window. The start and counts lead, so a probe
/// that repeats a recent port and host touches the first cache line only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct ProbeWindow {
    start: u64,
    active: bool,
    port_count: u8,
    host_count: u8,
    hosts: [u32; PROBE_SET_CAPACITY],
    ports: [u16; PROBE_SET_CAPACITY],
}

/// The counts after a probe was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCounts {
    /// Distinct ports in the window.
    pub ports: u16,
    /// Distinct hosts in the window.
    pub hosts: u16,
    /// Whether a threshold is reached.
    pub is_scan: bool,
}

impl ProbeWindow {
    /// An empty window.
    pub const EMPTY: ProbeWindow = ProbeWindow {
        start: 0,
        active: false,
        port_count: 0,
        host_count: 0,
        hosts: [0; PROBE_SET_CAPACITY],
        ports: [0; PROBE_SET_CAPACITY],
    };

    fn expired(&self, now: u64, window: u64) -> bool {
        !self.active || now.saturating_sub(self.start) >= window
    }

    /// Record `probe` at `now`, starting a new window if the current one has elapsed.
    pub fn record(&mut self, now: u64, config: &ScanConfig, probe: Probe) -> WindowCounts {
        if self.expired(now, config.window) {
            *self = ProbeWindow::EMPTY;
            self.start = now;
            self.active = true;
        }
        if let Some(port) = probe.port {
            let n = self.port_count as usize;
            if !self.ports[..n].contains(&port) && n < PROBE_SET_CAPACITY {
                self.ports[n] = port;
                self.port_count += 1;
            }
        }
        let host = u32::from(probe.host);
        let n = self.host_count as usize;
        if !self.hosts[..n].contains(&host) && n < PROBE_SET_CAPACITY {
            self.hosts[n] = host;
            self.host_count += 1;
        }
        WindowCounts {
            ports: u16::from(self.port_count),
            hosts: u16::from(self.host_count),
            is_scan: self.port_count as usize >= config.port_limit()
                || self.host_count as usize >= config.host_limit(),
        }
    }
}

/// Outbound scan state of one container (cache-line aligned: the block, the window's start and
/// counts and its first hosts share a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct OutboundScan {
    blocked_until: Option<u64>,
    /// Windows begun (or ended by a block or an unblock) so far: names the current window.
    windows: u32,
    window: ProbeWindow,
}

/// What recording an outbound probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanVerdict {
    /// Nothing unusual.
    Clear,
    /// This probe made the container a scanner: it is now blocked.
    NewlyBlocked(WindowCounts, u64),
}

impl OutboundScan {
    /// No history.
    pub const NEW: OutboundScan = OutboundScan {
        blocked_until: None,
        windows: 0,
        window: ProbeWindow::EMPTY,
    };

    /// The current probe window's number while it is open at `now` (`None` when detection is
    /// off or no window is open). The same number means the same window: every probe recorded
    /// under it is still in it.
    #[inline]
    pub fn open_window(&self, now: u64, config: &ScanConfig) -> Option<u32> {
        (config.enabled && !self.window.expired(now, config.window)).then_some(self.windows)
    }

    /// Whether the container is blocked at `now` (an expired block is lifted).
    #[inline]
    pub fn is_blocked(&mut self, now: u64) -> bool {
        match self.blocked_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.blocked_until = None;
                false
            }
            None => false,
        }
    }

    /// The end of the current block, if blocked.
    pub fn blocked_until(&self) -> Option<u64> {
        self.blocked_until
    }

    /// Lift the block (operator action).
    pub fn unblock(&mut self) {
        self.blocked_until = None;
        self.window = ProbeWindow::EMPTY;
        self.windows = self.windows.wrapping_add(1);
    }

    /// Record a probe; blocks the container when it crosses a threshold.
    pub fn record(&mut self, now: u64, config: &ScanConfig, probe: Probe) -> ScanVerdict {
        if self.window.expired(now, config.window) {
            self.windows = self.windows.wrapping_add(1);
        }
        let counts = self.window.record(now, config, probe);
        if counts.is_scan {
            let until = now.saturating_add(config.block_for);
            self.blocked_until = Some(until);
            self.window = ProbeWindow::EMPTY;
            self.windows = self.windows.wrapping_add(1);
            ScanVerdict::NewlyBlocked(counts, until)
        } else {
            ScanVerdict::Clear
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct SourceEntry {
    source: u32,
    used: bool,
    window: ProbeWindow,
}

/// What recording an inbound probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundVerdict {
    /// Nothing unusual.
    Clear,
    /// The source crossed a threshold; `blocked_until` is set when it is now blocked.
    Scan {
        /// The counts that crossed the threshold.
        counts: WindowCounts,
        /// End of the block, when one was imposed.
        blocked_until: Option<u64>,
    },
}

/// Inbound scan tracking and the blocked-source list.
#[derive(Debug, Clone)]
pub struct InboundScans {
    sources: [SourceEntry; INBOUND_SOURCES],
    blocked: [(u32, u64); BLOCKED_SOURCES],
    blocked_len: usize,
}

const WAYS: usize = 4;

impl InboundScans {
    /// Nothing tracked.
    pub const fn new() -> InboundScans {
        InboundScans {
            sources: [SourceEntry {
                source: 0,
                used: false,
                window: ProbeWindow::EMPTY,
            }; INBOUND_SOURCES],
            blocked: [(0, 0); BLOCKED_SOURCES],
            blocked_len: 0,
        }
    }

    /// Whether `source` is blocked at `now` (expired blocks are dropped from the list).
    #[inline]
    pub fn is_blocked(&mut self, now: u64, source: Ipv4Addr) -> bool {
        if self.blocked_len == 0 {
            return false;
        }
        let ip = u32::from(source);
        let mut i = 0;
        let mut hit = false;
        while i < self.blocked_len {
            let (addr, until) = self.blocked[i];
            if now >= until {
                self.blocked_len -= 1;
                self.blocked[i] = self.blocked[self.blocked_len];
                continue;
            }
            hit |= addr == ip;
            i += 1;
        }
        hit
    }

    /// Number of sources currently on the blocked list (including not yet purged expired ones).
    pub fn blocked_count(&self) -> usize {
        self.blocked_len
    }

    /// Remove `source` from the blocked list (operator action); returns whether it was there.
    pub fn unblock(&mut self, source: Ipv4Addr) -> bool {
        let ip = u32::from(source);
        for i in 0..self.blocked_len {
            if self.blocked[i].0 == ip {
                self.blocked_len -= 1;
                self.blocked[i] = self.blocked[self.blocked_len];
                return true;
            }
        }
        false
    }

    fn block(&mut self, ip: u32, until: u64) {
        for entry in self.blocked[..self.blocked_len].iter_mut() {
            if entry.0 == ip {
                entry.1 = entry.1.max(until);
                return;
            }
        }
        if self.blocked_len < BLOCKED_SOURCES {
            self.blocked[self.blocked_len] = (ip, until);
            self.blocked_len += 1;
        } else {
            // Full: replace the block that ends soonest.
            let mut victim = 0;
            for i in 1..BLOCKED_SOURCES {
                if self.blocked[i].1 < self.blocked[victim].1 {
                    victim = i;
                }
            }
            self.blocked[victim] = (ip, until);
        }
    }

    /// Record a probe from `source`.
    pub fn record(
        &mut self,
        now: u64,
        config: &ScanConfig,
        source: Ipv4Addr,
        probe: Probe,
    ) -> InboundVerdict {
        let ip = u32::from(source);
        let base = (ip.hash32() as usize) & (INBOUND_SOURCES - 1) & !(WAYS - 1);
        let mut chosen = None;
        let mut oldest = base;
        for i in base..base + WAYS {
            let e = &self.sources[i];
            if e.used && e.source == ip {
                chosen = Some(i);
                break;
            }
            if !e.used || e.window.expired(now, config.window) {
                chosen.get_or_insert(i);
            } else if e.window.start < self.sources[oldest].window.start {
                oldest = i;
            }
        }
        let i = chosen.unwrap_or(oldest);
        let entry = &mut self.sources[i];
        if !(entry.used && entry.source == ip) {
            *entry = SourceEntry {
                source: ip,
                used: true,
                window: ProbeWindow::EMPTY,
            };
        }
        let counts = entry.window.record(now, config, probe);
        if !counts.is_scan {
            return InboundVerdict::Clear;
        }
        entry.window = ProbeWindow::EMPTY;
        let blocked_until = if config.block_inbound_sources && !config.is_allow_listed(source) {
            let until = now.saturating_add(config.inbound_block_for);
            self.block(ip, until);
            Some(until)
        } else {
            None
        };
        InboundVerdict::Scan {
            counts,
            blocked_until,
        }
    }
}

impl Default for InboundScans {
    fn default() -> Self {
        InboundScans::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window used on its own (thresholds above what it holds) keeps at most
    /// `PROBE_SET_CAPACITY` distinct ports and hosts; more probes neither panic nor count.
    #[test]
    fn a_window_saturates_at_its_capacity() {
        let config = ScanConfig {
            port_threshold: u16::MAX,
            host_threshold: u16::MAX,
            ..ScanConfig::default()
        };
        let mut w = ProbeWindow::EMPTY;
        let mut last = None;
        for i in 0..100u32 {
            let probe = Probe {
                host: Ipv4Addr::from(0x0a00_0000 + i),
                port: Some(1000 + i as u16),
            };
            last = Some(w.record(0, &config, probe));
            let expected = (i + 1).min(PROBE_SET_CAPACITY as u32) as u16;
            assert_eq!(last.unwrap().ports, expected);
            assert_eq!(last.unwrap().hosts, expected);
        }
        // The clamped threshold (64) is reached.
        assert!(last.unwrap().is_scan);
    }

    fn scan_from(scans: &mut InboundScans, config: &ScanConfig, now: u64, source: u32) {
        for port in 0..config.port_threshold {
            let probe = Probe {
                host: Ipv4Addr::new(10, 0, 0, 1),
                port: Some(port),
            };
            scans.record(now, config, Ipv4Addr::from(source), probe);
        }
    }

    /// Blocked sources are counted until their block ends (a lookup drops expired ones) or the
    /// operator lifts it.
    #[test]
    fn blocked_sources_are_counted_until_expiry_or_unblock() {
        let config = ScanConfig {
            port_threshold: 2,
            inbound_block_for: 1_000,
            ..ScanConfig::default()
        };
        let mut scans = InboundScans::new();
        assert_eq!(scans.blocked_count(), 0);
        scan_from(&mut scans, &config, 0, 0xc000_0201);
        scan_from(&mut scans, &config, 500, 0xc000_0202);
        assert_eq!(scans.blocked_count(), 2);
        assert!(scans.is_blocked(999, Ipv4Addr::from(0xc000_0201)));
        // At 1,000 the first block has ended: the lookup drops it, the second stays.
        assert!(!scans.is_blocked(1_000, Ipv4Addr::from(0xc000_0201)));
        assert_eq!(scans.blocked_count(), 1);
        assert!(scans.is_blocked(1_000, Ipv4Addr::from(0xc000_0202)));
        assert!(scans.unblock(Ipv4Addr::from(0xc000_0202)));
        assert!(!scans.unblock(Ipv4Addr::from(0xc000_0202)));
        assert_eq!(scans.blocked_count(), 0);
    }

    /// With the blocked list full, a new block replaces the one that ends soonest.
    #[test]
    fn a_full_blocked_list_replaces_the_block_that_ends_soonest() {
        let config = ScanConfig {
            port_threshold: 2,
            inbound_block_for: 1_000_000,
            ..ScanConfig::default()
        };
        let mut scans = InboundScans::new();
        // Source t's block ends at 1_000_100 + t: source 0's ends soonest, and it is not the
        // first in the list (the list is filled from t = 10 on).
        let order: [u32; BLOCKED_SOURCES] =
            core::array::from_fn(|i| ((i + 10) % BLOCKED_SOURCES) as u32);
        for t in order {
            scan_from(&mut scans, &config, 100 + u64::from(t), 0x0b00_0000 + t);
        }
        assert_eq!(scans.blocked_count(), BLOCKED_SOURCES);
        scan_from(&mut scans, &config, 200, 0x0c00_0000);
        assert_eq!(scans.blocked_count(), BLOCKED_SOURCES);
        assert!(scans.is_blocked(300, Ipv4Addr::from(0x0c00_0000)));
        assert!(
            !scans.is_blocked(300, Ipv4Addr::from(0x0b00_0000)),
            "soonest end replaced"
        );
        for t in 1..BLOCKED_SOURCES as u32 {
            assert!(
                scans.is_blocked(300, Ipv4Addr::from(0x0b00_0000 + t)),
                "source {t}"
            );
        }
        // Blocking an already blocked source again only extends its block.
        scan_from(&mut scans, &config, 250, 0x0b00_0005);
        assert_eq!(scans.blocked_count(), BLOCKED_SOURCES);
        assert!(scans.is_blocked(1_000_200, Ipv4Addr::from(0x0b00_0005)));
    }

    /// Sources whose probes are tracked in the same set of `WAYS` entries as `first`'s.
    fn same_set(first: u32, n: usize) -> std::vec::Vec<Ipv4Addr> {
        let set = |ip: u32| (ip.hash32() as usize) & (INBOUND_SOURCES - 1) & !(WAYS - 1);
        (first..)
            .filter(|ip| set(*ip) == set(first))
            .take(n)
            .map(Ipv4Addr::from)
            .collect()
    }

    fn probe_port(
        scans: &mut InboundScans,
        config: &ScanConfig,
        now: u64,
        source: Ipv4Addr,
        port: u16,
    ) -> bool {
        let probe = Probe {
            host: Ipv4Addr::new(10, 0, 0, 1),
            port: Some(port),
        };
        matches!(
            scans.record(now, config, source, probe),
            InboundVerdict::Scan { .. }
        )
    }

    /// Sources tracked in the same set keep their own windows: interleaved probes from two of
    /// them are never added up, and each is a scanner only by its own probes.
    #[test]
    fn sources_sharing_a_set_keep_their_own_windows() {
        let config = ScanConfig {
            port_threshold: 3,
            window: 1_000,
            ..ScanConfig::default()
        };
        let [a, b] = same_set(0xc000_0200, 2)[..] else {
            panic!()
        };
        let mut scans = InboundScans::new();
        for k in 0..2 {
            assert!(!probe_port(&mut scans, &config, 10, a, 100 + k));
            assert!(!probe_port(&mut scans, &config, 10, b, 200 + k));
        }
        assert!(
            probe_port(&mut scans, &config, 10, a, 102),
            "a's third port"
        );
        assert!(
            probe_port(&mut scans, &config, 10, b, 202),
            "b's third port"
        );
    }

    /// A full set (every window still open) gives way to a new source by dropping the window
    /// that started first; the newcomer starts from nothing.
    #[test]
    fn a_full_set_drops_the_oldest_window_for_a_new_source() {
        let config = ScanConfig {
            port_threshold: 3,
            window: 1_000,
            ..ScanConfig::default()
        };
        let s = same_set(0xc000_0300, WAYS + 1);
        let mut scans = InboundScans::new();
        // Windows open at 11, 10, 12 and 13 (the second source's is the oldest), two ports each.
        let starts = [11, 10, 12, 13];
        for (source, start) in s[..WAYS].iter().zip(starts) {
            assert!(!probe_port(&mut scans, &config, start, *source, 1));
            assert!(!probe_port(&mut scans, &config, start, *source, 2));
        }
        // The newcomer takes the second source's entry, with a window of its own.
        assert!(!probe_port(&mut scans, &config, 20, s[WAYS], 7));
        assert!(!probe_port(&mut scans, &config, 20, s[WAYS], 8));
        for (i, source) in s[..WAYS].iter().enumerate() {
            let scan = probe_port(&mut scans, &config, 30, *source, 3);
            assert_eq!(scan, i != 1, "source {i}");
        }
    }

    /// `open_window` names the probe window while it is open, and only then.
    #[test]
    fn open_window_is_named_only_while_it_is_open() {
        let config = ScanConfig {
            window: 1_000,
            ..ScanConfig::default()
        };
        let probe = Probe {
            host: Ipv4Addr::new(192, 0, 2, 1),
            port: Some(80),
        };
        let mut s = OutboundScan::NEW;
        assert_eq!(s.open_window(0, &config), None, "no probe yet");
        assert_eq!(s.record(100, &config, probe), ScanVerdict::Clear);
        let open = s.open_window(100, &config);
        assert!(open.is_some());
        assert_eq!(s.open_window(1_099, &config), open);
        assert_eq!(s.open_window(1_100, &config), None, "window elapsed");
        let off = ScanConfig {
            enabled: false,
            ..config.clone()
        };
        assert_eq!(s.open_window(100, &off), None, "detection off");
        // The next window has another number.
        s.record(1_100, &config, probe);
        let next = s.open_window(1_100, &config);
        assert!(next.is_some() && next != open);
    }
}
