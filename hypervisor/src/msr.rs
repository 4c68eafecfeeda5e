//! Which MSRs the guest may not touch directly, and what it sees when it tries: the VMX
//! capability MSRs do not exist on a CPU without VMX, IA32_FEATURE_CONTROL reads as locked
//! with VMX off, and IA32_APIC_BASE may not move the local APIC (a relocated xAPIC page would
//! escape Shoji's INIT/SIPI mediation and could be placed over Shoji's own memory): a write that
//! keeps the base is performed, one that moves it gets #GP.
//!
//! MSRs that would let the guest change what Shoji itself relies on are mediated or hidden:
//!
//! - Intel PT, the DS save area and PEBS write trace and sample records to physical addresses,
//!   also while Shoji runs: the guest sees a CPU without them (the MSRs #GP, IA32_MISC_ENABLE
//!   reports BTS and PEBS unavailable, CPUID hides them, see [`crate::cpuid`]), and IA32_XSS
//!   may not enable the PT state component (XRSTORS would load the PT MSRs past the bitmap).
//! - The MTRRs set the memory types of Shoji's region too (VMX root mode uses them): the guest
//!   gets a shadow copy, [`MtrrShadow`], and the hardware MTRRs never change.
//! - IA32_TSC and IA32_TSC_ADJUST move Shoji's clock: the guest's writes become a VMCS TSC
//!   offset, [`TscState`].
//! - IA32_MISC_ENABLE's XD disable (bit 34) and limit-CPUID (bit 22) change the CPU under Shoji
//!   too: with XD disabled, EFER.NXE is reserved and the VM exit that loads Shoji's EFER fails;
//!   with CPUID limited, Shoji's own CPUID reads change. The guest may clear them (Linux does at
//!   boot), never set them: a write that sets one the hardware has clear is #GP, as on a CPU
//!   where they are reserved.
//!
//! Every other MSR goes straight to the hardware (the bitmap lets it through), so unknown MSRs
//! fault in the guest exactly as they would on bare metal.

use crate::mtrr::{UC, WB, WC, WP, WT};

/// IA32_TIME_STAMP_COUNTER: writes exit (they become a TSC offset, [`TscState::write_tsc`]);
/// reads pass, the CPU applies the offset itself.
pub const IA32_TSC: u32 = 0x10;
/// IA32_FEATURE_CONTROL.
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
/// Lock bit of IA32_FEATURE_CONTROL.
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// VMXON allowed inside SMX.
pub const FEATURE_CONTROL_VMX_IN_SMX: u64 = 1 << 1;
/// VMXON allowed outside SMX.
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
/// IA32_TSC_ADJUST: reads and writes exit ([`TscState::read_adjust`],
/// [`TscState::write_adjust`]).
pub const IA32_TSC_ADJUST: u32 = 0x3b;
/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: u32 = 0x1b;
/// The base-address field of IA32_APIC_BASE (bits 12..51).
pub const APIC_BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// IA32_MTRRCAP: read-only, not intercepted (the guest sees the hardware's capabilities, which
/// [`MtrrShadow`] emulates).
pub const IA32_MTRRCAP: u32 = 0xfe;
/// IA32_MTRRCAP.VCNT (bits 0..7): number of variable ranges.
pub const MTRRCAP_VCNT: u64 = 0xff;
/// IA32_MTRRCAP.FIX (bit 8): the fixed-range MTRRs exist.
pub const MTRRCAP_FIX: u64 = 1 << 8;
/// IA32_MISC_ENABLE.
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 11: branch trace storage unavailable (read-only).
pub const MISC_ENABLE_BTS_UNAVAILABLE: u64 = 1 << 11;
/// IA32_MISC_ENABLE bit 12: processor event based sampling unavailable (read-only).
pub const MISC_ENABLE_PEBS_UNAVAILABLE: u64 = 1 << 12;
/// IA32_MISC_ENABLE bit 22: limit CPUID's largest basic leaf to 2.
pub const MISC_ENABLE_LIMIT_CPUID: u64 = 1 << 22;
/// IA32_MISC_ENABLE bit 34: XD (execute-disable) bit disable.
pub const MISC_ENABLE_XD_DISABLE: u64 = 1 << 34;
/// The IA32_MISC_ENABLE bits the guest may clear but not set.
pub const MISC_ENABLE_CLEAR_ONLY: u64 = MISC_ENABLE_LIMIT_CPUID | MISC_ENABLE_XD_DISABLE;
/// IA32_MTRR_PHYSBASE0; PHYSBASEn is `IA32_MTRR_PHYSBASE0 + 2n`.
pub const IA32_MTRR_PHYSBASE0: u32 = 0x200;
/// IA32_MTRR_PHYSMASK0; PHYSMASKn is `IA32_MTRR_PHYSMASK0 + 2n`.
pub const IA32_MTRR_PHYSMASK0: u32 = 0x201;
/// Number of architectural variable-range pairs (PHYSBASE0/PHYSMASK0 .. PHYSBASE9/PHYSMASK9);
/// a larger VCNT is clamped to it.
pub const MTRR_VARIABLE_MAX: usize = 10;
/// The last variable-range MSR (IA32_MTRR_PHYSMASK9).
pub const IA32_MTRR_VARIABLE_LAST: u32 = IA32_MTRR_PHYSBASE0 + 2 * MTRR_VARIABLE_MAX as u32 - 1;
/// IA32_MTRR_FIX64K_00000.
pub const IA32_MTRR_FIX64K_00000: u32 = 0x250;
/// IA32_MTRR_FIX16K_80000.
pub const IA32_MTRR_FIX16K_80000: u32 = 0x258;
/// IA32_MTRR_FIX16K_A0000.
pub const IA32_MTRR_FIX16K_A0000: u32 = 0x259;
/// IA32_MTRR_FIX4K_C0000, the first of eight consecutive 4K fixed-range MSRs.
pub const IA32_MTRR_FIX4K_C0000: u32 = 0x268;
/// IA32_MTRR_FIX4K_F8000, the last of them.
pub const IA32_MTRR_FIX4K_F8000: u32 = 0x26f;
/// The eleven fixed-range MTRRs, in address order.
pub const MTRR_FIXED_MSRS: [u32; 11] = [
    IA32_MTRR_FIX64K_00000,
    IA32_MTRR_FIX16K_80000,
    IA32_MTRR_FIX16K_A0000,
    IA32_MTRR_FIX4K_C0000,
    IA32_MTRR_FIX4K_C0000 + 1,
    IA32_MTRR_FIX4K_C0000 + 2,
    IA32_MTRR_FIX4K_C0000 + 3,
    IA32_MTRR_FIX4K_C0000 + 4,
    IA32_MTRR_FIX4K_C0000 + 5,
    IA32_MTRR_FIX4K_C0000 + 6,
    IA32_MTRR_FIX4K_F8000,
];
/// IA32_MTRR_DEF_TYPE.
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
/// The memory-type field of IA32_MTRR_DEF_TYPE and IA32_MTRR_PHYSBASEn (bits 0..7).
pub const MTRR_TYPE_FIELD: u64 = 0xff;
/// IA32_MTRR_DEF_TYPE.FE (bit 10): fixed ranges enabled.
pub const MTRR_DEF_TYPE_FE: u64 = 1 << 10;
/// IA32_MTRR_DEF_TYPE.E (bit 11): MTRRs enabled.
pub const MTRR_DEF_TYPE_E: u64 = 1 << 11;
/// Reserved bits of IA32_MTRR_PHYSBASEn below the address (bits 8..11).
pub const MTRR_PHYSBASE_RESERVED_LOW: u64 = 0xf00;
/// Reserved bits of IA32_MTRR_PHYSMASKn below the valid bit (bits 0..10).
pub const MTRR_PHYSMASK_RESERVED_LOW: u64 = 0x7ff;
/// IA32_MTRR_PHYSMASKn.V (bit 11): the range is valid.
pub const MTRR_PHYSMASK_VALID: u64 = 1 << 11;
/// Lowest MAXPHYADDR [`MtrrShadow`] assumes (the width of a CPU without CPUID 0x80000008).
pub const PHYS_BITS_MIN: u8 = 36;
/// Highest MAXPHYADDR the architecture allows.
pub const PHYS_BITS_MAX: u8 = 52;
/// IA32_PEBS_ENABLE: absent for the guest.
pub const IA32_PEBS_ENABLE: u32 = 0x3f1;
/// First VMX capability MSR (IA32_VMX_BASIC).
pub const IA32_VMX_FIRST: u32 = 0x480;
/// Last VMX capability MSR (IA32_VMX_VMFUNC).
pub const IA32_VMX_LAST: u32 = 0x491;
/// IA32_RTIT_OUTPUT_BASE (Intel PT): absent for the guest.
pub const IA32_RTIT_OUTPUT_BASE: u32 = 0x560;
/// IA32_RTIT_OUTPUT_MASK_PTRS (Intel PT): absent for the guest.
pub const IA32_RTIT_OUTPUT_MASK_PTRS: u32 = 0x561;
/// IA32_RTIT_CTL (Intel PT): absent for the guest.
pub const IA32_RTIT_CTL: u32 = 0x570;
/// IA32_RTIT_STATUS (Intel PT): absent for the guest.
pub const IA32_RTIT_STATUS: u32 = 0x571;
/// IA32_RTIT_CR3_MATCH (Intel PT): absent for the guest.
pub const IA32_RTIT_CR3_MATCH: u32 = 0x572;
/// IA32_RTIT_ADDR0_A, the first of the PT address-range MSRs: absent for the guest.
pub const IA32_RTIT_ADDR0_A: u32 = 0x580;
/// IA32_RTIT_ADDR3_B, the last of them.
pub const IA32_RTIT_ADDR3_B: u32 = 0x587;
/// IA32_DS_AREA (BTS and PEBS save area): absent for the guest.
pub const IA32_DS_AREA: u32 = 0x600;
/// IA32_TSC_DEADLINE: passes through while the TSC offset is zero; otherwise the caller
/// intercepts it ([`set_intercept`]) and converts with [`TscState::deadline_to_host`].
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// IA32_XSS: writes exit, so the guest cannot enable the PT state component.
pub const IA32_XSS: u32 = 0xda0;
/// IA32_XSS bit 8: the Intel PT state component (XSAVES/XRSTORS of the IA32_RTIT_* MSRs).
pub const XSS_PT: u64 = 1 << 8;

