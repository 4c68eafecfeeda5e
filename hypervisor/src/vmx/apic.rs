//! Start-up IPIs for virtualized application processors.
//!
//! An INIT sent to a CPU in VMX non-root mode causes a VM exit, and the architectural answer is
//! to park the CPU in the wait-for-SIPI activity state. Not every platform delivers SIPIs to a
//! parked guest (Bochs does not; nested hypervisors under KVM cannot), so Shoji mediates the
//! start-up protocol itself: when more than one CPU runs under Shoji, the guest's writes to the
//! local APIC's interrupt command register (the xAPIC page, or the x2APIC ICR MSR) exit. INITs go
//! to the hardware as usual; the target AP takes its INIT exit and waits in Shoji's host mode,
//! where INIT is blocked and the guest can never run it natively. A SIPI aimed at a waiting AP
//! is delivered by Shoji: the AP leaves the host loop and enters real mode at the SIPI vector.
//! Every other APIC write is performed unchanged.

use super::exit::{advance_rip_by, GuestRegs};
use super::launch::{Vcpu, MAX_CPUS, VCPUS};
use super::{vmread, vmwrite};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use x86::vmx::vmcs::control::{self, PrimaryControls};

/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: u32 = 0x1b;
/// The x2APIC interrupt command register MSR.
pub const X2APIC_ICR: u32 = 0x830;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const MODE_SIPI: u64 = 6;
const MODE_INIT: u64 = 5;

/// Physical page of the xAPIC registers Shoji traps (0 = not trapped).
pub static TRAPPED_PAGE: AtomicU64 = AtomicU64::new(0);
/// Whether start-up IPIs are mediated (more than one CPU under Shoji).
pub static MEDIATING: AtomicBool = AtomicBool::new(false);

/// Per-CPU start-up state.
pub struct StartupState {
    /// The CPU's APIC id.
    pub apic_id: AtomicU32,
    /// Set while the CPU waits in host mode after an INIT.
    pub waiting: AtomicBool,
    /// A delivered SIPI vector plus one (0 = none).
    pub sipi: AtomicU32,
    /// An INIT Shoji delivers: the CPU is kicked out of the guest with an NMI and parks.
    pub init: AtomicBool,
}

impl StartupState {
    /// Not waiting, no SIPI.
    pub const fn new() -> Self {
        StartupState {
            apic_id: AtomicU32::new(u32::MAX),
            waiting: AtomicBool::new(false),
            sipi: AtomicU32::new(0),
            init: AtomicBool::new(false),
        }
    }
}

impl Default for StartupState {
    fn default() -> Self {
        Self::new()
    }
}

/// Start-up state by CPU index.
pub static STARTUP: [StartupState; MAX_CPUS] = [const { StartupState::new() }; MAX_CPUS];

/// This CPU's APIC id (x2APIC id from CPUID leaf 0xB when present, else the initial xAPIC id).
pub fn current_apic_id() -> u32 {
    if super::cpuid(0, 0).eax >= 0xb {
        let r = super::cpuid(0xb, 0);
        if r.ebx != 0 {
            return r.edx;
        }
    }
    super::cpuid(1, 0).ebx >> 24
}

/// Which CPUs an ICR value addresses: (shorthand, destination APIC id).
fn targets(icr_low: u64, dest: u32, sender: u32) -> impl Iterator<Item = usize> {
    let shorthand = (icr_low >> 18) & 3;
    (0..MAX_CPUS).filter(move |&i| {
        let id = STARTUP[i].apic_id.load(Ordering::Acquire);
        id != u32::MAX
            && match shorthand {
                0 => id == dest || dest == 0xff || dest == u32::MAX,
                1 => id == sender,
                2 => true,
                _ => id != sender,
            }
    })
}

/// Whether every CPU the boot application announced runs under Shoji: from then on no SIPI
/// reaches the hardware, so no CPU can ever be started outside Shoji.
fn sealed() -> bool {
    let expected = super::launch::setup()
        .map(|s| s.cpu_count as usize)
        .unwrap_or(1);
    VCPUS.iter().filter(|v| v.lock().is_some()).count() >= expected
}

