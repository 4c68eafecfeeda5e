//! Taking a running CPU into VMX non-root mode, BitVisor-style: the CPU's current state becomes
//! the guest's, so the firmware goes on running, now virtualized, and boots the next image.
//!
//! The boot application calls [`virtualize_this_cpu`] (its own, firmware-loaded copy of the code)
//! with the address of [`launch_entry`] in Shoji's relocated copy. The trampoline saves the
//! caller's registers, switches to Shoji's page tables and calls the copy, which sets up VMX and
//! launches the guest at the trampoline's resume point with the firmware's page tables: from the
//! caller's point of view the call simply returns 0, now in VMX non-root mode.

use super::host::{Gdt, Idt, Tss, HOST_CS, HOST_DS, HOST_TR};
use super::*;
use crate::arena::Arena;
use crate::counters::ExitCounters;
use crate::ept::{self, Ept, IdentityMapSpec};
use crate::mtrr::{MtrrSnapshot, VariableRange, MAX_VARIABLE};
use crate::setup::{layout, Setup, SETUP_MAGIC};
use core::arch::global_asm;
use spin::Once;
use x86::vmx::vmcs::{control, guest, host};

/// Size of each CPU's host stack.
pub const HOST_STACK_SIZE: usize = 64 * 1024;
/// Maximum number of CPUs Shoji virtualizes.
pub const MAX_CPUS: usize = 64;

/// Arguments passed from the boot application through the trampoline to [`launch_entry`].
#[repr(C)]
#[derive(Debug, Default)]
pub struct LaunchArgs {
    /// Physical address of the [`Setup`] page.
    pub setup: u64,
    /// Index of this CPU (0 = bootstrap processor, which must launch first).
    pub cpu_index: u64,
    /// Filled by the trampoline: where the guest resumes.
    pub guest_rip: u64,
    /// Filled by the trampoline: the guest's stack pointer at the resume point.
    pub guest_rsp: u64,
    /// Filled by the trampoline: the firmware's page tables.
    pub guest_cr3: u64,
}

/// Failure codes returned by [`virtualize_this_cpu`] (0 = success, running as a guest now).
pub mod error {
    /// The setup page is missing or corrupt.
    pub const BAD_SETUP: u64 = 1;
    /// Shoji's arena is exhausted.
    pub const OUT_OF_MEMORY: u64 = 2;
    /// The CPU lacks a required VMX feature.
    pub const MISSING_FEATURE: u64 = 3;
    /// VMXON failed.
    pub const VMXON_FAILED: u64 = 4;
    /// VMCLEAR/VMPTRLD failed.
    pub const VMCS_LOAD_FAILED: u64 = 5;
    /// VMLAUNCH failed (the VM-instruction error is in the log).
    pub const VMLAUNCH_FAILED: u64 = 6;
    /// Too many CPUs or a CPU launched twice.
    pub const BAD_CPU: u64 = 7;
    /// VMX is locked off by the firmware.
    pub const VMX_LOCKED_OFF: u64 = 8;

    /// One-line description of a failure code.
    pub fn describe(code: u64) -> &'static str {
        match code {
            0 => "success",
            BAD_SETUP => "setup page missing or corrupt",
            OUT_OF_MEMORY => "Shoji's reserved memory is exhausted",
            MISSING_FEATURE => "the CPU lacks a required VMX feature (EPT, unrestricted guest)",
            VMXON_FAILED => "VMXON failed",
            VMCS_LOAD_FAILED => "VMCLEAR/VMPTRLD failed",
            VMLAUNCH_FAILED => "VMLAUNCH failed",
            BAD_CPU => "CPU index out of range or already launched",
            VMX_LOCKED_OFF => "VMX is disabled and locked by the firmware (IA32_FEATURE_CONTROL)",
            _ => "unknown error",
        }
    }
}

/// One CPU's VMX state, in Shoji's memory.
#[repr(C, align(4096))]
pub struct Vcpu {
    /// VMXON region.
    pub vmxon: [u8; 4096],
    /// The VMCS.
    pub vmcs: [u8; 4096],
    /// Host stack (the top slot holds a pointer back to this structure).
    pub stack: [u8; HOST_STACK_SIZE],
    /// Host GDT.
    pub gdt: Gdt,
    /// Host TSS.
    pub tss: Tss,
    /// CPU index.
    pub index: u32,
    /// CR0 bits the guest may not change (guest/host mask).
    pub cr0_mask: u64,
    /// CR0 bits that must be 1 in the guest's real CR0.
    pub cr0_fixed1_required: u64,
    /// CR4 bits the guest may not change.
    pub cr4_mask: u64,
    /// CR4 bits that must be 1 in the guest's real CR4.
    pub cr4_required: u64,
    /// CR4 bits that may be 1.
    pub cr4_allowed: u64,
    /// VPID in use (0 = none).
    pub vpid: u16,
    /// Whether the CPU supports the wait-for-SIPI activity state.
    pub wait_for_sipi: bool,
    /// Exit counters.
    pub counters: ExitCounters,
    /// An external interrupt that arrived while this CPU ran host code, to be injected into the
    /// guest (0 = none).
    pub pending_irq: u8,
    /// TSC just before this CPU's last VM entry (paces Shoji's timer, see [`crate::pacing`]).
    pub entered_tsc: u64,
    /// The guest's TSC on this CPU (offset, IA32_TSC_ADJUST), see [`super::msrs`].
    pub tsc: crate::msr::TscState,
}

