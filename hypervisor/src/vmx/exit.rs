//! VM-exit handling: the entry stub that saves the guest's registers, and the dispatcher that
//! answers every exit reason a guest can cause. Guest-triggerable exits never stop Shoji: they are
//! answered the way hardware would (#UD, #GP, all-ones reads), logged at a bounded rate, and the
//! guest continues. Only exits that mean Shoji itself is broken halt the CPU, with a state dump.

use super::launch::Vcpu;
use super::*;
use crate::counters::{exit_reason_name, RateLimiter};
use crate::cpuid::{guest_view, CpuidRegs};
use crate::msr::{self, MsrAnswer};
use core::arch::global_asm;
use x86::vmx::vmcs::{control, guest, ro};

/// The guest's general registers as saved by the exit stub (RSP is in the VMCS).
#[repr(C)]
#[derive(Debug, Default, Clone)]
pub struct GuestRegs {
    /// RAX.
    pub rax: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RBX.
    pub rbx: u64,
    /// RBP.
    pub rbp: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
}

impl GuestRegs {
    /// Register by the encoding used in exit qualifications (0 = RAX ... 15 = R15; 4 = RSP).
    pub fn get(&self, index: u64) -> u64 {
        match index & 15 {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            4 => vmread(guest::RSP),
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            _ => self.r15,
        }
    }
}

/// What the exit stub hands the dispatcher: the saved registers and the slot above them that
/// points at this CPU's [`Vcpu`].
#[repr(C)]
pub struct ExitFrame {
    /// Guest registers.
    pub regs: GuestRegs,
    /// This CPU's state.
    pub vcpu: *mut Vcpu,
}

/// Host RIP for the VMCS.
pub fn exit_entry_address() -> u64 {
    extern "C" {
        static shoji_vmexit_entry: u8;
    }
    // SAFETY: only the symbol's address is taken.
    unsafe { &shoji_vmexit_entry as *const u8 as u64 }
}

global_asm!(
    ".global shoji_vmexit_entry",
    "shoji_vmexit_entry:",
    "push r15",
    "push r14",
    "push r13",
    "push r12",
    "push r11",
    "push r10",
    "push r9",
    "push r8",
    "push rdi",
    "push rsi",
    "push rbp",
    "push rbx",
    "push rdx",
    "push rcx",
    "push rax",
    "mov rdi, rsp",
    "sub rsp, 8",
    "call shoji_handle_exit",
    "add rsp, 8",
    "pop rax",
    "pop rcx",
    "pop rdx",
    "pop rbx",
    "pop rbp",
    "pop rsi",
    "pop rdi",
    "pop r8",
    "pop r9",
    "pop r10",
    "pop r11",
    "pop r12",
    "pop r13",
    "pop r14",
    "pop r15",
    "vmresume",
    // VMRESUME failed: report and halt.
    "mov rdi, rsp",
    "and rsp, -16",
    "call shoji_vmresume_failed",
    "ud2",
);

/// Exit reasons (SDM Appendix C).
mod reason {
    pub const EXCEPTION_NMI: u32 = 0;
    pub const TRIPLE_FAULT: u32 = 2;
    pub const INIT: u32 = 3;
    pub const SIPI: u32 = 4;
    pub const TASK_SWITCH: u32 = 9;
    pub const CPUID: u32 = 10;
    pub const GETSEC: u32 = 11;
    pub const INVD: u32 = 13;
    pub const VMCALL: u32 = 18;
    pub const MONITOR_TRAP: u32 = 37;
    pub const INTERRUPT_WINDOW: u32 = 7;
    pub const VMCLEAR: u32 = 19;
    pub const VMXON: u32 = 27;
    pub const CR_ACCESS: u32 = 28;
    pub const IO: u32 = 30;
    pub const RDMSR: u32 = 31;
    pub const WRMSR: u32 = 32;
    pub const EPT_VIOLATION: u32 = 48;
    pub const EPT_MISCONFIG: u32 = 49;
    pub const INVEPT: u32 = 50;
    pub const INVVPID: u32 = 53;
    pub const WBINVD: u32 = 54;
    pub const XSETBV: u32 = 55;
    pub const VMFUNC: u32 = 59;
}

const VECTOR_UD: u8 = 6;
const VECTOR_GP: u8 = 13;

