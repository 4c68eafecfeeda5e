//! Mediation of the machine's e1000 NIC (para-pass with shadow rings, see `docs/e1000.md`).
//!
//! At start-up Shoji finds the NIC (bus 0 or behind its bridges), takes it over with the
//! shadow-ring engine ([`shoji_drivers_e1000::E1000`]) and traps what the guest could use to
//! get around it: the memory BAR pages the engine names (EPT, no access), the I/O BAR
//! (IOADDR/IODATA reach every register), and the NIC's PCI configuration space on both paths
//! to it: the ports 0xCF8-0xCFF (serialized across CPUs) and, where the firmware's MCFG names
//! an ECAM window, the NIC function's 4 KiB page of it (EPT, no access): BAR moves, bus
//! mastering and memory decode go through the same mediation either way. Received frames are
//! also harvested from a periodic poll driven by the VMX preemption timer.

use super::exit::GuestRegs;
use super::policy::PolicyFilter;
use super::{rdmsr, rdtsc, vmwrite, IA32_VMX_MISC};
use crate::arena::Arena;
use crate::ept::Ept;
use crate::guest::GuestRam;
use crate::pacing::Pacer;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use shoji_drivers_e1000::counters::{Counters, ExitCause};
use shoji_drivers_e1000::regs::{self, RegId};
use shoji_drivers_e1000::{Buffers, Config, DmaRegion, Env, NicRegisters, PciWrite, E1000};
use shoji_shared::{Direction, DropReason, TaskIdentity};
use spin::Mutex;

/// PCI configuration address port.
const CONFIG_ADDRESS: u16 = 0xcf8;
/// PCI configuration data ports (0xCFC-0xCFF).
const CONFIG_DATA: u16 = 0xcfc;
/// Period of the safety-net poll when the TSC frequency is known: 1 ms. RX is otherwise
/// harvested at the guest's ICR reads and interrupt re-enables (the device's RX interrupt and
/// the end of each emulated ITR interval lead there); the poll only bounds the wait when the
/// guest does neither.
const POLL_PERIOD_US: u64 = 1_000;
/// Period of the poll in TSC ticks when the frequency is unknown (no ITR emulation then, the
/// poll is the RX path's clock: 100,000 ticks, 28.6 us at Bochs's 3.5 GHz).
const POLL_PERIOD_FALLBACK_TSC: u64 = 100_000;
/// Pages of the host-mode heap.
const HEAP_PAGES: u64 = 512;
/// VMX exit reason of the preemption timer.
pub const EXIT_PREEMPTION_TIMER: u32 = 52;

/// The real register file: the memory BAR, identity mapped in Shoji's page tables.
pub struct Bar {
    base: u64,
}

impl NicRegisters for Bar {
    fn read32(&mut self, offset: u32) -> u32 {
        if offset >= regs::BAR_SIZE || offset & 3 != 0 {
            return u32::MAX;
        }
        // SAFETY: `base` is the NIC's memory BAR (128 KiB, found by PCI discovery, identity
        // mapped by Shoji's page tables); the offset is an aligned dword inside it.
        unsafe { core::ptr::read_volatile((self.base + u64::from(offset)) as *const u32) }
    }
    fn write32(&mut self, offset: u32, value: u32) {
        if offset >= regs::BAR_SIZE || offset & 3 != 0 {
            return;
        }
        // SAFETY: as for `read32`.
        unsafe { core::ptr::write_volatile((self.base + u64::from(offset)) as *mut u32, value) }
    }
    fn now_ns(&mut self) -> Option<u64> {
        super::tsc_ns()
    }
}

/// Shoji-owned DMA memory from the arena (identity mapped: physical = virtual).
pub struct Dma {
    base: u64,
    len: usize,
}

impl DmaRegion for Dma {
    fn len(&self) -> usize {
        self.len
    }
    fn phys_base(&self) -> u64 {
        self.base
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        if offset
            .checked_add(buf.len())
            .is_none_or(|end| end > self.len)
        {
            buf.fill(0);
            return;
        }
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: [offset, offset+len) lies inside the region, which the arena handed out to the
        // NIC alone; the device may write it concurrently, which only affects the bytes read.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (self.base as usize + offset) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.len)
        {
            return;
        }
        // SAFETY: as for `read`; the destination is Shoji's DMA region.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.base as usize + offset) as *mut u8,
                data.len(),
            )
        };
        core::sync::atomic::fence(Ordering::Release);
    }
}

/// The mediated NIC.
pub struct Nic {
    engine: E1000<'static, Bar, Dma>,
    /// Bus/device/function as `bus << 8 | dev << 3 | fn`.
    bdf: u32,
    /// Memory BAR base.
    mmio: u64,
    /// I/O BAR base and size (0 = none).
    io: (u16, u16),
    /// The memory BAR's pages trapped in the EPT (bit n: page n).
    trapped: u32,
}