/// State shared by all CPUs, set up by the bootstrap processor.
pub struct Global {
    /// Physical address of the setup page.
    pub setup: u64,
    /// The EPT.
    pub ept: Ept,
    /// MSR bitmap page.
    pub msr_bitmap: u64,
    /// I/O bitmap A (ports 0-0x7fff).
    pub io_bitmap_a: u64,
    /// I/O bitmap B (ports 0x8000-0xffff).
    pub io_bitmap_b: u64,
    /// The IDT.
    pub idt: u64,
    /// Shoji's log port (trapped).
    pub log_port: u16,
    /// Reserved region.
    pub region: (u64, u64),
}

/// The shared state (set once by the bootstrap processor).
pub static GLOBAL: Once<Global> = Once::new();

/// Every virtualized CPU's state, by index.
pub static VCPUS: [spin::Mutex<Option<u64>>; MAX_CPUS] =
    [const { spin::Mutex::new(None) }; MAX_CPUS];

/// Call `f` with each launched CPU's index and exit counters.
pub fn for_each_vcpu(mut f: impl FnMut(usize, &ExitCounters)) {
    for (cpu, slot) in VCPUS.iter().enumerate() {
        let Some(addr) = *slot.lock() else { continue };
        // SAFETY: a CPU's `Vcpu` is recorded here just before its launch and lives in Shoji's
        // reserved memory for the hypervisor's lifetime; only its atomic counters are read.
        let vcpu = unsafe { &*(addr as *const Vcpu) };
        f(cpu, &vcpu.counters);
    }
}

extern "sysv64" {
    fn shoji_launch_trampoline(entry: u64, args: *mut LaunchArgs, host_cr3: u64) -> u64;
}

/// Take the calling CPU into VMX non-root mode. Returns 0 on success (the caller now runs as
/// Shoji's guest) or an [`error`] code (the caller still runs natively).
///
/// # Safety
/// `entry` must be the address of [`launch_entry`] in Shoji's relocated image, `args.setup` a
/// filled setup page, and `host_cr3` Shoji's identity-mapping page tables. Interrupts are
/// disabled for the duration and restored on return.
pub unsafe fn virtualize_this_cpu(entry: u64, args: &mut LaunchArgs, host_cr3: u64) -> u64 {
    // SAFETY: delegated to the caller; the trampoline preserves all callee-saved state.
    unsafe { shoji_launch_trampoline(entry, args, host_cr3) }
}

// The trampoline (System V ABI: rdi = entry, rsi = args, rdx = host CR3).
// It saves every callee-saved register of both the System V and Microsoft ABIs, so it can be
// called from UEFI code, records the resume point and stack in `args`, switches to Shoji's page
// tables and calls `entry(args)`. On success the guest resumes at label 2 with the firmware's
// CR3 (from the VMCS) and RAX = 0; on failure `entry` returns its error code in RAX.
global_asm!(
    ".global shoji_launch_trampoline",
    "shoji_launch_trampoline:",
    "push rbx",
    "push rbp",
    "push rdi",
    "push rsi",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "pushfq",
    "cli",
    "mov rax, cr3",
    "push rax",
    "mov [rsi + 32], rax", // args.guest_cr3
    "mov [rsi + 24], rsp", // args.guest_rsp
    "lea rax, [rip + 2f]",
    "mov [rsi + 16], rax", // args.guest_rip
    "mov cr3, rdx",
    "mov rbx, rsp",
    "and rsp, -16",
    "mov rax, rdi",
    "mov rdi, rsi",
    "call rax",
    // Only reached when the launch failed: RAX holds the error code.
    "mov rsp, rbx",
    "jmp 3f",
    "2:",
    // The guest resumes here in VMX non-root mode.
    "xor eax, eax",
    "3:",
    "pop rcx",
    "mov cr3, rcx",
    "popfq",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rsi",
    "pop rdi",
    "pop rbp",
    "pop rbx",
    "ret",
);