static GUEST_FAULT_LOG: RateLimiter = RateLimiter::new(16);
static IF_LOG: RateLimiter = RateLimiter::new(4);
/// At log level debug: the first exits, then exponentially fewer.
static EXIT_TRACE: RateLimiter = RateLimiter::new(64);

#[no_mangle]
extern "sysv64" fn shoji_handle_exit(frame: &mut ExitFrame) {
    let t0 = super::rdtsc();
    let raw_reason = vmread(ro::EXIT_REASON) as u32;
    // SAFETY: the exit stub passes the frame on this CPU's host stack with `vcpu` set at launch
    // (as in `handle_exit`); only this CPU touches its own `entered_tsc`.
    super::nic::note_round_trip(
        unsafe { (*frame.vcpu).entered_tsc },
        t0,
        raw_reason & 0xffff == super::nic::EXIT_PREEMPTION_TIMER,
    );
    handle_exit(frame, raw_reason);
    // The whole exit's cost when it served the NIC (the per-frame cost of mediation).
    let reason = raw_reason & 0xffff;
    if super::nic::active()
        && (reason == reason::EPT_VIOLATION || reason == super::nic::EXIT_PREEMPTION_TIMER)
    {
        let dt = super::rdtsc().wrapping_sub(t0);
        let nic_access = reason == reason::EPT_VIOLATION
            && super::nic::in_bar(vmread(ro::GUEST_PHYSICAL_ADDR_FULL));
        super::nic::record_whole_exit(nic_access, reason != reason::EPT_VIOLATION, dt);
    }
    // SAFETY: as above; the guest is entered right after this function returns.
    unsafe { (*frame.vcpu).entered_tsc = super::rdtsc() };
}

