//! Which MSRs the guest may not touch directly, and what it sees when it tries: the VMX
//! capability MSRs do not exist on a CPU without VMX, IA32_FEATURE_CONTROL reads as locked
//! with VMX off, and IA32_APIC_BASE may not move the local APIC (a relocated xAPIC page would
//! escape Shoji's INIT/SIPI mediation and could be placed over Shoji's own memory): a write that
//! keeps the base is performed, one that moves it gets #GP. Every other MSR goes straight to the
//! hardware (the bitmap lets it through), so unknown MSRs fault in the guest exactly as they
//! would on bare metal.

/// IA32_FEATURE_CONTROL.
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
/// Lock bit of IA32_FEATURE_CONTROL.
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// VMXON allowed inside SMX.
pub const FEATURE_CONTROL_VMX_IN_SMX: u64 = 1 << 1;
/// VMXON allowed outside SMX.
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: u32 = 0x1b;
/// The base-address field of IA32_APIC_BASE (bits 12..51).
pub const APIC_BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// First VMX capability MSR (IA32_VMX_BASIC).
pub const IA32_VMX_FIRST: u32 = 0x480;
/// Last VMX capability MSR (IA32_VMX_VMFUNC).
pub const IA32_VMX_LAST: u32 = 0x491;

/// Outcome of an intercepted MSR access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrAnswer {
    /// Complete a read with this value.
    Value(u64),
    /// Complete a write (it is ignored or applied by the caller).
    Done,
    /// Perform the write on the hardware, as the guest asked; #GP if the hardware refuses it.
    WriteThrough,
    /// Inject #GP(0), as a CPU without the MSR would.
    GeneralProtection,
}

/// Whether reads of `msr` exit to Shoji.
pub fn intercept_read(msr: u32) -> bool {
    msr == IA32_FEATURE_CONTROL || (IA32_VMX_FIRST..=IA32_VMX_LAST).contains(&msr)
}

/// Whether writes to `msr` exit to Shoji.
pub fn intercept_write(msr: u32) -> bool {
    intercept_read(msr) || msr == IA32_APIC_BASE
}

/// Answer an intercepted RDMSR; `native` is the hardware value (read by the caller only when
/// needed, so a non-existent MSR is never read in host mode).
pub fn read(msr: u32, native: impl FnOnce(u32) -> u64) -> MsrAnswer {
    match msr {
        IA32_FEATURE_CONTROL => MsrAnswer::Value(
            (native(msr) | FEATURE_CONTROL_LOCK)
                & !(FEATURE_CONTROL_VMX_IN_SMX | FEATURE_CONTROL_VMX_OUTSIDE_SMX),
        ),
        _ => MsrAnswer::GeneralProtection,
    }
}

/// Answer an intercepted WRMSR; `native` reads the hardware value (only when needed).
pub fn write(msr: u32, value: u64, native: impl FnOnce(u32) -> u64) -> MsrAnswer {
    match msr {
        // Mode changes (enable, x2APIC) keep the base: the hardware judges them.
        IA32_APIC_BASE if (value ^ native(msr)) & APIC_BASE_ADDRESS == 0 => MsrAnswer::WriteThrough,
        // A relocation, refused; IA32_FEATURE_CONTROL is locked (writes #GP on hardware); VMX
        // MSRs are read-only or absent.
        _ => MsrAnswer::GeneralProtection,
    }
}

/// Fill a 4 KiB VMX MSR bitmap: bit set = access exits.
pub fn fill_bitmap(bitmap: &mut [u8; 4096]) {
    bitmap.fill(0);
    let mut set = |offset: usize, index: u32| {
        bitmap[offset + (index / 8) as usize] |= 1 << (index % 8);
    };
    for msr in (0..0x2000u32).filter(|m| intercept_read(*m)) {
        set(0x000, msr);
    }
    for msr in (0..0x2000u32).filter(|m| intercept_write(*m)) {
        set(0x800, msr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_control_reads_locked_without_vmx() {
        assert_eq!(read(IA32_FEATURE_CONTROL, |_| 0x5), MsrAnswer::Value(1));
        assert_eq!(read(IA32_FEATURE_CONTROL, |_| 0x0), MsrAnswer::Value(1));
        assert_eq!(
            write(IA32_FEATURE_CONTROL, 5, |_| 0),
            MsrAnswer::GeneralProtection
        );
    }

    #[test]
    fn vmx_msrs_fault_without_reading_hardware() {
        for msr in IA32_VMX_FIRST..=IA32_VMX_LAST {
            assert_eq!(
                read(msr, |_| panic!("must not read")),
                MsrAnswer::GeneralProtection
            );
            assert_eq!(
                write(msr, 0, |_| panic!("must not read")),
                MsrAnswer::GeneralProtection
            );
        }
    }

    #[test]
    fn the_local_apic_may_change_mode_but_not_move() {
        let xapic = 0xfee0_0000 | 1 << 11 | 1 << 8;
        // Enabling x2APIC, disabling: the hardware's to judge.
        for v in [xapic | 1 << 10, xapic & !(1 << 11), xapic] {
            assert_eq!(
                write(IA32_APIC_BASE, v, |_| xapic),
                MsrAnswer::WriteThrough,
                "{v:#x}"
            );
        }
        // Any move of the base: #GP, whatever else the value says.
        for base in [
            0xfed0_0000u64,
            0xfee0_1000,
            0x1_0000_0000,
            0x000f_ffff_ffff_f000,
        ] {
            assert_eq!(
                write(IA32_APIC_BASE, base | 1 << 11, |_| xapic),
                MsrAnswer::GeneralProtection,
                "{base:#x}"
            );
        }
        // Bits outside the address field do not count as a move.
        assert_eq!(
            write(IA32_APIC_BASE, xapic | 0xfff0_0000_0000_0000, |_| xapic),
            MsrAnswer::WriteThrough
        );
    }

    #[test]
    fn bitmap_marks_exactly_the_intercepted_msrs() {
        let mut b = [0xffu8; 4096];
        fill_bitmap(&mut b);
        let bit = |off: usize, m: u32| b[off + (m / 8) as usize] & (1 << (m % 8)) != 0;
        assert!(bit(0, 0x3a) && bit(0x800, 0x3a));
        assert!(bit(0, 0x480) && bit(0, 0x491) && !bit(0, 0x492));
        assert!(!bit(0, 0x10) && !bit(0, 0x1b) && !bit(0x800, 0x277));
        // IA32_APIC_BASE: reads pass, writes exit.
        assert!(bit(0x800, 0x1b) && !bit(0x800, 0x1a) && !bit(0x800, 0x1c));
        assert!(
            b[0x400..0x800].iter().all(|x| *x == 0),
            "high MSRs pass through"
        );
        assert!(b[0xc00..].iter().all(|x| *x == 0));
    }
}
