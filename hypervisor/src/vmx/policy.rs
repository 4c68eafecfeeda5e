//! The per-container policy inside Shoji: the netfilter engine that decides every frame of the
//! mediated NIC, and the agent's VMCALLs that change it (RegisterContainer, UpdateContainer,
//! UnregisterContainer) or read it (ReadCounters, ReadEvents).
//!
//! Until the agent registers the first container the NIC runs with the shadow rings alone
//! ([`PassAll`]); from then on every frame, both ways, goes through the engine. Lock order: the
//! NIC's lock, then this engine's; the VMCALLs take only this one.

use super::introspection::{self, CallerState};
use crate::arena::Arena;
use crate::guest::GuestRam;
use crate::setup::Setup;
use core::mem::{align_of, size_of};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shoji_introspect::{copy_from_guest, copy_to_guest};
use shoji_netfilter::admin::{AdminError, AdminSpec};
use shoji_netfilter::config::EngineConfig;
use shoji_netfilter::encoding::{self, MAX_ENCODED_LEN};
use shoji_netfilter::engine::Engine;
use shoji_netfilter::events::{Event, EventKind, PolicyChange};
use shoji_netfilter::registry::{ContainerSlot, RegistryError};
use shoji_netfilter::report;
use shoji_shared::vmcall::{
    Status, AGENT_KEY_LEN, LIST_TASKS_LEN, LIST_TASKS_MIN_OUT, LIST_TASKS_SOCKETS, MAX_BUFFER_LEN,
    READ_COUNTERS_LEN, READ_EVENTS_LEN, UNREGISTER_LEN,
};
use shoji_shared::{
    ContainerId, ContainerMembership, Direction, DropReason, FrameFilter, FrameMeta, FrameSink,
    NoContainers, PassAll, Verdict,
};
use spin::Mutex;

/// How many containers Shoji can hold (each slot is about 5 KiB of Shoji's memory).
pub const CONTAINER_SLOTS: usize = 64;

/// Where the engine and the registry's slots live: pages of Shoji's reserved region taken at
/// boot ([`init`]); 0 until then. The engine is built in them at the first registration.
static STORAGE: AtomicU64 = AtomicU64::new(0);

/// The engine, once built.
static ENGINE: Mutex<Option<&'static mut Engine<'static>>> = Mutex::new(None);

/// Whether frames go through the engine: a container was registered once, or an administrator
/// rule is in force.
static POLICY_ON: AtomicBool = AtomicBool::new(false);

/// Whether a container was registered once (the policy then stays on).
static EVER_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Longest registration request: the key and the longest encoding.
const MAX_REGISTER_LEN: usize = AGENT_KEY_LEN + MAX_ENCODED_LEN;

/// Filler for the event buffer (overwritten before use).
const NO_EVENT: Event = Event {
    seq: 0,
    time: 0,
    kind: EventKind::Policy {
        container: None,
        change: PolicyChange::Config,
    },
};

/// Events copied per step of a ReadEvents call (bounded stack use).
const EVENT_CHUNK: usize = 16;

/// Whether the policy is on (frames go through the engine).
pub fn policy_on() -> bool {
    POLICY_ON.load(Ordering::Acquire)
}

/// The engine's clock ([`super::clock_ns`]).
fn now_ns() -> u64 {
    super::clock_ns()
}