/// Dispatch one VM exit of `raw_reason` (the exit-reason field) and prepare the VM entry.
fn handle_exit(frame: &mut ExitFrame, raw_reason: u32) {
    // SAFETY: the exit stub passes the frame on this CPU's host stack; the slot above the saved
    // registers was set to this CPU's `Vcpu` at launch.
    let vcpu = unsafe { &mut *frame.vcpu };
    let regs = &mut frame.regs;
    let reason = raw_reason & 0xffff;
    let host_rflags: u64;
    // SAFETY: reading RFLAGS through the stack.
    unsafe { core::arch::asm!("pushfq", "pop {}", out(reg) host_rflags) };
    if host_rflags & (1 << 9) != 0 && IF_LOG.allow().is_some() {
        crate::hv_line!(
            "cpu {}: BUG: host entered with interrupts enabled (rflags {:#x}, exit {})",
            vcpu.index,
            host_rflags,
            reason
        );
    }
    vcpu.counters.record(reason);
    if log::log_enabled!(log::Level::Debug) && EXIT_TRACE.allow().is_some() {
        log::debug!(
            "cpu {}: exit {} ({}) at rip {:#x} qualification {:#x} rax {:#x} rcx {:#x}",
            vcpu.index,
            reason,
            exit_reason_name(reason),
            vmread(guest::RIP),
            vmread(ro::EXIT_QUALIFICATION),
            regs.rax,
            regs.rcx
        );
    }
    if raw_reason & (1 << 31) != 0 {
        fatal(vcpu, regs, "VM entry failed");
    }
    reinject_vectored_event();
    match reason {
        reason::CPUID => {
            let leaf = regs.rax as u32;
            let subleaf = regs.rcx as u32;
            let v = guest_view(
                leaf,
                subleaf,
                cpuid(leaf, subleaf),
                vmread(guest::CR4),
                super::nic::features(),
            );
            set_cpuid(regs, v);
            advance_rip();
        }
        reason::VMCALL => super::vmcall::handle(vcpu, regs),
        reason::VMCLEAR..=reason::VMXON
        | reason::INVEPT
        | reason::INVVPID
        | reason::VMFUNC
        | reason::GETSEC => {
            guest_fault(vcpu, regs, reason, VECTOR_UD, None);
        }
        reason::CR_ACCESS => cr_access(vcpu, regs),
        reason::RDMSR => {
            let m = regs.rcx as u32;
            match super::msrs::read(vcpu, m) {
                MsrAnswer::Value(v) => {
                    regs.rax = v & 0xffff_ffff;
                    regs.rdx = v >> 32;
                    advance_rip();
                }
                _ => guest_fault(vcpu, regs, reason, VECTOR_GP, Some(0)),
            }
        }
        reason::WRMSR => {
            let m = regs.rcx as u32;
            let v = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
            if m == super::apic::X2APIC_ICR {
                // The guest's own ICR write, performed unchanged unless Shoji consumed it; a
                // value the hardware refuses is the guest's #GP, not Shoji's halt.
                if super::apic::x2apic_icr_write(vcpu, v) || super::wrmsr_for_guest(m, v) {
                    advance_rip();
                } else {
                    guest_fault(vcpu, regs, reason, VECTOR_GP, Some(0));
                }
                return finish_exit(vcpu);
            }
            match super::msrs::write(vcpu, m, v) {
                MsrAnswer::Done => advance_rip(),
                _ => {
                    if m == msr::IA32_APIC_BASE && APIC_BASE_LOG.allow().is_some() {
                        crate::hv_line!(
                            "cpu {}: guest IA32_APIC_BASE write {:#x} refused with #GP (the local APIC may not move; it stays {:#x})",
                            vcpu.index,
                            v,
                            rdmsr(m)
                        );
                    }
                    guest_fault(vcpu, regs, reason, VECTOR_GP, Some(0))
                }
            }
        }
        reason::XSETBV => xsetbv(vcpu, regs),
        reason::INVD | reason::WBINVD => {
            // INVD would discard Shoji's own dirty lines: write back instead.
            // SAFETY: WBINVD only flushes caches.
            unsafe { core::arch::asm!("wbinvd", options(nostack)) };
            advance_rip();
        }
        reason::IO => io_access(regs),
        super::nic::EXIT_PREEMPTION_TIMER => super::nic::timer_exit(),
        reason::EPT_VIOLATION => ept_violation(vcpu, regs),
        reason::EPT_MISCONFIG => fatal(vcpu, regs, "EPT misconfiguration"),
        reason::TRIPLE_FAULT => triple_fault(vcpu, regs),
        reason::INIT => init_signal(vcpu, regs),
        reason::SIPI => sipi(vcpu, regs),
        reason::MONITOR_TRAP => super::apic::monitor_trap(),
        // The guest can take the interrupt Shoji holds for it: `finish_exit` injects it.
        reason::INTERRUPT_WINDOW => {}
        reason::EXCEPTION_NMI => {
            // Only NMIs arrive here (the exception bitmap is empty): either Shoji's INIT kick or
            // the guest's own NMI, which is handed on.
            if super::apic::take_init(vcpu) {
                init_signal(vcpu, regs);
            } else {
                inject(2, 2, None);
            }
        }
        reason::TASK_SWITCH => {
            // Hardware task switches (32-bit code only: a far CALL/JMP to a TSS, IRET with NT,
            // a task gate) always exit. Shoji does not emulate them: the guest gets #GP with the
            // new TSS's selector as the error code, as for a TSS it may not use.
            let selector = vmread(ro::EXIT_QUALIFICATION) as u32 & 0xfffc;
            guest_fault(vcpu, regs, reason, VECTOR_GP, Some(selector));
        }
        _ => fatal(vcpu, regs, "unexpected VM exit"),
    }
    // Shoji's INIT kick may have arrived as an NMI while this CPU was in host mode.
    if super::apic::take_init(vcpu) {
        init_signal(vcpu, regs);
    }
    finish_exit(vcpu);
}

/// Work done before every VM entry: deliver events that arrived while Shoji ran.
fn finish_exit(vcpu: &mut Vcpu) {
    super::nic::before_entry();
    deliver_pending_irq(vcpu);
    let pending = &super::host::NMI_PENDING[vcpu.index as usize % super::launch::MAX_CPUS];
    if pending.swap(false, core::sync::atomic::Ordering::AcqRel) {
        if vmread(control::VMENTRY_INTERRUPTION_INFO_FIELD) & (1 << 31) == 0 {
            inject(2, 2, None);
        } else {
            pending.store(true, core::sync::atomic::Ordering::Release);
        }
    }
}

