//! Just enough of the PE32+ format to copy Shoji's own loaded image to another address: find the
//! image size and apply the base relocations for the move.

/// Why an image could not be relocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeError {
    /// No `MZ` / `PE\0\0` signature or not PE32+.
    NotPe32Plus,
    /// A header, directory or relocation block lies outside the image.
    OutOfBounds,
    /// A relocation type other than DIR64 / ABSOLUTE.
    UnsupportedRelocation(u16),
}

fn u16_at(img: &[u8], off: usize) -> Result<u16, PeError> {
    let b = img.get(off..off + 2).ok_or(PeError::OutOfBounds)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(img: &[u8], off: usize) -> Result<u32, PeError> {
    let b = img.get(off..off + 4).ok_or(PeError::OutOfBounds)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Offset of the PE32+ optional header.
fn optional_header(img: &[u8]) -> Result<usize, PeError> {
    if img.get(0..2) != Some(b"MZ") {
        return Err(PeError::NotPe32Plus);
    }
    let pe = u32_at(img, 0x3c)? as usize;
    if img.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(PeError::NotPe32Plus);
    }
    let opt = pe + 4 + 20;
    if u16_at(img, opt)? != 0x20b {
        return Err(PeError::NotPe32Plus);
    }
    Ok(opt)
}

/// `SizeOfImage` from the headers of a loaded image.
pub fn size_of_image(img: &[u8]) -> Result<u32, PeError> {
    u32_at(img, optional_header(img)? + 56)
}

/// Apply the base relocations of the loaded image `img` for a move by `delta` bytes.
/// Returns the number of addresses fixed up.
pub fn relocate(img: &mut [u8], delta: u64) -> Result<usize, PeError> {
    let opt = optional_header(img)?;
    let count = u32_at(img, opt + 108)?;
    if count <= 5 {
        return Ok(0);
    }
    let dir = opt + 112 + 5 * 8;
    let rva = u32_at(img, dir)? as usize;
    let size = u32_at(img, dir + 4)? as usize;
    let end = rva.checked_add(size).ok_or(PeError::OutOfBounds)?;
    if end > img.len() {
        return Err(PeError::OutOfBounds);
    }
    let mut fixed = 0;
    let mut block = rva;
    while block + 8 <= end {
        let page = u32_at(img, block)? as usize;
        let block_size = u32_at(img, block + 4)? as usize;
        if block_size < 8 || block + block_size > end {
            return Err(PeError::OutOfBounds);
        }
        for e in (block + 8..block + block_size).step_by(2) {
            let entry = u16_at(img, e)?;
            match entry >> 12 {
                0 => {}
                10 => {
                    let at = page + (entry & 0xfff) as usize;
                    let slot = img.get_mut(at..at + 8).ok_or(PeError::OutOfBounds)?;
                    let v = u64::from_le_bytes(slot.try_into().map_err(|_| PeError::OutOfBounds)?);
                    slot.copy_from_slice(&v.wrapping_add(delta).to_le_bytes());
                    fixed += 1;
                }
                t => return Err(PeError::UnsupportedRelocation(t)),
            }
        }
        block += block_size;
    }
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// A minimal loaded PE32+ image with a relocation block at 0x400 fixing two pointers.
    fn image() -> Vec<u8> {
        let mut img = vec![0u8; 0x1000];
        img[0..2].copy_from_slice(b"MZ");
        img[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        img[0x80..0x84].copy_from_slice(b"PE\0\0");
        let opt = 0x80 + 24;
        img[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        img[opt + 56..opt + 60].copy_from_slice(&0x1000u32.to_le_bytes());
        img[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let dir = opt + 112 + 40;
        img[dir..dir + 4].copy_from_slice(&0x400u32.to_le_bytes());
        img[dir + 4..dir + 8].copy_from_slice(&16u32.to_le_bytes());
        // Block: page 0x800, size 16, entries DIR64@0x10, DIR64@0x20, ABSOLUTE padding x2.
        img[0x400..0x404].copy_from_slice(&0x800u32.to_le_bytes());
        img[0x404..0x408].copy_from_slice(&16u32.to_le_bytes());
        img[0x408..0x40a].copy_from_slice(&0xa010u16.to_le_bytes());
        img[0x40a..0x40c].copy_from_slice(&0xa020u16.to_le_bytes());
        img[0x810..0x818].copy_from_slice(&0x1_0000_1234u64.to_le_bytes());
        img[0x820..0x828].copy_from_slice(&0x1_0000_0800u64.to_le_bytes());
        img
    }

    #[test]
    fn relocates_dir64_entries() {
        let mut img = image();
        assert_eq!(size_of_image(&img), Ok(0x1000));
        assert_eq!(relocate(&mut img, 0x10_0000), Ok(2));
        assert_eq!(
            u64::from_le_bytes(img[0x810..0x818].try_into().unwrap()),
            0x1_0010_1234
        );
        assert_eq!(
            u64::from_le_bytes(img[0x820..0x828].try_into().unwrap()),
            0x1_0010_0800
        );
        // Moving down works too (wrapping delta).
        assert_eq!(relocate(&mut img, 0u64.wrapping_sub(0x10_0000)), Ok(2));
        assert_eq!(
            u64::from_le_bytes(img[0x810..0x818].try_into().unwrap()),
            0x1_0000_1234
        );
    }

    #[test]
    fn rejects_bad_images() {
        let mut img = image();
        img[0] = b'X';
        assert_eq!(relocate(&mut img, 1), Err(PeError::NotPe32Plus));
        let mut img = image();
        img[0x404..0x408].copy_from_slice(&0x4000u32.to_le_bytes());
        assert_eq!(relocate(&mut img, 1), Err(PeError::OutOfBounds));
        let mut img = image();
        img[0x408..0x40a].copy_from_slice(&0x3010u16.to_le_bytes());
        assert_eq!(
            relocate(&mut img, 1),
            Err(PeError::UnsupportedRelocation(3))
        );
        assert_eq!(relocate(&mut [0u8; 16], 1), Err(PeError::NotPe32Plus));
    }
}