/// Bytes of the slots, rounded up so the engine after them is aligned.
const SLOTS_BYTES: usize = (CONTAINER_SLOTS * size_of::<ContainerSlot>()).next_multiple_of(64);
/// Pages for the slots and the engine.
const STORAGE_PAGES: u64 = (SLOTS_BYTES + size_of::<Engine<'static>>()).div_ceil(4096) as u64;

/// Pages of the stack the engine is built on: `Engine::new` returns a value of about half a MiB,
/// more than a host stack holds, so it runs once on a stack of its own, with room for three
/// copies of the value (the compiler may build parts of it, then the whole, before the write)
/// and 256 KiB for the calls.
const BUILD_STACK_PAGES: u64 = (3 * size_of::<Engine<'static>>()).div_ceil(4096) as u64 + 64;

/// Take the engine's pages and its build stack from Shoji's reserved region (bootstrap
/// processor, once, at boot).
pub fn init(arena: &mut Arena<'_>) {
    const {
        assert!(align_of::<ContainerSlot>() <= 4096 && align_of::<Engine<'static>>() <= 64);
    }
    match arena.alloc_pages(STORAGE_PAGES + BUILD_STACK_PAGES) {
        Some(base) => STORAGE.store(base, Ordering::Release),
        None => crate::hv_line!("policy: no memory for the engine; registrations will be refused"),
    }
}

/// Build the engine at `engine` over `slots` (called on the build stack).
extern "sysv64" fn build_engine(engine: *mut Engine<'static>, slots: *mut ContainerSlot) {
    for i in 0..CONTAINER_SLOTS {
        // SAFETY: `slots` points at CONTAINER_SLOTS slots' worth of Shoji's reserved pages,
        // page-aligned, reachable by nothing else yet.
        unsafe { slots.add(i).write(ContainerSlot::EMPTY) };
    }
    // SAFETY: initialised just above; this is the only reference to them, taken once.
    let slots = unsafe { core::slice::from_raw_parts_mut(slots, CONTAINER_SLOTS) };
    // SAFETY: `engine` is the engine's place in the same pages, 64-byte aligned, written once.
    unsafe { engine.write(Engine::new(slots, EngineConfig::default())) };
}

/// Build the engine in its pages if it does not exist yet. `None` without storage.
#[inline(never)]
fn ensure_engine<'a>(
    slot: &'a mut Option<&'static mut Engine<'static>>,
) -> Option<&'a mut Engine<'static>> {
    if slot.is_none() {
        let base = STORAGE.load(Ordering::Acquire);
        if base == 0 {
            return None;
        }
        let slots_ptr = base as *mut ContainerSlot;
        let engine_ptr = (base + SLOTS_BYTES as u64) as *mut Engine<'static>;
        let stack_top = base + (STORAGE_PAGES + BUILD_STACK_PAGES) * 0x1000;
        // SAFETY: switches to the build stack (the top of the pages `init` reserved, 16-byte
        // aligned, used by nothing else), calls `build_engine` with the System V convention, and
        // switches back; RSP is kept in R12, which that convention preserves. Called once, with
        // ENGINE's lock held, so no other CPU uses the build stack.
        unsafe {
            core::arch::asm!(
                "mov r12, rsp",
                "mov rsp, {top}",
                "call {build}",
                "mov rsp, r12",
                top = in(reg) stack_top,
                build = sym build_engine,
                in("rdi") engine_ptr,
                in("rsi") slots_ptr,
                out("r12") _,
                clobber_abi("sysv64"),
            );
        }
        // SAFETY: `build_engine` initialised the engine; only ENGINE reaches it from now on.
        *slot = Some(unsafe { &mut *engine_ptr });
    }
    slot.as_deref_mut()
}

/// The filter the NIC hands each frame to: the engine once the policy is on, else pass-all.
pub struct PolicyFilter;

impl FrameFilter for PolicyFilter {
    fn filter(&mut self, meta: &FrameMeta<'_>, frame: &[u8], out: &mut dyn FrameSink) -> Verdict {
        // Shoji's own address comes first, policy or not: its frames are Shoji's, and the guest
        // may not speak as Shoji.
        match meta.direction {
            Direction::Rx if super::mgmt::take_rx(frame) => return Verdict::Pass,
            Direction::Tx => {
                if let Some(reason) = super::mgmt::refuse_tx(frame) {
                    return Verdict::Drop(reason);
                }
            }
            Direction::Rx => {}
        }
        if !policy_on() {
            return PassAll.filter(meta, frame, out);
        }
        // The policy is on only after a registration built the engine.
        let t0 = super::rdtsc();
        let mut guard = ENGINE.lock();
        let Some(engine) = guard.as_deref_mut() else {
            return PassAll.filter(meta, frame, out);
        };
        engine.set_now(now_ns());
        let verdict = engine.decide(meta, frame, out).verdict;
        drop(guard);
        super::nic::record_policy(super::rdtsc().wrapping_sub(t0));
        verdict
    }
}

/// Write the TX flow cache's counters to Shoji's log (with the NIC's counters).
pub fn log_stats() {
    if !policy_on() {
        return;
    }
    let Some(guard) = ENGINE.try_lock() else {
        crate::hv_line!("policy: engine busy");
        return;
    };
    if let Some(engine) = guard.as_deref() {
        let st = engine.flow_cache_stats();
        crate::hv_line!(
            "policy: flow cache hits={} misses={} inserts={}",
            st.hits,
            st.misses,
            st.inserts
        );
    }
}

/// Run `f` with the registry's view of container membership (for the agent check): the
/// engine's, or none before the first registration built it. Takes the engine's lock: callers
/// hold no NIC lock (the VMCALL paths).
pub fn with_containers<T>(f: impl FnOnce(&dyn ContainerMembership) -> T) -> T {
    let guard = ENGINE.lock();
    match guard.as_deref() {
        Some(engine) => f(engine),
        None => f(&NoContainers),
    }
}

/// Why a policy call was refused: the status, and a detail code for RBX.
pub type Refusal = (Status, u64);

fn refuse(status: Status) -> Refusal {
    (status, 0)
}

/// Read a request of `len` bytes (at most `N`) that starts with the agent key, and check that the
/// caller is the agent. Returns the request and the body's length.
fn agent_request<const N: usize>(
    setup: &Setup,
    va: u64,
    len: u64,
    min: usize,
) -> Result<([u8; N], usize, CallerState), Refusal> {
    if len > MAX_BUFFER_LEN as u64 || len > N as u64 {
        return Err(refuse(if len > MAX_BUFFER_LEN as u64 {
            Status::BadBuffer
        } else {
            Status::InvalidArgument
        }));
    }
    let len = len as usize;
    if len < min.max(AGENT_KEY_LEN) {
        return Err(refuse(Status::InvalidArgument));
    }
    let st = introspection::caller_state().ok_or(refuse(Status::InvalidArgument))?;
    let mem = GuestRam::from_setup(setup);
    let mut req = [0u8; N];
    copy_from_guest(&mem, &st.caller, va, len, &mut req[..len]).map_err(refuse)?;
    let mut key = [0u8; AGENT_KEY_LEN];
    key.copy_from_slice(&req[..AGENT_KEY_LEN]);
    introspection::authenticate_agent(setup, &mem, &st, &key).map_err(refuse)?;
    Ok((req, len - AGENT_KEY_LEN, st))
}

/// Read a request that must be exactly `N` bytes long (the agent key and fixed arguments), with
/// an output buffer of `out_len` bytes that must hold at least `min_out`, and check that the
/// caller is the agent.
fn fixed_agent_request<const N: usize>(
    setup: &Setup,
    va: u64,
    len: u64,
    out_len: u64,
    min_out: usize,
) -> Result<([u8; N], CallerState), Refusal> {
    if len != N as u64 {
        return Err(refuse(Status::InvalidArgument));
    }
    if out_len > MAX_BUFFER_LEN as u64 {
        return Err(refuse(Status::BadBuffer));
    }
    if out_len < min_out as u64 {
        return Err(refuse(Status::InvalidArgument));
    }
    agent_request::<N>(setup, va, len, N).map(|(req, _, st)| (req, st))
}

/// The status and detail code for a registry refusal.
fn registry_refusal(e: RegistryError) -> Refusal {
    let status = match e {
        RegistryError::Full => Status::Full,
        RegistryError::NotFound(_) => Status::NotFound,
        RegistryError::DuplicateId(_)
        | RegistryError::VlanInUse(..)
        | RegistryError::MacInUse(..)
        | RegistryError::Ipv4InUse(..)
        | RegistryError::CgroupInUse(..)
        | RegistryError::NetnsInUse(..) => Status::Exists,
        _ => Status::InvalidArgument,
    };
    (status, e.code())
}

/// RegisterContainer (`update` = false) and UpdateContainer (`update` = true): `RBX` = request
/// (agent key, then the "SHJC" registration), `RCX` = its length.
pub fn register(setup: &Setup, va: u64, len: u64, update: bool) -> Result<ContainerId, Refusal> {
    let (req, body_len, _) = agent_request::<MAX_REGISTER_LEN>(setup, va, len, AGENT_KEY_LEN + 1)?;
    let body = &req[AGENT_KEY_LEN..AGENT_KEY_LEN + body_len];
    let spec = encoding::decode(body).map_err(|e| (Status::InvalidArgument, e.code()))?;
    let id = spec.id;
    let mut guard = ENGINE.lock();
    let engine = ensure_engine(&mut guard).ok_or(refuse(Status::Unsupported))?;
    engine.set_now(now_ns());
    let r = if update {
        engine.update(spec)
    } else {
        engine.register(spec)
    };
    r.map_err(registry_refusal)?;
    EVER_REGISTERED.store(true, Ordering::Release);
    POLICY_ON.store(true, Ordering::Release);
    Ok(id)
}

/// UnregisterContainer: `RBX` = request (agent key, then the id as u32 LE), `RCX` =
/// [`UNREGISTER_LEN`].
pub fn unregister(setup: &Setup, va: u64, len: u64) -> Result<ContainerId, Refusal> {
    let (req, _) = fixed_agent_request::<UNREGISTER_LEN>(setup, va, len, 0, 0)?;
    let mut id = [0u8; 4];
    id.copy_from_slice(&req[AGENT_KEY_LEN..UNREGISTER_LEN]);
    let id = ContainerId(u32::from_le_bytes(id));
    let mut guard = ENGINE.lock();
    let engine = ensure_engine(&mut guard).ok_or(refuse(Status::Unsupported))?;
    engine.set_now(now_ns());
    engine.unregister(id).map_err(registry_refusal)?;
    Ok(id)
}

/// ReadCounters: `RBX` = request (the agent key), `RCX` = [`READ_COUNTERS_LEN`], `RDX`/`RSI` =
/// output buffer. Returns the bytes written; `Full` with the bytes needed when it is too small.
pub fn read_counters(
    setup: &Setup,
    va: u64,
    len: u64,
    out: u64,
    out_len: u64,
) -> Result<u64, Refusal> {
    let (_, st) = fixed_agent_request::<READ_COUNTERS_LEN>(setup, va, len, out_len, 0)?;
    let mut buf = [0u8; report::counters_len(CONTAINER_SLOTS)];
    let written = {
        let mut guard = ENGINE.lock();
        let engine = ensure_engine(&mut guard).ok_or(refuse(Status::Unsupported))?;
        report::encode_engine_counters(engine, &mut buf)
            .map_err(|needed| (Status::Full, needed as u64))?
    };
    if written as u64 > out_len {
        return Err((Status::Full, written as u64));
    }
    let mut mem = GuestRam::from_setup(setup);
    copy_to_guest(&mut mem, &st.caller, out, &buf[..written]).map_err(refuse)?;
    Ok(written as u64)
}

/// ListTasks: `RBX` = request (the agent key, then flags as u32 LE: bit 0 = with sockets),
/// `RCX` = [`LIST_TASKS_LEN`], `RDX`/`RSI` = output buffer (at least [`LIST_TASKS_MIN_OUT`]
/// bytes). Writes what `/tasks` answers, JSON lines ending in the `{"end":...}` line, as many
/// whole tasks as fit; returns the bytes written.
pub fn list_tasks(
    setup: &Setup,
    va: u64,
    len: u64,
    out: u64,
    out_len: u64,
) -> Result<u64, Refusal> {
    let (req, st) =
        fixed_agent_request::<LIST_TASKS_LEN>(setup, va, len, out_len, LIST_TASKS_MIN_OUT)?;
    let mut flags = [0u8; 4];
    flags.copy_from_slice(&req[AGENT_KEY_LEN..LIST_TASKS_LEN]);
    let flags = u32::from_le_bytes(flags);
    if flags & !LIST_TASKS_SOCKETS != 0 {
        return Err(refuse(Status::InvalidArgument));
    }
    introspection::tasks_ready().map_err(|_| refuse(Status::NoProfile))?;
    let mut w = GuestWriter {
        mem: GuestRam::from_setup(setup),
        caller: st.caller,
        at: out,
        left: out_len as usize,
        written: 0,
        failed: None,
    };
    let r = introspection::tasks_json(
        setup,
        flags & LIST_TASKS_SOCKETS != 0,
        out_len as usize,
        &mut w,
    );
    match (r, w.failed) {
        (_, Some(status)) => Err(refuse(status)),
        (Err(_), None) => Err(refuse(Status::Full)),
        (Ok(()), None) => Ok(w.written as u64),
    }
}

/// `fmt::Write` into the caller's output buffer, through its own page tables.
struct GuestWriter<'a> {
    mem: GuestRam<'a>,
    caller: shoji_introspect::Caller,
    at: u64,
    left: usize,
    written: usize,
    failed: Option<Status>,
}

impl core::fmt::Write for GuestWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let b = s.as_bytes();
        if b.len() > self.left {
            return Err(core::fmt::Error);
        }
        if let Err(status) = copy_to_guest(&mut self.mem, &self.caller, self.at, b) {
            self.failed = Some(status);
            return Err(core::fmt::Error);
        }
        self.at = self.at.wrapping_add(b.len() as u64);
        self.left -= b.len();
        self.written += b.len();
        Ok(())
    }
}

