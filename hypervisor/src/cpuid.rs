//! What the guest sees for CPUID: the hardware's answer with VMX hidden, the hypervisor bit set,
//! and Shoji's signature leaves. The trace and sample features that write records to physical
//! addresses, also while Shoji runs (Intel PT, the DS save area for BTS and PEBS), are hidden
//! too: their MSRs #GP as on a CPU without them (see [`crate::msr`]).

use shoji_shared::vmcall::{
    signature_registers, ABI_VERSION, CPUID_LEAF_MAX, CPUID_LEAF_SIGNATURE, CPUID_LEAF_VERSION,
};

/// The four CPUID output registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidRegs {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// CPUID.1:ECX bit for VMX.
pub const LEAF1_ECX_VMX: u32 = 1 << 5;
/// CPUID.1:ECX bit 31: a hypervisor is present.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 2: DTES64, the 64-bit DS area layout.
pub const LEAF1_ECX_DTES64: u32 = 1 << 2;
/// CPUID.1:ECX bit 4: DS-CPL, CPL-qualified branch store.
pub const LEAF1_ECX_DS_CPL: u32 = 1 << 4;
/// CPUID.1:EDX bit 21: DS, the debug store (BTS and PEBS records, IA32_DS_AREA).
pub const LEAF1_EDX_DS: u32 = 1 << 21;
/// CPUID.(7,0):EBX bit 25: Intel Processor Trace.
pub const LEAF7_EBX_INTEL_PT: u32 = 1 << 25;
/// CPUID leaf 0x14: the Intel PT capabilities (all sub-leaves).
pub const LEAF_INTEL_PT: u32 = 0x14;
/// CPUID leaf 0xd: the XSAVE state components.
pub const LEAF_XSAVE: u32 = 0xd;
/// CPUID.(0xd,1):ECX bit 8: IA32_XSS may enable the Intel PT state component.
pub const LEAFD1_ECX_XSS_PT: u32 = 1 << 8;
/// The Intel PT state component's number, also its CPUID.(0xd, n) sub-leaf.
pub const XSAVE_COMPONENT_PT: u32 = 8;

/// CPUID.1:ECX bit 27: CR4.OSXSAVE is set.
pub const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
/// CPUID.(7,0):ECX bit 4: CR4.PKE is set.
pub const LEAF7_ECX_OSPKE: u32 = 1 << 4;
/// CR4.OSXSAVE.
const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.PKE.
const CR4_PKE: u64 = 1 << 22;

fn with_bit(value: u32, bit: u32, on: bool) -> u32 {
    if on {
        value | bit
    } else {
        value & !bit
    }
}

/// The guest's view of CPUID leaf `leaf` (sub-leaf `subleaf`) given the hardware's answer, the
/// guest's own CR4 (the hardware answer reflects Shoji's host CR4 in the OS-enable bits) and
/// Shoji's feature bits (leaf 0x40000001's EBX).
pub fn guest_view(
    leaf: u32,
    subleaf: u32,
    native: CpuidRegs,
    guest_cr4: u64,
    features: u32,
) -> CpuidRegs {
    match leaf {
        1 => CpuidRegs {
            ecx: with_bit(
                (native.ecx & !(LEAF1_ECX_VMX | LEAF1_ECX_DTES64 | LEAF1_ECX_DS_CPL))
                    | LEAF1_ECX_HYPERVISOR,
                LEAF1_ECX_OSXSAVE,
                guest_cr4 & CR4_OSXSAVE != 0,
            ),
            edx: native.edx & !LEAF1_EDX_DS,
            ..native
        },
        7 if subleaf == 0 => CpuidRegs {
            ebx: native.ebx & !LEAF7_EBX_INTEL_PT,
            ecx: with_bit(native.ecx, LEAF7_ECX_OSPKE, guest_cr4 & CR4_PKE != 0),
            ..native
        },
        // No Intel PT: no capabilities, and no XSAVE state component for it.
        LEAF_INTEL_PT => CpuidRegs::default(),
        LEAF_XSAVE if subleaf == 1 => CpuidRegs {
            ecx: native.ecx & !LEAFD1_ECX_XSS_PT,
            ..native
        },
        LEAF_XSAVE if subleaf == XSAVE_COMPONENT_PT => CpuidRegs::default(),
        CPUID_LEAF_SIGNATURE => {
            let (ebx, ecx, edx) = signature_registers();
            CpuidRegs {
                eax: CPUID_LEAF_MAX,
                ebx,
                ecx,
                edx,
            }
        }
        CPUID_LEAF_VERSION => CpuidRegs {
            eax: ABI_VERSION,
            ebx: features,
            ..CpuidRegs::default()
        },
        // The rest of the hypervisor range is Shoji's and empty.
        0x4000_0002..=0x4000_00ff => CpuidRegs::default(),
        _ => native,
    }
}

