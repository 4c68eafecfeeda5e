//! The VMX layer: the only part of Shoji that executes VMX instructions, reads MSRs and control
//! registers, and runs as host code at VM exits.

pub mod apic;
pub mod exit;
pub mod host;
pub mod introspection;
pub mod launch;
pub mod mgmt;
pub mod mmio;
pub mod msrs;
pub mod nic;
pub mod policy;
pub mod vmcall;

use core::arch::asm;

/// IA32_VMX_BASIC.
pub const IA32_VMX_BASIC: u32 = 0x480;
/// IA32_VMX_PINBASED_CTLS.
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
/// IA32_VMX_PROCBASED_CTLS.
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
/// IA32_VMX_EXIT_CTLS.
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
/// IA32_VMX_ENTRY_CTLS.
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
/// IA32_VMX_MISC.
pub const IA32_VMX_MISC: u32 = 0x485;
/// IA32_VMX_CR0_FIXED0.
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
/// IA32_VMX_CR0_FIXED1.
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
/// IA32_VMX_CR4_FIXED0.
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
/// IA32_VMX_CR4_FIXED1.
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
/// IA32_VMX_PROCBASED_CTLS2.
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
/// IA32_VMX_EPT_VPID_CAP.
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
/// IA32_VMX_TRUE_PINBASED_CTLS.
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
/// IA32_VMX_TRUE_PROCBASED_CTLS.
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
/// IA32_VMX_TRUE_EXIT_CTLS.
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
/// IA32_VMX_TRUE_ENTRY_CTLS.
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
/// IA32_EFER.
pub const IA32_EFER: u32 = 0xc000_0080;
/// IA32_PAT.
pub const IA32_PAT: u32 = 0x277;
/// IA32_FS_BASE.
pub const IA32_FS_BASE: u32 = 0xc000_0100;
/// IA32_GS_BASE.
pub const IA32_GS_BASE: u32 = 0xc000_0101;
/// IA32_KERNEL_GS_BASE.
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_DEBUGCTL.
pub const IA32_DEBUGCTL: u32 = 0x1d9;
/// IA32_SYSENTER_CS.
pub const IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MTRRCAP.
pub const IA32_MTRRCAP: u32 = 0xfe;
/// IA32_MTRR_DEF_TYPE.
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;

/// CR4.VMXE.
pub const CR4_VMXE: u64 = 1 << 13;
/// CR4.OSXSAVE.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;

/// Read an MSR. Only for MSRs known to exist on this CPU.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: callers only name architectural MSRs whose presence was established (VMX is
    // present, so the VMX MSRs exist); RDMSR has no memory effects.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    ((hi as u64) << 32) | lo as u64
}

/// Write an MSR.
///
/// # Safety
/// The MSR must exist and the value must be valid for it; the caller owns the consequences.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: delegated to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack))
    };
}

/// Write an MSR for the guest, as the guest asked: `false` (and nothing written) when the
/// hardware refuses the value with #GP, which the host exception handler turns into a return
/// here instead of a halt (see `host::WRMSR_SAFE`).
pub fn wrmsr_for_guest(msr: u32, value: u64) -> bool {
    let failed: u64;
    // SAFETY: `shoji_wrmsr_safe` executes one WRMSR of the guest's own value (the guest could
    // have written it itself but for the intercept) and returns 1 in RAX if it faulted; it
    // clobbers RCX and RDX and touches no memory.
    unsafe {
        asm!(
            "call shoji_wrmsr_safe",
            in("ecx") msr,
            inout("rax") value => failed,
            out("rdx") _,
            options(nostack),
        )
    };
    failed == 0
}