/// Inject an external interrupt that arrived in host mode once the guest can take it; until
/// then, ask for an exit when its interrupt window opens.
fn deliver_pending_irq(vcpu: &mut Vcpu) {
    let window = control::PrimaryControls::INTERRUPT_WINDOW_EXITING.bits() as u64;
    let primary = vmread(control::PRIMARY_PROCBASED_EXEC_CONTROLS);
    if vcpu.pending_irq == 0 {
        if primary & window != 0 {
            vmwrite(control::PRIMARY_PROCBASED_EXEC_CONTROLS, primary & !window);
        }
        return;
    }
    let injecting = vmread(control::VMENTRY_INTERRUPTION_INFO_FIELD) & (1 << 31) != 0;
    let can_take = vmread(guest::RFLAGS) & (1 << 9) != 0
        && vmread(guest::INTERRUPTIBILITY_STATE) & 3 == 0
        && vmread(guest::ACTIVITY_STATE) <= 1;
    if !injecting && can_take {
        inject(vcpu.pending_irq, 0, None);
        vcpu.pending_irq = 0;
        if primary & window != 0 {
            vmwrite(control::PRIMARY_PROCBASED_EXEC_CONTROLS, primary & !window);
        }
    } else if primary & window == 0 {
        vmwrite(control::PRIMARY_PROCBASED_EXEC_CONTROLS, primary | window);
    }
}

fn set_cpuid(regs: &mut GuestRegs, v: CpuidRegs) {
    regs.rax = v.eax as u64;
    regs.rbx = v.ebx as u64;
    regs.rcx = v.ecx as u64;
    regs.rdx = v.edx as u64;
}

/// Skip the instruction that caused the exit.
pub fn advance_rip() {
    advance_rip_by(vmread(ro::VMEXIT_INSTRUCTION_LEN));
}

/// Skip `len` bytes of instruction (for exits whose instruction length the CPU does not report).
pub fn advance_rip_by(len: u64) {
    vmwrite(guest::RIP, vmread(guest::RIP).wrapping_add(len));
    // Executing an instruction ends blocking by STI / MOV SS.
    let intr = vmread(guest::INTERRUPTIBILITY_STATE);
    if intr & 3 != 0 {
        vmwrite(guest::INTERRUPTIBILITY_STATE, intr & !3);
    }
}

/// Inject an event at the next VM entry: `kind` 0 external, 2 NMI, 3 hardware exception.
pub fn inject(vector: u8, kind: u32, error_code: Option<u32>) {
    let mut info = vector as u32 | (kind << 8) | (1 << 31);
    if let Some(code) = error_code {
        info |= 1 << 11;
        vmwrite(control::VMENTRY_EXCEPTION_ERR_CODE, code as u64);
    }
    vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, info as u64);
}

/// If the exit interrupted the delivery of an event, deliver it again at the next entry.
fn reinject_vectored_event() {
    let info = vmread(ro::IDT_VECTORING_INFO) as u32;
    if info & (1 << 31) == 0 {
        return;
    }
    vmwrite(
        control::VMENTRY_INTERRUPTION_INFO_FIELD,
        (info & !(1 << 12)) as u64,
    );
    if info & (1 << 11) != 0 {
        vmwrite(
            control::VMENTRY_EXCEPTION_ERR_CODE,
            vmread(ro::IDT_VECTORING_ERR_CODE),
        );
    }
    let kind = (info >> 8) & 7;
    if matches!(kind, 4..=6) {
        vmwrite(
            control::VMENTRY_INSTRUCTION_LEN,
            vmread(ro::VMEXIT_INSTRUCTION_LEN),
        );
    }
}

/// Refuse a guest action as hardware would (inject `vector`), with a rate-limited log line.
fn guest_fault(vcpu: &Vcpu, _regs: &GuestRegs, reason: u32, vector: u8, error_code: Option<u32>) {
    if let Some(n) = GUEST_FAULT_LOG.allow() {
        crate::hv_line!(
            "cpu {}: guest {} at rip {:#x} cpl {} refused with vector {} (event #{})",
            vcpu.index,
            exit_reason_name(reason),
            vmread(guest::RIP),
            guest_cpl(),
            vector,
            n
        );
    }
    inject(vector, 3, error_code);
}

