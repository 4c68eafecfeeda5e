//! Reading guest kernel memory by virtual address: a validated direct-map fast path, and the
//! page walk for everything else.

use shoji_shared::{GuestMemory, MemError};

use crate::paging::{read_virt, translate, Access, PageTables, WalkError};

/// The kernel's direct map of physical memory (`page_offset_base`), verified against the page
/// tables before it is trusted: `gpa = va - base` for `va` in `[base, base + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectMap {
    base: u64,
    size: u64,
}

/// Why the direct map could not be established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectMapError {
    /// The candidate base is not a plausible kernel address.
    BadBase,
    /// A probe address did not translate to `va - base`.
    Mismatch,
    /// A probe could not be walked.
    Walk(WalkError),
    /// No probe lies inside the candidate window.
    NoProbe,
}

impl DirectMap {
    /// The base (the guest's `page_offset_base`).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Trust `base` after checking, for every probe address inside `[base, base + ram_top)`,
    /// that the guest's page tables map it to `probe - base`. At least one probe must apply.
    pub fn verify<M: GuestMemory + ?Sized>(
        mem: &M,
        pt: &PageTables,
        base: u64,
        ram_top: u64,
        probes: &[u64],
    ) -> Result<DirectMap, DirectMapError> {
        if base < pt.mode.kernel_half() || base & ((1 << 30) - 1) != 0 || ram_top == 0 {
            return Err(DirectMapError::BadBase);
        }
        base.checked_add(ram_top).ok_or(DirectMapError::BadBase)?;
        let mut checked = 0u32;
        for &va in probes {
            let Some(gpa) = va.checked_sub(base) else {
                continue;
            };
            if gpa >= ram_top {
                continue;
            }
            let t = translate(mem, pt, va).map_err(DirectMapError::Walk)?;
            if t.gpa != gpa || t.user {
                return Err(DirectMapError::Mismatch);
            }
            checked = checked.saturating_add(1);
        }
        if checked == 0 {
            return Err(DirectMapError::NoProbe);
        }
        Ok(DirectMap {
            base,
            size: ram_top,
        })
    }

    /// The guest-physical address of `[va, va + len)` if it lies wholly in the direct map.
    pub fn gpa(&self, va: u64, len: u64) -> Option<u64> {
        let off = va.checked_sub(self.base)?;
        let end = off.checked_add(len)?;
        if end <= self.size {
            Some(off)
        } else {
            None
        }
    }
}

/// A view of guest kernel memory: the kernel's page tables plus an optional direct map.
#[derive(Debug, Clone, Copy)]
pub struct KernelView<'a, M: GuestMemory + ?Sized> {
    /// Guest memory.
    pub mem: &'a M,
    /// Page tables used when the direct map does not cover an address.
    pub pt: PageTables,
    /// The verified direct map, if known.
    pub dmap: Option<DirectMap>,
}

impl<M: GuestMemory + ?Sized> KernelView<'_, M> {
    /// Read `buf.len()` bytes at kernel virtual address `va`.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), WalkError> {
        if let Some(gpa) = self.dmap.and_then(|d| d.gpa(va, buf.len() as u64)) {
            return self.mem.read(gpa, buf).map_err(WalkError::Memory);
        }
        if va < self.pt.mode.kernel_half() {
            // Identity fields live in kernel memory; never follow a pointer into user space.
            return Err(WalkError::Memory(MemError::BadRange));
        }
        read_virt(self.mem, &self.pt, va, buf, Access::default())
    }

    /// Read a little-endian `u64`.
    pub fn u64(&self, va: u64) -> Result<u64, WalkError> {
        let mut b = [0u8; 8];
        self.read(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Read a little-endian `u32`.
    pub fn u32(&self, va: u64) -> Result<u32, WalkError> {
        let mut b = [0u8; 4];
        self.read(va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}