/// The hypervisor side of the launch, running in Shoji's relocated image on Shoji's page tables
/// with interrupts disabled. Returns only on failure.
///
/// # Safety
/// Called only by the trampoline with a valid `args` pointer.
#[no_mangle]
pub unsafe extern "sysv64" fn launch_entry(args: *mut LaunchArgs) -> u64 {
    // SAFETY: the trampoline passes the caller's `LaunchArgs`, valid for the whole call.
    let args = unsafe { &mut *args };
    // SAFETY: the boot application placed the setup page at this physical address, identity
    // mapped; only one CPU runs this code at a time (MP services start APs one by one).
    let setup = unsafe { &mut *(args.setup as *mut Setup) };
    if setup.magic != SETUP_MAGIC {
        return error::BAD_SETUP;
    }
    let cpu = args.cpu_index as usize;
    if cpu >= MAX_CPUS || VCPUS[cpu].lock().is_some() {
        return error::BAD_CPU;
    }
    if cpu == 0 {
        crate::log::init(setup.log_port, setup.log_level);
        if let Err(code) = init_global(setup, args.setup) {
            return code;
        }
    }
    let Some(global) = GLOBAL.get() else {
        return error::BAD_SETUP;
    };
    match launch_cpu(setup, global, args) {
        Ok(never) => match never {},
        Err(code) => {
            crate::hv_line!("cpu {}: launch failed: {}", cpu, error::describe(code));
            code
        }
    }
}

fn read_mtrrs() -> MtrrSnapshot {
    let phys_bits = (cpuid(0x8000_0008, 0).eax & 0xff) as u8;
    let mut s = MtrrSnapshot::all_write_back(phys_bits.max(36));
    if cpuid(1, 0).edx & (1 << 12) == 0 {
        return s; // No MTRRs: the EPT uses write-back everywhere.
    }
    let cap = rdmsr(IA32_MTRRCAP);
    let def = rdmsr(IA32_MTRR_DEF_TYPE);
    s.enabled = def & (1 << 11) != 0;
    s.fixed_enabled = cap & (1 << 8) != 0 && def & (1 << 10) != 0;
    s.default_type = (def & 0xff) as u8;
    if s.fixed_enabled {
        let fixed_msrs = [
            0x250u32, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
        ];
        for (i, msr) in fixed_msrs.iter().enumerate() {
            s.fixed[i * 8..i * 8 + 8].copy_from_slice(&rdmsr(*msr).to_le_bytes());
        }
    }
    s.variable_count = ((cap & 0xff) as usize).min(MAX_VARIABLE);
    for i in 0..s.variable_count {
        s.variable[i] = VariableRange {
            base: rdmsr(0x200 + 2 * i as u32),
            mask: rdmsr(0x201 + 2 * i as u32),
        };
    }
    s
}