/// Offset of the write half of the MSR bitmap (the read half starts at 0).
const BITMAP_WRITE: usize = 0x800;
/// Offset of the high-MSR quarter (0xc000_0000..0xc000_1fff) inside either half.
const BITMAP_HIGH: usize = 0x400;
/// First high MSR the bitmap covers.
const MSR_HIGH_FIRST: u32 = 0xc000_0000;
/// Number of MSRs each quarter covers.
const BITMAP_SPAN: u32 = 0x2000;

/// Outcome of an intercepted MSR access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrAnswer {
    /// Complete a read with this value.
    Value(u64),
    /// Complete a write (it is ignored or applied by the caller).
    Done,
    /// Perform the write on the hardware, as the guest asked; #GP if the hardware refuses it.
    WriteThrough,
    /// Perform this value on the hardware instead of the guest's (Shoji replaced some of its
    /// bits); #GP if the hardware refuses it.
    WriteValue(u64),
    /// Inject #GP(0), as a CPU without the MSR would.
    GeneralProtection,
}

/// Whether `msr` is one of the trace and sample MSRs hidden from the guest (Intel PT,
/// IA32_DS_AREA, IA32_PEBS_ENABLE): a CPU without those features has none of them.
pub fn is_trace(msr: u32) -> bool {
    matches!(
        msr,
        IA32_RTIT_OUTPUT_BASE
            | IA32_RTIT_OUTPUT_MASK_PTRS
            | IA32_RTIT_CTL
            | IA32_RTIT_STATUS
            | IA32_RTIT_CR3_MATCH
            | IA32_RTIT_ADDR0_A..=IA32_RTIT_ADDR3_B | IA32_DS_AREA | IA32_PEBS_ENABLE
    )
}

/// Whether `msr` is an MTRR the guest may write (IA32_MTRR_DEF_TYPE, the variable ranges, the
/// fixed ranges): the caller answers it from its [`MtrrShadow`], not [`read`]/[`write`].
pub fn is_mtrr(msr: u32) -> bool {
    msr == IA32_MTRR_DEF_TYPE
        || (IA32_MTRR_PHYSBASE0..=IA32_MTRR_VARIABLE_LAST).contains(&msr)
        || MTRR_FIXED_MSRS.contains(&msr)
}

/// Whether `msr` is a TSC MSR the caller answers from its [`TscState`] (IA32_TSC writes,
/// IA32_TSC_ADJUST reads and writes), not [`read`]/[`write`].
pub fn is_tsc(msr: u32) -> bool {
    msr == IA32_TSC || msr == IA32_TSC_ADJUST
}

/// Whether reads of `msr` exit to Shoji.
pub fn intercept_read(msr: u32) -> bool {
    msr == IA32_FEATURE_CONTROL
        || (IA32_VMX_FIRST..=IA32_VMX_LAST).contains(&msr)
        || is_trace(msr)
        || msr == IA32_MISC_ENABLE
        || is_mtrr(msr)
        || msr == IA32_TSC_ADJUST
}

/// Whether writes to `msr` exit to Shoji.
pub fn intercept_write(msr: u32) -> bool {
    intercept_read(msr) || msr == IA32_APIC_BASE || msr == IA32_TSC || msr == IA32_XSS
}

/// Answer an intercepted RDMSR; `native` is the hardware value (read by the caller only when
/// needed, so a non-existent MSR is never read in host mode).
///
/// MTRRs ([`is_mtrr`]) and the TSC MSRs ([`is_tsc`]) are per-vCPU state: the caller routes them
/// to its [`MtrrShadow`] and [`TscState`] first; here they answer #GP.
pub fn read(msr: u32, native: impl FnOnce(u32) -> u64) -> MsrAnswer {
    match msr {
        IA32_FEATURE_CONTROL => MsrAnswer::Value(
            (native(msr) | FEATURE_CONTROL_LOCK)
                & !(FEATURE_CONTROL_VMX_IN_SMX | FEATURE_CONTROL_VMX_OUTSIDE_SMX),
        ),
        // BTS and PEBS reported unavailable, as on a CPU without them.
        IA32_MISC_ENABLE => MsrAnswer::Value(
            native(msr) | MISC_ENABLE_BTS_UNAVAILABLE | MISC_ENABLE_PEBS_UNAVAILABLE,
        ),
        // VMX, PT, DS and PEBS MSRs are absent.
        _ => MsrAnswer::GeneralProtection,
    }
}