static NIC: Mutex<Option<Nic>> = Mutex::new(None);
/// Whether the NIC is mediated (fast check on every exit).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The guest's last CONFIG_ADDRESS (dword write to 0xCF8).
static GUEST_CF8: AtomicU32 = AtomicU32::new(0);
/// Held across every guest access to ports 0xCF8-0xCFF, from the decision on the guest's
/// CONFIG_ADDRESS to the last port access: the pair is one register in the chipset, and
/// Shoji's own accesses to the NIC's configuration rewrite it, so another CPU's pass-through
/// access in between would land on the NIC unmediated.
static CONFIG_PORTS: Mutex<()> = Mutex::new(());
/// The NIC function's page in the ECAM window (0: none trapped).
static ECAM_PAGE: AtomicU64 = AtomicU64::new(0);
/// Next poll deadline (TSC).
static NEXT_POLL: AtomicU64 = AtomicU64::new(0);
/// Whether this CPU's VMCS has the preemption timer on.
static TIMER_ON: AtomicBool = AtomicBool::new(false);
/// Preemption-timer rate (TSC >> rate).
static TIMER_SHIFT: AtomicU32 = AtomicU32::new(0);
/// Memory BAR base and I/O BAR (base, size) for trap checks without the lock.
static MMIO_BASE: AtomicU64 = AtomicU64::new(0);
static IO_BAR: AtomicU32 = AtomicU32::new(0);
/// The poll's period against the cost of a VM exit (configured when the NIC is taken over).
static PACER: Mutex<Pacer> = Mutex::new(Pacer::new(POLL_PERIOD_FALLBACK_TSC));
/// TSC deadline of the engine's interrupt throttling (0: none), for the preemption timer.
static ITR_DEADLINE: AtomicU64 = AtomicU64::new(0);

/// The TX and RX descriptor ring bases the real NIC holds.
fn ring_bases(bar: &mut Bar) -> (u64, u64) {
    let mut base = |lo, hi| {
        let low = u64::from(bar.read32(lo));
        (u64::from(bar.read32(hi)) << 32) | low
    };
    let tdba = base(regs::TDBAL, regs::TDBAH);
    (tdba, base(regs::RDBAL, regs::RDBAH))
}

/// Record when the engine next needs a poll for interrupt throttling (after every call).
fn note_deadline(nic: &Nic) {
    let tsc = nic
        .engine
        .next_deadline_ns()
        .and_then(super::ns_to_tsc)
        .unwrap_or(0);
    ITR_DEADLINE.store(tsc, Ordering::Relaxed);
}

fn outl(port: u16, v: u32) {
    // SAFETY: host-mode port I/O on the PCI configuration mechanism or a port the guest itself
    // addressed (passed through unchanged).
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) };
}

fn port_in(port: u16, size: u8) -> u32 {
    let v: u32;
    // SAFETY: host-mode port input on a port the guest (or Shoji's PCI scan) addressed; the
    // width is the guest's own.
    unsafe {
        match size {
            1 => {
                let b: u8;
                core::arch::asm!("in al, dx", in("dx") port, out("al") b, options(nomem, nostack));
                v = u32::from(b);
            }
            2 => {
                let w: u16;
                core::arch::asm!("in ax, dx", in("dx") port, out("ax") w, options(nomem, nostack));
                v = u32::from(w);
            }
            _ => {
                core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack))
            }
        }
    }
    v
}

fn port_out(port: u16, size: u8, v: u32) {
    // SAFETY: as for `port_in`.
    unsafe {
        match size {
            1 => {
                core::arch::asm!("out dx, al", in("dx") port, in("al") v as u8, options(nomem, nostack))
            }
            2 => {
                core::arch::asm!("out dx, ax", in("dx") port, in("ax") v as u16, options(nomem, nostack))
            }
            _ => {
                core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack))
            }
        }
    }
}

fn cfg_addr(bdf: u32, offset: u16) -> u32 {
    0x8000_0000 | (bdf << 8) | u32::from(offset & 0xfc)
}

/// Read a configuration dword (host use; restores the guest's CONFIG_ADDRESS).
fn cfg_read(bdf: u32, offset: u16) -> u32 {
    outl(CONFIG_ADDRESS, cfg_addr(bdf, offset));
    let v = port_in(CONFIG_DATA, 4);
    outl(CONFIG_ADDRESS, GUEST_CF8.load(Ordering::Relaxed));
    v
}

/// Write `size` bytes of configuration space at `offset` (host use).
fn cfg_write(bdf: u32, offset: u16, size: u8, v: u32) {
    outl(CONFIG_ADDRESS, cfg_addr(bdf, offset));
    port_out(CONFIG_DATA + (offset & 3), size, v);
    outl(CONFIG_ADDRESS, GUEST_CF8.load(Ordering::Relaxed));
}

fn set_io_bit(bitmap_a: u64, bitmap_b: u64, port: u16) {
    let (page, bit) = if port < 0x8000 {
        (bitmap_a, port)
    } else {
        (bitmap_b, port - 0x8000)
    };
    // SAFETY: `page` is one of the two I/O bitmap pages in Shoji's region; bit / 8 < 4096.
    unsafe { *((page + u64::from(bit / 8)) as *mut u8) |= 1 << (bit % 8) };
}

/// The NIC's station address: receive address 0 when the firmware or the device set it, else
/// the EEPROM's words 0-2 read through EERD (a bounded poll), else zeros.
fn station_address(bar: &mut Bar) -> [u8; 6] {
    let low = bar.read32(regs::RAL0).to_le_bytes();
    let high = bar.read32(regs::RAH0);
    if high & regs::RAH_AV != 0 {
        let h = high.to_le_bytes();
        return [low[0], low[1], low[2], low[3], h[0], h[1]];
    }
    let mut mac = [0u8; 6];
    for word in 0..3u32 {
        bar.write32(regs::EERD, (word << 8) | 1);
        let Some(v) = (0..10_000)
            .map(|_| bar.read32(regs::EERD))
            .find(|v| v & (1 << 4) != 0)
        else {
            return [0; 6];
        };
        let [lo, hi] = ((v >> 16) as u16).to_le_bytes();
        mac[2 * word as usize] = lo;
        mac[2 * word as usize + 1] = hi;
    }
    mac
}

