//! MSR writes the guest kernel makes on root's behalf (the msr driver, `/dev/cpu/0/msr`), to
//! show how Shoji answers the ones it must refuse or that the hardware refuses: as hardware
//! would (#GP, which the driver reports as EIO), with the machine still running.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

/// IA32_APIC_BASE.
const IA32_APIC_BASE: u32 = 0x1b;
/// Its base-address field.
const APIC_BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// x2APIC mode (EXTD).
const APIC_BASE_EXTD: u64 = 1 << 10;
/// The x2APIC ICR.
const X2APIC_ICR: u32 = 0x830;

fn open() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/cpu/0/msr")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/cpu/0/msr: {e} (is msr.ko loaded?)")))
}

fn read(f: &File, msr: u32) -> io::Result<u64> {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, u64::from(msr))?;
    Ok(u64::from_le_bytes(b))
}

fn write(f: &File, msr: u32, v: u64) -> io::Result<()> {
    f.write_all_at(&v.to_le_bytes(), u64::from(msr))
}

/// How a write went: `accepted`, or `refused(ERRNO-NAME)`.
fn outcome(r: &io::Result<()>) -> String {
    match r {
        Ok(()) => "accepted".into(),
        Err(e) if e.raw_os_error() == Some(libc::EIO) => "refused(EIO)".into(),
        Err(e) => format!("failed({e})"),
    }
}

/// `probe apic-base-move NEW_BASE`.
pub fn apic_base_move(new_base: u64) -> io::Result<()> {
    let f = open()?;
    let before = read(&f, IA32_APIC_BASE)?;
    let wanted = (before & !APIC_BASE_ADDRESS) | (new_base & APIC_BASE_ADDRESS);
    let w = write(&f, IA32_APIC_BASE, wanted);
    let after = read(&f, IA32_APIC_BASE)?;
    let moved = after & APIC_BASE_ADDRESS != before & APIC_BASE_ADDRESS;
    // Put a moved APIC back at once: the kernel still uses the old address.
    let restored = if moved {
        let r = write(&f, IA32_APIC_BASE, before);
        format!(" restore={}", outcome(&r))
    } else {
        String::new()
    };
    println!(
        "probe apic-base-move: before={before:#x} wrote={wanted:#x} write={} after={after:#x} moved={}{restored}",
        outcome(&w),
        if moved { "yes" } else { "no" }
    );
    Ok(())
}

/// `probe x2apic-icr-bad`.
pub fn x2apic_icr_bad() -> io::Result<()> {
    let f = open()?;
    let base = read(&f, IA32_APIC_BASE)?;
    let x2apic = base & APIC_BASE_EXTD != 0;
    // x2APIC: vector 0xff to destination 0 with the reserved bits 16..17 and 20..31 set; xAPIC:
    // the MSR is not accessible, any value faults.
    let value: u64 = if x2apic { 0xfff3_00ff } else { 0 };
    let w = write(&f, X2APIC_ICR, value);
    println!(
        "probe x2apic-icr-bad: mode={} wrote={value:#x} write={}",
        if x2apic { "x2apic" } else { "xapic" },
        outcome(&w)
    );
    Ok(())
}

/// How `probe msr-rw` derives the value it writes from the MSR's value before.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// Write this value.
    Set(u64),
    /// Write the value before XOR this mask.
    Xor(u64),
    /// Write the value before plus this amount (wrapping).
    Add(u64),
}

/// `probe msr-rw MSR (--set V | --xor M | --add N) [--restore]`: read the MSR, write the
/// derived value, read it back and, with `restore`, write the old value back (for the TSC:
/// the old value plus the ticks that passed is not attempted; `--restore` is for MSRs that do
/// not count).
pub fn msr_rw(msr: u32, change: Change, restore: bool) -> io::Result<()> {
    let f = open()?;
    let before = read(&f, msr)?;
    let value = match change {
        Change::Set(v) => v,
        Change::Xor(m) => before ^ m,
        Change::Add(n) => before.wrapping_add(n),
    };
    // SAFETY: RDTSC is available on every x86-64 CPU and has no side effects.
    let t0 = unsafe { core::arch::x86_64::_rdtsc() };
    let w = write(&f, msr, value);
    // SAFETY: as above.
    let t1 = unsafe { core::arch::x86_64::_rdtsc() };
    let after = read(&f, msr)?;
    let restored = if restore && w.is_ok() {
        let r = write(&f, msr, before);
        format!(" restore={}", outcome(&r))
    } else {
        String::new()
    };
    println!(
        "probe msr-rw: msr={msr:#x} before={before:#x} wrote={value:#x} write={} after={after:#x} readback={} tsc_ticks={}{restored}",
        outcome(&w),
        if after == value { "same" } else { "different" },
        t1.wrapping_sub(t0) as i64,
    );
    Ok(())
}