/// Answer an intercepted WRMSR; `native` reads the hardware value (only when needed).
///
/// As for [`read`], MTRRs and the TSC MSRs are the caller's to route first; here they #GP.
pub fn write(msr: u32, value: u64, native: impl FnOnce(u32) -> u64) -> MsrAnswer {
    const UNAVAILABLE: u64 = MISC_ENABLE_BTS_UNAVAILABLE | MISC_ENABLE_PEBS_UNAVAILABLE;
    match msr {
        // Mode changes (enable, x2APIC) keep the base: the hardware judges them. A relocation
        // is refused.
        IA32_APIC_BASE => {
            if (value ^ native(msr)) & APIC_BASE_ADDRESS == 0 {
                MsrAnswer::WriteThrough
            } else {
                MsrAnswer::GeneralProtection
            }
        }
        // The guest writes back the "unavailable" bits it read; they are read-only on the
        // hardware, so the hardware's own bits go in their place. XD disable and limit-CPUID
        // may be cleared, not set.
        IA32_MISC_ENABLE => {
            let hw = native(msr);
            if value & MISC_ENABLE_CLEAR_ONLY & !hw != 0 {
                MsrAnswer::GeneralProtection
            } else {
                MsrAnswer::WriteValue((value & !UNAVAILABLE) | (hw & UNAVAILABLE))
            }
        }
        // Any state component but PT: the hardware judges it. PT is refused as by a CPU whose
        // IA32_XSS lacks it (CPUID.(0xd,1):ECX hides it).
        IA32_XSS if value & XSS_PT == 0 => MsrAnswer::WriteThrough,
        // IA32_FEATURE_CONTROL is locked (writes #GP on hardware); VMX MSRs are read-only or
        // absent; PT, DS and PEBS MSRs are absent.
        _ => MsrAnswer::GeneralProtection,
    }
}

/// Byte offset (in the read half) and bit mask of `msr` in a VMX MSR bitmap, `None` for an MSR
/// outside the two ranges the bitmap covers (every access to those exits anyway).
fn bitmap_position(msr: u32) -> Option<(usize, u8)> {
    let (base, index) = if msr < BITMAP_SPAN {
        (0, msr)
    } else if (MSR_HIGH_FIRST..MSR_HIGH_FIRST + BITMAP_SPAN).contains(&msr) {
        (BITMAP_HIGH, msr - MSR_HIGH_FIRST)
    } else {
        return None;
    };
    Some((base + (index / 8) as usize, 1 << (index % 8)))
}

/// Set (`true`) or clear (`false`) the read and write intercepts of one MSR in a VMX MSR bitmap
/// at run time (IA32_TSC_DEADLINE once the TSC offset is non-zero). An MSR outside the ranges
/// the bitmap covers always exits; the bitmap is left unchanged for it.
pub fn set_intercept(bitmap: &mut [u8; 4096], msr: u32, read: bool, write: bool) {
    let Some((offset, mask)) = bitmap_position(msr) else {
        return;
    };
    for (at, on) in [(offset, read), (BITMAP_WRITE + offset, write)] {
        if on {
            bitmap[at] |= mask;
        } else {
            bitmap[at] &= !mask;
        }
    }
}

/// Fill a 4 KiB VMX MSR bitmap: bit set = access exits.
pub fn fill_bitmap(bitmap: &mut [u8; 4096]) {
    bitmap.fill(0);
    for msr in 0..BITMAP_SPAN {
        set_intercept(bitmap, msr, intercept_read(msr), intercept_write(msr));
    }
}

/// Whether `t` (a memory-type field) encodes a type the MTRRs accept: UC, WC, WT, WP or WB.
fn valid_memory_type(t: u64) -> bool {
    matches!(u8::try_from(t), Ok(UC | WC | WT | WP | WB))
}

/// Where an MTRR's value lives in an [`MtrrShadow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MtrrSlot {
    /// IA32_MTRR_DEF_TYPE.
    DefType,
    /// IA32_MTRR_PHYSBASEn (index `2n` of the variable array).
    Base(usize),
    /// IA32_MTRR_PHYSMASKn (index `2n + 1` of the variable array).
    Mask(usize),
    /// A fixed-range MTRR (index in [`MTRR_FIXED_MSRS`]).
    Fixed(usize),
}

/// The guest's view of the MTRRs: it reads back what it wrote, as on hardware, but its writes
/// never reach the hardware MTRRs. Those also give the memory types of Shoji's own region,
/// which VMX root mode uses, so a guest write could otherwise make Shoji's memory uncacheable
/// or write-combining; the guest's memory types come from Shoji's EPT instead.
///
/// Writes are validated as the hardware does (reserved bits, memory-type encodings, MSRs the
/// CPU lacks per IA32_MTRRCAP) and refused with #GP, storing nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtrrShadow {
    /// IA32_MTRR_DEF_TYPE.
    def_type: u64,
    /// PHYSBASE0, PHYSMASK0, PHYSBASE1, ... (in MSR order).
    variable: [u64; 2 * MTRR_VARIABLE_MAX],
    /// The fixed-range MTRRs, in [`MTRR_FIXED_MSRS`] order.
    fixed: [u64; MTRR_FIXED_MSRS.len()],
    /// How many variable pairs exist (IA32_MTRRCAP.VCNT, at most [`MTRR_VARIABLE_MAX`]).
    variable_count: usize,
    /// Whether the fixed-range MTRRs exist (IA32_MTRRCAP.FIX).
    fixed_supported: bool,
    /// MAXPHYADDR: address bits at and above it are reserved.
    phys_bits: u8,
}

impl MtrrShadow {
    /// The shadow of the MTRRs as the hardware has them now: `mtrrcap` is IA32_MTRRCAP,
    /// `phys_bits` MAXPHYADDR (CPUID 0x80000008 EAX[7:0], clamped to
    /// [`PHYS_BITS_MIN`]..=[`PHYS_BITS_MAX`]), and `read` reads one MSR; it is called only for
    /// MTRRs that exist per `mtrrcap`. Only for a CPU with MTRRs (CPUID.1:EDX[12]).
    pub fn capture(mtrrcap: u64, phys_bits: u8, mut read: impl FnMut(u32) -> u64) -> MtrrShadow {
        let variable_count = ((mtrrcap & MTRRCAP_VCNT) as usize).min(MTRR_VARIABLE_MAX);
        let fixed_supported = mtrrcap & MTRRCAP_FIX != 0;
        let mut shadow = MtrrShadow {
            def_type: read(IA32_MTRR_DEF_TYPE),
            variable: [0; 2 * MTRR_VARIABLE_MAX],
            fixed: [0; MTRR_FIXED_MSRS.len()],
            variable_count,
            fixed_supported,
            phys_bits: phys_bits.clamp(PHYS_BITS_MIN, PHYS_BITS_MAX),
        };
        for (i, v) in shadow.variable[..2 * variable_count].iter_mut().enumerate() {
            *v = read(IA32_MTRR_PHYSBASE0 + i as u32);
        }
        if fixed_supported {
            for (v, msr) in shadow.fixed.iter_mut().zip(MTRR_FIXED_MSRS) {
                *v = read(msr);
            }
        }
        shadow
    }

    /// Where `msr` lives, `None` when it is no MTRR this CPU has.
    fn slot(&self, msr: u32) -> Option<MtrrSlot> {
        if msr == IA32_MTRR_DEF_TYPE {
            return Some(MtrrSlot::DefType);
        }
        if (IA32_MTRR_PHYSBASE0..=IA32_MTRR_VARIABLE_LAST).contains(&msr) {
            let index = (msr - IA32_MTRR_PHYSBASE0) as usize;
            if index / 2 >= self.variable_count {
                return None;
            }
            return Some(if index.is_multiple_of(2) {
                MtrrSlot::Base(index)
            } else {
                MtrrSlot::Mask(index)
            });
        }
        if !self.fixed_supported {
            return None;
        }
        MTRR_FIXED_MSRS
            .iter()
            .position(|m| *m == msr)
            .map(MtrrSlot::Fixed)
    }

    /// Address bits at and above MAXPHYADDR (reserved in PHYSBASE and PHYSMASK).
    fn above_phys_bits(&self) -> u64 {
        u64::MAX << self.phys_bits
    }