/// Find and take over the NIC (bootstrap processor, once, from `init_global`). Without a NIC,
/// or with `mediate_nic = false`, nothing is trapped.
pub fn init(
    mediate: bool,
    mgmt: &shoji_mgmt::Settings,
    ecam: Option<crate::setup::EcamWindow>,
    arena: &mut Arena<'_>,
    ept: &Ept,
    io_bitmap_a: u64,
    io_bitmap_b: u64,
) {
    // Host-mode heap (iced-x86 builds its decoder tables on first use), then build those tables
    // now rather than at the first trapped access.
    if !crate::heap::active() {
        if let Some(base) = arena.alloc_pages(HEAP_PAGES) {
            crate::heap::init(base, HEAP_PAGES * 0x1000);
        }
    }
    let warm = shoji_drivers_e1000::mmio_insn::decode(&[0x8b, 0x00], 64).is_ok();
    crate::hv_line!(
        "host heap: {} KiB of {} KiB used after decoder warm-up (ok={})",
        crate::heap::used() / 1024,
        HEAP_PAGES * 4,
        warm
    );
    let Some(found) = shoji_drivers_e1000::pci::find_nic(cfg_read) else {
        crate::hv_line!(
            "e1000: no Intel 8254x NIC on PCI bus 0 or behind its bridges: nothing to mediate"
        );
        return;
    };
    let (bdf, device) = (found.bdf, found.device);
    let loc = |bdf: u32| ((bdf >> 8) & 0xff, (bdf >> 3) & 0x1f, bdf & 7);
    let (b, d, f) = loc(bdf);
    let (mmio, io, layout) = match found.layout() {
        Ok(l) => l,
        Err(why) => {
            crate::hv_line!(
                "e1000 at {:02x}:{:02x}.{} (8086:{:04x}, BARs {:#x?}): {}: not mediated",
                b,
                d,
                f,
                device,
                found.bars,
                why
            );
            return;
        }
    };
    if !mediate {
        crate::hv_line!(
            "e1000 at {:02x}:{:02x}.{} (8086:{:04x}, mmio {:#x}, io {:#x}) NOT mediated (mediate_nic = false)",
            b, d, f, device, mmio, io
        );
        return;
    }
    // Memory space and bus mastering on: Shoji's own rings need both.
    let cmd = cfg_read(bdf, 0x04) & 0xffff;
    cfg_write(bdf, 0x04, 2, cmd | 0x7);
    // Shoji's own address (the management endpoint), from the configuration or derived from
    // the NIC's station address (receive address 0, as the firmware left it).
    let own_mac = super::mgmt::own_mac(mgmt, station_address(&mut Bar { base: mmio }));
    let cfg = Config {
        own_mac,
        pci: layout,
        ..Config::default()
    };
    let pages = (cfg.dma_bytes() as u64).div_ceil(0x1000);
    let Some(dma_base) = arena.alloc_pages(pages) else {
        crate::hv_line!(
            "e1000: out of reserved memory for {} DMA pages: not mediated",
            pages
        );
        return;
    };
    let Some(bufs) = arena.alloc::<Buffers>() else {
        crate::hv_line!("e1000: out of reserved memory for the engine's buffers: not mediated");
        return;
    };
    // The NIC's configuration page in the ECAM window: no access, as for the register pages.
    let ecam_page = ecam.and_then(|w| w.function_page(b as u8, d as u8, f as u8));
    if let Some(page) = ecam_page {
        if ept.map_page(arena, page, page, 0, crate::mtrr::UC).is_err() {
            crate::hv_line!(
                "e1000: cannot trap its configuration page {:#x} in the ECAM window: not mediated",
                page
            );
            return;
        }
    } else if let Some(w) = ecam {
        crate::hv_line!(
            "e1000: bus {} lies outside the ECAM window {:#x} (buses {}-{}): not mediated",
            b,
            w.base,
            w.bus_start,
            w.bus_end
        );
        return;
    }
    // Trap the register pages the engine shadows before it takes the device over.
    let mut trapped = 0;
    let mut trapped_mask = 0u32;
    for page in 0..regs::BAR_SIZE / regs::PAGE_SIZE {
        if E1000::<Bar, Dma>::page_is_trapped(&cfg, page) {
            trapped_mask |= 1 << page;
            let gpa = mmio + u64::from(page * regs::PAGE_SIZE);
            if ept.map_page(arena, gpa, gpa, 0, crate::mtrr::UC).is_err() {
                crate::hv_line!("e1000: cannot trap page {:#x}: not mediated", gpa);
                return;
            }
            trapped += 1;
        }
    }
    let engine = match E1000::new(
        Bar { base: mmio },
        Dma {
            base: dma_base,
            len: (pages * 0x1000) as usize,
        },
        cfg,
        bufs,
    ) {
        Ok(e) => e,
        Err(e) => {
            crate::hv_line!("e1000: engine set-up failed ({:?}): not mediated", e);
            return;
        }
    };
    if io != 0 {
        for p in io..io.saturating_add(cfg.pci.io_size as u16) {
            set_io_bit(io_bitmap_a, io_bitmap_b, p);
        }
    }
    for p in CONFIG_ADDRESS..=CONFIG_DATA + 3 {
        set_io_bit(io_bitmap_a, io_bitmap_b, p);
    }
    let mut nic = Nic {
        engine,
        bdf,
        mmio,
        io: (io, cfg.pci.io_size as u16),
        trapped: trapped_mask,
    };
    let (tdba, rdba) = ring_bases(nic.engine.nic_mut());
    MMIO_BASE.store(mmio, Ordering::Release);
    IO_BAR.store(
        u32::from(io) | (u32::from(nic.io.1) << 16),
        Ordering::Release,
    );
    TIMER_SHIFT.store((rdmsr(IA32_VMX_MISC) & 0x1f) as u32, Ordering::Release);
    let period = match (
        super::tsc_hz_source(),
        super::ns_to_tsc(POLL_PERIOD_US * 1_000),
    ) {
        (Some((hz, source)), Some(period)) => {
            crate::hv_line!(
                "e1000: TSC {} kHz ({}): guest ITR emulated, poll every {} TSC ticks (or {} round trips of a VM exit, when longer)",
                hz / 1000,
                match source {
                    super::TscSource::Cpuid => "CPUID 0x15/0x16",
                    super::TscSource::Calibrated => "measured against the firmware's timer",
                },
                period,
                crate::pacing::ROUND_TRIP_FACTOR
            );
            period
        }
        _ => {
            crate::hv_line!(
                "e1000: TSC frequency unknown (CPUID 0x15/0x16): guest ITR not emulated"
            );
            POLL_PERIOD_FALLBACK_TSC
        }
    };
    // The policy engine exists only with a mediated NIC: without one every policy call
    // answers Unsupported instead of accepting rules nothing enforces.
    super::policy::init(arena);
    let pacer = Pacer::new(period);
    *PACER.lock() = pacer;
    PACING.store(pacer);
    NEXT_POLL.store(rdtsc() + period, Ordering::Release);
    *NIC.lock() = Some(nic);
    ECAM_PAGE.store(ecam_page.unwrap_or(0), Ordering::Release);
    ACTIVE.store(true, Ordering::Release);
    if let Some(mac) = own_mac {
        super::mgmt::init(mgmt, mac);
    }
    let mut ecam_text: heapless::String<48> = heapless::String::new();
    if let Some(page) = ecam_page {
        let _ = write!(ecam_text, " and ECAM page {page:#x}");
    }
    crate::hv_line!(
        "e1000 at {:02x}:{:02x}.{} mediated: rings shadowed (8086:{:04x}, mmio {:#x}, {} pages trapped, io {:#x}, pci config 0xcf8-0xcff{} trapped)",
        b, d, f, device, mmio, trapped, io, ecam_text
    );
    crate::hv_line!(
        "e1000 real rings: TDBA {:#x} RDBA {:#x} (DMA {:#x}-{:#x}, {} tx / {} rx descriptors)",
        tdba,
        rdba,
        dma_base,
        dma_base + pages * 0x1000 - 1,
        cfg.tx_descs,
        cfg.rx_descs
    );
}

