//! Guest-physical memory access, the trait every guest-reading algorithm is written against.

/// Why a guest-physical access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    /// The range is not guest RAM (MMIO, a hole, beyond the end of memory).
    NotRam,
    /// The range touches memory Shoji owns and hides from the guest.
    Hypervisor,
    /// The range wraps around the address space or is otherwise malformed.
    BadRange,
}

/// Access to guest-physical memory. Implementations must refuse anything that is not guest RAM.
pub trait GuestMemory {
    /// Copy `buf.len()` bytes from guest-physical address `gpa` into `buf`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Copy `buf` into guest memory at `gpa`.
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemError>;

    /// Read a little-endian `u64`.
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Read a little-endian `u32`.
    fn read_u32(&self, gpa: u64) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// Read a little-endian `u16`.
    fn read_u16(&self, gpa: u64) -> Result<u16, MemError> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    /// Write a little-endian `u64`.
    fn write_u64(&mut self, gpa: u64, v: u64) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
    /// Write a little-endian `u32`.
    fn write_u32(&mut self, gpa: u64, v: u32) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

/// Check that `[start, start+len)` neither wraps nor is empty-at-end-of-space.
pub fn range_end(start: u64, len: u64) -> Result<u64, MemError> {
    start.checked_add(len).ok_or(MemError::BadRange)
}