    /// Answer an RDMSR of MTRR `msr`: the guest's value, or #GP for an MTRR this CPU lacks
    /// (a variable pair at or above VCNT, a fixed range without IA32_MTRRCAP.FIX) or an MSR
    /// that is no MTRR.
    pub fn read(&self, msr: u32) -> MsrAnswer {
        match self.slot(msr) {
            Some(MtrrSlot::DefType) => MsrAnswer::Value(self.def_type),
            Some(MtrrSlot::Base(i) | MtrrSlot::Mask(i)) => MsrAnswer::Value(self.variable[i]),
            Some(MtrrSlot::Fixed(i)) => MsrAnswer::Value(self.fixed[i]),
            None => MsrAnswer::GeneralProtection,
        }
    }

    /// Answer a WRMSR of MTRR `msr`: [`MsrAnswer::Done`] with the value stored when the
    /// hardware would accept it, else #GP with nothing stored. The hardware MTRRs are not
    /// changed (the guest's memory types are the EPT's; see [`MtrrShadow`]).
    ///
    /// Checks, as the hardware's: memory types are UC, WC, WT, WP or WB; IA32_MTRR_DEF_TYPE
    /// has only the type, FE and E; PHYSBASE has the type and address bits below MAXPHYADDR;
    /// PHYSMASK the valid bit and address bits below MAXPHYADDR; each byte of a fixed range is
    /// a type.
    pub fn write(&mut self, msr: u32, value: u64) -> MsrAnswer {
        let high = self.above_phys_bits();
        let Some(slot) = self.slot(msr) else {
            return MsrAnswer::GeneralProtection;
        };
        let valid = match slot {
            MtrrSlot::DefType => {
                value & !(MTRR_TYPE_FIELD | MTRR_DEF_TYPE_FE | MTRR_DEF_TYPE_E) == 0
                    && valid_memory_type(value & MTRR_TYPE_FIELD)
            }
            MtrrSlot::Base(_) => {
                value & (MTRR_PHYSBASE_RESERVED_LOW | high) == 0
                    && valid_memory_type(value & MTRR_TYPE_FIELD)
            }
            MtrrSlot::Mask(_) => value & (MTRR_PHYSMASK_RESERVED_LOW | high) == 0,
            MtrrSlot::Fixed(_) => value
                .to_le_bytes()
                .iter()
                .all(|t| valid_memory_type(u64::from(*t))),
        };
        if !valid {
            return MsrAnswer::GeneralProtection;
        }
        match slot {
            MtrrSlot::DefType => self.def_type = value,
            MtrrSlot::Base(i) | MtrrSlot::Mask(i) => self.variable[i] = value,
            MtrrSlot::Fixed(i) => self.fixed[i] = value,
        }
        MsrAnswer::Done
    }
}

/// One vCPU's virtual time-stamp counter. The guest's writes to IA32_TSC and IA32_TSC_ADJUST
/// become a VMCS TSC offset (guest TSC = host TSC + offset, wrapping), so Shoji's own clock,
/// the host TSC, never changes by the guest's hand.
///
/// The caller does the hardware parts: it sets "use TSC offsetting" and writes [`Self::offset`]
/// to the VMCS TSC_OFFSET field after every change, answers RDMSR IA32_TSC_ADJUST with
/// [`Self::read_adjust`], and while the offset is non-zero ([`Self::deadline_needs_intercept`])
/// intercepts IA32_TSC_DEADLINE ([`set_intercept`]) and converts it: the guest programs it in
/// guest-TSC units but the local APIC compares it with the host TSC.
///
/// Invariant: `offset == adjust - native_adjust` (wrapping), as on hardware, where every TSC
/// write moves IA32_TSC_ADJUST by the same amount and every IA32_TSC_ADJUST write moves the TSC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscState {
    /// Guest TSC minus host TSC (two's complement).
    offset: u64,
    /// The guest's view of IA32_TSC_ADJUST.
    adjust: u64,
}

impl TscState {
    /// A vCPU whose TSC is the host's (offset 0), whose IA32_TSC_ADJUST reads as the hardware's
    /// `native_adjust`.
    pub fn new(native_adjust: u64) -> TscState {
        TscState {
            offset: 0,
            adjust: native_adjust,
        }
    }

    /// The value for the VMCS TSC_OFFSET field (two's complement).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The guest's TSC when the host TSC is `host_tsc`.
    pub fn guest_tsc(&self, host_tsc: u64) -> u64 {
        host_tsc.wrapping_add(self.offset)
    }

    /// The guest's view of IA32_TSC_ADJUST.
    pub fn read_adjust(&self) -> u64 {
        self.adjust
    }

    /// The guest wrote `value` to IA32_TSC when the host TSC was `host_tsc`: its TSC reads
    /// `value` at that instant and counts on from there; its IA32_TSC_ADJUST moves by the same
    /// amount, as on hardware.
    pub fn write_tsc(&mut self, host_tsc: u64, value: u64) {
        let delta = value.wrapping_sub(self.guest_tsc(host_tsc));
        self.offset = self.offset.wrapping_add(delta);
        self.adjust = self.adjust.wrapping_add(delta);
    }

    /// The guest wrote `value` to IA32_TSC_ADJUST: on hardware its TSC moves by the same amount
    /// as the adjust value does.
    pub fn write_adjust(&mut self, value: u64) {
        let delta = value.wrapping_sub(self.adjust);
        self.offset = self.offset.wrapping_add(delta);
        self.adjust = value;
    }

    /// Whether IA32_TSC_DEADLINE must be intercepted (and converted): the guest's TSC differs
    /// from the host's.
    pub fn deadline_needs_intercept(&self) -> bool {
        self.offset != 0
    }

    /// The host-TSC deadline for the guest's IA32_TSC_DEADLINE `guest_deadline`: 0 stays 0
    /// (disarm); any other value is the host TSC at which the guest's TSC reaches it
    /// (`guest_deadline - offset`, wrapping), never 0, which would disarm the timer (the one
    /// deadline that would map to 0 is already past: 1, also past, fires at once).
    ///
    /// Exact for deadlines at or after the guest's TSC at host TSC 0; an earlier (long past)
    /// deadline wraps to a far future host value. [`Self::deadline_to_host_at`] also handles
    /// those.
    pub fn deadline_to_host(&self, guest_deadline: u64) -> u64 {
        if guest_deadline == 0 {
            return 0;
        }
        match guest_deadline.wrapping_sub(self.offset) {
            0 => 1,
            host => host,
        }
    }

    /// As [`Self::deadline_to_host`], judged at host TSC `host_tsc` (now): a deadline the
    /// guest's TSC has reached fires at once (the host value is `host_tsc`, at least 1), as on
    /// hardware; a future one is `host_tsc` plus the guest ticks left, saturating.
    pub fn deadline_to_host_at(&self, guest_deadline: u64, host_tsc: u64) -> u64 {
        if guest_deadline == 0 {
            return 0;
        }
        let now = self.guest_tsc(host_tsc);
        if guest_deadline <= now {
            return host_tsc.max(1);
        }
        host_tsc.saturating_add(guest_deadline - now)
    }