/// What a ReadEvents call returns: bytes written, the next sequence number, events missed.
pub struct EventsRead {
    /// Bytes written to the output buffer.
    pub written: u64,
    /// The sequence number to ask for next.
    pub next_seq: u64,
    /// Events overwritten before they could be read.
    pub missed: u64,
}

/// ReadEvents: `RBX` = request (the agent key, then the first sequence number as u64 LE), `RCX`
/// = [`READ_EVENTS_LEN`], `RDX`/`RSI` = output buffer (whole events of `EVENT_LEN` bytes).
pub fn read_events(
    setup: &Setup,
    va: u64,
    len: u64,
    out: u64,
    out_len: u64,
) -> Result<EventsRead, Refusal> {
    let (req, st) =
        fixed_agent_request::<READ_EVENTS_LEN>(setup, va, len, out_len, report::EVENT_LEN)?;
    let mut from = [0u8; 8];
    from.copy_from_slice(&req[AGENT_KEY_LEN..READ_EVENTS_LEN]);
    let mut seq = u64::from_le_bytes(from);
    let capacity = (out_len as usize) / report::EVENT_LEN;
    let mut mem = GuestRam::from_setup(setup);
    let mut written = 0usize;
    // Events overwritten before the first one copied (the later steps start where it ended).
    let mut missed = None;
    while written < capacity * report::EVENT_LEN {
        let want = (capacity - written / report::EVENT_LEN).min(EVENT_CHUNK);
        let mut events = [NO_EVENT; EVENT_CHUNK];
        let r = {
            let guard = ENGINE.lock();
            match guard.as_deref() {
                Some(engine) => engine.read_events(seq, &mut events[..want]),
                None => break,
            }
        };
        missed.get_or_insert(r.missed);
        seq = r.next_seq;
        let mut bytes = [0u8; EVENT_CHUNK * report::EVENT_LEN];
        let n = report::encode_events(&events[..r.copied], &mut bytes);
        copy_to_guest(&mut mem, &st.caller, out + written as u64, &bytes[..n]).map_err(refuse)?;
        written += n;
        if r.copied < want {
            break;
        }
    }
    Ok(EventsRead {
        written: written as u64,
        next_seq: seq,
        missed: missed.unwrap_or(0),
    })
}

