//! Page allocation from Shoji's reserved region. Nothing is ever freed: every structure lives
//! as long as the hypervisor.

use crate::ept::TableMemory;

/// A bump allocator over identity-mapped physical memory.
pub struct Arena<'a> {
    next: &'a mut u64,
    end: u64,
}

impl<'a> Arena<'a> {
    /// An arena handing out `[*next, end)`; `next` is advanced in place.
    pub fn new(next: &'a mut u64, end: u64) -> Self {
        Arena { next, end }
    }

    /// Allocate `pages` zeroed, 4 KiB-aligned pages; returns the physical address.
    pub fn alloc_pages(&mut self, pages: u64) -> Option<u64> {
        let start = (*self.next).checked_add(0xfff)? & !0xfff;
        let end = start.checked_add(pages.checked_mul(0x1000)?)?;
        if end > self.end {
            return None;
        }
        *self.next = end;
        // SAFETY: [start, end) is inside Shoji's reserved region, identity mapped in both the
        // firmware's and Shoji's page tables, and handed out exactly once by this arena.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, (end - start) as usize) };
        Some(start)
    }

    /// Allocate zeroed memory for a `T` and return a reference with the arena's lifetime.
    pub fn alloc<T>(&mut self) -> Option<&'static mut T> {
        let pages = (core::mem::size_of::<T>() as u64).div_ceil(0x1000).max(1);
        let p = self.alloc_pages(pages)?;
        // SAFETY: fresh, zeroed, page-aligned memory never handed out again; `T` must be valid
        // when zeroed, which holds for the plain-data structures Shoji allocates here.
        Some(unsafe { &mut *(p as *mut T) })
    }
}

impl TableMemory for Arena<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        self.alloc_pages(1)
    }
    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: `phys` came from `alloc_table` (a page in the identity-mapped region).
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }
}

/// Paging structures already built in identity-mapped memory (the EPT after launch).
pub struct BuiltTables;

impl TableMemory for BuiltTables {
    fn alloc_table(&mut self) -> Option<u64> {
        None
    }
    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: only called with addresses of tables reachable from Shoji's own EPT root,
        // all inside the identity-mapped reserved region.
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }
}