fn cr_access(vcpu: &mut Vcpu, regs: &mut GuestRegs) {
    let q = vmread(ro::EXIT_QUALIFICATION);
    let cr = q & 0xf;
    let access = (q >> 4) & 3;
    let value = regs.get((q >> 8) & 0xf);
    match (cr, access) {
        (0, 0) => write_cr0(vcpu, regs, value),
        (4, 0) => write_cr4(vcpu, regs, value),
        (0, 3) => {
            // LMSW: loads CR0[3:0] but cannot clear PE.
            let data = (q >> 16) & 0xf;
            let shadow = guest_cr0_view(vcpu);
            let new = (shadow & !0xe) | data | (shadow & 1);
            write_cr0(vcpu, regs, new);
        }
        _ => fatal(vcpu, regs, "unexpected control-register access"),
    }
}

/// CR0 as the guest sees it: the read shadow for the bits Shoji owns (the guest/host mask), the
/// real register for the rest. The shadow alone is stale in the bits the guest changes without
/// an exit (after a SIPI, an AP's trampoline turns on PE and PG that way).
fn guest_cr0_view(vcpu: &Vcpu) -> u64 {
    (vmread(guest::CR0) & !vcpu.cr0_mask) | (vmread(control::CR0_READ_SHADOW) & vcpu.cr0_mask)
}

/// CR4 as the guest sees it (as [`guest_cr0_view`]).
fn guest_cr4_view(vcpu: &Vcpu) -> u64 {
    (vmread(guest::CR4) & !vcpu.cr4_mask) | (vmread(control::CR4_READ_SHADOW) & vcpu.cr4_mask)
}

fn write_cr0(vcpu: &mut Vcpu, regs: &GuestRegs, value: u64) {
    // Judged as the processor would (`crate::cr`): a write it refuses is the guest's #GP, never
    // a VM entry that fails.
    const CS_L: u64 = 1 << 13;
    let ctx = crate::cr::Cr0Context {
        old: guest_cr0_view(vcpu),
        cr4: guest_cr4_view(vcpu),
        efer: vmread(guest::IA32_EFER_FULL),
        cs_long: vmread(guest::CS_ACCESS_RIGHTS) & CS_L != 0,
    };
    let crate::cr::Cr0Write::Apply { ia32e } = crate::cr::write_cr0(value, &ctx) else {
        return guest_fault(vcpu, regs, reason::CR_ACCESS, VECTOR_GP, Some(0));
    };
    if let Some(on) = ia32e {
        let entry = vmread(control::VMENTRY_CONTROLS);
        let mode = control::EntryControls::IA32E_MODE_GUEST.bits() as u64;
        if on {
            vmwrite(guest::IA32_EFER_FULL, ctx.efer | EFER_LMA);
            vmwrite(control::VMENTRY_CONTROLS, entry | mode);
        } else {
            vmwrite(guest::IA32_EFER_FULL, ctx.efer & !EFER_LMA);
            vmwrite(control::VMENTRY_CONTROLS, entry & !mode);
        }
    }
    vmwrite(guest::CR0, value | vcpu.cr0_fixed1_required);
    vmwrite(control::CR0_READ_SHADOW, value);
    advance_rip();
}

fn write_cr4(vcpu: &mut Vcpu, regs: &GuestRegs, value: u64) {
    // Hardware without VMX refuses CR4.VMXE, and every CPU refuses reserved bits.
    if value & CR4_VMXE != 0 || value & !(vcpu.cr4_allowed | vcpu.cr4_required) != 0 {
        return guest_fault(vcpu, regs, reason::CR_ACCESS, VECTOR_GP, Some(0));
    }
    vmwrite(guest::CR4, value | vcpu.cr4_required);
    vmwrite(control::CR4_READ_SHADOW, value);
    advance_rip();
}

fn xsetbv(vcpu: &mut Vcpu, regs: &mut GuestRegs) {
    let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
    let supported = {
        let r = cpuid(0xd, 0);
        ((r.edx as u64) << 32) | r.eax as u64
    };
    let x87 = 1u64;
    let sse = 1 << 1;
    let avx = 1 << 2;
    let mpx = 3 << 3;
    let avx512 = 7 << 5;
    let valid = regs.rcx as u32 == 0
        && value & x87 != 0
        && value & !supported == 0
        && (value & avx == 0 || value & sse != 0)
        && (value & mpx == 0 || value & mpx == mpx)
        && (value & avx512 == 0 || (value & avx512 == avx512 && value & avx != 0));
    if !valid {
        return guest_fault(vcpu, regs, reason::XSETBV, VECTOR_GP, Some(0));
    }
    // SAFETY: the value was validated against the CPU's supported features and the
    // architectural dependencies, so XSETBV cannot fault.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
    advance_rip();
}