/// Check another EPT (the single-step one) against the NIC's traps: (pages checked, pages
/// that EPT maps with some access). Every trap must hold in every EPT Shoji runs the guest on.
pub fn traps_hold_in(ept: &Ept, mem: &mut Arena<'_>) -> (u32, u32) {
    let guard = NIC.lock();
    let Some(nic) = guard.as_ref() else {
        return (0, 0);
    };
    let pages = (0..regs::BAR_SIZE / regs::PAGE_SIZE)
        .filter(|p| nic.trapped & (1 << p) != 0)
        .map(|p| nic.mmio + u64::from(p * regs::PAGE_SIZE))
        .chain(Some(ECAM_PAGE.load(Ordering::Acquire)).filter(|&p| p != 0));
    let (mut checked, mut open) = (0, 0);
    for gpa in pages {
        checked += 1;
        if ept
            .lookup(mem, gpa)
            .is_some_and(|(entry, _)| entry & crate::ept::RWX != 0)
        {
            open += 1;
        }
    }
    (checked, open)
}

/// Whether the NIC is mediated (the launch enables the preemption timer then).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Shoji's feature bits for CPUID leaf 0x40000001 (EBX): what the boot application and the
/// agent read to know whether the protection is on.
pub fn features() -> u32 {
    if active() {
        shoji_shared::vmcall::FEATURE_NIC_MEDIATED
    } else {
        0
    }
}

