//! Extended page tables: an identity map of guest-physical memory with the firmware's MTRR memory
//! types, large pages where the type is uniform, and single pages remapped or removed (Shoji's own
//! memory, trapped device registers).

use crate::mtrr::MtrrSnapshot;

/// Access to the memory that holds paging structures (Shoji's arena in the hypervisor, a vector
/// in host tests).
pub trait TableMemory {
    /// Allocate a zeroed 4 KiB table; returns its physical address.
    fn alloc_table(&mut self) -> Option<u64>;
    /// The table at physical address `phys` (previously returned by `alloc_table`).
    fn table(&mut self, phys: u64) -> &mut [u64; 512];
}

/// EPT entry: read access.
pub const READ: u64 = 1 << 0;
/// EPT entry: write access.
pub const WRITE: u64 = 1 << 1;
/// EPT entry: execute access.
pub const EXECUTE: u64 = 1 << 2;
/// EPT entry: all access rights.
pub const RWX: u64 = READ | WRITE | EXECUTE;
/// EPT entry: maps a large page (PDPTE: 1 GiB, PDE: 2 MiB).
pub const LARGE: u64 = 1 << 7;
const TYPE_SHIFT: u64 = 3;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Size of the region one entry maps at each level (index 0 = PTE).
const LEVEL_SIZE: [u64; 4] = [1 << 12, 1 << 21, 1 << 30, 1 << 39];

/// Why the EPT could not be built or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EptError {
    /// The table arena is exhausted.
    OutOfTables,
    /// The address is beyond what the EPT maps.
    OutOfRange,
}

/// Options for building the identity map.
#[derive(Debug, Clone, Copy)]
pub struct IdentityMapSpec {
    /// Map guest-physical `[0, top)`; `top` is rounded up to 2 MiB.
    pub top: u64,
    /// Whether 1 GiB EPT pages are supported (IA32_VMX_EPT_VPID_CAP bit 17).
    pub allow_1g: bool,
}

/// An EPT hierarchy rooted at a PML4 table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ept {
    /// Physical address of the PML4.
    pub pml4: u64,
    /// Highest mapped guest-physical address plus one.
    pub top: u64,
}

impl Ept {
    /// Build an identity map of `[0, spec.top)` with memory types from `mtrr`.
    pub fn identity<M: TableMemory>(
        mem: &mut M,
        mtrr: &MtrrSnapshot,
        spec: IdentityMapSpec,
    ) -> Result<Ept, EptError> {
        let top = spec
            .top
            .checked_add(LEVEL_SIZE[1] - 1)
            .ok_or(EptError::OutOfRange)?
            & !(LEVEL_SIZE[1] - 1);
        if top > 512 * LEVEL_SIZE[3] {
            return Err(EptError::OutOfRange);
        }
        let pml4 = mem.alloc_table().ok_or(EptError::OutOfTables)?;
        fill(mem, mtrr, pml4, 3, 0, top, spec.allow_1g)?;
        Ok(Ept { pml4, top })
    }

    /// The EPT pointer for the VMCS: write-back paging structures, 4-level walk, no A/D bits.
    pub fn eptp(&self) -> u64 {
        self.pml4 | (3 << 3) | crate::mtrr::WB as u64
    }

    /// Map the 4 KiB guest page `gpa` to host page `hpa` with `access` (any of [`READ`],
    /// [`WRITE`], [`EXECUTE`]; 0 makes every access exit) and memory type `mem_type`, splitting
    /// large pages on the way while keeping their mappings.
    pub fn map_page<M: TableMemory>(
        &self,
        mem: &mut M,
        gpa: u64,
        hpa: u64,
        access: u64,
        mem_type: u8,
    ) -> Result<(), EptError> {
        if gpa >= self.top {
            return Err(EptError::OutOfRange);
        }
        let mut table = self.pml4;
        for level in (1..4).rev() {
            let idx = index(gpa, level);
            let entry = mem.table(table)[idx];
            let next = if entry & RWX == 0 && entry & ADDR_MASK == 0 {
                let t = mem.alloc_table().ok_or(EptError::OutOfTables)?;
                mem.table(table)[idx] = t | RWX;
                t
            } else if entry & LARGE != 0 {
                split(mem, table, idx, level, entry)?
            } else {
                entry & ADDR_MASK
            };
            table = next;
        }
        mem.table(table)[index(gpa, 0)] =
            (hpa & ADDR_MASK) | access | ((mem_type as u64) << TYPE_SHIFT);
        Ok(())
    }