/// The guest touched a trapped I/O port: Shoji's log UART. The guest sees an idle UART that
/// discards what it is given (line status: transmitter empty, no data), so firmware consoles
/// that already use the port keep working and nothing the guest writes reaches Shoji's log.
fn io_access(regs: &mut GuestRegs) {
    let q = vmread(ro::EXIT_QUALIFICATION);
    let size = (q & 7) + 1;
    let is_in = q & (1 << 3) != 0;
    let string = q & (1 << 4) != 0;
    let rep = q & (1 << 5) != 0;
    let port = (q >> 16) as u16;
    if !string && super::nic::io_access(regs, port, size as u8, is_in) {
        advance_rip();
        return;
    }
    if is_in && !string {
        let base = super::launch::GLOBAL.get().map(|g| g.log_port).unwrap_or(0);
        let value = idle_uart_read(port.wrapping_sub(base));
        let mask = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        regs.rax = if size == 4 {
            value & mask
        } else {
            (regs.rax & !mask) | (value & mask)
        };
    }
    if string && rep {
        regs.rcx = 0;
    }
    advance_rip();
}

/// Register values of an idle 16550 that has sent everything and received nothing.
fn idle_uart_read(offset: u16) -> u64 {
    const LSR: u16 = 5;
    const LSR_THR_EMPTY: u64 = 0x20;
    const LSR_TX_EMPTY: u64 = 0x40;
    match offset {
        LSR => LSR_THR_EMPTY | LSR_TX_EMPTY,
        _ => 0,
    }
}

static EPT_LOG: RateLimiter = RateLimiter::new(16);
static APIC_BASE_LOG: RateLimiter = RateLimiter::new(16);

fn ept_violation(vcpu: &mut Vcpu, regs: &mut GuestRegs) {
    let gpa = vmread(ro::GUEST_PHYSICAL_ADDR_FULL);
    let q = vmread(ro::EXIT_QUALIFICATION);
    // Device pages Shoji mediates are completed by emulating the access (each device module
    // checks whether the address is its own).
    let apic_page = super::apic::TRAPPED_PAGE.load(core::sync::atomic::Ordering::Acquire);
    let on_apic = apic_page != 0 && gpa & !0xfff == apic_page;
    let gpa = if on_apic || super::nic::in_bar(gpa) || super::nic::in_config_page(gpa) {
        super::mmio::operand_gpa(gpa, regs)
    } else {
        gpa
    };
    if on_apic {
        super::apic::trapped_write(vcpu, regs, gpa);
        return;
    }
    if super::nic::ept_violation(regs, gpa) {
        return;
    }
    if let Some(n) = EPT_LOG.allow() {
        crate::hv_line!(
            "cpu {}: guest access to {:#x} (qualification {:#x}) at rip {:#x} refused with #GP (event #{})",
            vcpu.index,
            gpa,
            q,
            vmread(guest::RIP),
            n
        );
    }
    inject(VECTOR_GP, 3, Some(0));
    let _ = regs;
}

fn triple_fault(vcpu: &mut Vcpu, regs: &mut GuestRegs) {
    dump(vcpu, regs, "guest triple fault: resetting the machine");
    // SAFETY: resetting the platform through the reset control register and the keyboard
    // controller is the architectural response to a triple fault.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") 0xcf9u16, in("al") 0x06u8, options(nostack));
        core::arch::asm!("out dx, al", in("dx") 0x64u16, in("al") 0xfeu8, options(nostack));
    }
    halt_forever();
}

fn init_signal(vcpu: &mut Vcpu, regs: &mut GuestRegs) {
    if super::apic::MEDIATING.load(core::sync::atomic::Ordering::Acquire) {
        crate::hv_line!("cpu {}: INIT: held in Shoji until a SIPI", vcpu.index);
        let vector = super::apic::wait_for_sipi(vcpu);
        start_at_sipi(vcpu, regs, vector as u64);
        return;
    }
    if !vcpu.wait_for_sipi {
        dump(
            vcpu,
            regs,
            "INIT received but wait-for-SIPI is unsupported: holding this CPU",
        );
        halt_forever();
    }
    crate::hv_line!("cpu {}: INIT: waiting for SIPI", vcpu.index);
    vmwrite(guest::ACTIVITY_STATE, 3);
}