// ---- the management endpoint's views ---------------------------------------------------------

use core::fmt::{self, Write};
use shoji_mgmt::prom::{Exposition, Kind};
use shoji_netfilter::counters::Counters as PartyCounters;

/// A container's figure for each direction (tx, rx).
type PerDirection = fn(&PartyCounters) -> [u64; 2];

/// The policy's metric families: per container, the host and unattributed frames, events.
/// Called with the NIC locked (lock order: NIC, server, engine).
pub fn metrics(e: &mut Exposition<'_>) -> fmt::Result {
    let guard = ENGINE.lock();
    e.single(
        "shoji_policy_enabled",
        Kind::Gauge,
        "1 while frames go through the policy (a container was registered, or an administrator rule is in force).",
        u64::from(policy_on()),
    )?;
    let Some(engine) = guard.as_deref() else {
        return e.single("shoji_containers", Kind::Gauge, "Registered containers.", 0);
    };
    let reg = engine.registry();
    e.single(
        "shoji_containers",
        Kind::Gauge,
        "Registered containers.",
        reg.len() as u64,
    )?;
    e.single(
        "shoji_events_total",
        Kind::Counter,
        "Events recorded since start (the next event's sequence number minus one).",
        engine.events().next_seq().saturating_sub(1),
    )?;
    let admin = engine.admin_rules().entries();
    e.single(
        "shoji_admin_rules",
        Kind::Gauge,
        "Administrator rules in force.",
        admin.len() as u64,
    )?;
    if !admin.is_empty() {
        e.family(
            "shoji_admin_rule_hits_total",
            Kind::Counter,
            "Frames each administrator rule decided (drops for a deny rule, exceptions for an allow rule).",
        )?;
    }
    for r in admin {
        e.sample("shoji_admin_rule_hits_total", &[("rule", &r.id)], r.hits)?;
    }
    let c = engine.counters();
    let parties: [(&str, &PartyCounters); 3] = [
        ("host", &c.host),
        ("unattributed", &c.unattributed),
        ("all", &c.total),
    ];
    e.family(
        "shoji_policy_frames_total",
        Kind::Counter,
        "Frames the policy passed, by party (host, unattributed, all) and direction.",
    )?;
    for (party, pc) in parties {
        e.sample(
            "shoji_policy_frames_total",
            &[("party", &party), ("direction", &"tx")],
            pc.tx_passed,
        )?;
        e.sample(
            "shoji_policy_frames_total",
            &[("party", &party), ("direction", &"rx")],
            pc.rx_passed,
        )?;
    }
    e.family(
        "shoji_policy_dropped_total",
        Kind::Counter,
        "Frames the policy dropped, by party and reason.",
    )?;
    for (party, pc) in parties {
        for r in DropReason::ALL {
            e.sample(
                "shoji_policy_dropped_total",
                &[("party", &party), ("reason", &r.name())],
                pc.dropped(r),
            )?;
        }
    }
    // Per container: frames and bytes each way, relays, and the drops that happened.
    let families: [(&str, &str, PerDirection); 2] = [
        (
            "shoji_container_frames_total",
            "Frames a container sent (tx) and received (rx) that the policy passed.",
            |c| [c.tx_passed, c.rx_passed],
        ),
        (
            "shoji_container_bytes_total",
            "Bytes of those frames.",
            |c| [c.tx_bytes, c.rx_bytes],
        ),
    ];
    for (name, help, get) in families {
        e.family(name, Kind::Counter, help)?;
        for (_, ct) in reg.iter() {
            let id = ct.id().0;
            let vlan = ct.vlan();
            let [tx, rx] = get(&ct.counters);
            e.sample(
                name,
                &[("container", &id), ("vlan", &vlan), ("direction", &"tx")],
                tx,
            )?;
            e.sample(
                name,
                &[("container", &id), ("vlan", &vlan), ("direction", &"rx")],
                rx,
            )?;
        }
    }
    e.family(
        "shoji_container_relayed_total",
        Kind::Counter,
        "Frames Shoji relayed between containers, by sending container.",
    )?;
    for (_, ct) in reg.iter() {
        e.sample(
            "shoji_container_relayed_total",
            &[("container", &ct.id().0), ("vlan", &ct.vlan())],
            ct.counters.relayed,
        )?;
    }
    e.family(
        "shoji_container_dropped_total",
        Kind::Counter,
        "Frames dropped for a container, by reason (reasons that happened only).",
    )?;
    for (_, ct) in reg.iter() {
        for r in DropReason::ALL {
            let n = ct.counters.dropped(r);
            if n != 0 {
                e.sample(
                    "shoji_container_dropped_total",
                    &[
                        ("container", &ct.id().0),
                        ("vlan", &ct.vlan()),
                        ("reason", &r.name()),
                    ],
                    n,
                )?;
            }
        }
    }
    Ok(())
}