/// Execute CPUID.
pub fn cpuid(leaf: u32, subleaf: u32) -> crate::cpuid::CpuidRegs {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    crate::cpuid::CpuidRegs {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// TSC frequency cache for [`tsc_hz`]: 0 not read yet, `u64::MAX` unknown.
static TSC_HZ_CACHE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// The boot application's measurement of the TSC frequency (0 = none), see [`set_calibrated_tsc_hz`].
static TSC_HZ_CALIBRATED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Record the TSC frequency the boot application measured against the firmware's timer
/// (`Setup::tsc_hz`); [`tsc_hz`] uses it when CPUID leaves 0x15/0x16 do not say (QEMU+KVM,
/// many virtual machines). Call before the first [`tsc_hz`].
pub fn set_calibrated_tsc_hz(hz: u64) {
    TSC_HZ_CALIBRATED.store(hz, core::sync::atomic::Ordering::Relaxed);
}

/// Where the TSC frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID leaves 0x15/0x16.
    Cpuid,
    /// Measured by the boot application against the firmware's timer.
    Calibrated,
}

/// The TSC frequency in Hz, read once: from this CPU's CPUID leaves 0x15/0x16
/// ([`crate::cpuid::tsc_hz`]), else the boot application's calibration; `None` when neither.
pub fn tsc_hz() -> Option<u64> {
    use core::sync::atomic::Ordering;
    let cached = TSC_HZ_CACHE.load(Ordering::Relaxed);
    if cached == 0 {
        let hz = tsc_hz_source().map(|(hz, _)| hz);
        TSC_HZ_CACHE.store(hz.unwrap_or(u64::MAX), Ordering::Relaxed);
        return hz;
    }
    (cached != u64::MAX).then_some(cached)
}

/// The TSC frequency and its source (not cached: for the start-up log).
pub fn tsc_hz_source() -> Option<(u64, TscSource)> {
    if let Some(hz) = crate::cpuid::tsc_hz(cpuid(0, 0).eax, cpuid(0x15, 0), cpuid(0x16, 0)) {
        return Some((hz, TscSource::Cpuid));
    }
    match TSC_HZ_CALIBRATED.load(core::sync::atomic::Ordering::Relaxed) {
        0 => None,
        hz => Some((hz, TscSource::Calibrated)),
    }
}

/// Shoji's clock for rate limits and the policy engine: nanoseconds of TSC time
/// ([`tsc_ns`]); raw TSC ticks when the frequency is unknown (then only approximate).
pub fn clock_ns() -> u64 {
    tsc_ns().unwrap_or_else(rdtsc)
}

/// Read the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Nanoseconds per TSC tick as a 32.32 fixed-point factor for [`tsc_ns`]: 0 not computed yet,
/// `u64::MAX` unknown.
static NS_PER_TICK_CACHE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Nanoseconds of TSC time ([`tsc_hz`]); `None` when the frequency is unknown. One
/// multiplication per call (the engine's clock is read for every frame), no division.
pub fn tsc_ns() -> Option<u64> {
    use core::sync::atomic::Ordering;
    let mut factor = NS_PER_TICK_CACHE.load(Ordering::Relaxed);
    if factor == 0 {
        factor = match tsc_hz() {
            Some(hz) => ((1_000_000_000u128 << 32) / u128::from(hz)) as u64,
            None => u64::MAX,
        };
        NS_PER_TICK_CACHE.store(factor, Ordering::Relaxed);
    }
    (factor != u64::MAX).then(|| ((u128::from(rdtsc()) * u128::from(factor)) >> 32) as u64)
}

/// TSC ticks in `ns` nanoseconds, rounded up; `None` when the frequency is unknown.
pub fn ns_to_tsc(ns: u64) -> Option<u64> {
    let hz = tsc_hz()?;
    Some((u128::from(ns) * u128::from(hz)).div_ceil(1_000_000_000) as u64)
}

macro_rules! read_cr {
    ($name:ident, $reg:literal) => {
        /// Read the control register.
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effects (ring 0).
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack)) };
            v
        }
    };
}
read_cr!(read_cr0, "cr0");
read_cr!(read_cr3, "cr3");
read_cr!(read_cr4, "cr4");

/// Read a VMCS field of the current VMCS (0 if the read fails, which only a Shoji bug causes).
pub fn vmread(field: u32) -> u64 {
    // SAFETY: a VMCS is current whenever Shoji runs host code after launch; a failed VMREAD only
    // sets flags.
    unsafe { x86::bits64::vmx::vmread(field) }.unwrap_or(0)
}

/// The guest's current privilege level (SS.DPL from the VMCS).
pub fn guest_cpl() -> u64 {
    (vmread(x86::vmx::vmcs::guest::SS_ACCESS_RIGHTS) >> 5) & 3
}

/// Write a VMCS field of the current VMCS; failures are logged (they indicate a Shoji bug).
pub fn vmwrite(field: u32, value: u64) {
    // SAFETY: as for `vmread`; VMWRITE only changes the current VMCS.
    if unsafe { x86::bits64::vmx::vmwrite(field, value) }.is_err() {
        crate::hv_line!("vmwrite of field {:#x} = {:#x} failed", field, value);
    }
}

/// Adjust desired control bits to what the capability MSR allows: bits required to be 1 are set,
/// bits not allowed to be 1 are cleared. Returns (value, bits that were wanted but not allowed).
pub fn adjust_controls(cap_msr: u32, desired: u32) -> (u32, u32) {
    let cap = rdmsr(cap_msr);
    let must_be_one = cap as u32;
    let may_be_one = (cap >> 32) as u32;
    let value = (desired | must_be_one) & may_be_one;
    (value, desired & !may_be_one)
}