fn sipi(vcpu: &mut Vcpu, regs: &mut GuestRegs) {
    let vector = vmread(ro::EXIT_QUALIFICATION) & 0xff;
    start_at_sipi(vcpu, regs, vector);
}

/// Put the CPU in the architectural post-SIPI state: real mode at `vector` << 12.
fn start_at_sipi(vcpu: &mut Vcpu, regs: &mut GuestRegs, vector: u64) {
    crate::hv_line!(
        "cpu {}: SIPI vector {:#x}: starting at {:#x}",
        vcpu.index,
        vector,
        vector << 12
    );
    *regs = GuestRegs::default();
    regs.rdx = cpuid(1, 0).eax as u64;
    let real_data = |sel, base, limit, ar| {
        vmwrite(sel, 0);
        vmwrite(base, 0);
        vmwrite(limit, 0xffff);
        vmwrite(ar, 0x93);
    };
    vmwrite(guest::CS_SELECTOR, vector << 8);
    vmwrite(guest::CS_BASE, vector << 12);
    vmwrite(guest::CS_LIMIT, 0xffff);
    vmwrite(guest::CS_ACCESS_RIGHTS, 0x9b);
    real_data(
        guest::SS_SELECTOR,
        guest::SS_BASE,
        guest::SS_LIMIT,
        guest::SS_ACCESS_RIGHTS,
    );
    real_data(
        guest::DS_SELECTOR,
        guest::DS_BASE,
        guest::DS_LIMIT,
        guest::DS_ACCESS_RIGHTS,
    );
    real_data(
        guest::ES_SELECTOR,
        guest::ES_BASE,
        guest::ES_LIMIT,
        guest::ES_ACCESS_RIGHTS,
    );
    real_data(
        guest::FS_SELECTOR,
        guest::FS_BASE,
        guest::FS_LIMIT,
        guest::FS_ACCESS_RIGHTS,
    );
    real_data(
        guest::GS_SELECTOR,
        guest::GS_BASE,
        guest::GS_LIMIT,
        guest::GS_ACCESS_RIGHTS,
    );
    vmwrite(guest::TR_SELECTOR, 0);
    vmwrite(guest::TR_BASE, 0);
    vmwrite(guest::TR_LIMIT, 0xffff);
    vmwrite(guest::TR_ACCESS_RIGHTS, 0x8b);
    vmwrite(guest::LDTR_SELECTOR, 0);
    vmwrite(guest::LDTR_BASE, 0);
    vmwrite(guest::LDTR_LIMIT, 0xffff);
    vmwrite(guest::LDTR_ACCESS_RIGHTS, 0x82);
    vmwrite(guest::GDTR_BASE, 0);
    vmwrite(guest::GDTR_LIMIT, 0xffff);
    vmwrite(guest::IDTR_BASE, 0);
    vmwrite(guest::IDTR_LIMIT, 0xffff);
    let cr0_reset = 0x6000_0010u64;
    vmwrite(guest::CR0, cr0_reset | vcpu.cr0_fixed1_required);
    vmwrite(control::CR0_READ_SHADOW, cr0_reset);
    vmwrite(guest::CR3, 0);
    vmwrite(guest::CR4, vcpu.cr4_required);
    vmwrite(control::CR4_READ_SHADOW, 0);
    vmwrite(guest::DR7, 0x400);
    vmwrite(guest::RSP, 0);
    vmwrite(guest::RIP, 0);
    vmwrite(guest::RFLAGS, 2);
    vmwrite(guest::IA32_EFER_FULL, 0);
    vmwrite(guest::IA32_PAT_FULL, 0x0007_0406_0007_0406);
    vmwrite(guest::IA32_SYSENTER_CS, 0);
    vmwrite(guest::IA32_SYSENTER_ESP, 0);
    vmwrite(guest::IA32_SYSENTER_EIP, 0);
    vmwrite(guest::INTERRUPTIBILITY_STATE, 0);
    vmwrite(guest::PENDING_DBG_EXCEPTIONS, 0);
    let entry = vmread(control::VMENTRY_CONTROLS);
    vmwrite(
        control::VMENTRY_CONTROLS,
        entry & !(control::EntryControls::IA32E_MODE_GUEST.bits() as u64),
    );
    vmwrite(guest::ACTIVITY_STATE, 0);
}