/// Run `f` on the engine with a fresh environment, recording the cost under `cause`.
/// With `attribute`, the task running at this exit is read first (a write that may send frames)
/// and handed to the policy with them.
fn with_engine<R>(
    cause: ExitCause,
    attribute: bool,
    f: impl FnOnce(&mut Nic, &mut Env<'_>) -> R,
) -> Option<R> {
    let setup = super::launch::setup()?;
    let mut ram = GuestRam::from_setup(setup);
    let mut filter = PolicyFilter;
    let task: Option<TaskIdentity> = if attribute && super::policy::policy_on() {
        let t0 = rdtsc();
        let task = super::introspection::current_task(setup);
        ATTRIBUTION.add(rdtsc().wrapping_sub(t0));
        task
    } else {
        None
    };
    let mut guard = NIC.lock();
    let nic = guard.as_mut()?;
    let t0 = rdtsc();
    let mut env = Env {
        mem: &mut ram,
        filter: &mut filter,
        task: task.as_ref(),
    };
    let r = f(nic, &mut env);
    note_deadline(nic);
    let dt = rdtsc().wrapping_sub(t0);
    nic.engine.counters_mut().record_cost(cause, dt, 0);
    Some(r)
}

/// Whether `gpa` lies in the mediated NIC's memory BAR.
pub fn in_bar(gpa: u64) -> bool {
    let base = MMIO_BASE.load(Ordering::Acquire);
    active() && gpa >= base && gpa < base + u64::from(regs::BAR_SIZE)
}

/// Whether `gpa` lies in the NIC function's configuration page of the ECAM window.
pub fn in_config_page(gpa: u64) -> bool {
    let page = ECAM_PAGE.load(Ordering::Acquire);
    active() && page != 0 && gpa & !0xfff == page
}

/// An EPT violation at `gpa`: completes it when it hits the NIC's memory BAR or its
/// configuration page in the ECAM window.
pub fn ept_violation(regs: &mut GuestRegs, gpa: u64) -> bool {
    if in_config_page(gpa) {
        let page = gpa & !0xfff;
        let offset = (gpa & 0xfff) as u16;
        let done = super::mmio::emulate(regs, gpa, |is_write, width, value| {
            ecam_config(page, offset, width, is_write, value as u32).map_or(u64::MAX, u64::from)
        });
        if !done {
            if let Some(nic) = NIC.lock().as_mut() {
                nic.engine.note_refused_instruction();
            }
        }
        return true;
    }
    if !in_bar(gpa) {
        return false;
    }
    let base = MMIO_BASE.load(Ordering::Acquire);
    let offset = (gpa - base) as u32;
    let mut refused = false;
    let done = super::mmio::emulate(regs, gpa, |is_write, width, value| {
        let cause = if is_write {
            ExitCause::MmioWrite
        } else {
            ExitCause::MmioRead
        };
        // Only a TDT write sends frames: read the sender's identity for it.
        let sends = is_write && offset & !3 == regs::TDT;
        with_engine(cause, sends, |nic, env| {
            if is_write {
                nic.engine.mmio_write(env, offset, width, value);
                0
            } else {
                nic.engine.mmio_read(env, offset, width)
            }
        })
        .unwrap_or(u64::MAX)
    });
    if !done {
        refused = true;
    }
    if refused {
        if let Some(nic) = NIC.lock().as_mut() {
            nic.engine.note_refused_instruction();
        }
    }
    true
}

/// A trapped I/O instruction: handles the NIC's I/O BAR and the PCI configuration ports.
/// Returns false for ports that are not the NIC's (the caller handles them). String I/O to
/// these ports is not emulated (the input reads all-ones, the output is dropped).
pub fn io_access(regs: &mut GuestRegs, port: u16, size: u8, is_in: bool) -> bool {
    if !active() {
        return false;
    }
    let io = IO_BAR.load(Ordering::Acquire);
    let (io_base, io_size) = ((io & 0xffff) as u16, (io >> 16) as u16);
    let in_io_bar = io_base != 0 && port >= io_base && port < io_base.saturating_add(io_size);
    let in_cfg = (CONFIG_ADDRESS..=CONFIG_DATA + 3).contains(&port);
    if !in_io_bar && !in_cfg {
        return false;
    }
    let mask: u64 = match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    let out_value = (regs.rax & mask) as u32;
    let result: Option<u32> = if in_io_bar {
        let off = port - io_base;
        with_engine(ExitCause::IoBar, !is_in, |nic, env| {
            if is_in {
                Some(nic.engine.io_read(env, off, size))
            } else {
                nic.engine.io_write(env, off, size, out_value);
                None
            }
        })
        .flatten()
    } else {
        pci_config(port, size, is_in, out_value)
    };
    if is_in {
        let v = u64::from(result.unwrap_or(u32::MAX)) & mask;
        regs.rax = if size == 4 { v } else { (regs.rax & !mask) | v };
    }
    true
}

/// The guest's access to the configuration ports: the e1000's own configuration space is
/// mediated by the engine, everything else is performed as asked.
fn pci_config(port: u16, size: u8, is_in: bool, value: u32) -> Option<u32> {
    let _serialized = CONFIG_PORTS.lock();
    if port == CONFIG_ADDRESS && size == 4 {
        if is_in {
            return Some(GUEST_CF8.load(Ordering::Relaxed));
        }
        GUEST_CF8.store(value, Ordering::Relaxed);
        outl(CONFIG_ADDRESS, value);
        return None;
    }
    let addr = GUEST_CF8.load(Ordering::Relaxed);
    let bdf = (addr >> 8) & 0xffff;
    let mine = port >= CONFIG_DATA
        && addr & 0x8000_0000 != 0
        && NIC.lock().as_ref().is_some_and(|n| n.bdf == bdf);
    if !mine {
        // Not the NIC (or 0xCF9-0xCFB, e.g. the reset control register): as asked.
        if is_in {
            return Some(port_in(port, size));
        }
        port_out(port, size, value);
        return None;
    }
    let offset = (addr & 0xfc) as u16 + (port - CONFIG_DATA);
    if u32::from(offset & 3) + u32::from(size) > 4 {
        return if is_in { Some(u32::MAX) } else { None };
    }
    let real = cfg_read(bdf, offset);
    mediate_config(offset, size, is_in, value, real, |off, sz, v| {
        cfg_write(bdf, off, sz, v)
    })
}

/// One guest access to the NIC's configuration space at `offset` (`size` bytes inside one
/// dword; `real` is the dword the device holds there), whichever path it came by: the engine's
/// mediation decides, and `write` performs what it allows.
fn mediate_config(
    offset: u16,
    size: u8,
    is_in: bool,
    value: u32,
    real: u32,
    write: impl FnOnce(u16, u8, u32),
) -> Option<u32> {
    with_engine(ExitCause::PciConfig, false, |nic, _env| {
        if is_in {
            return Some(nic.engine.pci_config_read(offset, size, real));
        }
        let out = nic.engine.pci_config_write(offset, size, value, real);
        match out.write {
            PciWrite::Pass => write(offset, size, value),
            PciWrite::Drop => {}
            PciWrite::Replace(v) => write(offset & !3, 4, v),
        }
        if let Some(m) = out.moved {
            crate::hv_line!(
                "e1000: guest moved BAR {} to {:#x} (traps not re-applied)",
                m.bar,
                m.base
            );
        }
        None
    })
    .flatten()
}

/// A guest access through the ECAM window to the NIC function's page at `offset`. Widths other
/// than a byte, word or dword inside one dword are refused as the port path refuses them (a
/// read gives all-ones, a write is dropped).
fn ecam_config(page: u64, offset: u16, width: u8, is_write: bool, value: u32) -> Option<u32> {
    let whole = matches!(width, 1 | 2 | 4) && u32::from(offset & 3) + u32::from(width) <= 4;
    if !whole {
        return if is_write { None } else { Some(u32::MAX) };
    }
    let aligned = page + u64::from(offset & !3);
    // SAFETY: `aligned` is a dword of the NIC function's configuration page in the platform's
    // ECAM window (from the firmware's MCFG), identity mapped in Shoji's page tables.
    let real = unsafe { core::ptr::read_volatile(aligned as *const u32) };
    mediate_config(offset, width, !is_write, value, real, |off, sz, v| {
        let at = page + u64::from(off);
        // SAFETY: as above; `off` and `sz` stay inside one dword of the page.
        unsafe {
            match sz {
                1 => core::ptr::write_volatile(at as *mut u8, v as u8),
                2 => core::ptr::write_volatile(at as *mut u16, v as u16),
                _ => core::ptr::write_volatile(at as *mut u32, v),
            }
        }
    })
}

/// The preemption timer fired (exit reason 52): poll the NIC.
pub fn timer_exit() {
    TIMER_EXITS.fetch_add(1, Ordering::Relaxed);
    poll_now();
}

/// The preemption-timer slice armed before the last entry, in TSC ticks.
static ARMED_TSC: AtomicU64 = AtomicU64::new(0);

/// One VM exit at TSC `exited` after an entry at `entered` (`timer`: the preemption timer's
/// exit): feeds the round-trip estimate.
pub fn note_round_trip(entered: u64, exited: u64, timer: bool) {
    if !active() {
        return;
    }
    if let Some(mut p) = PACER.try_lock() {
        let before = p.round_trip();
        p.note_exit(
            entered,
            exited,
            timer.then(|| ARMED_TSC.load(Ordering::Relaxed)),
        );
        if p.round_trip() != before {
            PACING.store(*p);
        }
    }
}

/// The pacer's figures, readable without its lock.
struct Pacing {
    period: AtomicU64,
    round_trip: AtomicU64,
}

static PACING: Pacing = Pacing {
    period: AtomicU64::new(POLL_PERIOD_FALLBACK_TSC),
    round_trip: AtomicU64::new(0),
};

impl Pacing {
    fn store(&self, p: Pacer) {
        self.period.store(p.period(), Ordering::Relaxed);
        self.round_trip.store(p.round_trip(), Ordering::Relaxed);
    }
}

/// The current pacing (poll period and slices), from the last estimate.
fn pacer() -> PacerView {
    PacerView {
        period: PACING.period.load(Ordering::Relaxed),
        round_trip: PACING.round_trip.load(Ordering::Relaxed),
    }
}

/// A lock-free copy of the pacer's figures.
struct PacerView {
    period: u64,
    round_trip: u64,
}

impl PacerView {
    fn period(&self) -> u64 {
        self.period
    }
    fn slice(&self, left: u64) -> u64 {
        crate::pacing::slice(left, self.round_trip)
    }
}

fn poll_now() {
    NEXT_POLL.store(rdtsc().wrapping_add(pacer().period()), Ordering::Relaxed);
    // A CPU already inside the engine does the work; never spin here.
    let Some(setup) = super::launch::setup() else {
        return;
    };
    let mut ram = GuestRam::from_setup(setup);
    let mut filter = PolicyFilter;
    let Some(mut guard) = NIC.try_lock() else {
        return;
    };
    let Some(nic) = guard.as_mut() else { return };
    let t0 = rdtsc();
    let mut env = Env {
        mem: &mut ram,
        filter: &mut filter,
        task: None,
    };
    nic.engine.poll(&mut env);
    super::mgmt::poll(&mut nic.engine);
    note_deadline(nic);
    let dt = rdtsc().wrapping_sub(t0);
    nic.engine
        .counters_mut()
        .record_cost(ExitCause::Poll, dt, 0);
}

/// The launch enabled the preemption timer in the current VMCS: arm it.
pub fn timer_on() {
    TIMER_ON.store(true, Ordering::Release);
    before_entry();
}

/// Before every VM entry: poll when the deadline has passed, and arm the preemption timer for
/// the time left until the next one.
pub fn before_entry() {
    if !active() {
        return;
    }
    let now = rdtsc();
    // The next poll: the periodic one, or earlier when interrupt throttling waits.
    let next_poll = || match ITR_DEADLINE.load(Ordering::Relaxed) {
        0 => NEXT_POLL.load(Ordering::Relaxed),
        d => d.min(NEXT_POLL.load(Ordering::Relaxed)),
    };
    let mut next = next_poll();
    if now >= next {
        poll_now();
        next = next_poll();
    }
    if !TIMER_ON.load(Ordering::Relaxed) {
        return;
    }
    // Never a slice shorter than a few round trips of an exit: under nested virtualization a
    // shorter one would expire before the guest ran an instruction (see `crate::pacing`).
    let slice = pacer().slice(next.saturating_sub(rdtsc()));
    ARMED_TSC.store(slice, Ordering::Relaxed);
    let left = slice >> TIMER_SHIFT.load(Ordering::Relaxed);
    vmwrite(
        x86::vmx::vmcs::guest::VMX_PREEMPTION_TIMER_VALUE,
        left.clamp(1, u64::from(u32::MAX)),
    );
}

/// `a / b` with three decimals, as text.
struct Ratio(u64, u64);

impl core::fmt::Display for Ratio {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.1 == 0 {
            return write!(f, "n/a");
        }
        let milli = self.0.saturating_mul(1000) / self.1;
        write!(f, "{}.{:03}", milli / 1000, milli % 1000)
    }
}

