//! What a guest write to CR0 does, decided as the processor would: the checks that make the
//! instruction fault (#GP), and whether the write enters or leaves IA-32e mode (EFER.LMA and the
//! VM-entry control that follows it). Host-tested; `vmx::exit` applies the answer. A write the
//! hardware would refuse must never reach VM entry: there it is a failed entry, which is fatal.

/// CR0.PE.
pub const CR0_PE: u64 = 1;
/// CR0.NW.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.PCIDE.
pub const CR4_PCIDE: u64 = 1 << 17;
/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;

/// The state a CR0 write is judged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cr0Context {
    /// CR0 before the write (as the guest set it).
    pub old: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// CS.L: the guest runs 64-bit code.
    pub cs_long: bool,
}

/// The outcome of a CR0 write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cr0Write {
    /// #GP(0): the write does not happen.
    Fault,
    /// The write happens; `ia32e` is `Some(on)` when it enters (`true`) or leaves IA-32e mode.
    Apply {
        /// The IA-32e mode change, if any.
        ia32e: Option<bool>,
    },
}

/// Judge a guest write of `value` to CR0.
pub fn write_cr0(value: u64, c: &Cr0Context) -> Cr0Write {
    let sets_pg = value & CR0_PG != 0;
    let pg_changes = (c.old ^ value) & CR0_PG != 0;
    let lme = c.efer & EFER_LME != 0;
    let faults = value >> 32 != 0
        || (sets_pg && value & CR0_PE == 0)
        || (value & CR0_NW != 0 && value & CR0_CD == 0)
        // Paging on with LME needs PAE (IA-32e paging).
        || (pg_changes && sets_pg && lme && c.cr4 & CR4_PAE == 0)
        // Paging off: never from 64-bit code, never with PCIDs on.
        || (pg_changes && !sets_pg && (c.cs_long || c.cr4 & CR4_PCIDE != 0));
    if faults {
        return Cr0Write::Fault;
    }
    Cr0Write::Apply {
        ia32e: (pg_changes && lme).then_some(sets_pg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Cr0Context = Cr0Context {
        old: CR0_PE | CR0_PG,
        cr4: CR4_PAE,
        efer: EFER_LME | (1 << 10),
        cs_long: true,
    };

    #[test]
    fn paging_off_from_64_bit_code_or_with_pcids_faults() {
        assert_eq!(write_cr0(CR0_PE, &LONG), Cr0Write::Fault);
        let pcid = Cr0Context {
            cs_long: false,
            cr4: CR4_PAE | CR4_PCIDE,
            ..LONG
        };
        assert_eq!(write_cr0(CR0_PE, &pcid), Cr0Write::Fault);
        // From compatibility mode without PCIDs: IA-32e mode is left.
        let compat = Cr0Context {
            cs_long: false,
            ..LONG
        };
        assert_eq!(
            write_cr0(CR0_PE, &compat),
            Cr0Write::Apply { ia32e: Some(false) }
        );
    }

    #[test]
    fn entering_ia32e_mode_needs_pae() {
        let before = Cr0Context {
            old: CR0_PE,
            cr4: CR4_PAE,
            efer: EFER_LME,
            cs_long: false,
        };
        assert_eq!(
            write_cr0(CR0_PE | CR0_PG, &before),
            Cr0Write::Apply { ia32e: Some(true) }
        );
        let no_pae = Cr0Context { cr4: 0, ..before };
        assert_eq!(write_cr0(CR0_PE | CR0_PG, &no_pae), Cr0Write::Fault);
        // Without LME, paging is 32-bit or PAE paging: no mode change.
        let legacy = Cr0Context {
            efer: 0,
            cr4: 0,
            ..before
        };
        assert_eq!(
            write_cr0(CR0_PE | CR0_PG, &legacy),
            Cr0Write::Apply { ia32e: None }
        );
    }

    #[test]
    fn the_architectural_checks_fault() {
        let c = Cr0Context {
            cs_long: false,
            ..LONG
        };
        for bad in [
            1u64 << 32 | CR0_PE | CR0_PG,
            CR0_PG,
            CR0_PE | CR0_PG | CR0_NW,
        ] {
            assert_eq!(write_cr0(bad, &c), Cr0Write::Fault, "{bad:#x}");
        }
        // Writes that keep PG: no mode change, whatever else changes.
        assert_eq!(
            write_cr0(CR0_PE | CR0_PG | CR0_CD | CR0_NW, &LONG),
            Cr0Write::Apply { ia32e: None }
        );
        assert_eq!(
            write_cr0(CR0_PE | CR0_PG | (1 << 16), &LONG),
            Cr0Write::Apply { ia32e: None }
        );
    }
}