/// Write the guest's full state to Shoji's log.
pub fn dump(vcpu: &Vcpu, regs: &GuestRegs, why: &str) {
    let w = |a: core::fmt::Arguments<'_>| crate::log::write_line_forced(a);
    w(format_args!("cpu {}: {}", vcpu.index, why));
    w(format_args!(
        "  exit reason {:#x} ({}) qualification {:#x} instruction error {} guest-physical {:#x} linear {:#x}",
        vmread(ro::EXIT_REASON),
        exit_reason_name(vmread(ro::EXIT_REASON) as u32 & 0xffff),
        vmread(ro::EXIT_QUALIFICATION),
        vmread(ro::VM_INSTRUCTION_ERROR),
        vmread(ro::GUEST_PHYSICAL_ADDR_FULL),
        vmread(ro::GUEST_LINEAR_ADDR)
    ));
    w(format_args!(
        "  rip {:#x} rsp {:#x} rflags {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} activity {} interruptibility {:#x}",
        vmread(guest::RIP),
        vmread(guest::RSP),
        vmread(guest::RFLAGS),
        vmread(guest::CR0),
        vmread(guest::CR3),
        vmread(guest::CR4),
        vmread(guest::IA32_EFER_FULL),
        vmread(guest::ACTIVITY_STATE),
        vmread(guest::INTERRUPTIBILITY_STATE)
    ));
    w(format_args!(
        "  cs {:#x}/{:#x}/{:#x} ss {:#x}/{:#x} ds {:#x} tr {:#x}/{:#x} gdtr {:#x}+{:#x} idtr {:#x}+{:#x} idt-vectoring {:#x} entry-intr {:#x}",
        vmread(guest::CS_SELECTOR),
        vmread(guest::CS_BASE),
        vmread(guest::CS_ACCESS_RIGHTS),
        vmread(guest::SS_SELECTOR),
        vmread(guest::SS_ACCESS_RIGHTS),
        vmread(guest::DS_SELECTOR),
        vmread(guest::TR_SELECTOR),
        vmread(guest::TR_ACCESS_RIGHTS),
        vmread(guest::GDTR_BASE),
        vmread(guest::GDTR_LIMIT),
        vmread(guest::IDTR_BASE),
        vmread(guest::IDTR_LIMIT),
        vmread(ro::IDT_VECTORING_INFO),
        vmread(control::VMENTRY_INTERRUPTION_INFO_FIELD)
    ));
    w(format_args!(
        "  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x} r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}",
        regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.r8, regs.r9,
        regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15
    ));
    log_counters(vcpu);
}

/// Write this CPU's exit counters to Shoji's log as `exits cpuN: reason=count ...`.
pub fn log_counters(vcpu: &Vcpu) {
    let mut line: heapless::String<1024> = heapless::String::new();
    use core::fmt::Write;
    let _ = write!(
        line,
        "exits cpu{}: total={}",
        vcpu.index,
        vcpu.counters.total()
    );
    for (reason, count) in vcpu.counters.nonzero() {
        let _ = write!(line, " {}={}", exit_reason_name(reason), count);
    }
    crate::log::write_line(format_args!("{}", line));
}

/// Shoji's own state is broken: dump and stop this CPU.
fn fatal(vcpu: &Vcpu, regs: &GuestRegs, why: &str) -> ! {
    dump(vcpu, regs, why);
    crate::log::write_line_forced(format_args!("FATAL: cpu {} halted", vcpu.index));
    halt_forever()
}

#[no_mangle]
extern "sysv64" fn shoji_vmresume_failed(regs: &GuestRegs) -> ! {
    crate::log::write_line_forced(format_args!(
        "FATAL: VMRESUME failed, VM-instruction error {} rip {:#x}; registers {:x?}",
        vmread(ro::VM_INSTRUCTION_ERROR),
        vmread(guest::RIP),
        regs
    ));
    halt_forever()
}

/// Stop this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: halting with interrupts disabled only stops this CPU.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
