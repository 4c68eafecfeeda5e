//! Guest-virtual → guest-physical translation through the guest's own page tables.
//!
//! 4- and 5-level paging, 4 KiB / 2 MiB / 1 GiB pages. The walk has a fixed number of steps (one
//! per level), so a page table that points at itself cannot make it loop; every table entry is
//! read through [`GuestMemory`], which refuses anything that is not guest RAM (including Shoji's
//! own memory). User/supervisor and write permissions are the AND of every level, as the MMU
//! computes them.

use shoji_shared::{GuestMemory, MemError};

/// Paging depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// 4-level paging (48-bit virtual addresses).
    Level4,
    /// 5-level paging, CR4.LA57 (57-bit virtual addresses).
    Level5,
}

impl PagingMode {
    /// Number of table levels.
    pub fn levels(self) -> u32 {
        match self {
            PagingMode::Level4 => 4,
            PagingMode::Level5 => 5,
        }
    }

    /// Number of significant virtual-address bits.
    pub fn va_bits(self) -> u32 {
        match self {
            PagingMode::Level4 => 48,
            PagingMode::Level5 => 57,
        }
    }

    /// Whether `va` is canonical in this mode.
    pub fn is_canonical(self, va: u64) -> bool {
        let top = (va as i64) >> (self.va_bits() - 1);
        top == 0 || top == -1
    }

    /// Lowest canonical kernel-half address.
    pub fn kernel_half(self) -> u64 {
        !0u64 << (self.va_bits() - 1)
    }
}

/// The address space to translate in: CR3 and paging mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTables {
    /// CR3 as the guest loaded it (PCID and flag bits are ignored).
    pub cr3: u64,
    /// Paging depth.
    pub mode: PagingMode,
}

/// Page sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB.
    Size2M,
    /// 1 GiB.
    Size1G,
}

impl PageSize {
    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address of the byte.
    pub gpa: u64,
    /// Size of the page that maps it.
    pub page_size: PageSize,
    /// Accessible from CPL 3 (U/S set at every level).
    pub user: bool,
    /// Writable (R/W set at every level).
    pub writable: bool,
    /// Executable (XD clear at every level).
    pub executable: bool,
}

impl Translation {
    /// Bytes from this address to the end of its page.
    pub fn bytes_left_in_page(&self) -> u64 {
        let size = self.page_size.bytes();
        size.wrapping_sub(self.gpa & size.wrapping_sub(1))
    }
}

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// The address is not canonical for the paging mode.
    NonCanonical,
    /// An entry at this level (5 = PML5 … 1 = PT) is not present.
    NotPresent(u8),
    /// An entry at this level has reserved bits set (e.g. PS in a PML4E).
    Reserved(u8),
    /// A table (or the final page) is not readable guest RAM.
    Memory(MemError),
    /// The access is not allowed (user access to a supervisor page, write to a read-only page).
    Denied,
}

impl From<MemError> for WalkError {
    fn from(e: MemError) -> Self {
        WalkError::Memory(e)
    }
}

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
/// Physical-address bits of an entry (MAXPHYADDR up to 52).
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Translate `va` through `pt`.
pub fn translate<M: GuestMemory + ?Sized>(
    mem: &M,
    pt: &PageTables,
    va: u64,
) -> Result<Translation, WalkError> {
    if !pt.mode.is_canonical(va) {
        return Err(WalkError::NonCanonical);
    }
    let mut table = pt.cr3 & ADDR;
    let (mut user, mut writable, mut executable) = (true, true, true);
    let mut level = pt.mode.levels();
    // One iteration per level: bounded by construction.
    while level >= 1 {
        let shift = 12 + 9 * (level - 1);
        let index = (va >> shift) & 0x1ff;
        let entry = mem.read_u64(table | (index << 3))?;
        let lvl = level as u8;
        if entry & P == 0 {
            return Err(WalkError::NotPresent(lvl));
        }
        user &= entry & US != 0;
        writable &= entry & RW != 0;
        executable &= entry & XD == 0;
        let frame = entry & ADDR;
        let leaf = match level {
            1 => Some(PageSize::Size4K),
            2 if entry & PS != 0 => Some(PageSize::Size2M),
            3 if entry & PS != 0 => Some(PageSize::Size1G),
            4 | 5 if entry & PS != 0 => return Err(WalkError::Reserved(lvl)),
            _ => None,
        };
        if let Some(size) = leaf {
            let mask = size.bytes() - 1;
            // Bits 12..(page shift) of a large-page entry are PAT (bit 12) and reserved.
            if size != PageSize::Size4K && frame & mask & !(1 << 12) != 0 {
                return Err(WalkError::Reserved(lvl));
            }
            return Ok(Translation {
                gpa: (frame & !mask) | (va & mask),
                page_size: size,
                user,
                writable,
                executable,
            });
        }
        table = frame;
        level -= 1;
    }
    Err(WalkError::NotPresent(0))
}

/// Required permissions for an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// The access is made on behalf of CPL 3: the page must be a user page.
    pub user: bool,
    /// The access writes: the page must be writable.
    pub write: bool,
}

impl Access {
    /// Whether a translation allows this access.
    pub fn allowed_by(&self, t: &Translation) -> bool {
        (!self.user || t.user) && (!self.write || t.writable)
    }
}

/// Read `buf.len()` bytes at `va`, page by page, checking `access` on every page.
pub fn read_virt<M: GuestMemory + ?Sized>(
    mem: &M,
    pt: &PageTables,
    va: u64,
    buf: &mut [u8],
    access: Access,
) -> Result<(), WalkError> {
    let mut done = 0usize;
    while done < buf.len() {
        let cur = va
            .checked_add(done as u64)
            .ok_or(WalkError::Memory(MemError::BadRange))?;
        let t = translate(mem, pt, cur)?;
        if !access.allowed_by(&t) {
            return Err(WalkError::Denied);
        }
        let left = buf.len() - done;
        let n = (t.bytes_left_in_page().min(4096) as usize).min(left);
        let chunk = buf
            .get_mut(done..done + n)
            .ok_or(WalkError::Memory(MemError::BadRange))?;
        mem.read(t.gpa, chunk)?;
        done += n;
    }
    Ok(())
}
