//! The VMCALL wrapper and Shoji detection through CPUID.

use shoji_shared::vmcall::{CPUID_LEAF_SIGNATURE, SIGNATURE};

/// Issue `VMCALL` with the given registers; returns `(rax, rbx, rcx, rdx)` after the call.
///
/// Only call this after [`detect`] succeeded: without a hypervisor that handles it, `VMCALL`
/// raises `#UD` and the process dies with SIGILL.
#[cfg(target_arch = "x86_64")]
pub fn vmcall(rax: u64, rbx: u64, rcx: u64, rdx: u64, rsi: u64) -> (u64, u64, u64, u64) {
    let (mut a, mut b, mut c, mut d) = (rax, rbx, rcx, rdx);
    // SAFETY: VMCALL only transfers control to the hypervisor, which reads and writes the
    // registers named here and, for buffer calls, the caller's memory it was told about. RBX is
    // reserved by LLVM, so it is swapped through a scratch register around the instruction.
    unsafe {
        core::arch::asm!(
            "xchg {b}, rbx",
            "vmcall",
            "xchg {b}, rbx",
            b = inout(reg) b,
            inout("rax") a,
            inout("rcx") c,
            inout("rdx") d,
            in("rsi") rsi,
            options(nostack),
        );
    }
    (a, b, c, d)
}

/// What CPUID leaf 0x40000000 said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Shoji is there; the highest leaf it answers.
    Shoji {
        /// Highest hypervisor CPUID leaf.
        max_leaf: u32,
    },
    /// Another hypervisor (its signature) or none at all.
    Absent {
        /// The 12 signature bytes found, if the hypervisor bit was set.
        other: Option<[u8; 12]>,
    },
}

/// Detect Shoji through CPUID (hypervisor bit, then leaf 0x40000000's signature).
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)] // `__cpuid` became safe in Rust 1.87; the MSRV is 1.85.
pub fn detect() -> Presence {
    use core::arch::x86_64::__cpuid;
    // SAFETY: CPUID is available on every x86-64 CPU and has no side effects.
    let l1 = unsafe { __cpuid(1) };
    if l1.ecx & (1 << 31) == 0 {
        return Presence::Absent { other: None };
    }
    // SAFETY: as above.
    let r = unsafe { __cpuid(CPUID_LEAF_SIGNATURE) };
    classify(r.eax, r.ebx, r.ecx, r.edx)
}

/// Whether Shoji says it mediates the NIC (CPUID leaf 0x40000001, EBX): without it the policy
/// calls answer Unsupported and frames bypass the policy.
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)] // `__cpuid` became safe in Rust 1.87; the MSRV is 1.85.
pub fn nic_mediated() -> bool {
    // SAFETY: CPUID is available on every x86-64 CPU and has no side effects.
    let r = unsafe { core::arch::x86_64::__cpuid(shoji_shared::vmcall::CPUID_LEAF_VERSION) };
    r.ebx & shoji_shared::vmcall::FEATURE_NIC_MEDIATED != 0
}

/// Non-x86 builds never find Shoji.
#[cfg(not(target_arch = "x86_64"))]
pub fn nic_mediated() -> bool {
    false
}

/// Non-x86 builds never find Shoji.
#[cfg(not(target_arch = "x86_64"))]
pub fn detect() -> Presence {
    Presence::Absent { other: None }
}

/// Decide from the registers of leaf 0x40000000.
pub fn classify(eax: u32, ebx: u32, ecx: u32, edx: u32) -> Presence {
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&ecx.to_le_bytes());
    sig[8..].copy_from_slice(&edx.to_le_bytes());
    if sig == SIGNATURE {
        Presence::Shoji { max_leaf: eax }
    } else {
        Presence::Absent { other: Some(sig) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoji_shared::vmcall::signature_registers;

    #[test]
    fn classify_signature() {
        let (b, c, d) = signature_registers();
        assert_eq!(
            classify(0x4000_0001, b, c, d),
            Presence::Shoji {
                max_leaf: 0x4000_0001
            }
        );
        assert!(matches!(
            classify(0x4000_0001, 0x4b4d564b, 0x564b4d56, 0x4d),
            Presence::Absent { other: Some(_) }
        ));
    }
}