    /// A second EPT identical to this one except that the 4 KiB page `gpa` is mapped with
    /// `access`: the tables on the path to `gpa` are copied, all others are shared. `gpa` must
    /// already be mapped by a 4 KiB entry (see [`Ept::map_page`]).
    pub fn fork_page<M: TableMemory>(
        &self,
        mem: &mut M,
        gpa: u64,
        access: u64,
    ) -> Result<Ept, EptError> {
        let (leaf, level) = self.lookup(mem, gpa).ok_or(EptError::OutOfRange)?;
        if level != 0 {
            return Err(EptError::OutOfRange);
        }
        let root = mem.alloc_table().ok_or(EptError::OutOfTables)?;
        let mut src = self.pml4;
        let mut dst = root;
        for level in (0..4).rev() {
            let copy = *mem.table(src);
            *mem.table(dst) = copy;
            let idx = index(gpa, level);
            if level == 0 {
                mem.table(dst)[idx] = (leaf & !RWX) | (access & RWX);
                break;
            }
            let next_src = copy[idx] & ADDR_MASK;
            let next_dst = mem.alloc_table().ok_or(EptError::OutOfTables)?;
            mem.table(dst)[idx] = next_dst | (copy[idx] & !ADDR_MASK);
            src = next_src;
            dst = next_dst;
        }
        Ok(Ept {
            pml4: root,
            top: self.top,
        })
    }

    /// Look up the leaf entry mapping `gpa` and the level it sits at (0 = 4 KiB).
    pub fn lookup<M: TableMemory>(&self, mem: &mut M, gpa: u64) -> Option<(u64, usize)> {
        if gpa >= self.top {
            return None;
        }
        let mut table = self.pml4;
        for level in (0..4).rev() {
            let entry = mem.table(table)[index(gpa, level)];
            if entry & RWX == 0 && entry & ADDR_MASK == 0 {
                return None;
            }
            if level == 0 || entry & LARGE != 0 {
                return Some((entry, level));
            }
            table = entry & ADDR_MASK;
        }
        None
    }
}

/// Host physical address an EPT leaf entry at `level` maps for `gpa`.
pub fn translate(entry: u64, level: usize, gpa: u64) -> u64 {
    let size = LEVEL_SIZE[level];
    (entry & ADDR_MASK & !(size - 1)) | (gpa & (size - 1))
}

/// Memory type of an EPT leaf entry.
pub fn entry_type(entry: u64) -> u8 {
    ((entry >> TYPE_SHIFT) & 7) as u8
}

fn index(gpa: u64, level: usize) -> usize {
    ((gpa >> (12 + 9 * level)) & 511) as usize
}

fn leaf(addr: u64, mem_type: u8, level: usize) -> u64 {
    let large = if level > 0 { LARGE } else { 0 };
    addr | RWX | ((mem_type as u64) << TYPE_SHIFT) | large
}

/// Fill `table` (at `level`, covering from `base`) with identity mappings below `top`.
fn fill<M: TableMemory>(
    mem: &mut M,
    mtrr: &MtrrSnapshot,
    table: u64,
    level: usize,
    base: u64,
    top: u64,
    allow_1g: bool,
) -> Result<(), EptError> {
    let size = LEVEL_SIZE[level];
    for i in 0..512u64 {
        let start = base + i * size;
        if start >= top {
            break;
        }
        let may_be_leaf = match level {
            0 | 1 => true,
            2 => allow_1g,
            _ => false,
        };
        let uniform = if may_be_leaf && start + size <= top {
            mtrr.uniform_type(start, size)
        } else {
            None
        };
        let entry = match uniform {
            Some(t) => leaf(start, t, level),
            None if level == 0 => leaf(start, mtrr.page_type(start), 0),
            None => {
                let sub = mem.alloc_table().ok_or(EptError::OutOfTables)?;
                fill(mem, mtrr, sub, level - 1, start, top, allow_1g)?;
                sub | RWX
            }
        };
        mem.table(table)[i as usize] = entry;
    }
    Ok(())
}

