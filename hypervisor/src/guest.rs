//! Shoji's access to the guest: guest RAM (and nothing else: never device memory, never Shoji's
//! own region) and the guest's current instruction, fetched through its own page tables.

use crate::setup::Setup;
use shoji_introspect::paging::{self, Access, PageTables, PagingMode, WalkError};
use shoji_shared::{GuestMemory, MemError};

/// Guest RAM as the host sees it (identity mapped), limited to the firmware's RAM ranges minus
/// Shoji's own region.
pub struct GuestRam<'s> {
    /// The firmware's RAM ranges (borrowed from the setup page: this is built at every exit
    /// that touches guest memory, so nothing is copied).
    ram: &'s [[u64; 2]],
    hidden: (u64, u64),
}

impl<'s> GuestRam<'s> {
    /// The guest RAM described by the setup page.
    pub fn from_setup(setup: &'s Setup) -> Self {
        let count = (setup.ram_count as usize).min(setup.ram.len());
        GuestRam {
            ram: &setup.ram[..count],
            hidden: (setup.region_base, setup.region_base + setup.region_size),
        }
    }

    /// Check that `[gpa, gpa+len)` is guest RAM and not Shoji's.
    pub fn check(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        let end = shoji_shared::memory::range_end(gpa, len)?;
        if gpa < self.hidden.1 && end > self.hidden.0 {
            return Err(MemError::Hypervisor);
        }
        if self.ram.iter().any(|r| gpa >= r[0] && end <= r[1]) {
            Ok(())
        } else {
            Err(MemError::NotRam)
        }
    }
}

impl GuestMemory for GuestRam<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(gpa, buf.len() as u64)?;
        // SAFETY: the range is guest RAM (checked above), identity mapped in Shoji's page tables,
        // and not Shoji's memory; the guest may change it concurrently, which only affects the
        // bytes read, never Shoji's memory safety.
        unsafe { core::ptr::copy_nonoverlapping(gpa as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        self.check(gpa, buf.len() as u64)?;
        // SAFETY: as for `read`; the destination is guest RAM, never Shoji's.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), gpa as *mut u8, buf.len()) };
        Ok(())
    }
}

/// What a guest CPU's paging state says about how to reach its linear addresses.
#[derive(Debug, Clone, Copy)]
pub enum AddressSpace {
    /// Paging off: linear = physical.
    Physical,
    /// IA-32e paging.
    Paged(PageTables),
    /// A legacy 32-bit paging mode Shoji does not walk.
    Unsupported,
}

/// The address space described by guest CR0, CR3, CR4 and EFER.
pub fn address_space(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> AddressSpace {
    const PG: u64 = 1 << 31;
    const LA57: u64 = 1 << 12;
    const LMA: u64 = 1 << 10;
    if cr0 & PG == 0 {
        AddressSpace::Physical
    } else if efer & LMA != 0 {
        let mode = if cr4 & LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        };
        AddressSpace::Paged(PageTables { cr3, mode })
    } else {
        AddressSpace::Unsupported
    }
}

/// Copy up to 15 instruction bytes at `linear` into `out`; returns how many could be read (at
/// least 1), stopping early at an unreadable page.
pub fn fetch_instruction<M: GuestMemory + ?Sized>(
    mem: &M,
    space: AddressSpace,
    linear: u64,
    user: bool,
    out: &mut [u8; 15],
) -> Result<usize, WalkError> {
    let first_page_left = (0x1000 - (linear & 0xfff)) as usize;
    let first = first_page_left.min(15);
    read_linear(mem, space, linear, &mut out[..first], user)?;
    if first < 15 && read_linear(mem, space, linear + first as u64, &mut out[first..], user).is_ok()
    {
        return Ok(15);
    }
    Ok(first)
}

fn read_linear<M: GuestMemory + ?Sized>(
    mem: &M,
    space: AddressSpace,
    linear: u64,
    buf: &mut [u8],
    user: bool,
) -> Result<(), WalkError> {
    match space {
        AddressSpace::Physical => mem
            .read(linear & 0xffff_ffff, buf)
            .map_err(WalkError::Memory),
        AddressSpace::Paged(pt) => {
            paging::read_virt(mem, &pt, linear, buf, Access { user, write: false })
        }
        AddressSpace::Unsupported => Err(WalkError::Memory(MemError::BadRange)),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn guest_ram_refuses_holes_and_shoji() {
        let mut setup: Setup = Setup::zeroed_for_tests();
        setup.region_base = 0x100_0000;
        setup.region_size = 0x10_0000;
        crate::setup::add_ram_range(&mut setup.ram, &mut setup.ram_count, 0, 0xa_0000);
        crate::setup::add_ram_range(&mut setup.ram, &mut setup.ram_count, 0x10_0000, 0x800_0000);
        let ram = GuestRam::from_setup(&setup);
        assert_eq!(ram.check(0x1000, 0x1000), Ok(()));
        assert_eq!(ram.check(0x9_f000, 0x2000), Err(MemError::NotRam));
        assert_eq!(ram.check(0xfee0_0000, 4), Err(MemError::NotRam));
        assert_eq!(ram.check(0x100_0000, 1), Err(MemError::Hypervisor));
        assert_eq!(ram.check(0xff_ffff, 2), Err(MemError::Hypervisor));
        assert_eq!(ram.check(u64::MAX, 2), Err(MemError::BadRange));
    }

    #[test]
    fn address_space_selection() {
        assert!(matches!(
            address_space(0x11, 0, 0, 0),
            AddressSpace::Physical
        ));
        assert!(
            matches!(address_space(0x8000_0011, 0x1000, 0, 0x500), AddressSpace::Paged(p) if p.mode == PagingMode::Level4)
        );
        assert!(
            matches!(address_space(0x8000_0011, 0x1000, 1 << 12, 0x500), AddressSpace::Paged(p) if p.mode == PagingMode::Level5)
        );
        assert!(matches!(
            address_space(0x8000_0011, 0x1000, 0, 0),
            AddressSpace::Unsupported
        ));
    }
}
