//! Which MSRs the guest may not touch directly, and what it sees when it tries: the VMX
//! capability MSRs do not exist on a CPU without VMX, and IA32_FEATURE_CONTROL reads as locked
//! with VMX off. Every other MSR goes straight to the hardware (the bitmap lets it through), so
//! unknown MSRs fault in the guest exactly as they would on bare metal.

/// IA32_FEATURE_CONTROL.
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
/// Lock bit of IA32_FEATURE_CONTROL.
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// VMXON allowed inside SMX.
pub const FEATURE_CONTROL_VMX_IN_SMX: u64 = 1 << 1;
/// VMXON allowed outside SMX.
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
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
    /// Inject #GP(0), as a CPU without the MSR would.
    GeneralProtection,
}

/// Whether reads of `msr` exit to Shoji.
pub fn intercept_read(msr: u32) -> bool {
    msr == IA32_FEATURE_CONTROL || (IA32_VMX_FIRST..=IA32_VMX_LAST).contains(&msr)
}

/// Whether writes to `msr` exit to Shoji.
pub fn intercept_write(msr: u32) -> bool {
    intercept_read(msr)
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

/// Answer an intercepted WRMSR.
pub fn write(msr: u32, _value: u64) -> MsrAnswer {
    // IA32_FEATURE_CONTROL is locked (writes #GP on hardware); VMX MSRs are read-only or absent.
    let _ = msr;
    MsrAnswer::GeneralProtection
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
        assert_eq!(write(IA32_FEATURE_CONTROL, 5), MsrAnswer::GeneralProtection);
    }

    #[test]
    fn vmx_msrs_fault_without_reading_hardware() {
        for msr in IA32_VMX_FIRST..=IA32_VMX_LAST {
            assert_eq!(
                read(msr, |_| panic!("must not read")),
                MsrAnswer::GeneralProtection
            );
            assert_eq!(write(msr, 0), MsrAnswer::GeneralProtection);
        }
    }

    #[test]
    fn bitmap_marks_exactly_the_intercepted_msrs() {
        let mut b = [0xffu8; 4096];
        fill_bitmap(&mut b);
        let bit = |off: usize, m: u32| b[off + (m / 8) as usize] & (1 << (m % 8)) != 0;
        assert!(bit(0, 0x3a) && bit(0x800, 0x3a));
        assert!(bit(0, 0x480) && bit(0, 0x491) && !bit(0, 0x492));
        assert!(!bit(0, 0x10) && !bit(0, 0x1b) && !bit(0x800, 0x277));
        assert!(
            b[0x400..0x800].iter().all(|x| *x == 0),
            "high MSRs pass through"
        );
        assert!(b[0xc00..].iter().all(|x| *x == 0));
    }
}
