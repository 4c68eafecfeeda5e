//! What the guest sees for CPUID: the hardware's answer with VMX hidden, the hypervisor bit set,
//! and Shoji's signature leaves.

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

/// The guest's view of CPUID leaf `leaf` (sub-leaf `_subleaf`) given the hardware's answer.
pub fn guest_view(leaf: u32, _subleaf: u32, native: CpuidRegs) -> CpuidRegs {
    match leaf {
        1 => CpuidRegs {
            ecx: (native.ecx & !LEAF1_ECX_VMX) | LEAF1_ECX_HYPERVISOR,
            ..native
        },
        CPUID_LEAF_SIGNATURE => {
            let (ebx, ecx, edx) = signature_registers();
            CpuidRegs { eax: CPUID_LEAF_MAX, ebx, ecx, edx }
        }
        CPUID_LEAF_VERSION => CpuidRegs { eax: ABI_VERSION, ..CpuidRegs::default() },
        // The rest of the hypervisor range is Shoji's and empty.
        0x4000_0002..=0x4000_00ff => CpuidRegs::default(),
        _ => native,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf1_hides_vmx_and_sets_hypervisor_bit() {
        let native = CpuidRegs { eax: 0x50654, ebx: 1, ecx: 0x7ffa_fbff, edx: 0xbfeb_fbff };
        let g = guest_view(1, 0, native);
        assert_eq!(g.ecx & LEAF1_ECX_VMX, 0);
        assert_ne!(g.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(g.ecx | LEAF1_ECX_VMX, native.ecx | LEAF1_ECX_HYPERVISOR);
        assert_eq!((g.eax, g.ebx, g.edx), (native.eax, native.ebx, native.edx));
    }

    #[test]
    fn signature_and_version_leaves() {
        let native = CpuidRegs { eax: 7, ebx: 8, ecx: 9, edx: 10 };
        let s = guest_view(0x4000_0000, 0, native);
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&s.ebx.to_le_bytes());
        bytes[4..8].copy_from_slice(&s.ecx.to_le_bytes());
        bytes[8..].copy_from_slice(&s.edx.to_le_bytes());
        assert_eq!(&bytes, b"ShojiShojiHV");
        assert_eq!(s.eax, 0x4000_0001);
        assert_eq!(guest_view(0x4000_0001, 0, native).eax, ABI_VERSION);
        assert_eq!(guest_view(0x4000_0010, 0, native), CpuidRegs::default());
        assert_eq!(guest_view(0, 0, native), native);
        assert_eq!(guest_view(0x8000_0001, 0, native), native);
    }
}