fn init_global(setup: &mut Setup, setup_phys: u64) -> Result<(), u64> {
    let region = (setup.region_base, setup.region_base + setup.region_size);
    crate::hv_line!(
        "reserved memory {:#x}-{:#x} ({} KiB), image at {:#x}",
        region.0,
        region.1 - 1,
        setup.region_size / 1024,
        setup.image_base
    );
    let mtrr = read_mtrrs();
    let ept_caps = rdmsr(IA32_VMX_EPT_VPID_CAP);
    let allow_1g = ept_caps & (1 << 17) != 0;
    let ecam = crate::setup::EcamWindow::from_setup(setup);
    let mut arena = Arena::new(&mut setup.arena_next, setup.arena_end);
    let ept = Ept::identity(
        &mut arena,
        &mtrr,
        IdentityMapSpec {
            top: setup.phys_top,
            allow_1g,
        },
    )
    .map_err(|_| error::OUT_OF_MEMORY)?;
    // Hide Shoji's memory: every page of the region maps to one scratch page holding nothing of
    // Shoji's, so reads see no hypervisor data and writes cannot reach it.
    let scratch = arena.alloc_pages(1).ok_or(error::OUT_OF_MEMORY)?;
    // SAFETY: fresh page in Shoji's region.
    unsafe { core::ptr::write_bytes(scratch as *mut u8, 0xff, 4096) };
    if setup.expose_memory == 0 {
        let mut gpa = region.0;
        while gpa < region.1 {
            ept.map_page(
                &mut arena,
                gpa,
                scratch,
                ept::READ | ept::WRITE,
                crate::mtrr::WB,
            )
            .map_err(|_| error::OUT_OF_MEMORY)?;
            gpa += 0x1000;
        }
    } else {
        crate::hv_line!("WARNING: expose_hypervisor_memory is set: Shoji's memory is visible to the guest (test only)");
    }
    let msr_bitmap = arena.alloc_pages(1).ok_or(error::OUT_OF_MEMORY)?;
    // SAFETY: fresh 4 KiB page.
    let bitmap = unsafe { &mut *(msr_bitmap as *mut [u8; 4096]) };
    crate::msr::fill_bitmap(bitmap);
    super::msrs::init_global(msr_bitmap);
    let mtf = (rdmsr(IA32_VMX_PROCBASED_CTLS) >> 32) & (1 << 27) != 0;
    if setup.cpu_count > 1 {
        // Mediate start-up IPIs (see `apic`): trap writes to the xAPIC page and the x2APIC ICR.
        let apic_base = rdmsr(super::apic::IA32_APIC_BASE) & 0x000f_ffff_ffff_f000;
        ept.map_page(&mut arena, apic_base, apic_base, ept::READ, crate::mtrr::UC)
            .map_err(|_| error::OUT_OF_MEMORY)?;
        super::apic::TRAPPED_PAGE.store(apic_base, core::sync::atomic::Ordering::Release);
        let icr = super::apic::X2APIC_ICR;
        bitmap[0x800 + (icr / 8) as usize] |= 1 << (icr % 8);
        super::apic::MEDIATING.store(true, core::sync::atomic::Ordering::Release);
        crate::hv_line!(
            "{} CPUs: start-up IPIs mediated (xAPIC page {:#x} write-trapped, other APIC writes {}, x2APIC ICR intercepted)",
            setup.cpu_count,
            apic_base,
            if mtf { "single-stepped by the guest" } else { "performed by Shoji" }
        );
    }
    let io_bitmap_a = arena.alloc_pages(1).ok_or(error::OUT_OF_MEMORY)?;
    let io_bitmap_b = arena.alloc_pages(1).ok_or(error::OUT_OF_MEMORY)?;
    if setup.log_port != 0 {
        // Trap the guest's accesses to Shoji's log UART (8 registers).
        for port in setup.log_port..setup.log_port.saturating_add(8) {
            let (page, bit) = if port < 0x8000 {
                (io_bitmap_a, port)
            } else {
                (io_bitmap_b, port - 0x8000)
            };
            // SAFETY: `page` is one of the two fresh bitmap pages; bit / 8 < 4096.
            unsafe { *((page + (bit / 8) as u64) as *mut u8) |= 1 << (bit % 8) };
        }
    }
    super::set_calibrated_tsc_hz(setup.tsc_hz);
    super::nic::init(
        setup.mediate_nic != 0,
        &setup.mgmt,
        ecam,
        &mut arena,
        &ept,
        io_bitmap_a,
        io_bitmap_b,
    );
    // The single-step EPT (the xAPIC page writable for one instruction) is forked only now,
    // after every other trap is in the main EPT: the fork shares all tables off the xAPIC
    // page's path, so a trap added later could be missing from it.
    let apic_page = super::apic::TRAPPED_PAGE.load(core::sync::atomic::Ordering::Acquire);
    if apic_page != 0 && mtf {
        let step = ept
            .fork_page(&mut arena, apic_page, ept::READ | ept::WRITE)
            .map_err(|_| error::OUT_OF_MEMORY)?;
        let (checked, open) = super::nic::traps_hold_in(&step, &mut arena);
        crate::hv_line!(
            "single-step EPT: {} of the NIC's {} trapped pages mapped in it",
            open,
            checked
        );
        super::apic::STEP_EPTP.store(step.eptp(), core::sync::atomic::Ordering::Release);
    }
    let idt: &mut Idt = arena.alloc().ok_or(error::OUT_OF_MEMORY)?;
    idt.fill();
    let idt = idt as *mut Idt as u64;
    let mut nonzero_mtrr = 0;
    for i in 0..mtrr.variable_count {
        if mtrr.variable[i].mask & (1 << 11) != 0 {
            nonzero_mtrr += 1;
        }
    }
    crate::hv_line!(
        "EPT identity map up to {:#x} ({} 1 GiB pages), MTRRs {} (default type {}, {} variable ranges), memory {}",
        ept.top,
        if allow_1g { "with" } else { "without" },
        if mtrr.enabled { "enabled" } else { "disabled" },
        mtrr.default_type,
        nonzero_mtrr,
        if setup.expose_memory == 0 { "hidden" } else { "EXPOSED" }
    );
    GLOBAL.call_once(|| Global {
        setup: setup_phys,
        ept,
        msr_bitmap,
        io_bitmap_a,
        io_bitmap_b,
        idt,
        log_port: setup.log_port,
        region,
    });
    Ok(())
}

/// Enable VMX operation on this CPU (feature control, CR0/CR4 fixed bits).
fn enable_vmx() -> Result<(), u64> {
    let fc = rdmsr(crate::msr::IA32_FEATURE_CONTROL);
    if fc & crate::msr::FEATURE_CONTROL_LOCK == 0 {
        // SAFETY: the MSR exists (VMX is present) and is unlocked; enabling VMXON outside SMX and
        // locking is what firmware normally does.
        unsafe {
            wrmsr(
                crate::msr::IA32_FEATURE_CONTROL,
                fc | crate::msr::FEATURE_CONTROL_LOCK | crate::msr::FEATURE_CONTROL_VMX_OUTSIDE_SMX,
            )
        };
    } else if fc & crate::msr::FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0 {
        return Err(error::VMX_LOCKED_OFF);
    }
    let cr0 = (read_cr0() | rdmsr(IA32_VMX_CR0_FIXED0)) & rdmsr(IA32_VMX_CR0_FIXED1);
    let cr4 = (read_cr4() | rdmsr(IA32_VMX_CR4_FIXED0) | CR4_VMXE) & rdmsr(IA32_VMX_CR4_FIXED1);
    // SAFETY: the values satisfy the VMX fixed-bit requirements and keep paging and protection
    // as they are (the fixed-1 bits of CR0 are PE, PG and NE, all set in long mode or harmless).
    unsafe {
        core::arch::asm!("mov cr0, {}", in(reg) cr0, options(nostack));
        core::arch::asm!("mov cr4, {}", in(reg) cr4, options(nostack));
    }
    Ok(())
}