/// `a.b.c.d` or `null`.
struct JsonIp(Option<core::net::Ipv4Addr>);

impl fmt::Display for JsonIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "\"{ip}\""),
            None => f.write_str("null"),
        }
    }
}

/// A container id or `null`.
struct JsonId(Option<ContainerId>);

impl fmt::Display for JsonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{}", id.0),
            None => f.write_str("null"),
        }
    }
}

/// A MAC address as a JSON string.
struct JsonMac([u8; 6]);

impl fmt::Display for JsonMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "\"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\"",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One event as a JSON object on one line.
fn event_json(ev: &Event, out: &mut dyn Write) -> fmt::Result {
    write!(out, "{{\"seq\":{},\"time_ns\":{},", ev.seq, ev.time)?;
    match ev.kind {
        EventKind::Spoof { reason, direction, sender, claimed, mac, ipv4 } => write!(
            out,
            "\"kind\":\"spoof\",\"reason\":\"{}\",\"direction\":\"{}\",\"sender\":{},\"claimed\":{},\"mac\":{},\"ipv4\":{}",
            reason.name(), direction.name(), JsonId(sender), JsonId(claimed), JsonMac(mac), JsonIp(ipv4)
        )?,
        EventKind::OutboundScan { container, distinct_ports, distinct_hosts, blocked_until } => write!(
            out,
            "\"kind\":\"outbound_scan\",\"container\":{},\"distinct_ports\":{distinct_ports},\"distinct_hosts\":{distinct_hosts},\"blocked_until_ns\":{blocked_until}",
            container.0
        )?,
        EventKind::InboundScan { source, distinct_ports, distinct_hosts, blocked_until } => {
            write!(
                out,
                "\"kind\":\"inbound_scan\",\"source\":{},\"distinct_ports\":{distinct_ports},\"distinct_hosts\":{distinct_hosts},\"blocked_until_ns\":",
                JsonIp(Some(source))
            )?;
            match blocked_until {
                Some(t) => write!(out, "{t}")?,
                None => out.write_str("null")?,
            }
        }
        EventKind::Policy { container, change } => write!(
            out,
            "\"kind\":\"policy\",\"container\":{},\"change\":\"{}\"",
            JsonId(container),
            change.name()
        )?,
        EventKind::DropSample { container, direction, reason } => write!(
            out,
            "\"kind\":\"drop_sample\",\"container\":{},\"direction\":\"{}\",\"reason\":\"{}\"",
            JsonId(container), direction.name(), reason.name()
        )?,
    }
    out.write_str("}\n")
}