    /// The guest's view of the host-TSC deadline `host_deadline` (read back from the local
    /// APIC's IA32_TSC_DEADLINE): 0 (disarmed or fired) stays 0; any other value is
    /// `host_deadline + offset`, wrapping, and never 0, which would tell the guest the timer is
    /// disarmed: the one value that wraps to 0 reads as `u64::MAX` (exact when it came from
    /// [`Self::deadline_to_host`] of `u64::MAX` with the offset `u64::MAX`).
    pub fn deadline_to_guest(&self, host_deadline: u64) -> u64 {
        if host_deadline == 0 {
            return 0;
        }
        match host_deadline.wrapping_add(self.offset) {
            0 => u64::MAX,
            guest => guest,
        }
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

    /// Whether the bitmap `b` intercepts `msr` at `off` (0 reads, 0x800 writes).
    fn bit(b: &[u8; 4096], off: usize, m: u32) -> bool {
        b[off + (m / 8) as usize] & (1 << (m % 8)) != 0
    }

    #[test]
    fn bitmap_marks_exactly_the_intercepted_msrs() {
        let mut b = [0xffu8; 4096];
        fill_bitmap(&mut b);
        let bit = |off: usize, m: u32| bit(&b, off, m);
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

    #[test]
    fn bitmap_hides_trace_and_sample_msrs() {
        let mut b = [0u8; 4096];
        fill_bitmap(&mut b);
        for m in [0x560, 0x561, 0x570, 0x571, 0x572, 0x600, 0x3f1]
            .into_iter()
            .chain(0x580..=0x587)
        {
            assert!(bit(&b, 0, m) && bit(&b, 0x800, m), "{m:#x}");
        }
        for m in [
            0x55f, 0x562, 0x56f, 0x573, 0x57f, 0x588, 0x5ff, 0x601, 0x3f0, 0x3f2,
        ] {
            assert!(!bit(&b, 0, m) && !bit(&b, 0x800, m), "{m:#x}");
        }
        // IA32_MISC_ENABLE: both ways; its neighbours pass.
        assert!(bit(&b, 0, 0x1a0) && bit(&b, 0x800, 0x1a0));
        assert!(!bit(&b, 0, 0x19f) && !bit(&b, 0x800, 0x1a1));
        // IA32_XSS: writes only.
        assert!(!bit(&b, 0, 0xda0) && bit(&b, 0x800, 0xda0));
        assert!(!bit(&b, 0x800, 0xd9f) && !bit(&b, 0x800, 0xda1));
    }

    #[test]
    fn bitmap_virtualizes_the_mtrrs() {
        let mut b = [0u8; 4096];
        fill_bitmap(&mut b);
        let mtrrs = [0x2ff, 0x250, 0x258, 0x259]
            .into_iter()
            .chain(0x200..=0x213)
            .chain(0x268..=0x26f);
        for m in mtrrs {
            assert!(bit(&b, 0, m) && bit(&b, 0x800, m), "{m:#x}");
        }
        // IA32_MTRRCAP is read-only and passes; so do the neighbours of every MTRR group.
        for m in [
            0xfe, 0x1ff, 0x214, 0x24f, 0x251, 0x257, 0x25a, 0x267, 0x270, 0x2fe, 0x300,
        ] {
            assert!(!bit(&b, 0, m) && !bit(&b, 0x800, m), "{m:#x}");
        }
    }

    #[test]
    fn bitmap_virtualizes_the_tsc() {
        let mut b = [0u8; 4096];
        fill_bitmap(&mut b);
        // IA32_TSC: reads pass (the CPU applies the offset), writes exit.
        assert!(!bit(&b, 0, 0x10) && bit(&b, 0x800, 0x10));
        assert!(!bit(&b, 0x800, 0x0f) && !bit(&b, 0x800, 0x11));
        // IA32_TSC_ADJUST both ways.
        assert!(bit(&b, 0, 0x3b) && bit(&b, 0x800, 0x3b));
        assert!(!bit(&b, 0, 0x3c) && !bit(&b, 0x800, 0x3c));
        // IA32_TSC_DEADLINE only at run time.
        assert!(!bit(&b, 0, 0x6e0) && !bit(&b, 0x800, 0x6e0));
    }

    #[test]
    fn set_intercept_sets_and_clears_one_msr() {
        let mut b = [0u8; 4096];
        set_intercept(&mut b, IA32_TSC_DEADLINE, true, true);
        assert!(bit(&b, 0, 0x6e0) && bit(&b, 0x800, 0x6e0));
        assert_eq!(b.iter().map(|x| x.count_ones()).sum::<u32>(), 2);
        set_intercept(&mut b, IA32_TSC_DEADLINE, false, true);
        assert!(!bit(&b, 0, 0x6e0) && bit(&b, 0x800, 0x6e0));
        set_intercept(&mut b, IA32_TSC_DEADLINE, false, false);
        assert!(b.iter().all(|x| *x == 0));
        // Clearing leaves the neighbours' bits alone.
        let mut full = [0xffu8; 4096];
        set_intercept(&mut full, IA32_TSC_DEADLINE, false, false);
        assert_eq!(full.iter().map(|x| x.count_zeros()).sum::<u32>(), 2);
        assert!(bit(&full, 0, 0x6df) && bit(&full, 0, 0x6e1));
    }

    #[test]
    fn set_intercept_covers_the_high_range_and_ignores_the_rest() {
        let mut b = [0u8; 4096];
        set_intercept(&mut b, 0xc000_0080, true, false);
        assert_eq!(b[0x400 + 0x10], 1);
        set_intercept(&mut b, 0xc000_1fff, false, true);
        assert_eq!(b[0xfff], 0x80);
        assert_eq!(b.iter().map(|x| x.count_ones()).sum::<u32>(), 2);
        let mut c = [0u8; 4096];
        for m in [0x2000, 0xbfff_ffff, 0xc000_2000, u32::MAX] {
            set_intercept(&mut c, m, true, true);
        }
        assert!(c.iter().all(|x| *x == 0));
    }

    #[test]
    fn trace_msrs_fault_without_reading_hardware() {
        let pt = [0x560, 0x561, 0x570, 0x571, 0x572].into_iter();
        for msr in pt.chain(0x580..=0x587).chain([0x600, 0x3f1]) {
            assert!(is_trace(msr) && intercept_read(msr) && intercept_write(msr));
            assert_eq!(
                read(msr, |_| panic!("must not read")),
                MsrAnswer::GeneralProtection,
                "{msr:#x}"
            );
            assert_eq!(
                write(msr, 0, |_| panic!("must not read")),
                MsrAnswer::GeneralProtection,
                "{msr:#x}"
            );
        }
        for msr in [
            0x55f, 0x562, 0x573, 0x57f, 0x588, 0x5ff, 0x601, 0x3f0, 0x3f2,
        ] {
            assert!(!is_trace(msr), "{msr:#x}");
        }
    }

    #[test]
    fn misc_enable_reads_bts_and_pebs_unavailable() {
        let both = MISC_ENABLE_BTS_UNAVAILABLE | MISC_ENABLE_PEBS_UNAVAILABLE;
        assert_eq!(both, 0x1800);
        assert_eq!(read(IA32_MISC_ENABLE, |_| 0), MsrAnswer::Value(0x1800));
        assert_eq!(
            read(IA32_MISC_ENABLE, |_| 0x0085_0089),
            MsrAnswer::Value(0x0085_1889)
        );
        assert_eq!(
            read(IA32_MISC_ENABLE, |_| u64::MAX),
            MsrAnswer::Value(u64::MAX)
        );
        assert_eq!(
            read(IA32_MISC_ENABLE, |_| 1 << 11),
            MsrAnswer::Value(0x1800)
        );
    }

    #[test]
    fn misc_enable_writes_keep_the_hardware_unavailable_bits() {
        // The guest writes back what it read (both set); the hardware has both clear.
        assert_eq!(
            write(IA32_MISC_ENABLE, 0x0085_1889, |_| 0x0085_0089),
            MsrAnswer::WriteValue(0x0085_0089)
        );
        // The guest clears them; the hardware has them set.
        assert_eq!(
            write(IA32_MISC_ENABLE, 0x1, |_| 0x1801),
            MsrAnswer::WriteValue(0x1801)
        );
        // One each way: each bit is the hardware's.
        assert_eq!(
            write(IA32_MISC_ENABLE, 1 << 11, |_| 1 << 12),
            MsrAnswer::WriteValue(1 << 12)
        );
        // Every other bit is the guest's, whatever the hardware has (XD disable and
        // limit-CPUID included when the hardware has them set: clearing them is allowed).
        let others = !0x1800 & !MISC_ENABLE_CLEAR_ONLY;
        assert_eq!(
            write(IA32_MISC_ENABLE, others, |_| 0),
            MsrAnswer::WriteValue(others)
        );
        assert_eq!(
            write(IA32_MISC_ENABLE, !0x1800, |_| MISC_ENABLE_CLEAR_ONLY),
            MsrAnswer::WriteValue(!0x1800)
        );
        assert_eq!(
            write(IA32_MISC_ENABLE, 0, |_| !0x1800),
            MsrAnswer::WriteValue(0)
        );
    }

    #[test]
    fn misc_enable_xd_disable_and_limit_cpuid_may_be_cleared_not_set() {
        assert_eq!(MISC_ENABLE_XD_DISABLE, 0x4_0000_0000);
        assert_eq!(MISC_ENABLE_LIMIT_CPUID, 0x40_0000);
        let hw = 0x0085_0089;
        for bit in [MISC_ENABLE_XD_DISABLE, MISC_ENABLE_LIMIT_CPUID] {
            // Setting it where the hardware has it clear: #GP, nothing written.
            assert_eq!(
                write(IA32_MISC_ENABLE, hw | bit, |_| hw),
                MsrAnswer::GeneralProtection,
                "{bit:#x}"
            );
            // Keeping it set where the hardware has it set (a read-modify-write of another
            // bit), or clearing it: written.
            assert_eq!(
                write(IA32_MISC_ENABLE, hw | bit | 1, |_| hw | bit),
                MsrAnswer::WriteValue(hw | bit | 1),
                "{bit:#x}"
            );
            assert_eq!(
                write(IA32_MISC_ENABLE, hw, |_| hw | bit),
                MsrAnswer::WriteValue(hw),
                "{bit:#x}"
            );
        }
        // Both at once, one of them already set: still refused for the other.
        assert_eq!(
            write(IA32_MISC_ENABLE, hw | MISC_ENABLE_CLEAR_ONLY, |_| hw
                | MISC_ENABLE_LIMIT_CPUID),
            MsrAnswer::GeneralProtection
        );
        // The neighbours (bits 21, 23, 33, 35) are the guest's.
        for bit in [1u64 << 21, 1 << 23, 1 << 33, 1 << 35] {
            assert_eq!(
                write(IA32_MISC_ENABLE, hw | bit, |_| hw),
                MsrAnswer::WriteValue(hw | bit),
                "{bit:#x}"
            );
        }
    }

    #[test]
    fn xss_may_not_enable_the_pt_state_component() {
        assert_eq!(XSS_PT, 0x100);
        assert!(!intercept_read(IA32_XSS) && intercept_write(IA32_XSS));
        assert_eq!(
            write(IA32_XSS, 0, |_| panic!("must not read")),
            MsrAnswer::WriteThrough
        );
        assert_eq!(write(IA32_XSS, 1 << 11, |_| 0), MsrAnswer::WriteThrough);
        assert_eq!(write(IA32_XSS, !XSS_PT, |_| 0), MsrAnswer::WriteThrough);
        assert_eq!(write(IA32_XSS, XSS_PT, |_| 0), MsrAnswer::GeneralProtection);
        assert_eq!(
            write(IA32_XSS, XSS_PT | 1 << 11, |_| 0),
            MsrAnswer::GeneralProtection
        );
    }

    #[test]
    fn mtrr_and_tsc_msrs_are_the_callers() {
        let mtrrs = [0x2ff, 0x250, 0x258, 0x259]
            .into_iter()
            .chain(0x200..=0x213)
            .chain(0x268..=0x26f);
        for m in mtrrs {
            assert!(is_mtrr(m) && !is_tsc(m), "{m:#x}");
            assert!(intercept_read(m) && intercept_write(m), "{m:#x}");
            // Routed to the shadow first; the stateless answer never touches the hardware.
            assert_eq!(read(m, |_| panic!()), MsrAnswer::GeneralProtection);
            assert_eq!(write(m, 0, |_| panic!()), MsrAnswer::GeneralProtection);
        }
        for m in [
            0xfe, 0x1ff, 0x214, 0x24f, 0x251, 0x257, 0x25a, 0x267, 0x270, 0x2fe, 0x300,
        ] {
            assert!(!is_mtrr(m), "{m:#x}");
        }
        assert!(is_tsc(0x10) && is_tsc(0x3b));
        assert!(!is_tsc(0x0f) && !is_tsc(0x11) && !is_tsc(0x3a) && !is_tsc(0x3c));
        assert!(!is_tsc(IA32_TSC_DEADLINE) && !is_mtrr(0x10));
        for m in [IA32_TSC, IA32_TSC_ADJUST] {
            assert_eq!(read(m, |_| panic!()), MsrAnswer::GeneralProtection);
            assert_eq!(write(m, 0, |_| panic!()), MsrAnswer::GeneralProtection);
        }
    }

    // ---- MtrrShadow ----

    /// IA32_MTRRCAP with `vcnt` variable ranges, fixed ranges if `fix`, and WC.
    fn cap(vcnt: u64, fix: bool) -> u64 {
        vcnt | if fix { MTRRCAP_FIX } else { 0 } | 1 << 10
    }

    /// A shadow captured from hardware where every MTRR reads as `0x1000 + msr`, recording
    /// which MSRs were read.
    fn captured(mtrrcap: u64) -> (MtrrShadow, [bool; 0x300]) {
        let mut seen = [false; 0x300];
        let s = MtrrShadow::capture(mtrrcap, 40, |m| {
            assert!(!seen[m as usize], "{m:#x} read twice");
            seen[m as usize] = true;
            0x1000 + u64::from(m)
        });
        (s, seen)
    }

    /// Every MSR [`MtrrShadow::capture`] may read for `vcnt` pairs and fixed ranges if `fix`.
    fn expected_reads(vcnt: u32, fix: bool) -> [bool; 0x300] {
        let mut e = [false; 0x300];
        e[0x2ff] = true;
        for m in 0x200..0x200 + 2 * vcnt {
            e[m as usize] = true;
        }
        if fix {
            for m in MTRR_FIXED_MSRS {
                e[m as usize] = true;
            }
        }
        e
    }

    #[test]
    fn mtrr_constants_are_the_architectural_ones() {
        assert_eq!(IA32_MTRR_VARIABLE_LAST, 0x213);
        assert_eq!(
            MTRR_FIXED_MSRS,
            [0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f]
        );
        assert_eq!((MTRR_DEF_TYPE_FE, MTRR_DEF_TYPE_E), (0x400, 0x800));
        assert_eq!(MTRR_PHYSMASK_VALID, 0x800);
    }

    #[test]
    fn mtrr_capture_reads_only_what_mtrrcap_names() {
        for (vcnt, fix) in [(8, true), (0, false), (10, true), (1, false), (0, true)] {
            let (s, seen) = captured(cap(vcnt, fix));
            assert_eq!(seen, expected_reads(vcnt as u32, fix), "{vcnt} {fix}");
            assert_eq!(s.read(0x2ff), MsrAnswer::Value(0x1000 + 0x2ff));
        }
    }

    #[test]
    fn mtrr_capture_clamps_vcnt_to_ten_pairs() {
        let (s, seen) = captured(cap(0xff, false));
        assert_eq!(seen, expected_reads(10, false));
        assert_eq!(s.read(0x213), MsrAnswer::Value(0x1213));
        let (s, _) = captured(cap(11, false));
        assert_eq!(s.read(0x212), MsrAnswer::Value(0x1212));
    }

    #[test]
    fn mtrr_reads_give_the_captured_values_or_fault_when_absent() {
        let (s, _) = captured(cap(8, true));
        for m in (0x200..0x210).chain(MTRR_FIXED_MSRS) {
            assert_eq!(s.read(m), MsrAnswer::Value(0x1000 + u64::from(m)), "{m:#x}");
        }
        // Pairs 8 and 9 do not exist with VCNT 8.
        for m in 0x210..=0x213 {
            assert_eq!(s.read(m), MsrAnswer::GeneralProtection, "{m:#x}");
        }
        // No MSR outside the MTRRs is answered.
        for m in [0xfe, 0x1ff, 0x214, 0x251, 0x25a, 0x270, 0x2fe, 0x10] {
            assert_eq!(s.read(m), MsrAnswer::GeneralProtection, "{m:#x}");
        }
    }

    #[test]
    fn fixed_mtrrs_fault_without_mtrrcap_fix() {
        let (mut s, _) = captured(cap(2, false));
        for m in MTRR_FIXED_MSRS {
            assert_eq!(s.read(m), MsrAnswer::GeneralProtection, "{m:#x}");
            assert_eq!(s.write(m, 0), MsrAnswer::GeneralProtection, "{m:#x}");
        }
        assert_eq!(s.read(0x203), MsrAnswer::Value(0x1203));
        assert_eq!(s.read(0x204), MsrAnswer::GeneralProtection);
        assert_eq!(s.write(0x204, 6), MsrAnswer::GeneralProtection);
    }

    /// A fresh shadow with 2 variable pairs, fixed ranges, MAXPHYADDR 40, all zero.
    fn shadow() -> MtrrShadow {
        MtrrShadow::capture(cap(2, true), 40, |_| 0)
    }

    /// Whether `s` accepts `value` for `msr`: `Done` and stored, or #GP and unchanged.
    fn accepts(msr: u32, value: u64) -> bool {
        let mut s = shadow();
        let before = s;
        match s.write(msr, value) {
            MsrAnswer::Done => {
                assert_eq!(s.read(msr), MsrAnswer::Value(value), "{msr:#x} {value:#x}");
                true
            }
            MsrAnswer::GeneralProtection => {
                assert_eq!(s, before, "a refused write stores nothing");
                false
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mtrr_memory_types_are_uc_wc_wt_wp_wb() {
        for (t, ok) in [
            (0, true),
            (1, true),
            (2, false),
            (3, false),
            (4, true),
            (5, true),
            (6, true),
            (7, false),
            (8, false),
            (0xff, false),
        ] {
            assert_eq!(accepts(0x2ff, t), ok, "def type {t}");
            assert_eq!(accepts(0x200, 0x8000_0000 | t), ok, "base type {t}");
            assert_eq!(accepts(0x250, t * 0x0101_0101_0101_0101), ok, "fixed {t}");
        }
    }

    #[test]
    fn mtrr_def_type_has_only_type_fe_and_e() {
        assert!(accepts(0x2ff, 0xc06));
        assert!(accepts(0x2ff, MTRR_DEF_TYPE_E));
        assert!(accepts(0x2ff, MTRR_DEF_TYPE_FE));
        for b in [8, 9, 12, 13, 31, 32, 63] {
            assert!(!accepts(0x2ff, 0xc06 | 1 << b), "bit {b}");
        }
    }

    #[test]
    fn mtrr_physbase_reserved_bits() {
        assert!(accepts(0x202, 0x1000 | 6));
        for b in 8..12 {
            assert!(!accepts(0x202, 1 << b | 6), "bit {b}");
        }
        // MAXPHYADDR 40: bit 39 is an address bit, bit 40 is reserved.
        assert!(accepts(0x202, 1 << 39 | 6));
        assert!(!accepts(0x202, 1 << 40 | 6));
        assert!(!accepts(0x202, 1 << 63 | 6));
    }

    #[test]
    fn mtrr_physmask_reserved_bits() {
        assert!(accepts(0x203, MTRR_PHYSMASK_VALID));
        assert!(accepts(0x203, 0xff_ffff_f000 | MTRR_PHYSMASK_VALID));
        assert!(accepts(0x203, 0x1000));
        for b in 0..11 {
            assert!(!accepts(0x203, 1 << b | MTRR_PHYSMASK_VALID), "bit {b}");
        }
        assert!(accepts(0x203, 1 << 39 | MTRR_PHYSMASK_VALID));
        assert!(!accepts(0x203, 1 << 40 | MTRR_PHYSMASK_VALID));
        assert!(!accepts(0x203, 1 << 63));
    }

    #[test]
    fn mtrr_phys_bits_follow_maxphyaddr_within_the_architecture() {
        let wide = |bits: u8, value: u64| {
            MtrrShadow::capture(cap(1, false), bits, |_| 0).write(0x201, value)
        };
        assert_eq!(wide(46, 1 << 45), MsrAnswer::Done);
        assert_eq!(wide(46, 1 << 46), MsrAnswer::GeneralProtection);
        assert_eq!(wide(52, 1 << 51), MsrAnswer::Done);
        assert_eq!(wide(52, 1 << 52), MsrAnswer::GeneralProtection);
        // Above the architectural 52 bits: still 52. Below 36 (unknown): 36.
        assert_eq!(wide(64, 1 << 52), MsrAnswer::GeneralProtection);
        assert_eq!(wide(0, 1 << 35), MsrAnswer::Done);
        assert_eq!(wide(0, 1 << 36), MsrAnswer::GeneralProtection);
    }

    #[test]
    fn fixed_mtrrs_check_every_byte() {
        let wb = 0x0606_0606_0606_0606u64;
        for m in MTRR_FIXED_MSRS {
            assert!(accepts(m, wb), "{m:#x}");
            assert!(accepts(m, 0x0605_0400_0106_0504), "{m:#x}");
        }
        for byte in 0..8 {
            for bad in [2u64, 3, 7, 0x80] {
                let v = (wb & !(0xff << (8 * byte))) | bad << (8 * byte);
                assert!(!accepts(0x26f, v), "byte {byte} = {bad}");
            }
        }
    }

    #[test]
    fn mtrr_writes_stay_in_the_shadow() {
        let mut s = shadow();
        assert_eq!(s.write(0x200, 0x8000_0000 | 6), MsrAnswer::Done);
        assert_eq!(s.write(0x201, 0xff_8000_0800), MsrAnswer::Done);
        assert_eq!(s.write(0x2ff, 0xc00), MsrAnswer::Done);
        assert_eq!(s.read(0x200), MsrAnswer::Value(0x8000_0006));
        assert_eq!(s.read(0x201), MsrAnswer::Value(0xff_8000_0800));
        assert_eq!(s.read(0x2ff), MsrAnswer::Value(0xc00));
        // The other pair is untouched.
        assert_eq!(s.read(0x202), MsrAnswer::Value(0));
        // No MSR outside the MTRRs is stored.
        assert_eq!(s.write(0x10, 0), MsrAnswer::GeneralProtection);
        assert_eq!(s.write(0xfe, 0), MsrAnswer::GeneralProtection);
        assert_eq!(s.write(0x204, 6), MsrAnswer::GeneralProtection);
    }

    // ---- TscState ----

    /// Values at the edges of the u64 range and some in between.
    const EDGES: [u64; 8] = [
        0,
        1,
        1_000_000,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        0x0123_4567_89ab_cdef,
        u64::MAX - 1,
        u64::MAX,
    ];

    #[test]
    fn a_new_tsc_is_the_hosts() {
        let t = TscState::new(0x55);
        assert_eq!(t.offset(), 0);
        assert_eq!(t.read_adjust(), 0x55);
        assert_eq!(t.guest_tsc(12345), 12345);
        assert!(!t.deadline_needs_intercept());
    }

    #[test]
    fn a_tsc_write_sets_the_guest_tsc_at_that_instant() {
        for host in EDGES {
            for value in EDGES {
                let mut t = TscState::new(0);
                t.write_tsc(host, value);
                assert_eq!(t.guest_tsc(host), value, "{host:#x} {value:#x}");
                // And counts on with the host.
                assert_eq!(t.guest_tsc(host.wrapping_add(7)), value.wrapping_add(7));
                assert_eq!(t.offset(), value.wrapping_sub(host));
            }
        }
    }

    #[test]
    fn a_tsc_write_moves_the_adjust_view_by_the_same_delta() {
        let mut t = TscState::new(100);
        t.write_tsc(1_000, 1_500);
        assert_eq!(t.read_adjust(), 600);
        // Backwards, below zero: wraps as two's complement.
        t.write_tsc(2_000, 0);
        assert_eq!(t.read_adjust(), 600u64.wrapping_sub(2_500));
        assert_eq!(t.read_adjust() as i64, -1_900);
        assert_eq!(t.offset() as i64, -2_000);
        // Writing the value the TSC has anyway moves nothing.
        let before = t;
        t.write_tsc(5_000, t.guest_tsc(5_000));
        assert_eq!(t, before);
    }

    #[test]
    fn a_tsc_write_near_the_top_wraps() {
        let mut t = TscState::new(0);
        t.write_tsc(10, u64::MAX - 4);
        assert_eq!(t.offset(), u64::MAX - 14);
        assert_eq!(t.guest_tsc(14), u64::MAX);
        assert_eq!(t.guest_tsc(15), 0);
        assert_eq!(t.read_adjust(), u64::MAX - 14);
    }

    #[test]
    fn an_adjust_write_moves_the_tsc() {
        let mut t = TscState::new(1_000);
        t.write_adjust(1_250);
        assert_eq!(t.read_adjust(), 1_250);
        assert_eq!(t.offset(), 250);
        assert_eq!(t.guest_tsc(10_000), 10_250);
        // Back below the native value: a negative offset.
        t.write_adjust(0);
        assert_eq!(t.offset() as i64, -1_000);
        assert_eq!(t.guest_tsc(10_000), 9_000);
        // Back to the native value: the host's TSC again.
        t.write_adjust(1_000);
        assert_eq!(t.offset(), 0);
        assert!(!t.deadline_needs_intercept());
    }

    #[test]
    fn an_adjust_write_wraps() {
        let mut t = TscState::new(5);
        t.write_adjust(u64::MAX);
        assert_eq!(t.offset(), u64::MAX - 5);
        assert_eq!(t.guest_tsc(6), 0);
        t.write_adjust(3);
        assert_eq!(t.offset() as i64, -2);
    }

    #[test]
    fn the_offset_always_equals_the_adjust_moved() {
        // As on hardware: whatever the sequence, the TSC has moved by what IA32_TSC_ADJUST has.
        for native in EDGES {
            let mut t = TscState::new(native);
            for (i, v) in EDGES.iter().enumerate() {
                if i % 2 == 0 {
                    t.write_tsc(v.rotate_left(17), *v);
                } else {
                    t.write_adjust(v.wrapping_mul(3));
                }
                assert_eq!(t.offset(), t.read_adjust().wrapping_sub(native));
                assert_eq!(t.deadline_needs_intercept(), t.offset() != 0);
            }
        }
    }

    #[test]
    fn deadline_zero_disarms_both_ways() {
        for offset in EDGES {
            let mut t = TscState::new(0);
            t.write_adjust(offset);
            assert_eq!(t.deadline_to_host(0), 0);
            assert_eq!(t.deadline_to_guest(0), 0);
            assert_eq!(t.deadline_to_host_at(0, 1234), 0);
        }
    }

    #[test]
    fn deadlines_convert_by_the_offset() {
        let mut t = TscState::new(0);
        t.write_tsc(1_000, 11_000); // offset 10_000
        assert_eq!(t.deadline_to_host(15_000), 5_000);
        assert_eq!(t.deadline_to_guest(5_000), 15_000);
        // A negative offset.
        t.write_tsc(20_000, 0); // offset -20_000
        assert_eq!(t.deadline_to_host(1), 20_001);
        assert_eq!(t.deadline_to_guest(20_001), 1);
        // The guest TSC reaches the deadline exactly when the host TSC reaches its conversion.
        for g in EDGES.into_iter().filter(|g| *g != 0) {
            let h = t.deadline_to_host(g);
            assert_eq!(t.guest_tsc(h), g, "{g:#x}");
            assert_eq!(t.deadline_to_guest(h), g, "{g:#x}");
        }
    }

    #[test]
    fn a_nonzero_deadline_never_converts_to_zero() {
        for offset in EDGES {
            let mut t = TscState::new(0);
            t.write_adjust(offset);
            for v in EDGES.into_iter().chain([offset, offset.wrapping_neg()]) {
                if v == 0 {
                    continue;
                }
                assert_ne!(t.deadline_to_host(v), 0, "{offset:#x} {v:#x}");
                assert_ne!(t.deadline_to_guest(v), 0, "{offset:#x} {v:#x}");
                for host in EDGES {
                    assert_ne!(t.deadline_to_host_at(v, host), 0);
                }
            }
        }
    }

    #[test]
    fn the_deadline_at_host_zero_stays_armed() {
        let mut t = TscState::new(0);
        t.write_tsc(0, 5_000); // offset 5_000: guest deadline 5_000 is host TSC 0
        assert_eq!(t.deadline_to_host(5_000), 1);
        assert_eq!(t.deadline_to_host(5_001), 1);
        assert_eq!(t.deadline_to_host(5_002), 2);
        // The one host value that would read back as 0.
        let mut m = TscState::new(0);
        m.write_adjust(u64::MAX);
        assert_eq!(m.deadline_to_host(u64::MAX), 1);
        assert_eq!(m.deadline_to_guest(1), u64::MAX);
        assert_eq!(m.deadline_to_guest(2), 1);
    }

    #[test]
    fn a_deadline_judged_now_fires_when_due() {
        let mut t = TscState::new(0);
        t.write_tsc(1_000, 1_000_000); // offset 999_000
                                       // Due or past (even before the guest TSC at host 0): fires at once.
        for g in [1_000_000, 999_999, 999_000, 500, 1] {
            assert_eq!(t.deadline_to_host_at(g, 1_000), 1_000, "{g}");
        }
        // The stateless conversion wraps for the long-past one.
        assert_eq!(t.deadline_to_host(500), 500u64.wrapping_sub(999_000));
        // Future: the host TSC plus the ticks left, as the stateless conversion.
        assert_eq!(t.deadline_to_host_at(1_000_001, 1_000), 1_001);
        assert_eq!(t.deadline_to_host(1_000_001), 1_001);
        assert_eq!(t.deadline_to_host_at(u64::MAX, 1_000), u64::MAX - 999_000);
        // At host TSC 0 a due deadline still arms (1, not 0).
        let n = TscState::new(0);
        assert_eq!(n.deadline_to_host_at(0x10, 0), 0x10);
        let mut z = TscState::new(0);
        z.write_tsc(0, 0x20);
        assert_eq!(z.deadline_to_host_at(0x10, 0), 1);
    }

    #[test]
    fn a_deadline_judged_now_saturates_beyond_the_host_range() {
        let mut t = TscState::new(0);
        t.write_tsc(u64::MAX - 10, 0); // the guest TSC starts over while the host's is near the top
        assert_eq!(t.deadline_to_host_at(100, u64::MAX - 10), u64::MAX);
        assert_eq!(t.deadline_to_host_at(5, u64::MAX - 10), u64::MAX - 5);
    }
}