/// Write the NIC's counters to Shoji's log (`shoji-hv: e1000 ...` lines).
pub fn log_counters() {
    if !active() {
        crate::hv_line!("e1000 counters: not mediated");
        return;
    }
    let p = pacer();
    crate::hv_line!(
        "e1000 pacing: poll_period_tsc={} exit_round_trip_tsc={} timer_exits={}",
        p.period,
        p.round_trip,
        TIMER_EXITS.load(Ordering::Relaxed)
    );
    let Some(mut guard) = NIC.try_lock() else {
        crate::hv_line!("e1000 counters: engine busy");
        return;
    };
    let Some(nic) = guard.as_mut() else { return };
    // The ring bases the real NIC holds now, after the guest's driver programmed (and maybe
    // reloaded) its own: they must still be Shoji's.
    let (tdba, rdba) = ring_bases(nic.engine.nic_mut());
    crate::hv_line!("e1000 real rings now: TDBA {:#x} RDBA {:#x}", tdba, rdba);
    // Head and tail of both real rings against Shoji's own indices: a receive path that
    // stalls shows here (RDH caught up with RDT, or RX interrupts left masked).
    let rs = nic.engine.ring_state();
    let (queued_wire, queued_guest) = nic.engine.pending_frames();
    let bar = nic.engine.nic_mut();
    let mut reg = |r| bar.read32(r);
    crate::hv_line!(
        "e1000 real state now: RDH={} RDT={} rx_next={} TDH={} TDT={} tx_tail={} tx_clean={} RCTL={:#x} STATUS={:#x} IMS={:#x} guest_IMS={:#x} rx_gated={} deferred={} setup_pending={} queued_wire={} queued_guest={} RA3={:#x}/{:#x}",
        reg(regs::RDH),
        reg(regs::RDT),
        rs.rx_next,
        reg(regs::TDH),
        reg(regs::TDT),
        rs.tx_tail,
        rs.tx_clean,
        reg(regs::RCTL),
        reg(regs::STATUS),
        reg(regs::IMS),
        rs.guest_ims,
        rs.rx_gated,
        rs.deferred,
        rs.setup_pending,
        queued_wire,
        queued_guest,
        reg(regs::RAL_OWN),
        reg(regs::RAH_OWN)
    );
    super::mgmt::log_counters();
    let c = nic.engine.counters();
    for d in Direction::ALL {
        let name = d.name();
        let dc = c.dir(d);
        let mut line: heapless::String<512> = heapless::String::new();
        let _ = write!(
            line,
            "e1000 {}: frames={} bytes={} dropped={}",
            name,
            dc.frames,
            dc.bytes,
            dc.dropped_total()
        );
        for r in DropReason::ALL {
            if dc.dropped(r) != 0 {
                let _ = write!(line, " drop_{}={}", r.name(), dc.dropped(r));
            }
        }
        crate::log::write_line(format_args!("{}", line));
    }
    let dropped = c.tx.dropped_total() + c.rx.dropped_total();
    let delivered = c.tx.frames + c.rx.frames;
    crate::hv_line!(
        "e1000 totals: seen={} delivered={} dropped={} guest_tx_packets={} tso_packets={} tso_segments={} hairpin={} tx_stalls={} tx_budget_cuts={} rx_stalls={} ring_errors={} rx_hostile={} refused={} insn_refused={} guest_resets={} virq={} virq_deferred={} real_rx_irqs={}",
        c.frames_seen(),
        delivered,
        dropped,
        c.tx_guest_packets,
        c.tso_packets,
        c.tso_segments,
        c.hairpin_frames,
        c.tx_stalls,
        c.tx_budget_cuts,
        c.rx_stalls,
        c.ring_errors,
        c.rx_hostile_descs,
        c.refused_accesses,
        c.insn_refused,
        c.guest_resets,
        c.virq_raised,
        c.virq_deferred,
        c.real_rx_irqs
    );
    let mut line: heapless::String<512> = heapless::String::new();
    let total: u64 = c.exits.iter().sum();
    let _ = write!(line, "e1000 exits: total={}", total);
    for cause in ExitCause::ALL {
        let _ = write!(line, " {}={}", cause.name(), c.exits[cause as usize]);
    }
    crate::log::write_line(format_args!("{}", line));
    let mut line: heapless::String<768> = heapless::String::new();
    let _ = write!(line, "e1000 registers:");
    for r in RegId::ALL {
        let (rd, wr) = (c.reg_reads[r as usize], c.reg_writes[r as usize]);
        if rd != 0 || wr != 0 {
            let _ = write!(line, " {}={}r/{}w", r.name(), rd, wr);
        }
    }
    crate::log::write_line(format_args!("{}", line));
    let mut line: heapless::String<768> = heapless::String::new();
    let _ = write!(line, "e1000 cost (tsc):");
    for cause in ExitCause::ALL {
        let k = &c.cost[cause as usize];
        if k.calls != 0 {
            let _ = write!(
                line,
                " {}: calls={} frames={} cycles={} per_frame={}",
                cause.name(),
                k.calls,
                k.frames,
                k.cycles,
                Ratio(k.cycles, k.frames)
            );
        }
    }
    crate::log::write_line(format_args!("{}", line));
    // Exits per frame: TX doorbells (TDT writes, TX ring reads) per TX frame; RX-side exits
    // (ICR reads, RDT writes, interrupt-mask writes, polls) per RX frame.
    let reg = |r: RegId| c.reg_reads[r as usize] + c.reg_writes[r as usize];
    let tx_exits = reg(RegId::Tdt) + reg(RegId::Tdh);
    let rx_exits =
        reg(RegId::Icr) + reg(RegId::Rdt) + reg(RegId::Rdh) + reg(RegId::Ims) + reg(RegId::Imc);
    let cycles: u64 = c.cost.iter().map(|k| k.cycles).sum();
    let frames = c.tx.frames + c.rx.frames;
    crate::hv_line!(
        "e1000 per frame: tx_exits={}/{}={} rx_exits={}/{}={} polls={} all_nic_exits_per_frame={} engine_cycles_per_frame={}",
        tx_exits,
        c.tx.frames,
        Ratio(tx_exits, c.tx.frames),
        rx_exits,
        c.rx.frames,
        Ratio(rx_exits, c.rx.frames),
        c.exits[ExitCause::Poll as usize],
        Ratio(total, frames),
        Ratio(cycles, frames)
    );
    let (ept, ept_cycles) = WHOLE_EXITS[0].get();
    let (timer, timer_cycles) = WHOLE_EXITS[1].get();
    let (attr, attr_cycles) = ATTRIBUTION.get();
    let (decisions, policy_cycles) = POLICY.get();
    crate::hv_line!(
        "e1000 whole exits (tsc): mmio: exits={} cycles={} timer: exits={} cycles={} attribution: calls={} cycles={} policy: calls={} cycles={}",
        ept,
        ept_cycles,
        timer,
        timer_cycles,
        attr,
        attr_cycles,
        decisions,
        policy_cycles
    );
    // The same figures for what happened since the previous log (one phase of a measurement).
    let mut prev = LAST_LOGGED.lock();
    let d = match prev.as_ref() {
        Some(p) => c.since(p),
        None => c.clone(),
    };
    let timer_exits = TIMER_EXITS.load(Ordering::Relaxed);
    let timer_delta =
        timer_exits.wrapping_sub(TIMER_EXITS_LOGGED.swap(timer_exits, Ordering::Relaxed));
    log_phase(&d, timer_delta);
    *prev = Some(c.clone());
    let _ = nic.mmio;
}