/// The sequence number the next event will get (1 before the engine exists).
pub fn next_event() -> u64 {
    ENGINE
        .lock()
        .as_deref()
        .map_or(1, |e| e.events().next_seq())
}

/// Events from `from` on (at most `max`) as JSON lines; returns the sequence number to ask
/// for next (`from` when there are none yet).
pub fn events_json(from: u64, max: usize, out: &mut dyn Write) -> Result<u64, fmt::Error> {
    let guard = ENGINE.lock();
    let Some(engine) = guard.as_deref() else {
        return Ok(from.max(1));
    };
    let mut seq = from.max(1);
    let mut left = max;
    while left > 0 {
        let mut chunk = [NO_EVENT; EVENT_CHUNK];
        let want = left.min(EVENT_CHUNK);
        let r = engine.read_events(seq, &mut chunk[..want]);
        for ev in &chunk[..r.copied] {
            event_json(ev, out)?;
        }
        seq = r.next_seq;
        if r.copied < want {
            break;
        }
        left -= r.copied;
    }
    Ok(seq)
}

/// `POST /block`: add the administrator rule in form `body` (see `shoji_netfilter::admin`);
/// its id, or 400 (bad rule) / 409 (table full) / 503 (no policy storage) with the reason in
/// `why`. Frames go through the engine from then on.
pub fn admin_block(body: &[u8], why: &mut dyn Write) -> Result<u32, u16> {
    let spec = match AdminSpec::parse_form(body) {
        Ok(s) => s,
        Err(e) => {
            let _ = write!(why, "{e}");
            return Err(400);
        }
    };
    let mut guard = ENGINE.lock();
    let Some(engine) = ensure_engine(&mut guard) else {
        let _ = why.write_str("no memory for the policy engine");
        return Err(503);
    };
    engine.set_now(now_ns());
    match engine.add_admin_rule(spec) {
        Ok(id) => {
            POLICY_ON.store(true, Ordering::Release);
            crate::hv_line!(
                "mgmt: administrator rule {} added ({} in force)",
                id,
                engine.admin_rules().entries().len()
            );
            Ok(id)
        }
        Err(e) => {
            let _ = write!(why, "{e}");
            Err(match e {
                AdminError::Rule(_) => 400,
                AdminError::Full | AdminError::NoIds => 409,
            })
        }
    }
}