/// The TSC frequency in Hz from CPUID: leaf 0x15 (crystal clock times the TSC/crystal ratio)
/// when it names the crystal, else leaf 0x16 (processor base frequency in MHz, which Intel
/// parts with an invariant TSC run it at). `max_leaf` is CPUID.0.EAX. `None` when neither says.
pub fn tsc_hz(max_leaf: u32, leaf15: CpuidRegs, leaf16: CpuidRegs) -> Option<u64> {
    if max_leaf >= 0x15 && leaf15.eax != 0 && leaf15.ebx != 0 && leaf15.ecx != 0 {
        return Some(u64::from(leaf15.ecx) * u64::from(leaf15.ebx) / u64::from(leaf15.eax));
    }
    if max_leaf >= 0x16 && leaf16.eax & 0xffff != 0 {
        return Some(u64::from(leaf16.eax & 0xffff) * 1_000_000);
    }
    None
}

/// Lowest TSC frequency [`calibrated_hz`] accepts (100 MHz).
pub const CALIBRATION_MIN_HZ: u64 = 100_000_000;
/// Highest TSC frequency [`calibrated_hz`] accepts (20 GHz).
pub const CALIBRATION_MAX_HZ: u64 = 20_000_000_000;

/// The TSC frequency from a measurement: `ticks` TSC ticks during a firmware stall of
/// `micros` microseconds. `None` when the measurement is implausible (no time, or a frequency
/// outside 100 MHz - 20 GHz: a firmware whose stall is not real time).
pub fn calibrated_hz(ticks: u64, micros: u64) -> Option<u64> {
    if micros == 0 {
        return None;
    }
    let hz = u128::from(ticks) * 1_000_000 / u128::from(micros);
    let hz = u64::try_from(hz).ok()?;
    (CALIBRATION_MIN_HZ..=CALIBRATION_MAX_HZ)
        .contains(&hz)
        .then_some(hz)
}

#[cfg(test)]
mod tests {
    #[test]
    fn calibration_gives_the_frequency_and_refuses_nonsense() {
        assert_eq!(calibrated_hz(70_000_000, 20_000), Some(3_500_000_000));
        assert_eq!(calibrated_hz(2_000_000, 20_000), Some(100_000_000));
        assert_eq!(calibrated_hz(1_999_999, 20_000), None);
        assert_eq!(calibrated_hz(400_000_000, 20_000), Some(20_000_000_000));
        assert_eq!(calibrated_hz(400_000_020, 20_000), None);
        assert_eq!(calibrated_hz(70_000_000, 0), None);
        assert_eq!(calibrated_hz(u64::MAX, 1), None);
        assert_eq!(calibrated_hz(0, 20_000), None);
    }

    use super::*;
    use shoji_shared::vmcall::FEATURE_NIC_MEDIATED;

    #[test]
    fn leaf1_hides_vmx_and_sets_hypervisor_bit() {
        let native = CpuidRegs {
            eax: 0x50654,
            ebx: 1,
            ecx: 0x7ffa_fbff,
            edx: 0xbfeb_fbff,
        };
        let g = guest_view(1, 0, native, CR4_OSXSAVE, 0);
        assert_eq!(g.ecx & LEAF1_ECX_VMX, 0);
        assert_ne!(g.ecx & LEAF1_ECX_HYPERVISOR, 0);
        // DTES64 and DS-CPL go with VMX; DS is the only EDX bit hidden.
        assert_eq!(g.ecx & (LEAF1_ECX_DTES64 | LEAF1_ECX_DS_CPL), 0);
        assert_eq!(
            g.ecx | LEAF1_ECX_VMX | LEAF1_ECX_DTES64 | LEAF1_ECX_DS_CPL,
            native.ecx | LEAF1_ECX_HYPERVISOR
        );
        assert_ne!(native.edx & LEAF1_EDX_DS, 0);
        assert_eq!(g.edx, native.edx & !LEAF1_EDX_DS);
        assert_eq!((g.eax, g.ebx), (native.eax, native.ebx));
    }

    #[test]
    fn os_enable_bits_follow_the_guest_cr4() {
        let native = CpuidRegs {
            eax: 0,
            ebx: 0,
            ecx: LEAF1_ECX_OSXSAVE | (1 << 26),
            edx: 0,
        };
        assert_eq!(guest_view(1, 0, native, 0, 0).ecx & LEAF1_ECX_OSXSAVE, 0);
        assert_ne!(
            guest_view(1, 0, native, CR4_OSXSAVE, 0).ecx & LEAF1_ECX_OSXSAVE,
            0
        );
        let n7 = CpuidRegs {
            eax: 0,
            ebx: 0,
            ecx: LEAF7_ECX_OSPKE | 8,
            edx: 0,
        };
        assert_eq!(guest_view(7, 0, n7, 0, 0).ecx, 8);
        assert_eq!(guest_view(7, 0, n7, CR4_PKE, 0).ecx, 8 | LEAF7_ECX_OSPKE);
        let no_osxsave = CpuidRegs { ecx: 1 << 26, ..n7 };
        assert_ne!(
            guest_view(1, 0, no_osxsave, CR4_OSXSAVE, 0).ecx & LEAF1_ECX_OSXSAVE,
            0
        );
    }