/// Whole VM exits that served the NIC, from the exit handler's first instruction to the VM
/// entry: exit decoding, instruction emulation, attribution, the engine and the policy.
/// Index 0: EPT violations on the memory BAR; 1: preemption-timer exits.
static WHOLE_EXITS: [ExitCost; 2] = [ExitCost::new(), ExitCost::new()];
/// Attributions of TDT writes to the running task (only with the policy on).
static ATTRIBUTION: ExitCost = ExitCost::new();
/// The policy's decisions, from taking the engine's lock to the decision (inside the engine's
/// share of the exits).
static POLICY: ExitCost = ExitCost::new();

/// Count one policy decision that took `cycles` TSC ticks.
pub fn record_policy(cycles: u64) {
    POLICY.add(cycles);
}

/// Calls and TSC cycles of one kind of work.
struct ExitCost {
    calls: AtomicU64,
    cycles: AtomicU64,
}

impl ExitCost {
    const fn new() -> Self {
        ExitCost {
            calls: AtomicU64::new(0),
            cycles: AtomicU64::new(0),
        }
    }

    fn add(&self, cycles: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.cycles.fetch_add(cycles, Ordering::Relaxed);
    }

    fn get(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.cycles.load(Ordering::Relaxed),
        )
    }
}

/// The exit handler's cost of one whole exit that served the NIC (`nic_access`: an EPT violation
/// this module completed; `timer`: a preemption-timer exit). Other exits are not counted.
pub fn record_whole_exit(nic_access: bool, timer: bool, cycles: u64) {
    if nic_access {
        WHOLE_EXITS[0].add(cycles);
    } else if timer {
        WHOLE_EXITS[1].add(cycles);
    }
}