/// Replace the large leaf `entry` at `table[idx]` (at `level`) by a table of smaller leaves with
/// the same mapping, type and rights; returns the new table.
fn split<M: TableMemory>(
    mem: &mut M,
    table: u64,
    idx: usize,
    level: usize,
    entry: u64,
) -> Result<u64, EptError> {
    let sub = mem.alloc_table().ok_or(EptError::OutOfTables)?;
    let base = entry & ADDR_MASK & !(LEVEL_SIZE[level] - 1);
    let keep = entry & (RWX | (7 << TYPE_SHIFT));
    let child = LEVEL_SIZE[level - 1];
    let large = if level - 1 > 0 { LARGE } else { 0 };
    {
        let t = mem.table(sub);
        for (i, e) in t.iter_mut().enumerate() {
            *e = (base + i as u64 * child) | keep | large;
        }
    }
    mem.table(table)[idx] = sub | RWX;
    Ok(sub)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::mtrr::{self, VariableRange};
    use std::vec::Vec;

    struct VecTables(Vec<[u64; 512]>);
    impl TableMemory for VecTables {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.0.len() >= 4096 {
                return None;
            }
            self.0.push([0; 512]);
            Some((self.0.len() as u64) << 12)
        }
        fn table(&mut self, phys: u64) -> &mut [u64; 512] {
            &mut self.0[(phys >> 12) as usize - 1]
        }
    }

    fn mtrr_ovmf() -> MtrrSnapshot {
        let mut s = MtrrSnapshot::all_write_back(40);
        s.default_type = mtrr::UC;
        s.fixed_enabled = true;
        for b in &mut s.fixed[16..24] {
            *b = mtrr::UC;
        }
        // RAM 0 - 3 GiB WB as 2 GiB + 1 GiB ranges; 3-4 GiB stays UC (PCI hole).
        s.variable[0] = VariableRange {
            base: mtrr::WB as u64,
            mask: 0xff_8000_0000 | (1 << 11),
        };
        s.variable[1] = VariableRange {
            base: 0x8000_0000 | mtrr::WB as u64,
            mask: 0xff_c000_0000 | (1 << 11),
        };
        s.variable_count = 2;
        s
    }

    #[test]
    fn identity_map_uses_mtrr_types_and_large_pages() {
        let mut m = VecTables(Vec::new());
        let s = mtrr_ovmf();
        let ept = Ept::identity(
            &mut m,
            &s,
            IdentityMapSpec {
                top: 8 << 30,
                allow_1g: true,
            },
        )
        .unwrap();
        for gpa in [
            0u64,
            0xa_0000,
            0xc_0000,
            0x10_0000,
            0x4000_0000,
            0xb000_0000,
            0xfee0_0000,
            0x1_2345_6000,
        ] {
            let (e, level) = ept.lookup(&mut m, gpa).unwrap();
            assert_eq!(translate(e, level, gpa), gpa, "identity at {gpa:#x}");
            assert_eq!(entry_type(e), s.page_type(gpa), "type at {gpa:#x}");
            assert_eq!(e & RWX, RWX);
        }
        // 1 GiB pages where uniform, 4 KiB in the first 2 MiB (fixed MTRRs).
        assert_eq!(ept.lookup(&mut m, 0x4000_0000).unwrap().1, 2);
        assert_eq!(ept.lookup(&mut m, 0xc000_0000).unwrap().1, 2);
        assert_eq!(ept.lookup(&mut m, 0x1000).unwrap().1, 0);
        assert_eq!(ept.lookup(&mut m, 0x30_0000).unwrap().1, 1);
        assert!(ept.lookup(&mut m, 8 << 30).is_none());
        assert!(m.0.len() < 16, "few tables: {}", m.0.len());
    }

    #[test]
    fn without_1g_pages_uses_2m() {
        let mut m = VecTables(Vec::new());
        let s = mtrr_ovmf();
        let ept = Ept::identity(
            &mut m,
            &s,
            IdentityMapSpec {
                top: 4 << 30,
                allow_1g: false,
            },
        )
        .unwrap();
        assert_eq!(ept.lookup(&mut m, 0x4000_0000).unwrap().1, 1);
    }

    #[test]
    fn map_page_splits_and_keeps_neighbours() {
        let mut m = VecTables(Vec::new());
        let s = mtrr_ovmf();
        let ept = Ept::identity(
            &mut m,
            &s,
            IdentityMapSpec {
                top: 4 << 30,
                allow_1g: true,
            },
        )
        .unwrap();
        let hidden = 0x4123_4000;
        ept.map_page(&mut m, hidden, 0x7000, READ | WRITE, mtrr::WB)
            .unwrap();
        let (e, level) = ept.lookup(&mut m, hidden).unwrap();
        assert_eq!(level, 0);
        assert_eq!(translate(e, 0, hidden + 8), 0x7008);
        assert_eq!(e & RWX, READ | WRITE);
        for n in [hidden - 0x1000, hidden + 0x1000, 0x4000_0000, 0x7fff_f000] {
            let (e, l) = ept.lookup(&mut m, n).unwrap();
            assert_eq!(translate(e, l, n), n);
            assert_eq!(entry_type(e), mtrr::WB);
        }
        // Trap a device page: no access at all.
        ept.map_page(&mut m, 0xfebc_0000, 0xfebc_0000, 0, mtrr::UC)
            .unwrap();
        let (e, _) = ept.lookup(&mut m, 0xfebc_0000).unwrap();
        assert_eq!(e & RWX, 0);
        assert_eq!(
            ept.map_page(&mut m, 4 << 30, 0, RWX, 6),
            Err(EptError::OutOfRange)
        );
    }

    #[test]
    fn fork_changes_one_page_and_shares_the_rest() {
        let mut m = VecTables(Vec::new());
        let s = mtrr_ovmf();
        let ept = Ept::identity(
            &mut m,
            &s,
            IdentityMapSpec {
                top: 8 << 30,
                allow_1g: true,
            },
        )
        .unwrap();
        let apic = 0xfee0_0000;
        ept.map_page(&mut m, apic, apic, READ, mtrr::UC).unwrap();
        assert_eq!(
            ept.fork_page(&mut m, 0x4000_0000, RWX),
            Err(EptError::OutOfRange),
            "1 GiB leaf"
        );
        let before = m.0.len();
        let alt = ept.fork_page(&mut m, apic, READ | WRITE).unwrap();
        assert_eq!(m.0.len() - before, 4, "one copied table per level");
        let (e, _) = alt.lookup(&mut m, apic).unwrap();
        assert_eq!(e & RWX, READ | WRITE);
        assert_eq!(translate(e, 0, apic), apic);
        assert_eq!(entry_type(e), mtrr::UC);
        let (e, _) = ept.lookup(&mut m, apic).unwrap();
        assert_eq!(e & RWX, READ, "the original is unchanged");
        for gpa in [0u64, 0x4000_0000, 0xfee0_1000, 0xfec0_0000, 0x1_8000_0000] {
            assert_eq!(alt.lookup(&mut m, gpa), ept.lookup(&mut m, gpa), "{gpa:#x}");
        }
    }

    /// Why the launch forks the single-step EPT only after every trap is in: a page trapped
    /// after the fork (the NIC's registers, its ECAM page, both near the xAPIC page) stays
    /// mapped in the fork, whose copied tables hold the old large-page entries.
    #[test]
    fn a_trap_added_after_a_fork_is_missing_from_it() {
        let mut m = VecTables(Vec::new());
        let s = mtrr_ovmf();
        let spec = IdentityMapSpec {
            top: 8 << 30,
            allow_1g: true,
        };
        let apic = 0xfee0_0000;
        let nic = 0xfebc_0000; // the same 2 MiB region as the xAPIC page
        let ecam = 0xb001_0000; // another 1 GiB region
        let trapped = |ept: &Ept, m: &mut VecTables, gpa| {
            ept.lookup(m, gpa).is_none_or(|(e, _)| e & RWX == 0)
        };

        let ept = Ept::identity(&mut m, &s, spec).unwrap();
        ept.map_page(&mut m, apic, apic, READ, mtrr::UC).unwrap();
        let early = ept.fork_page(&mut m, apic, READ | WRITE).unwrap();
        ept.map_page(&mut m, nic, nic, 0, mtrr::UC).unwrap();
        ept.map_page(&mut m, ecam, ecam, 0, mtrr::UC).unwrap();
        assert!(trapped(&ept, &mut m, nic) && trapped(&ept, &mut m, ecam));
        assert!(!trapped(&early, &mut m, nic), "forked before the NIC trap");
        assert!(
            !trapped(&early, &mut m, ecam),
            "forked before the ECAM trap"
        );

        let ept = Ept::identity(&mut m, &s, spec).unwrap();
        ept.map_page(&mut m, apic, apic, READ, mtrr::UC).unwrap();
        ept.map_page(&mut m, nic, nic, 0, mtrr::UC).unwrap();
        ept.map_page(&mut m, ecam, ecam, 0, mtrr::UC).unwrap();
        let late = ept.fork_page(&mut m, apic, READ | WRITE).unwrap();
        assert!(trapped(&late, &mut m, nic) && trapped(&late, &mut m, ecam));
        assert_eq!(late.lookup(&mut m, apic).unwrap().0 & RWX, READ | WRITE);
    }

    #[test]
    fn arena_exhaustion_is_an_error() {
        struct Tiny(VecTables);
        impl TableMemory for Tiny {
            fn alloc_table(&mut self) -> Option<u64> {
                if self.0 .0.len() >= 2 {
                    None
                } else {
                    self.0.alloc_table()
                }
            }
            fn table(&mut self, phys: u64) -> &mut [u64; 512] {
                self.0.table(phys)
            }
        }
        let mut m = Tiny(VecTables(Vec::new()));
        let s = mtrr_ovmf();
        assert_eq!(
            Ept::identity(
                &mut m,
                &s,
                IdentityMapSpec {
                    top: 4 << 30,
                    allow_1g: true
                }
            ),
            Err(EptError::OutOfTables)
        );
    }
}