    #[test]
    fn architectural_bit_positions() {
        // The SDM's positions, written out: VMX is CPUID.1:ECX[5], the hypervisor bit ECX[31],
        // OSPKE is CPUID.(7,0):ECX[4], OSXSAVE CPUID.1:ECX[27], DTES64 CPUID.1:ECX[2], DS-CPL
        // CPUID.1:ECX[4], DS CPUID.1:EDX[21], Intel PT CPUID.(7,0):EBX[25], PT in IA32_XSS
        // CPUID.(0xd,1):ECX[8].
        let all = CpuidRegs {
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
        };
        let g = guest_view(1, 0, all, CR4_OSXSAVE, 0);
        assert_eq!(
            g.ecx,
            !(1u32 << 5) & !(1 << 2) & !(1 << 4),
            "only VMX, DTES64 and DS-CPL are hidden; a set bit 31 stays set"
        );
        assert_eq!(g.edx, !(1u32 << 21));
        assert_eq!((g.eax, g.ebx), (u32::MAX, u32::MAX));
        assert_eq!(
            guest_view(1, 0, all, 0, 0).ecx,
            !(1 << 5) & !(1 << 2) & !(1 << 4) & !(1 << 27)
        );
        let g7 = guest_view(7, 0, all, 0, 0);
        assert_eq!(g7.ecx, !(1u32 << 4));
        assert_eq!(g7.ebx, !(1u32 << 25));
        assert_eq!((g7.eax, g7.edx), (u32::MAX, u32::MAX));
        // Only sub-leaf 0 of leaf 7 carries OSPKE and PT: other sub-leaves pass unchanged.
        assert_eq!(guest_view(7, 1, all, 0, 0), all);
        let gd = guest_view(0xd, 1, all, 0, 0);
        assert_eq!(
            gd,
            CpuidRegs {
                ecx: !(1 << 8),
                ..all
            }
        );
    }

    #[test]
    fn intel_pt_is_hidden() {
        let all = CpuidRegs {
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
        };
        // Leaf 0x14, every sub-leaf: no PT capabilities.
        for subleaf in [0, 1, 2, 0xffff_ffff] {
            assert_eq!(
                guest_view(0x14, subleaf, all, 0, 0),
                CpuidRegs::default(),
                "{subleaf}"
            );
        }
        // Leaf 0xd: sub-leaf 8 (the PT state component) is empty, IA32_XSS cannot enable it;
        // the other components pass.
        assert_eq!(guest_view(0xd, 8, all, 0, 0), CpuidRegs::default());
        for subleaf in [0, 2, 7, 9, 12] {
            assert_eq!(guest_view(0xd, subleaf, all, 0, 0), all, "{subleaf}");
        }
        // The neighbouring leaves pass.
        assert_eq!(guest_view(0x13, 0, all, 0, 0), all);
        assert_eq!(guest_view(0x15, 0, all, 0, 0), all);
    }

    #[test]
    fn signature_and_version_leaves() {
        let native = CpuidRegs {
            eax: 7,
            ebx: 8,
            ecx: 9,
            edx: 10,
        };
        let s = guest_view(0x4000_0000, 0, native, 0, 0);
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&s.ebx.to_le_bytes());
        bytes[4..8].copy_from_slice(&s.ecx.to_le_bytes());
        bytes[8..].copy_from_slice(&s.edx.to_le_bytes());
        assert_eq!(&bytes, b"ShojiShojiHV");
        assert_eq!(s.eax, 0x4000_0001);
        assert_eq!(guest_view(0x4000_0001, 0, native, 0, 0).eax, ABI_VERSION);
        // The feature bits are Shoji's, never the hardware's.
        let v = guest_view(0x4000_0001, 0, native, 0, FEATURE_NIC_MEDIATED);
        assert_eq!((v.eax, v.ebx), (ABI_VERSION, FEATURE_NIC_MEDIATED));
        assert_eq!(guest_view(0x4000_0001, 0, native, 0, 0).ebx, 0);
        assert_eq!(
            guest_view(0x4000_0010, 0, native, 0, 0),
            CpuidRegs::default()
        );
        assert_eq!(guest_view(0, 0, native, 0, 0), native);
        assert_eq!(guest_view(0x8000_0001, 0, native, 0, 0), native);
    }

    #[test]
    fn tsc_frequency_from_leaf_15_then_16() {
        let r = |eax, ebx, ecx| CpuidRegs {
            eax,
            ebx,
            ecx,
            edx: 0,
        };
        let none = r(0, 0, 0);
        // 24 MHz crystal, ratio 146/2.
        assert_eq!(
            tsc_hz(0x16, r(2, 146, 24_000_000), r(3500, 0, 0,)),
            Some(1_752_000_000)
        );
        // Leaf 0x15 without the crystal: leaf 0x16's base frequency.
        assert_eq!(
            tsc_hz(0x16, r(2, 146, 0), r(3500, 3900, 100)),
            Some(3_500_000_000)
        );
        assert_eq!(tsc_hz(0x14, none, r(3500, 0, 0)), None);
        assert_eq!(tsc_hz(0x16, none, none), None);
    }
}