/// Counters at the previous `log_counters` (for the per-phase line).
static LAST_LOGGED: Mutex<Option<Counters>> = Mutex::new(None);
/// VM exits of the preemption timer (reason 52), whether or not they polled.
static TIMER_EXITS: AtomicU64 = AtomicU64::new(0);
/// `TIMER_EXITS` at the previous counters log.
static TIMER_EXITS_LOGGED: AtomicU64 = AtomicU64::new(0);

/// `e1000 phase:` exits per frame by register and cause, interrupts and engine cycles per
/// frame, for the counters `d` of one phase.
/// One phase's figures; `timer_exits` are the preemption-timer VM exits in it (polls also run
/// at other exits when their deadline has passed, and those cost no exit of their own).
fn log_phase(d: &Counters, timer_exits: u64) {
    let reg = |r: RegId| d.reg_reads[r as usize] + d.reg_writes[r as usize];
    let exits: u64 = d.exits.iter().sum();
    let cycles: u64 = d.cost.iter().map(|k| k.cycles).sum();
    let (tx, rx) = (d.tx.frames, d.rx.frames);
    let frames = tx + rx;
    let mut line: heapless::String<768> = heapless::String::new();
    let _ = write!(
        line,
        "e1000 phase: tx_frames={} rx_frames={} exits={} exits_per_frame={} tdt_per_tx_frame={} virq={} virq_deferred={} real_rx_irqs={} polls={} timer_exits={} timer_exits_per_frame={} engine_cycles_per_frame={} per_frame:",
        tx,
        rx,
        exits,
        Ratio(exits, frames),
        Ratio(reg(RegId::Tdt), tx),
        d.virq_raised,
        d.virq_deferred,
        d.real_rx_irqs,
        d.exits[ExitCause::Poll as usize],
        timer_exits,
        Ratio(timer_exits, frames),
        Ratio(cycles, frames)
    );
    for r in RegId::ALL {
        if reg(r) != 0 {
            let _ = write!(line, " {}={}", r.name(), Ratio(reg(r), frames));
        }
    }
    crate::log::write_line(format_args!("{}", line));
}

/// Desired pin-based control bit for the preemption timer when the NIC is mediated.
pub fn pin_controls() -> u32 {
    if active() {
        x86::vmx::vmcs::control::PinbasedControls::VMX_PREEMPTION_TIMER.bits()
    } else {
        0
    }
}