/// Segment state as the VMCS wants it.
#[derive(Debug, Clone, Copy)]
struct Segment {
    selector: u16,
    base: u64,
    limit: u32,
    access: u32,
}

const UNUSABLE: u32 = 1 << 16;

fn segment_from_gdt(selector: u16, gdt_base: u64, gdt_limit: u16) -> Segment {
    let index = (selector & !7) as u64;
    if selector & !3 == 0 || selector & 4 != 0 || index + 7 > gdt_limit as u64 {
        return Segment {
            selector,
            base: 0,
            limit: 0,
            access: UNUSABLE,
        };
    }
    // SAFETY: the descriptor lies inside the current GDT (checked against its limit), which is
    // identity mapped.
    let desc = unsafe { core::ptr::read_unaligned((gdt_base + index) as *const u64) };
    let mut limit = ((desc & 0xffff) | ((desc >> 32) & 0xf_0000)) as u32;
    if desc & (1 << 55) != 0 {
        limit = (limit << 12) | 0xfff;
    }
    let mut base = ((desc >> 16) & 0xff_ffff) | ((desc >> 32) & 0xff00_0000);
    let system = desc & (1 << 44) == 0;
    if system && index + 15 <= gdt_limit as u64 {
        // SAFETY: as above, for the upper half of a 16-byte system descriptor.
        let high = unsafe { core::ptr::read_unaligned((gdt_base + index + 8) as *const u64) };
        base |= (high & 0xffff_ffff) << 32;
    }
    let access = ((desc >> 40) & 0xf0ff) as u32;
    Segment {
        selector,
        base,
        limit,
        access,
    }
}

#[derive(Default)]
struct DescriptorTable {
    limit: u16,
    base: u64,
}

fn sgdt() -> DescriptorTable {
    let mut buf = [0u8; 10];
    // SAFETY: SGDT stores 10 bytes into `buf`.
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) buf.as_mut_ptr(), options(nostack)) };
    DescriptorTable {
        limit: u16::from_le_bytes([buf[0], buf[1]]),
        base: u64::from_le_bytes(buf[2..10].try_into().unwrap_or([0; 8])),
    }
}

fn sidt() -> DescriptorTable {
    let mut buf = [0u8; 10];
    // SAFETY: SIDT stores 10 bytes into `buf`.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) buf.as_mut_ptr(), options(nostack)) };
    DescriptorTable {
        limit: u16::from_le_bytes([buf[0], buf[1]]),
        base: u64::from_le_bytes(buf[2..10].try_into().unwrap_or([0; 8])),
    }
}

macro_rules! read_sel {
    ($ins:literal) => {{
        let v: u16;
        // SAFETY: reading a segment selector has no side effects.
        unsafe { core::arch::asm!($ins, out(reg) v, options(nomem, nostack)) };
        v
    }};
}

fn write_guest_segment(sel: u32, base: u32, limit: u32, ar: u32, s: Segment) {
    vmwrite(sel, s.selector as u64);
    vmwrite(base, s.base);
    vmwrite(limit, s.limit as u64);
    vmwrite(ar, s.access as u64);
}

