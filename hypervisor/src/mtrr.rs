//! MTRR memory types: which caching type the firmware gave each physical range, so the EPT can
//! map guest memory with the same types (large pages only where a range is uniform).

/// Uncacheable.
pub const UC: u8 = 0;
/// Write-combining.
pub const WC: u8 = 1;
/// Write-through.
pub const WT: u8 = 4;
/// Write-protected.
pub const WP: u8 = 5;
/// Write-back.
pub const WB: u8 = 6;

/// Number of fixed-range type bytes (11 MSRs of 8 bytes each).
pub const FIXED_BYTES: usize = 88;
/// Maximum number of variable ranges read.
pub const MAX_VARIABLE: usize = 16;
/// End of the fixed-range area.
pub const FIXED_END: u64 = 0x10_0000;

/// A variable-range MTRR pair (PHYSBASE, PHYSMASK as read from the MSRs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VariableRange {
    /// IA32_MTRR_PHYSBASEn.
    pub base: u64,
    /// IA32_MTRR_PHYSMASKn.
    pub mask: u64,
}

impl VariableRange {
    const VALID: u64 = 1 << 11;

    fn is_valid(&self) -> bool {
        self.mask & Self::VALID != 0
    }
    fn mem_type(&self) -> u8 {
        (self.base & 0xff) as u8
    }
    fn addr_mask(&self, phys_mask: u64) -> u64 {
        self.mask & phys_mask & !0xfff
    }
    fn matches(&self, addr: u64, phys_mask: u64) -> bool {
        let m = self.addr_mask(phys_mask);
        (addr & m) == (self.base & m)
    }
}

/// A snapshot of the MTRR configuration, read once on the bootstrap processor.
#[derive(Debug, Clone, Copy)]
pub struct MtrrSnapshot {
    /// IA32_MTRR_DEF_TYPE.E: MTRRs enabled (if not, all memory is UC).
    pub enabled: bool,
    /// IA32_MTRR_DEF_TYPE.FE: fixed ranges enabled.
    pub fixed_enabled: bool,
    /// IA32_MTRR_DEF_TYPE.Type.
    pub default_type: u8,
    /// Fixed-range types, one byte per sub-range, in address order.
    pub fixed: [u8; FIXED_BYTES],
    /// Variable ranges.
    pub variable: [VariableRange; MAX_VARIABLE],
    /// How many entries of `variable` the CPU has.
    pub variable_count: usize,
    /// Physical address width (CPUID 0x80000008 EAX[7:0]).
    pub phys_bits: u8,
}

impl MtrrSnapshot {
    /// A snapshot where everything is write-back (MTRRs enabled, no ranges).
    pub fn all_write_back(phys_bits: u8) -> Self {
        MtrrSnapshot {
            enabled: true,
            fixed_enabled: false,
            default_type: WB,
            fixed: [WB; FIXED_BYTES],
            variable: [VariableRange::default(); MAX_VARIABLE],
            variable_count: 0,
            phys_bits,
        }
    }

    fn phys_mask(&self) -> u64 {
        let bits = self.phys_bits.clamp(32, 52);
        (1u64 << bits) - 1
    }

    /// Type of the fixed sub-range holding `addr` (< 1 MiB).
    fn fixed_type(&self, addr: u64) -> u8 {
        let idx = if addr < 0x8_0000 {
            (addr / 0x1_0000) as usize
        } else if addr < 0xc_0000 {
            8 + ((addr - 0x8_0000) / 0x4000) as usize
        } else {
            24 + ((addr - 0xc_0000) / 0x1000) as usize
        };
        self.fixed[idx.min(FIXED_BYTES - 1)]
    }

    fn variable_type_matching<F: Fn(&VariableRange) -> bool>(&self, matches: F) -> u8 {
        let mut found: Option<u8> = None;
        for r in self.variable[..self.variable_count.min(MAX_VARIABLE)]
            .iter()
            .filter(|r| r.is_valid() && matches(r))
        {
            let t = r.mem_type();
            found = Some(match found {
                None => t,
                Some(prev) if prev == t => t,
                Some(prev) => combine_overlap(prev, t),
            });
        }
        found.unwrap_or(self.default_type)
    }

    /// Memory type of the 4 KiB page at `addr`.
    pub fn page_type(&self, addr: u64) -> u8 {
        if !self.enabled {
            return UC;
        }
        if self.fixed_enabled && addr < FIXED_END {
            return self.fixed_type(addr);
        }
        let pm = self.phys_mask();
        self.variable_type_matching(|r| r.matches(addr, pm))
    }

