//! The MSRs Shoji answers itself instead of passing them to the hardware, with the state that
//! takes: the MTRRs (one guest view for the machine, [`crate::msr::MtrrShadow`]: the guest reads
//! back what it wrote, while the memory types of Shoji's own region, which VMX root mode uses,
//! stay the firmware's) and the TSC (per vCPU, [`crate::msr::TscState`]: the guest's writes to
//! IA32_TSC and IA32_TSC_ADJUST become the VMCS TSC offset, so Shoji's clock never moves by the
//! guest's hand, and IA32_TSC_DEADLINE is converted while an offset is in force). The stateless
//! answers (VMX capability MSRs, IA32_FEATURE_CONTROL, the APIC base, Intel PT, DS/PEBS,
//! IA32_MISC_ENABLE, IA32_XSS) come from [`crate::msr`]. The exit handler hands every
//! intercepted RDMSR and WRMSR here first.

use super::launch::Vcpu;
use super::{cpuid, rdmsr, rdtsc, vmwrite, wrmsr_for_guest};
use crate::msr::{self, MsrAnswer, MtrrShadow, TscState};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use spin::Mutex;
use x86::vmx::vmcs::control;

/// The guest's view of the MTRRs (None: the CPU has none, every MTRR access is #GP).
static MTRRS: Mutex<Option<MtrrShadow>> = Mutex::new(None);
/// Host address of the MSR bitmap all vCPUs share.
static BITMAP: AtomicU64 = AtomicU64::new(0);
/// Whether the CPU has IA32_TSC_ADJUST (CPUID.7.0:EBX[1]).
static HAS_TSC_ADJUST: AtomicBool = AtomicBool::new(false);
/// vCPUs whose TSC the guest moved (a non-zero offset): IA32_TSC_DEADLINE is intercepted
/// while there is one, and passes through again when every offset is back to zero.
static MOVED_TSCS: AtomicU32 = AtomicU32::new(0);

/// CPUID.1:EDX[12]: MTRRs.
const CPUID1_EDX_MTRR: u32 = 1 << 12;
/// CPUID.7.0:EBX[1]: IA32_TSC_ADJUST.
const CPUID7_EBX_TSC_ADJUST: u32 = 1 << 1;

/// Take the guest's view of the MTRRs from the hardware (bootstrap processor, before any
/// guest runs) and note the shared MSR bitmap.
pub fn init_global(bitmap: u64) {
    BITMAP.store(bitmap, Ordering::Release);
    if cpuid(1, 0).edx & CPUID1_EDX_MTRR != 0 {
        let phys_bits = (cpuid(0x8000_0008, 0).eax & 0xff) as u8;
        *MTRRS.lock() = Some(MtrrShadow::capture(
            rdmsr(msr::IA32_MTRRCAP),
            phys_bits,
            rdmsr,
        ));
    }
    HAS_TSC_ADJUST.store(
        cpuid(7, 0).ebx & CPUID7_EBX_TSC_ADJUST != 0,
        Ordering::Release,
    );
}

/// This vCPU's TSC state at launch: the host's TSC, IA32_TSC_ADJUST as the hardware holds it.
pub fn vcpu_tsc() -> TscState {
    let adjust = if HAS_TSC_ADJUST.load(Ordering::Acquire) {
        rdmsr(msr::IA32_TSC_ADJUST)
    } else {
        0
    };
    TscState::new(adjust)
}

/// Answer an intercepted RDMSR.
pub fn read(vcpu: &Vcpu, m: u32) -> MsrAnswer {
    if msr::is_mtrr(m) {
        return MTRRS
            .lock()
            .as_ref()
            .map_or(MsrAnswer::GeneralProtection, |s| s.read(m));
    }
    match m {
        msr::IA32_TSC_ADJUST if HAS_TSC_ADJUST.load(Ordering::Acquire) => {
            MsrAnswer::Value(vcpu.tsc.read_adjust())
        }
        msr::IA32_TSC_DEADLINE => MsrAnswer::Value(vcpu.tsc.deadline_to_guest(rdmsr(m))),
        _ => msr::read(m, rdmsr),
    }
}

/// Answer an intercepted WRMSR: `Done` when it is complete (state changed, or the hardware
/// took the value), `GeneralProtection` when the guest gets #GP.
pub fn write(vcpu: &mut Vcpu, m: u32, v: u64) -> MsrAnswer {
    if msr::is_mtrr(m) {
        return MTRRS
            .lock()
            .as_mut()
            .map_or(MsrAnswer::GeneralProtection, |s| s.write(m, v));
    }
    match m {
        msr::IA32_TSC => {
            let was_moved = vcpu.tsc.deadline_needs_intercept();
            vcpu.tsc.write_tsc(rdtsc(), v);
            tsc_moved(vcpu, was_moved);
            MsrAnswer::Done
        }
        msr::IA32_TSC_ADJUST if HAS_TSC_ADJUST.load(Ordering::Acquire) => {
            let was_moved = vcpu.tsc.deadline_needs_intercept();
            vcpu.tsc.write_adjust(v);
            tsc_moved(vcpu, was_moved);
            MsrAnswer::Done
        }
        msr::IA32_TSC_DEADLINE => hardware(m, vcpu.tsc.deadline_to_host_at(v, rdtsc())),
        msr::IA32_TSC_ADJUST => MsrAnswer::GeneralProtection,
        _ => match msr::write(m, v, rdmsr) {
            MsrAnswer::WriteThrough => hardware(m, v),
            MsrAnswer::WriteValue(x) => hardware(m, x),
            other => other,
        },
    }
}

/// Write `value` to the hardware for the guest: done, or the guest's #GP when it refuses.
fn hardware(m: u32, value: u64) -> MsrAnswer {
    if wrmsr_for_guest(m, value) {
        MsrAnswer::Done
    } else {
        MsrAnswer::GeneralProtection
    }
}

/// The guest moved this vCPU's TSC: load the new offset. While any vCPU's offset is non-zero
/// the TSC-deadline timer is converted (the local APIC compares it with the host TSC).
fn tsc_moved(vcpu: &Vcpu, was_moved: bool) {
    vmwrite(control::TSC_OFFSET_FULL, vcpu.tsc.offset());
    let moved = vcpu.tsc.deadline_needs_intercept();
    let others = match (was_moved, moved) {
        (false, true) => MOVED_TSCS.fetch_add(1, Ordering::AcqRel),
        (true, false) => MOVED_TSCS.fetch_sub(1, Ordering::AcqRel) - 1,
        _ => return,
    };
    if others == 0 {
        let bitmap = BITMAP.load(Ordering::Acquire);
        if bitmap != 0 {
            // SAFETY: the MSR bitmap is a page of Shoji's region set up by `init_global`; a
            // byte another CPU's VM entry reads concurrently sees either value, both valid.
            let page = unsafe { &mut *(bitmap as *mut [u8; 4096]) };
            msr::set_intercept(page, msr::IA32_TSC_DEADLINE, moved, moved);
        }
    }
    crate::hv_line!(
        "cpu {}: the guest {} (offset {:#x}): IA32_TSC_DEADLINE {}",
        vcpu.index,
        if moved {
            "moved its TSC"
        } else {
            "put its TSC back on the host's"
        },
        vcpu.tsc.offset(),
        if moved || others != 0 {
            "converted"
        } else {
            "passed through again"
        }
    );
}