/// Handle a write of `icr_low` (with destination `dest`) by the CPU `sender_apic`. Returns true
/// when Shoji consumed the write, false when it must go to the hardware.
fn mediate_icr(icr_low: u64, dest: u32, sender_apic: u32) -> bool {
    let mode = (icr_low >> 8) & 7;
    let sealed = sealed();
    match mode {
        MODE_INIT => {
            let assert = icr_low & (1 << 14) != 0;
            let shorthand = (icr_low >> 18) & 3;
            let mut native = false;
            let mut matched = 0;
            for i in targets(icr_low, dest, sender_apic) {
                matched += 1;
                if VCPUS[i].lock().is_none() {
                    native = true;
                } else if assert && !STARTUP[i].waiting.load(Ordering::Acquire) {
                    // The CPU runs under Shoji: a hardware INIT must never reach it. Park it via
                    // an NMI exit instead. (A CPU already waiting for a SIPI stays waiting, as
                    // in wait-for-SIPI an INIT changes nothing: no kick, which it would
                    // otherwise take as a second INIT right after the SIPI that starts it.)
                    STARTUP[i].init.store(true, Ordering::Release);
                    send_nmi(STARTUP[i].apic_id.load(Ordering::Acquire));
                }
            }
            // A CPU Shoji does not know yet (physical destination matched nobody, or a
            // broadcast) is being started by the boot application.
            if (shorthand == 0 && matched == 0) || shorthand >= 2 {
                native = true;
            }
            // INITs for CPUs not yet under Shoji (the boot application starting them) go to the
            // hardware; afterwards none does.
            sealed || !native
        }
        MODE_SIPI => {
            for i in targets(icr_low, dest, sender_apic) {
                let s = &STARTUP[i];
                // A SIPI to a virtualized CPU that is not waiting is ignored, as hardware ignores
                // a SIPI outside the wait-for-SIPI state.
                if s.waiting.load(Ordering::Acquire) {
                    s.sipi
                        .store(((icr_low & 0xff) as u32) + 1, Ordering::Release);
                }
            }
            // While the boot application is still starting CPUs, SIPIs for them go to the
            // hardware (CPUs already under Shoji ignore a hardware SIPI). Afterwards none does.
            sealed
        }
        _ => false,
    }
}

/// Send an NMI to the CPU with APIC id `apic_id` (from host mode).
fn send_nmi(apic_id: u32) {
    const NMI: u64 = 4 << 8;
    const ASSERT: u64 = 1 << 14;
    let x2apic = super::rdmsr(IA32_APIC_BASE) & (1 << 10) != 0;
    if x2apic {
        // SAFETY: an NMI IPI through the x2APIC ICR; Shoji's NMI exit handler receives it.
        unsafe { super::wrmsr(X2APIC_ICR, ((apic_id as u64) << 32) | NMI | ASSERT) };
    } else {
        let page = TRAPPED_PAGE.load(Ordering::Acquire);
        // SAFETY: programming this CPU's local APIC ICR (high then low) to send an NMI; the
        // guest's own ICR high value is the same destination it just wrote.
        unsafe {
            core::ptr::write_volatile((page + ICR_HIGH) as *mut u32, apic_id << 24);
            core::ptr::write_volatile((page + ICR_LOW) as *mut u32, (NMI | ASSERT) as u32);
        }
    }
}

/// An NMI exit on `vcpu`: true when it was Shoji's INIT kick (the CPU is then parked until a
/// SIPI and started), false when the NMI belongs to the guest.
pub fn take_init(vcpu: &Vcpu) -> bool {
    STARTUP[vcpu.index as usize % MAX_CPUS]
        .init
        .swap(false, Ordering::AcqRel)
}

/// EPT pointer of the alternate EPT in which the xAPIC page is writable (0 = none).
pub static STEP_EPTP: AtomicU64 = AtomicU64::new(0);

/// A guest write hit the write-trapped xAPIC page at `gpa`. A SIPI Shoji delivers itself is
/// consumed (the instruction is skipped); every other write is executed by the guest itself,
/// for exactly one instruction, under an alternate EPT in which the page is writable (monitor
/// trap flag), so the local APIC sees the guest's own access and Shoji never writes it.
pub fn trapped_write(vcpu: &Vcpu, regs: &mut GuestRegs, gpa: u64) {
    if log::log_enabled!(log::Level::Debug) && APIC_TRACE.allow().is_some() {
        log::debug!(
            "cpu {}: xAPIC write at offset {:#x} (rip {:#x}, decode {})",
            vcpu.index,
            gpa & 0xfff,
            vmread(x86::vmx::vmcs::guest::RIP),
            match super::mmio::decode_current() {
                Ok(a) => match a.write_value(&regs.to_array()) {
                    Some(_) => "ok",
                    None => "not a write",
                },
                Err(_) => "FAILED",
            }
        );
    }
    if gpa & 0xfff == ICR_LOW {
        if let Ok(access) = super::mmio::decode_current() {
            if let Some(value) = access.write_value(&regs.to_array()) {
                let page = TRAPPED_PAGE.load(Ordering::Acquire);
                // SAFETY: reading ICR high of this CPU's local APIC has no side effects.
                let dest =
                    unsafe { core::ptr::read_volatile((page + ICR_HIGH) as *const u32) } >> 24;
                let sender = STARTUP[vcpu.index as usize % MAX_CPUS]
                    .apic_id
                    .load(Ordering::Acquire);
                let consumed = mediate_icr(value, dest, sender);
                if (value >> 8) & 7 >= MODE_INIT {
                    log::info!(
                        "cpu {}: {} IPI (icr {:#x}) to apic {} {}",
                        vcpu.index,
                        if (value >> 8) & 7 == MODE_SIPI {
                            "start-up"
                        } else {
                            "INIT"
                        },
                        value,
                        dest,
                        if consumed {
                            "delivered by Shoji"
                        } else {
                            "sent by the hardware"
                        }
                    );
                }
                if consumed {
                    advance_rip_by(access.len as u64);
                    return;
                }
            }
        }
    }
    let alt = STEP_EPTP.load(Ordering::Acquire);
    if alt == 0 {
        // No monitor trap flag: perform the guest's write here instead.
        super::mmio::emulate(regs, gpa, |is_write, width, value| {
            if is_write {
                write_register(gpa, width, value);
                0
            } else {
                // SAFETY: reading a register of this CPU's local APIC, as the guest asked.
                unsafe { core::ptr::read_volatile(gpa as *const u32) as u64 }
            }
        });
        return;
    }
    vmwrite(control::EPTP_FULL, alt);
    let primary = vmread(control::PRIMARY_PROCBASED_EXEC_CONTROLS);
    vmwrite(
        control::PRIMARY_PROCBASED_EXEC_CONTROLS,
        primary | PrimaryControls::MONITOR_TRAP_FLAG.bits() as u64,
    );
}