    /// The single memory type of the naturally aligned power-of-two range `[start, start+len)`,
    /// or `None` when types differ inside it (the caller then uses smaller pages).
    pub fn uniform_type(&self, start: u64, len: u64) -> Option<u8> {
        if !len.is_power_of_two() || len < 0x1000 || start & (len - 1) != 0 {
            return None;
        }
        if len == 0x1000 {
            return Some(self.page_type(start));
        }
        if !self.enabled {
            return Some(UC);
        }
        if self.fixed_enabled && start < FIXED_END {
            // Fixed ranges have sub-MiB granularity: only uniform if every sub-range agrees and
            // the range ends inside the fixed area.
            let end = start.checked_add(len)?;
            if end > FIXED_END {
                return None;
            }
            let first = self.fixed_type(start);
            let mut a = start;
            while a < end {
                if self.fixed_type(a) != first {
                    return None;
                }
                a += 0x1000;
            }
            return Some(first);
        }
        let pm = self.phys_mask();
        // A range matches uniformly when its mask ignores every bit that varies inside it.
        let varying = len - 1;
        for r in self.variable[..self.variable_count.min(MAX_VARIABLE)]
            .iter()
            .filter(|r| r.is_valid())
        {
            if r.addr_mask(pm) & varying != 0 {
                // Some addresses inside match, some may not: check whether any address in the
                // range can match at all (the fixed high bits must agree).
                let high = r.addr_mask(pm) & !varying;
                if (start & high) == (r.base & high) {
                    return None;
                }
            }
        }
        Some(
            self.variable_type_matching(|r| r.addr_mask(pm) & varying == 0 && r.matches(start, pm)),
        )
    }
}

/// The architectural outcome of two overlapping variable ranges with different types.
fn combine_overlap(a: u8, b: u8) -> u8 {
    match (a, b) {
        (UC, _) | (_, UC) => UC,
        (WT, WB) | (WB, WT) => WT,
        // Undefined by the architecture: be conservative.
        _ => UC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typical OVMF layout: default UC, RAM 0-2 GiB WB, fixed ranges with a UC VGA hole.
    fn ovmf_like() -> MtrrSnapshot {
        let mut s = MtrrSnapshot::all_write_back(40);
        s.default_type = UC;
        s.fixed_enabled = true;
        s.fixed = [WB; FIXED_BYTES];
        // 0xA0000-0xBFFFF: the two 16K MTRR bytes 16..24 cover 0xA0000..0xC0000.
        for b in &mut s.fixed[16..24] {
            *b = UC;
        }
        s.variable[0] = VariableRange {
            base: WB as u64,
            mask: (!(0x8000_0000u64 - 1) & 0xff_ffff_f000) | (1 << 11),
        };
        s.variable_count = 1;
        s
    }

    #[test]
    fn fixed_ranges_give_page_types() {
        let s = ovmf_like();
        assert_eq!(s.page_type(0), WB);
        assert_eq!(s.page_type(0xa_0000), UC);
        assert_eq!(s.page_type(0xb_f000), UC);
        assert_eq!(s.page_type(0xc_0000), WB);
        assert_eq!(s.uniform_type(0, 0x8_0000), Some(WB));
        assert_eq!(s.uniform_type(0x8_0000, 0x4_0000), None);
        assert_eq!(
            s.uniform_type(0, 0x20_0000),
            None,
            "first 2 MiB straddles fixed area"
        );
    }

    #[test]
    fn variable_ranges_and_default() {
        let s = ovmf_like();
        assert_eq!(s.page_type(0x4000_0000), WB);
        assert_eq!(s.page_type(0x8000_0000), UC);
        assert_eq!(s.uniform_type(0x4000_0000, 0x4000_0000), Some(WB));
        assert_eq!(s.uniform_type(0x8000_0000, 0x4000_0000), Some(UC));
        assert_eq!(
            s.uniform_type(0, 0x1_0000_0000),
            None,
            "4 GiB mixes WB and UC"
        );
        assert_eq!(s.uniform_type(0x20_0000, 0x20_0000), Some(WB));
    }

    #[test]
    fn overlap_rules() {
        let mut s = ovmf_like();
        // UC hole 0x7000_0000-0x7fff_ffff inside the WB range.
        s.variable[1] = VariableRange {
            base: 0x7000_0000 | UC as u64,
            mask: (!(0x1000_0000u64 - 1) & 0xff_ffff_f000) | (1 << 11),
        };
        // WT over 0x6000_0000-0x6fff_ffff.
        s.variable[2] = VariableRange {
            base: 0x6000_0000 | WT as u64,
            mask: (!(0x1000_0000u64 - 1) & 0xff_ffff_f000) | (1 << 11),
        };
        s.variable_count = 3;
        assert_eq!(s.page_type(0x7000_0000), UC);
        assert_eq!(s.page_type(0x6000_0000), WT);
        assert_eq!(s.uniform_type(0x4000_0000, 0x4000_0000), None);
        assert_eq!(s.uniform_type(0x7000_0000, 0x20_0000), Some(UC));
        assert_eq!(s.uniform_type(0x6000_0000, 0x20_0000), Some(WT));
    }

    #[test]
    fn disabled_mtrrs_are_uncacheable() {
        let mut s = ovmf_like();
        s.enabled = false;
        assert_eq!(s.page_type(0x1000), UC);
        assert_eq!(s.uniform_type(0, 0x4000_0000), Some(UC));
    }

    #[test]
    fn invalid_arguments_are_not_uniform() {
        let s = ovmf_like();
        assert_eq!(s.uniform_type(0x1000, 0x3000), None);
        assert_eq!(s.uniform_type(0x1000, 0x2000), None);
        assert_eq!(s.uniform_type(0, 0), None);
    }
}
