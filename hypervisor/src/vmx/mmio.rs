//! Completing a trapped memory access (an EPT violation on a page Shoji mediates): fetch the
//! faulting instruction through the guest's page tables, decode it, let the device model answer,
//! write the result back into the guest's registers and step over the instruction. An instruction
//! Shoji cannot emulate is refused with #UD, as a device access the CPU cannot complete would be,
//! and logged at a bounded rate.

use super::exit::{advance_rip_by, inject, GuestRegs};
use super::vmread;
use crate::counters::RateLimiter;
use crate::guest::{address_space, fetch_instruction, GuestRam};
use shoji_drivers_e1000::mmio_insn::{self, MmioAccess, SegmentBases};
use x86::vmx::vmcs::guest;

static REFUSED_LOG: RateLimiter = RateLimiter::new(16);

impl GuestRegs {
    /// The registers in encoding order (RSP from the VMCS).
    pub fn to_array(&self) -> [u64; 16] {
        [
            self.rax,
            self.rcx,
            self.rdx,
            self.rbx,
            vmread(guest::RSP),
            self.rbp,
            self.rsi,
            self.rdi,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
        ]
    }

    /// Store registers from encoding order (RSP back into the VMCS if it changed).
    pub fn set_from_array(&mut self, a: &[u64; 16]) {
        self.rax = a[0];
        self.rcx = a[1];
        self.rdx = a[2];
        self.rbx = a[3];
        if a[4] != vmread(guest::RSP) {
            super::vmwrite(guest::RSP, a[4]);
        }
        self.rbp = a[5];
        self.rsi = a[6];
        self.rdi = a[7];
        self.r8 = a[8];
        self.r9 = a[9];
        self.r10 = a[10];
        self.r11 = a[11];
        self.r12 = a[12];
        self.r13 = a[13];
        self.r14 = a[14];
        self.r15 = a[15];
    }
}

/// The instruction that caused the current exit: its bytes (the first `len` are valid), the
/// CPU's bitness and the instruction's RIP.
struct CurrentInstruction {
    bytes: [u8; 15],
    len: usize,
    bitness: u32,
    rip: u64,
}

fn fetch_current() -> Result<CurrentInstruction, &'static str> {
    let setup = super::launch::setup().ok_or("no setup")?;
    let ram = GuestRam::from_setup(setup);
    let cs_ar = vmread(guest::CS_ACCESS_RIGHTS);
    let efer = vmread(guest::IA32_EFER_FULL);
    let bitness = if efer & (1 << 10) != 0 && cs_ar & (1 << 13) != 0 {
        64
    } else if cs_ar & (1 << 14) != 0 {
        32
    } else {
        16
    };
    let rip = vmread(guest::RIP);
    let linear = vmread(guest::CS_BASE).wrapping_add(rip);
    let space = address_space(
        vmread(guest::CR0),
        vmread(guest::CR3),
        vmread(guest::CR4),
        efer,
    );
    let user = (vmread(guest::SS_ACCESS_RIGHTS) >> 5) & 3 == 3;
    let mut bytes = [0u8; 15];
    let len = fetch_instruction(&ram, space, linear, user, &mut bytes)
        .map_err(|_| "instruction not readable")?;
    Ok(CurrentInstruction {
        bytes,
        len,
        bitness,
        rip,
    })
}

/// Decode the instruction that caused the current exit.
pub fn decode_current() -> Result<MmioAccess, &'static str> {
    let i = fetch_current()?;
    mmio_insn::decode(&i.bytes[..i.len], i.bitness).map_err(|e| e.describe())
}

/// Corrections of a reported page offset (the limiter's event number counts them all).
static OFFSET_LOG: RateLimiter = RateLimiter::new(4);

/// The guest-physical address of a trapped access at `gpa` (an EPT violation on a device page
/// Shoji mediates), with the page offset the faulting instruction's operand names. On hardware
/// the two agree; a nested hypervisor that emulates the access itself may report the address
/// without its offset (KVM does for writes to a page Shoji maps read-only, such as the xAPIC
/// page: every such write then read as one to offset 0). Only a page-aligned `gpa` is checked:
/// an offset the CPU reported is never second-guessed.
pub fn operand_gpa(gpa: u64, regs: &GuestRegs) -> u64 {
    if gpa & 0xfff != 0 {
        return gpa;
    }
    let Ok(i) = fetch_current() else { return gpa };
    let seg = SegmentBases {
        es: vmread(guest::ES_BASE),
        cs: vmread(guest::CS_BASE),
        ss: vmread(guest::SS_BASE),
        ds: vmread(guest::DS_BASE),
        fs: vmread(guest::FS_BASE),
        gs: vmread(guest::GS_BASE),
    };
    let Ok(linear) =
        mmio_insn::operand_address(&i.bytes[..i.len], i.bitness, i.rip, &regs.to_array(), &seg)
    else {
        return gpa;
    };
    let offset = linear & 0xfff;
    if offset == 0 {
        return gpa;
    }
    if let Some(n) = OFFSET_LOG.allow() {
        crate::hv_line!(
            "EPT violation at {:#x} reported without its page offset; the instruction at rip {:#x} accesses offset {:#x} (linear {:#x}): using it (event #{})",
            gpa,
            i.rip,
            offset,
            linear,
            n
        );
    }
    gpa | offset
}

/// Emulate the current trapped access with `device`, which gets (is_write, width, value) and
/// returns the value of a read. Returns false (after injecting #UD) when the instruction cannot
/// be emulated.
pub fn emulate(regs: &mut GuestRegs, gpa: u64, device: impl FnOnce(bool, u8, u64) -> u64) -> bool {
    let access = match decode_current() {
        Ok(a) => a,
        Err(why) => {
            if let Some(n) = REFUSED_LOG.allow() {
                crate::hv_line!(
                    "guest access to device page {:#x} at rip {:#x} cannot be emulated ({}): #UD (event #{})",
                    gpa,
                    vmread(guest::RIP),
                    why,
                    n
                );
            }
            inject(6, 3, None);
            return false;
        }
    };
    let mut gprs = regs.to_array();
    if let Some(value) = access.write_value(&gprs) {
        device(true, access.width, value);
    } else {
        let data = device(false, access.width, 0);
        access.complete_read(&mut gprs, data);
        regs.set_from_array(&gprs);
    }
    advance_rip_by(access.len as u64);
    true
}
