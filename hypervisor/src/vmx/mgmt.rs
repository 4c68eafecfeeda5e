//! The management endpoint in the hypervisor: the thin layer between the NIC and
//! [`shoji_mgmt::Server`].
//!
//! The NIC's receive path offers every frame to [`take_rx`] before the guest's policy sees it;
//! frames for Shoji's address go to the server and never reach the guest. The transmit path asks
//! [`refuse_tx`] whether a guest frame speaks as Shoji (its MAC or IPv4 address) and drops it if
//! so. [`poll`] runs from the NIC's periodic poll: it runs the server with Shoji's millisecond
//! clock and sends its frames through [`E1000::send_own`]. [`Backend`] renders Shoji's counters,
//! events and registry for the server. Lock order: NIC, then the server, then the policy engine.

use super::nic::{Bar, Dma};
use crate::counters::exit_reason_name;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use shoji_drivers_e1000::{Counters as NicCounters, ExitCause, E1000};
use shoji_mgmt::prom::{Exposition, Kind};
use shoji_mgmt::{Guard, RxClass, Server, Settings};
use shoji_shared::{Direction, DropReason};
use spin::{Mutex, Once};

/// The server (set once at start-up when `mgmt_ip` is configured and the NIC is mediated).
static SERVER: Mutex<Option<Server>> = Mutex::new(None);
/// Shoji's addresses, for the per-frame checks without the server's lock.
static GUARD: Once<Guard> = Once::new();
/// Whether the endpoint runs.
static ON: AtomicBool = AtomicBool::new(false);

/// Shoji's MAC for the NIC's receive address 3, when the endpoint will run: the configured
/// one, else one derived from the NIC's own (`nic_mac`).
pub fn own_mac(settings: &Settings, nic_mac: [u8; 6]) -> Option<[u8; 6]> {
    (settings.enabled != 0).then(|| {
        if settings.mac == [0; 6] {
            Settings::derived_mac(nic_mac)
        } else {
            settings.mac
        }
    })
}

/// Start the endpoint with `settings` and the MAC chosen by [`own_mac`] (bootstrap processor,
/// once, after the NIC is mediated; allocates from the host heap).
pub fn init(settings: &Settings, mac: [u8; 6]) {
    let mut s = *settings;
    s.mac = mac;
    let server = Server::new(s, now_ms());
    let [a, b, c, d] = s.ip.addr;
    crate::hv_line!(
        "mgmt: Shoji's endpoint at {}.{}.{}.{}/{} port {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} ({} allowed networks (0: any), admin key {}, metrics {}; host heap {} KiB used)",
        a, b, c, d, s.ip.prefix, s.port,
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
        s.allow_count,
        if s.key_set != 0 { "set" } else { "NOT set: signed requests refused" },
        if s.metrics_auth != 0 { "signed" } else { "open" },
        crate::heap::used() / 1024
    );
    GUARD.call_once(|| Guard { mac, ip: s.ip.addr });
    *SERVER.lock() = Some(server);
    ON.store(true, Ordering::Release);
}

/// Shoji's clock in milliseconds.
fn now_ms() -> u64 {
    super::clock_ns() / 1_000_000
}

/// A frame from the wire: true when it is Shoji's (taken; the guest never sees it).
pub fn take_rx(frame: &[u8]) -> bool {
    if !ON.load(Ordering::Acquire) {
        return false;
    }
    let Some(g) = GUARD.get() else { return false };
    if g.rx(frame) != RxClass::Shoji {
        return false;
    }
    if let Some(s) = SERVER.lock().as_mut() {
        s.receive(frame);
    }
    true
}

/// A frame from the guest: the reason to drop it when it speaks as Shoji.
pub fn refuse_tx(frame: &[u8]) -> Option<DropReason> {
    if !ON.load(Ordering::Acquire) {
        return None;
    }
    let reason = GUARD.get()?.tx(frame)?;
    if let Some(n) = SPOOF_LOG.allow() {
        crate::hv_line!(
            "mgmt: guest frame speaking as Shoji dropped ({}; {} so far)",
            reason.name(),
            n
        );
    }
    Some(reason)
}

/// Log lines about guest frames that speak as Shoji.
static SPOOF_LOG: crate::counters::RateLimiter = crate::counters::RateLimiter::new(8);

/// Run the server and send its frames (from the NIC's poll, with the NIC locked).
pub fn poll(engine: &mut E1000<'static, Bar, Dma>) {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    let Some(mut guard) = SERVER.try_lock() else {
        return;
    };
    let Some(server) = guard.as_mut() else { return };
    // The NIC's counters are borrowed, not copied: most polls render nothing.
    server.poll(
        now_ms(),
        &mut Backend {
            nic: engine.counters(),
        },
    );
    server.pop_tx(&mut |f| engine.send_own(f));
}

/// The endpoint's counters in Shoji's log (with the NIC's, at LogCounters).
pub fn log_counters() {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    let Some(guard) = SERVER.try_lock() else {
        crate::hv_line!("mgmt: busy");
        return;
    };
    if let Some(s) = guard.as_ref() {
        let c = s.counters();
        crate::hv_line!(
            "mgmt: rx_frames={} rx_dropped={} tx_frames={} answers 2xx={} 4xx={} 5xx={} auth_refused={:?} not_allowed={} timeouts={}",
            c.rx_frames, c.rx_dropped, c.tx_frames, c.answers[0], c.answers[1], c.answers[2],
            c.auth_refused, c.not_allowed, c.timeouts
        );
    }
}

