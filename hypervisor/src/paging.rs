//! Shoji's own page tables: an identity map of physical memory, built in the reserved region so
//! that nothing the firmware or the guest owns is needed once Shoji runs.

use crate::arena::Arena;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const HUGE: u64 = 1 << 7;

/// Build an identity map of `[0, top)` (rounded up to 1 GiB, at most 512 GiB) and return the
/// physical address of its PML4. Uses 1 GiB pages when `gb_pages`, else 2 MiB pages.
pub fn build_identity_map(arena: &mut Arena<'_>, top: u64, gb_pages: bool) -> Option<u64> {
    let gib = 1u64 << 30;
    let top = top.clamp(4 * gib, 512 * gib);
    let pml4 = arena.alloc_pages(1)?;
    let pdpt = arena.alloc_pages(1)?;
    // SAFETY: freshly allocated pages in the identity-mapped reserved region.
    unsafe { *(pml4 as *mut u64) = pdpt | PRESENT | WRITABLE };
    let gigs = top.div_ceil(gib);
    for g in 0..gigs {
        let entry = if gb_pages {
            (g * gib) | PRESENT | WRITABLE | HUGE
        } else {
            let pd = arena.alloc_pages(1)?;
            for i in 0..512u64 {
                // SAFETY: `pd` is a fresh page of 512 entries.
                unsafe {
                    *((pd as *mut u64).add(i as usize)) =
                        (g * gib + i * (2 << 20)) | PRESENT | WRITABLE | HUGE
                };
            }
            pd | PRESENT | WRITABLE
        };
        // SAFETY: `pdpt` is a fresh page and `g < 512`.
        unsafe { *((pdpt as *mut u64).add(g as usize)) = entry };
    }
    Some(pml4)
}