/// `GET /blocks`: the administrator's rules as JSON.
pub fn admin_blocks_json(out: &mut dyn Write) -> fmt::Result {
    let guard = ENGINE.lock();
    match guard.as_deref() {
        Some(engine) => engine.admin_rules().write_json(out),
        // No engine yet: no rule either (the same document an empty table renders).
        None => out.write_str("{\"rules\":[]}\n"),
    }
}

/// `DELETE /block/ID`: remove administrator rule `id`; whether it existed.
pub fn admin_unblock(id: u32) -> bool {
    let mut guard = ENGINE.lock();
    let Some(engine) = guard.as_deref_mut() else {
        return false;
    };
    engine.set_now(now_ns());
    let removed = engine.remove_admin_rule(id).is_some();
    if removed {
        // The last rule gone and nothing ever registered: frames skip the engine again, as
        // before the first rule (nothing there can drop them).
        if engine.admin_rules().is_empty() && !EVER_REGISTERED.load(Ordering::Acquire) {
            POLICY_ON.store(false, Ordering::Release);
        }
        crate::hv_line!(
            "mgmt: administrator rule {} removed ({} in force)",
            id,
            engine.admin_rules().entries().len()
        );
    }
    removed
}

/// The registry as one JSON document.
pub fn containers_json(out: &mut dyn Write) -> fmt::Result {
    let guard = ENGINE.lock();
    out.write_str("[")?;
    if let Some(engine) = guard.as_deref() {
        for (n, (_, ct)) in engine.registry().iter().enumerate() {
            let spec = ct.spec();
            if n > 0 {
                out.write_str(",")?;
            }
            write!(
                out,
                "\n{{\"id\":{},\"vlan\":{},\"cgroup_id\":",
                ct.id().0,
                ct.vlan()
            )?;
            match spec.cgroup_id {
                Some(c) => write!(out, "{c}")?,
                None => out.write_str("null")?,
            }
            out.write_str(",\"netns_id\":")?;
            match spec.netns_id {
                Some(c) => write!(out, "{c}")?,
                None => out.write_str("null")?,
            }
            out.write_str(",\"macs\":[")?;
            for (i, m) in spec.macs.iter().enumerate() {
                write!(out, "{}{}", if i > 0 { "," } else { "" }, JsonMac(*m))?;
            }
            out.write_str("],\"ipv4\":[")?;
            for (i, ip) in spec.ipv4.iter().enumerate() {
                write!(out, "{}{}", if i > 0 { "," } else { "" }, JsonIp(Some(*ip)))?;
            }
            let c = &ct.counters;
            write!(
                out,
                "],\"rules\":{},\"default_egress\":\"{:?}\",\"default_ingress\":\"{:?}\",\"counters\":{{\"tx_frames\":{},\"tx_bytes\":{},\"rx_frames\":{},\"rx_bytes\":{},\"relayed\":{},\"dropped\":{}}}}}",
                spec.rules.len(),
                spec.default_egress,
                spec.default_ingress,
                c.tx_passed,
                c.tx_bytes,
                c.rx_passed,
                c.rx_bytes,
                c.relayed,
                c.total_drops()
            )?;
        }
    }
    out.write_str("\n]\n")
}