/// Shoji's state as the server renders it.
struct Backend<'a> {
    /// The NIC's counters when the request is answered.
    nic: &'a NicCounters,
}

impl shoji_mgmt::Backend for Backend<'_> {
    fn metrics(&mut self, e: &mut Exposition<'_>) -> fmt::Result {
        e.family(
            "shoji_build_info",
            Kind::Gauge,
            "Shoji's version (always 1).",
        )?;
        e.sample(
            "shoji_build_info",
            &[("version", &env!("CARGO_PKG_VERSION"))],
            1,
        )?;
        e.single(
            "shoji_uptime_seconds",
            Kind::Gauge,
            "Seconds of TSC time since power-on.",
            super::clock_ns() / 1_000_000_000,
        )?;
        nic_metrics(e, self.nic)?;
        exit_metrics(e)?;
        super::policy::metrics(e)
    }

    fn events(&mut self, from: u64, max: usize, out: &mut dyn Write) -> Result<u64, fmt::Error> {
        super::policy::events_json(from, max, out)
    }

    fn containers(&mut self, out: &mut dyn Write) -> fmt::Result {
        super::policy::containers_json(out)
    }

    fn next_event(&mut self) -> u64 {
        super::policy::next_event()
    }

    fn block(&mut self, body: &[u8], why: &mut dyn Write) -> Result<u32, u16> {
        super::policy::admin_block(body, why)
    }

    fn blocks(&mut self, out: &mut dyn Write) -> fmt::Result {
        super::policy::admin_blocks_json(out)
    }

    fn unblock(&mut self, id: u32) -> bool {
        super::policy::admin_unblock(id)
    }

    fn tasks_ready(&mut self) -> Result<(), &'static str> {
        super::introspection::tasks_ready()
    }

    fn tasks(&mut self, sockets: bool, budget: usize, out: &mut dyn Write) -> fmt::Result {
        match super::launch::setup() {
            Some(setup) => super::introspection::tasks_json(setup, sockets, budget, out),
            None => Err(fmt::Error),
        }
    }
}

/// The NIC's counters: frames and drops by direction, Shoji's exits by cause, registers.
fn nic_metrics(e: &mut Exposition<'_>, c: &NicCounters) -> fmt::Result {
    e.family(
        "shoji_nic_frames_total",
        Kind::Counter,
        "Frames the mediated NIC moved for the guest (tx: to the wire, rx: into the guest).",
    )?;
    for (d, name) in Direction::ALL.map(|d| (d, d.name())) {
        e.sample(
            "shoji_nic_frames_total",
            &[("direction", &name)],
            c.dir(d).frames,
        )?;
    }
    e.family(
        "shoji_nic_bytes_total",
        Kind::Counter,
        "Bytes of those frames.",
    )?;
    for (d, name) in Direction::ALL.map(|d| (d, d.name())) {
        e.sample(
            "shoji_nic_bytes_total",
            &[("direction", &name)],
            c.dir(d).bytes,
        )?;
    }
    e.family(
        "shoji_nic_dropped_total",
        Kind::Counter,
        "Frames the mediated NIC dropped, by direction and reason.",
    )?;
    for (d, name) in Direction::ALL.map(|d| (d, d.name())) {
        for r in DropReason::ALL {
            e.sample(
                "shoji_nic_dropped_total",
                &[("direction", &name), ("reason", &r.name())],
                c.dir(d).drops[r.index()],
            )?;
        }
    }
    e.single(
        "shoji_nic_guest_tx_packets_total",
        Kind::Counter,
        "Packets taken from the guest's TX ring (before segmentation).",
        c.tx_guest_packets,
    )?;
    e.single(
        "shoji_nic_tso_segments_total",
        Kind::Counter,
        "Wire frames produced by TCP segmentation offload.",
        c.tso_segments,
    )?;
    e.single(
        "shoji_nic_own_tx_frames_total",
        Kind::Counter,
        "Frames of Shoji's own (the management endpoint) sent on the wire.",
        c.own_tx_frames,
    )?;
    e.single(
        "shoji_nic_guest_resets_total",
        Kind::Counter,
        "Device resets by the guest.",
        c.guest_resets,
    )?;
    e.single(
        "shoji_nic_refused_accesses_total",
        Kind::Counter,
        "Guest register accesses Shoji refused.",
        c.refused_accesses,
    )?;
    e.family(
        "shoji_nic_calls_total",
        Kind::Counter,
        "Entries into the NIC engine, by cause (register traps and polls).",
    )?;
    for cause in ExitCause::ALL {
        e.sample(
            "shoji_nic_calls_total",
            &[("cause", &cause.name())],
            c.exits[cause as usize],
        )?;
    }
    Ok(())
}

/// VM exits by CPU and reason.
fn exit_metrics(e: &mut Exposition<'_>) -> fmt::Result {
    e.family(
        "shoji_vm_exits_total",
        Kind::Counter,
        "VM exits, by CPU and basic exit reason.",
    )?;
    let mut result = Ok(());
    super::launch::for_each_vcpu(|cpu, counters| {
        for (reason, n) in counters.nonzero() {
            if result.is_ok() {
                result = e.sample(
                    "shoji_vm_exits_total",
                    &[
                        ("cpu", &cpu),
                        ("reason", &exit_reason_name(reason)),
                        ("number", &reason),
                    ],
                    n,
                );
            }
        }
    });
    result
}