fn launch_cpu(
    setup: &mut Setup,
    global: &Global,
    args: &LaunchArgs,
) -> Result<core::convert::Infallible, u64> {
    let cpu = args.cpu_index as usize;
    let basic = rdmsr(IA32_VMX_BASIC);
    let revision = (basic & 0x7fff_ffff) as u32;
    let true_controls = basic & (1 << 55) != 0;
    let misc = rdmsr(IA32_VMX_MISC);

    let mut arena = Arena::new(&mut setup.arena_next, setup.arena_end);
    let vcpu: &'static mut Vcpu = arena.alloc().ok_or(error::OUT_OF_MEMORY)?;
    vcpu.index = cpu as u32;
    vcpu.vmxon[..4].copy_from_slice(&revision.to_le_bytes());
    vcpu.vmcs[..4].copy_from_slice(&revision.to_le_bytes());
    let tss_addr = &vcpu.tss as *const Tss as u64;
    vcpu.gdt.fill(tss_addr);
    vcpu.wait_for_sipi = misc & (1 << 8) != 0;
    vcpu.tsc = super::msrs::vcpu_tsc();
    let vcpu_addr = vcpu as *mut Vcpu as u64;
    // The host stack's top slot points back at the Vcpu (the exit stub finds it there).
    let stack_top = (vcpu.stack.as_ptr() as u64 + HOST_STACK_SIZE as u64 - 16) & !0xf;
    // SAFETY: `stack_top` lies inside this CPU's stack.
    unsafe { *(stack_top as *mut u64) = vcpu_addr };

    enable_vmx()?;
    let vmxon_pa = vcpu.vmxon.as_ptr() as u64;
    let vmcs_pa = vcpu.vmcs.as_ptr() as u64;
    // SAFETY: VMX is enabled in CR4 and feature control; the regions carry the revision id.
    unsafe {
        x86::bits64::vmx::vmxon(vmxon_pa).map_err(|_| error::VMXON_FAILED)?;
        if x86::bits64::vmx::vmclear(vmcs_pa).is_err()
            || x86::bits64::vmx::vmptrld(vmcs_pa).is_err()
        {
            let _ = x86::bits64::vmx::vmxoff();
            return Err(error::VMCS_LOAD_FAILED);
        }
    }

    // Controls.
    let (pin_msr, proc_msr, exit_msr, entry_msr) = if true_controls {
        (
            IA32_VMX_TRUE_PINBASED_CTLS,
            IA32_VMX_TRUE_PROCBASED_CTLS,
            IA32_VMX_TRUE_EXIT_CTLS,
            IA32_VMX_TRUE_ENTRY_CTLS,
        )
    } else {
        (
            IA32_VMX_PINBASED_CTLS,
            IA32_VMX_PROCBASED_CTLS,
            IA32_VMX_EXIT_CTLS,
            IA32_VMX_ENTRY_CTLS,
        )
    };
    use control::{
        EntryControls as En, ExitControls as Ex, PrimaryControls as Pr, SecondaryControls as Se,
    };
    // With several CPUs, NMIs exit: Shoji delivers INITs to CPUs under it as NMI kicks (apic).
    let nmi_exiting = if super::apic::MEDIATING.load(core::sync::atomic::Ordering::Acquire) {
        control::PinbasedControls::NMI_EXITING.bits()
    } else {
        0
    };
    let (pin, _) = adjust_controls(pin_msr, super::nic::pin_controls() | nmi_exiting);
    let (primary, missing) = adjust_controls(
        proc_msr,
        (Pr::USE_MSR_BITMAPS
            | Pr::USE_IO_BITMAPS
            | Pr::SECONDARY_CONTROLS
            | Pr::USE_TSC_OFFSETTING)
            .bits(),
    );
    if missing != 0 {
        fail_launch();
        return Err(error::MISSING_FEATURE);
    }
    let required2 = Se::ENABLE_EPT | Se::UNRESTRICTED_GUEST;
    let optional2 =
        Se::ENABLE_RDTSCP | Se::ENABLE_INVPCID | Se::ENABLE_XSAVES_XRSTORS | Se::ENABLE_VPID;
    let (secondary, missing2) =
        adjust_controls(IA32_VMX_PROCBASED_CTLS2, (required2 | optional2).bits());
    if missing2 & required2.bits() != 0 {
        fail_launch();
        return Err(error::MISSING_FEATURE);
    }
    let (exit_ctl, _) = adjust_controls(
        exit_msr,
        (Ex::HOST_ADDRESS_SPACE_SIZE
            | Ex::SAVE_IA32_PAT
            | Ex::LOAD_IA32_PAT
            | Ex::SAVE_IA32_EFER
            | Ex::LOAD_IA32_EFER)
            .bits(),
    );
    let efer = rdmsr(IA32_EFER);
    let mut entry_want = En::LOAD_IA32_PAT | En::LOAD_IA32_EFER;
    if efer & EFER_LMA != 0 {
        entry_want |= En::IA32E_MODE_GUEST;
    }
    let (entry_ctl, _) = adjust_controls(entry_msr, entry_want.bits());
    vmwrite(control::PINBASED_EXEC_CONTROLS, pin as u64);
    vmwrite(control::PRIMARY_PROCBASED_EXEC_CONTROLS, primary as u64);
    vmwrite(control::SECONDARY_PROCBASED_EXEC_CONTROLS, secondary as u64);
    vmwrite(control::VMEXIT_CONTROLS, exit_ctl as u64);
    vmwrite(control::VMENTRY_CONTROLS, entry_ctl as u64);
    vmwrite(control::EXCEPTION_BITMAP, 0);
    vmwrite(control::CR3_TARGET_COUNT, 0);
    vmwrite(control::MSR_BITMAPS_ADDR_FULL, global.msr_bitmap);
    vmwrite(control::TSC_OFFSET_FULL, vcpu.tsc.offset());
    vmwrite(control::IO_BITMAP_A_ADDR_FULL, global.io_bitmap_a);
    vmwrite(control::IO_BITMAP_B_ADDR_FULL, global.io_bitmap_b);
    vmwrite(control::EPTP_FULL, global.ept.eptp());
    if secondary & Se::ENABLE_VPID.bits() != 0 {
        vcpu.vpid = cpu as u16 + 1;
        vmwrite(control::VPID, vcpu.vpid as u64);
    }
    if secondary & Se::ENABLE_XSAVES_XRSTORS.bits() != 0 {
        vmwrite(control::XSS_EXITING_BITMAP_FULL, 0);
    }

    // CR0 / CR4 ownership: the guest owns every bit except those VMX pins.
    let cr0_fixed0 = rdmsr(IA32_VMX_CR0_FIXED0);
    let cr0_fixed1 = rdmsr(IA32_VMX_CR0_FIXED1);
    let cr4_fixed0 = rdmsr(IA32_VMX_CR4_FIXED0);
    let cr4_fixed1 = rdmsr(IA32_VMX_CR4_FIXED1);
    let pe_pg = (1u64 << 0) | (1u64 << 31);
    vcpu.cr0_fixed1_required = cr0_fixed0 & !pe_pg;
    vcpu.cr0_mask = (vcpu.cr0_fixed1_required | !cr0_fixed1) & 0xffff_ffff;
    vcpu.cr4_required = cr4_fixed0;
    vcpu.cr4_allowed = cr4_fixed1;
    vcpu.cr4_mask = cr4_fixed0 | !cr4_fixed1;
    let cr0 = read_cr0();
    let cr4 = read_cr4();
    vmwrite(control::CR0_GUEST_HOST_MASK, vcpu.cr0_mask);
    vmwrite(control::CR4_GUEST_HOST_MASK, vcpu.cr4_mask);
    vmwrite(control::CR0_READ_SHADOW, cr0);
    vmwrite(control::CR4_READ_SHADOW, cr4 & !CR4_VMXE);

    // Host state: Shoji's own tables, stack and page tables.
    vmwrite(host::CR0, cr0);
    vmwrite(host::CR3, read_cr3());
    // The host executes XSETBV on the guest's behalf, which needs CR4.OSXSAVE in host mode even
    // when the firmware (the guest at launch) has not enabled it.
    let osxsave = if cpuid(1, 0).ecx & (1 << 26) != 0 {
        CR4_OSXSAVE
    } else {
        0
    };
    vmwrite(host::CR4, cr4 | osxsave);
    vmwrite(host::CS_SELECTOR, HOST_CS as u64);
    for f in [
        host::SS_SELECTOR,
        host::DS_SELECTOR,
        host::ES_SELECTOR,
        host::FS_SELECTOR,
        host::GS_SELECTOR,
    ] {
        vmwrite(f, HOST_DS as u64);
    }
    vmwrite(host::TR_SELECTOR, HOST_TR as u64);
    vmwrite(host::FS_BASE, 0);
    vmwrite(host::GS_BASE, vcpu_addr);
    vmwrite(host::TR_BASE, tss_addr);
    vmwrite(host::GDTR_BASE, vcpu.gdt.entries.as_ptr() as u64);
    vmwrite(host::IDTR_BASE, global.idt);
    vmwrite(host::IA32_SYSENTER_CS, 0);
    vmwrite(host::IA32_SYSENTER_ESP, 0);
    vmwrite(host::IA32_SYSENTER_EIP, 0);
    vmwrite(host::IA32_EFER_FULL, efer);
    vmwrite(host::IA32_PAT_FULL, rdmsr(IA32_PAT));
    vmwrite(host::RSP, stack_top);
    vmwrite(host::RIP, super::exit::exit_entry_address());

    // Guest state: the CPU as it is now, resuming at the trampoline's resume point.
    let gdt = sgdt();
    let idt = sidt();
    let sel = |s: u16| segment_from_gdt(s, gdt.base, gdt.limit);
    let cs = sel(read_sel!("mov {0:x}, cs"));
    let ss = sel(read_sel!("mov {0:x}, ss"));
    let ds = sel(read_sel!("mov {0:x}, ds"));
    let es = sel(read_sel!("mov {0:x}, es"));
    let mut fs = sel(read_sel!("mov {0:x}, fs"));
    let mut gs = sel(read_sel!("mov {0:x}, gs"));
    fs.base = rdmsr(IA32_FS_BASE);
    gs.base = rdmsr(IA32_GS_BASE);
    let ldtr = sel(read_sel!("sldt {0:x}"));
    let tr_sel = read_sel!("str {0:x}");
    let tr = if tr_sel & !3 == 0 {
        // UEFI firmware often runs without a task register; VMX needs a usable busy TSS.
        Segment {
            selector: 0,
            base: 0,
            limit: 0x67,
            access: 0x8b,
        }
    } else {
        let mut t = sel(tr_sel);
        t.access = (t.access & !0xf) | 0xb;
        t
    };
    write_guest_segment(
        guest::CS_SELECTOR,
        guest::CS_BASE,
        guest::CS_LIMIT,
        guest::CS_ACCESS_RIGHTS,
        cs,
    );
    write_guest_segment(
        guest::SS_SELECTOR,
        guest::SS_BASE,
        guest::SS_LIMIT,
        guest::SS_ACCESS_RIGHTS,
        ss,
    );
    write_guest_segment(
        guest::DS_SELECTOR,
        guest::DS_BASE,
        guest::DS_LIMIT,
        guest::DS_ACCESS_RIGHTS,
        ds,
    );
    write_guest_segment(
        guest::ES_SELECTOR,
        guest::ES_BASE,
        guest::ES_LIMIT,
        guest::ES_ACCESS_RIGHTS,
        es,
    );
    write_guest_segment(
        guest::FS_SELECTOR,
        guest::FS_BASE,
        guest::FS_LIMIT,
        guest::FS_ACCESS_RIGHTS,
        fs,
    );
    write_guest_segment(
        guest::GS_SELECTOR,
        guest::GS_BASE,
        guest::GS_LIMIT,
        guest::GS_ACCESS_RIGHTS,
        gs,
    );
    write_guest_segment(
        guest::LDTR_SELECTOR,
        guest::LDTR_BASE,
        guest::LDTR_LIMIT,
        guest::LDTR_ACCESS_RIGHTS,
        ldtr,
    );
    write_guest_segment(
        guest::TR_SELECTOR,
        guest::TR_BASE,
        guest::TR_LIMIT,
        guest::TR_ACCESS_RIGHTS,
        tr,
    );
    vmwrite(guest::GDTR_BASE, gdt.base);
    vmwrite(guest::GDTR_LIMIT, gdt.limit as u64);
    vmwrite(guest::IDTR_BASE, idt.base);
    vmwrite(guest::IDTR_LIMIT, idt.limit as u64);
    vmwrite(guest::CR0, cr0);
    vmwrite(guest::CR3, args.guest_cr3);
    vmwrite(guest::CR4, cr4);
    let dr7: u64;
    // SAFETY: reading DR7 has no side effects.
    unsafe { core::arch::asm!("mov {}, dr7", out(reg) dr7, options(nomem, nostack)) };
    vmwrite(guest::DR7, dr7);
    vmwrite(guest::RSP, args.guest_rsp);
    vmwrite(guest::RIP, args.guest_rip);
    let rflags: u64;
    // SAFETY: reading RFLAGS through the stack.
    unsafe { core::arch::asm!("pushfq", "pop {}", out(reg) rflags) };
    vmwrite(guest::RFLAGS, rflags);
    vmwrite(guest::IA32_SYSENTER_CS, rdmsr(IA32_SYSENTER_CS));
    vmwrite(guest::IA32_SYSENTER_ESP, rdmsr(IA32_SYSENTER_ESP));
    vmwrite(guest::IA32_SYSENTER_EIP, rdmsr(IA32_SYSENTER_EIP));
    vmwrite(guest::IA32_EFER_FULL, efer);
    vmwrite(guest::IA32_PAT_FULL, rdmsr(IA32_PAT));
    vmwrite(guest::IA32_DEBUGCTL_FULL, 0);
    vmwrite(guest::LINK_PTR_FULL, u64::MAX);
    vmwrite(guest::INTERRUPTIBILITY_STATE, 0);
    vmwrite(guest::ACTIVITY_STATE, 0);
    vmwrite(guest::PENDING_DBG_EXCEPTIONS, 0);
    if pin & super::nic::pin_controls() != 0 {
        super::nic::timer_on();
    }

    super::apic::STARTUP[cpu].apic_id.store(
        super::apic::current_apic_id(),
        core::sync::atomic::Ordering::Release,
    );
    *VCPUS[cpu].lock() = Some(vcpu_addr);
    crate::hv_line!(
        "cpu {}: launching guest at rip {:#x} (controls pin {:#x} proc {:#x} proc2 {:#x} exit {:#x} entry {:#x}, vpid {})",
        cpu, args.guest_rip, pin, primary, secondary, exit_ctl, entry_ctl, vcpu.vpid
    );
    // SAFETY: the VMCS is complete; on success execution continues in the guest.
    let result = unsafe { x86::bits64::vmx::vmlaunch() };
    let err = vmread(x86::vmx::vmcs::ro::VM_INSTRUCTION_ERROR);
    crate::hv_line!(
        "cpu {}: VMLAUNCH failed ({:?}), VM-instruction error {}",
        cpu,
        result,
        err
    );
    *VCPUS[cpu].lock() = None;
    fail_launch();
    Err(error::VMLAUNCH_FAILED)
}

/// Leave VMX operation after a failed launch so the CPU can go on natively.
fn fail_launch() {
    // SAFETY: this CPU is in VMX root operation with no guest running.
    unsafe {
        let _ = x86::bits64::vmx::vmxoff();
        core::arch::asm!("mov {0}, cr4", "and {0}, {1}", "mov cr4, {0}", out(reg) _, in(reg) !CR4_VMXE, options(nostack));
    }
}

/// The [`Setup`] page placed by the boot application, if launched.
pub fn setup() -> Option<&'static Setup> {
    let g = GLOBAL.get()?;
    // SAFETY: the setup page lives for the hypervisor's lifetime in its reserved region.
    Some(unsafe { &*(g.setup as *const Setup) })
}

/// Where the canary text lives.
pub fn canary_address(region_base: u64) -> u64 {
    region_base + layout::CANARY
}