fn write_register(gpa: u64, width: u8, value: u64) {
    // SAFETY: the guest's own write to its local APIC, performed unchanged at the same width on
    // the same register.
    unsafe {
        match width {
            1 => core::ptr::write_volatile(gpa as *mut u8, value as u8),
            2 => core::ptr::write_volatile(gpa as *mut u16, value as u16),
            _ => core::ptr::write_volatile(gpa as *mut u32, value as u32),
        }
    }
}

/// At log level debug: the first xAPIC writes and single steps, then exponentially fewer.
static APIC_TRACE: crate::counters::RateLimiter = crate::counters::RateLimiter::new(256);

/// The single step of [`trapped_write`] is done: back to the normal EPT.
pub fn monitor_trap() {
    if log::log_enabled!(log::Level::Debug) && APIC_TRACE.allow().is_some() {
        log::debug!(
            "xAPIC write single-stepped, back at rip {:#x}",
            vmread(x86::vmx::vmcs::guest::RIP)
        );
    }
    if let Some(g) = super::launch::GLOBAL.get() {
        vmwrite(control::EPTP_FULL, g.ept.eptp());
    }
    let primary = vmread(control::PRIMARY_PROCBASED_EXEC_CONTROLS);
    vmwrite(
        control::PRIMARY_PROCBASED_EXEC_CONTROLS,
        primary & !(PrimaryControls::MONITOR_TRAP_FLAG.bits() as u64),
    );
}

/// A guest WRMSR to the x2APIC ICR: true when Shoji consumed it.
pub fn x2apic_icr_write(vcpu: &Vcpu, value: u64) -> bool {
    let sender = STARTUP[vcpu.index as usize % MAX_CPUS]
        .apic_id
        .load(Ordering::Acquire);
    mediate_icr(value & 0xffff_ffff, (value >> 32) as u32, sender)
}

/// After an INIT exit: wait in host mode until Shoji delivers a SIPI; returns its vector.
pub fn wait_for_sipi(vcpu: &Vcpu) -> u8 {
    let s = &STARTUP[vcpu.index as usize % MAX_CPUS];
    s.sipi.store(0, Ordering::Release);
    s.waiting.store(true, Ordering::Release);
    let v = loop {
        let v = s.sipi.swap(0, Ordering::AcqRel);
        if v != 0 {
            break v - 1;
        }
        core::hint::spin_loop();
    };
    s.waiting.store(false, Ordering::Release);
    // An INIT kick that raced with this wait was answered by it: the SIPI starts the CPU.
    s.init.store(false, Ordering::Release);
    v as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthands_select_targets() {
        STARTUP[60].apic_id.store(7, Ordering::Release);
        STARTUP[61].apic_id.store(9, Ordering::Release);
        let sel = |low: u64, dest: u32, sender: u32| {
            targets(low, dest, sender)
                .filter(|i| *i >= 60)
                .collect::<heapless::Vec<usize, 4>>()
        };
        assert_eq!(sel(0, 9, 7).as_slice(), &[61]);
        assert_eq!(sel(1 << 18, 0, 7).as_slice(), &[60]);
        assert_eq!(sel(2 << 18, 0, 7).as_slice(), &[60, 61]);
        assert_eq!(sel(3 << 18, 0, 7).as_slice(), &[61]);
        // Fixed interrupts go to the hardware.
        assert!(!mediate_icr(0x30, 9, 7));
        // A SIPI reaches a waiting CPU's slot.
        STARTUP[61].waiting.store(true, Ordering::Release);
        let _ = mediate_icr((MODE_SIPI << 8) | 0x87, 9, 7);
        assert_eq!(STARTUP[61].sipi.swap(0, Ordering::AcqRel), 0x88);
        STARTUP[61].waiting.store(false, Ordering::Release);
        STARTUP[60].apic_id.store(u32::MAX, Ordering::Release);
        STARTUP[61].apic_id.store(u32::MAX, Ordering::Release);
    }
}
