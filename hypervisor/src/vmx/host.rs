//! Host-mode descriptor tables: Shoji's GDT and TSS (one per CPU) and its IDT, all in Shoji's
//! reserved memory. An exception in host mode is Shoji's own fault: it is dumped and the CPU
//! halts. An NMI in host mode is remembered and re-injected into the guest at the next entry.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

/// Host code segment selector.
pub const HOST_CS: u16 = 0x08;
/// Host data segment selector.
pub const HOST_DS: u16 = 0x10;
/// Host task register selector.
pub const HOST_TR: u16 = 0x18;

/// A 64-bit TSS (only its size matters: Shoji uses no IST stacks and no I/O map).
#[repr(C, packed)]
pub struct Tss {
    bytes: [u8; 104],
}

/// One CPU's GDT: null, code, data, TSS (two slots).
#[repr(C, align(16))]
pub struct Gdt {
    /// The descriptors.
    pub entries: [u64; 5],
}

impl Gdt {
    /// Fill the GDT for a TSS at `tss` (physical = virtual in Shoji's identity map).
    pub fn fill(&mut self, tss: u64) {
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        self.entries[0] = 0;
        self.entries[1] = 0x00af_9a00_0000_ffff; // 64-bit code, DPL 0
        self.entries[2] = 0x00cf_9200_0000_ffff; // data, DPL 0
        self.entries[3] = (limit & 0xffff)
            | ((tss & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit available TSS
            | (((tss >> 24) & 0xff) << 56);
        self.entries[4] = tss >> 32;
    }
}

/// The IDT: 256 interrupt gates pointing at the stubs below.
#[repr(C, align(16))]
pub struct Idt {
    /// Gate descriptors, two quadwords each.
    pub gates: [[u64; 2]; 256],
}

extern "C" {
    static shoji_host_vectors: u8;
}

impl Idt {
    /// Point every gate at its stub.
    pub fn fill(&mut self) {
        // SAFETY: only the address of the assembly symbol is taken.
        let base = unsafe { &shoji_host_vectors as *const u8 as u64 };
        for (v, gate) in self.gates.iter_mut().enumerate() {
            let handler = base + v as u64 * 16;
            gate[0] = (handler & 0xffff)
                | ((HOST_CS as u64) << 16)
                | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
                | (((handler >> 16) & 0xffff) << 48);
            gate[1] = handler >> 32;
        }
    }
}

/// Registers saved by the host exception stubs.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    /// General registers in push order (rax first).
    pub gprs: [u64; 15],
    /// Vector number (sign-extended by the push; use the low byte).
    pub vector: u64,
    /// Error code (0 if the exception has none).
    pub error_code: u64,
    /// Interrupted RIP.
    pub rip: u64,
    /// Interrupted CS.
    pub cs: u64,
    /// Interrupted RFLAGS.
    pub rflags: u64,
    /// Interrupted RSP.
    pub rsp: u64,
    /// Interrupted SS.
    pub ss: u64,
}

/// Per CPU: set when a guest NMI arrived while the CPU ran host code; the exit path re-injects it.
pub static NMI_PENDING: [AtomicBool; super::launch::MAX_CPUS] =
    [const { AtomicBool::new(false) }; super::launch::MAX_CPUS];

#[no_mangle]
extern "sysv64" fn shoji_host_exception(frame: &mut ExceptionFrame) {
    let vector = frame.vector & 0xff;
    if vector == 2 {
        // Shoji's INIT kick (see `apic`) is taken at the end of the current exit; any other NMI
        // belongs to the guest and is re-injected there.
        let vcpu = super::rdmsr(super::IA32_GS_BASE) as *const super::launch::Vcpu;
        // SAFETY: the host GS base of every CPU points at its own `Vcpu` (set at launch).
        let index = if vcpu.is_null() {
            0
        } else {
            unsafe { (*vcpu).index as usize }
        };
        if !super::apic::STARTUP[index % super::launch::MAX_CPUS]
            .init
            .load(Ordering::Acquire)
        {
            NMI_PENDING[index % super::launch::MAX_CPUS].store(true, Ordering::Release);
        }
        return;
    }
    if vector >= 32 {
        // An external interrupt reached host code (some platforms deliver one right after Shoji
        // forwards a local-APIC write). It belongs to the guest: remember it, inject it at the
        // next VM entry, and go on with interrupts off.
        let vcpu = super::rdmsr(super::IA32_GS_BASE) as *mut super::launch::Vcpu;
        if !vcpu.is_null() {
            // SAFETY: the host GS base of every CPU points at its own `Vcpu` (set at launch).
            unsafe { (*vcpu).pending_irq = vector as u8 };
        }
        frame.rflags &= !(1 << 9);
        return;
    }
    if vector == 13 && frame.rip == shoji_wrmsr_safe_insn as *const () as u64 {
        // A guest value the hardware refused in `wrmsr_for_guest`: resume at its fix-up, which
        // reports the failure (the caller injects #GP into the guest).
        frame.rip = shoji_wrmsr_safe_fixup as *const () as u64;
        return;
    }
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    crate::log::write_line_forced(format_args!(
        "FATAL: host exception vector {} error {:#x} at rip {:#x} rsp {:#x} cr2 {:#x} rflags {:#x} on apic {}",
        vector,
        frame.error_code,
        frame.rip,
        frame.rsp,
        cr2,
        frame.rflags,
        super::apic::current_apic_id()
    ));
    crate::log::write_line_forced(format_args!("FATAL: host registers {:x?}", frame.gprs));
    super::exit::halt_forever();
}

extern "C" {
    fn shoji_wrmsr_safe_insn();
    fn shoji_wrmsr_safe_fixup();
}

// WRMSR_SAFE: `shoji_wrmsr_safe` writes MSR ECX with the value in RAX (all 64 bits) and returns
// RAX = 0; if the WRMSR raises #GP, the exception handler resumes at the fix-up, which returns
// RAX = 1. Clobbers RDX.
global_asm!(
    ".global shoji_wrmsr_safe",
    ".global shoji_wrmsr_safe_insn",
    ".global shoji_wrmsr_safe_fixup",
    "shoji_wrmsr_safe:",
    "mov rdx, rax",
    "shr rdx, 32",
    "shoji_wrmsr_safe_insn:",
    "wrmsr",
    "xor eax, eax",
    "ret",
    "shoji_wrmsr_safe_fixup:",
    "mov eax, 1",
    "ret",
);

// Vector stubs: 16 bytes each. Vectors without a CPU-pushed error code push a zero so every frame
// has the same layout.
global_asm!(
    ".global shoji_host_vectors",
    ".p2align 4",
    "shoji_host_vectors:",
    ".set vec, 0",
    ".rept 256",
    ".p2align 4",
    ".if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)",
    ".else",
    "push 0",
    ".endif",
    "push vec",
    "jmp shoji_host_exception_common",
    ".set vec, vec + 1",
    ".endr",
    "shoji_host_exception_common:",
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
    "mov rbx, rsp",
    "and rsp, -16",
    "call shoji_host_exception",
    "mov rsp, rbx",
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
    "add rsp, 16",
    "iretq",
);
