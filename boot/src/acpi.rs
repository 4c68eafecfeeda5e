//! The few ACPI tables the boot application reads: the RSDP the firmware hands over, the root
//! table (XSDT, or the RSDT of ACPI 1.0) and the MCFG, which says where the platform's PCI
//! Express configuration space (ECAM, "MMCONFIG") lies. Shoji mediates the NIC's configuration
//! registers there as it does through ports 0xCF8/0xCFC. Pure parsing over byte slices: the
//! caller reads the firmware's memory; every table is checked (signature, length, checksum)
//! before a field of it is used.

/// Byte ranges of the tables' fields.
mod field {
    use core::ops::Range;

    /// RSDP: signature "RSD PTR ".
    pub const RSDP_SIGNATURE: Range<usize> = 0..8;
    /// RSDP: revision (0 = ACPI 1.0, which has no XSDT).
    pub const RSDP_REVISION: usize = 15;
    /// RSDP: physical address of the RSDT.
    pub const RSDP_RSDT: Range<usize> = 16..20;
    /// RSDP (revision 2+): length of the whole structure.
    pub const RSDP_LENGTH: Range<usize> = 20..24;
    /// RSDP (revision 2+): physical address of the XSDT.
    pub const RSDP_XSDT: Range<usize> = 24..32;
    /// RSDP: the part the first checksum covers.
    pub const RSDP_V1_LEN: usize = 20;

    /// Every system description table: signature.
    pub const SDT_SIGNATURE: Range<usize> = 0..4;
    /// Every system description table: length of the whole table.
    pub const SDT_LENGTH: Range<usize> = 4..8;
    /// Every system description table: the header's size.
    pub const SDT_HEADER_LEN: usize = 36;

    /// MCFG: 8 reserved bytes after the header, then the allocations.
    pub const MCFG_ALLOCATIONS: usize = SDT_HEADER_LEN + 8;
    /// One MCFG allocation's size.
    pub const MCFG_ENTRY_LEN: usize = 16;
    /// Allocation: ECAM base address.
    pub const ALLOC_BASE: Range<usize> = 0..8;
    /// Allocation: PCI segment group.
    pub const ALLOC_SEGMENT: Range<usize> = 8..10;
    /// Allocation: first bus decoded.
    pub const ALLOC_BUS_START: usize = 10;
    /// Allocation: last bus decoded.
    pub const ALLOC_BUS_END: usize = 11;
}

/// Why a table was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// The RSDP's signature is not "RSD PTR ".
    BadRsdpSignature,
    /// A table is shorter than its header or its length field says.
    Truncated,
    /// A table's bytes do not sum to zero.
    BadChecksum,
    /// A table has another signature than the one expected.
    WrongSignature,
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            AcpiError::BadRsdpSignature => "the RSDP has no \"RSD PTR \" signature",
            AcpiError::Truncated => "an ACPI table is shorter than its length field",
            AcpiError::BadChecksum => "an ACPI table's checksum does not add up",
            AcpiError::WrongSignature => "an ACPI table has an unexpected signature",
        })
    }
}

fn u32_at(b: &[u8], r: core::ops::Range<usize>) -> Result<u32, AcpiError> {
    let s = b.get(r).ok_or(AcpiError::Truncated)?;
    Ok(u32::from_le_bytes(
        s.try_into().map_err(|_| AcpiError::Truncated)?,
    ))
}

fn u64_at(b: &[u8], r: core::ops::Range<usize>) -> Result<u64, AcpiError> {
    let s = b.get(r).ok_or(AcpiError::Truncated)?;
    Ok(u64::from_le_bytes(
        s.try_into().map_err(|_| AcpiError::Truncated)?,
    ))
}

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
}

/// The root table the RSDP names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootTable {
    /// Its physical address.
    pub address: u64,
    /// Size of one entry: 8 (XSDT) or 4 (RSDT).
    pub entry_size: usize,
}

/// How many bytes of the RSDP to read: the ACPI 2.0 structure (36), of which an ACPI 1.0 RSDP
/// uses the first 20.
pub const RSDP_READ_LEN: usize = 36;

/// The root table of `rsdp` (at least the first 20 bytes; 36 for revision 2 and later): the
/// XSDT where there is one, else the RSDT.
pub fn root_table(rsdp: &[u8]) -> Result<RootTable, AcpiError> {
    if rsdp.get(field::RSDP_SIGNATURE) != Some(b"RSD PTR ".as_slice()) {
        return Err(AcpiError::BadRsdpSignature);
    }
    let v1 = rsdp.get(..field::RSDP_V1_LEN).ok_or(AcpiError::Truncated)?;
    if !checksum_ok(v1) {
        return Err(AcpiError::BadChecksum);
    }
    if rsdp[field::RSDP_REVISION] >= 2 {
        let len = u32_at(rsdp, field::RSDP_LENGTH)? as usize;
        let whole = rsdp.get(..len).ok_or(AcpiError::Truncated)?;
        if len < field::RSDP_XSDT.end {
            return Err(AcpiError::Truncated);
        }
        if !checksum_ok(whole) {
            return Err(AcpiError::BadChecksum);
        }
        let xsdt = u64_at(rsdp, field::RSDP_XSDT)?;
        if xsdt != 0 {
            return Ok(RootTable {
                address: xsdt,
                entry_size: 8,
            });
        }
    }
    Ok(RootTable {
        address: u64::from(u32_at(rsdp, field::RSDP_RSDT)?),
        entry_size: 4,
    })
}

/// The signature and length of a table from its first 36 bytes.
pub fn header(bytes: &[u8]) -> Result<([u8; 4], usize), AcpiError> {
    if bytes.len() < field::SDT_HEADER_LEN {
        return Err(AcpiError::Truncated);
    }
    let mut sig = [0u8; 4];
    sig.copy_from_slice(&bytes[field::SDT_SIGNATURE]);
    let len = u32_at(bytes, field::SDT_LENGTH)? as usize;
    if len < field::SDT_HEADER_LEN {
        return Err(AcpiError::Truncated);
    }
    Ok((sig, len))
}

/// Check a whole table: its signature, its length field against `table.len()`, its checksum.
pub fn validate(table: &[u8], signature: &[u8; 4]) -> Result<(), AcpiError> {
    let (sig, len) = header(table)?;
    if &sig != signature {
        return Err(AcpiError::WrongSignature);
    }
    if len != table.len() {
        return Err(AcpiError::Truncated);
    }
    if !checksum_ok(table) {
        return Err(AcpiError::BadChecksum);
    }
    Ok(())
}

/// The table addresses in a validated root table (`XSDT` with 8-byte entries, `RSDT` with 4).
pub fn root_entries(table: &[u8], entry_size: usize) -> impl Iterator<Item = u64> + '_ {
    table
        .get(field::SDT_HEADER_LEN..)
        .unwrap_or(&[])
        .chunks_exact(entry_size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
}

/// One ECAM window of the MCFG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamRegion {
    /// Physical address the window's bus numbers count from (bus 0's place, whether or not
    /// the window decodes bus 0; `shoji_hypervisor::setup::EcamWindow` finds a function's
    /// page in it).
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub bus_start: u8,
    /// Last bus decoded.
    pub bus_end: u8,
}

/// The allocations of a validated MCFG (entries with a zero base or an inverted bus range are
/// skipped: a firmware bug, not a window).
pub fn mcfg_regions(table: &[u8]) -> impl Iterator<Item = EcamRegion> + '_ {
    table
        .get(field::MCFG_ALLOCATIONS..)
        .unwrap_or(&[])
        .chunks_exact(field::MCFG_ENTRY_LEN)
        .filter_map(|e| {
            let region = EcamRegion {
                base: u64_at(e, field::ALLOC_BASE).ok()?,
                segment: u16::from_le_bytes(e[field::ALLOC_SEGMENT].try_into().ok()?),
                bus_start: e[field::ALLOC_BUS_START],
                bus_end: e[field::ALLOC_BUS_END],
            };
            (region.base != 0 && region.bus_start <= region.bus_end).then_some(region)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    fn fix_checksum(t: &mut [u8], at: usize, upto: usize) {
        t[at] = 0;
        let s = t[..upto].iter().fold(0u8, |a, &x| a.wrapping_add(x));
        t[at] = 0u8.wrapping_sub(s);
    }

    fn rsdp(revision: u8, rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = Vec::from(*b"RSD PTR ");
        r.push(0); // checksum
        r.extend_from_slice(b"SHOJI ");
        r.push(revision);
        r.extend_from_slice(&rsdt.to_le_bytes());
        r.extend_from_slice(&36u32.to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.push(0); // extended checksum
        r.extend_from_slice(&[0; 3]);
        fix_checksum(&mut r, 8, 20);
        fix_checksum(&mut r, 32, 36);
        r
    }

    fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::from(*sig);
        t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
        t.push(1); // revision
        t.push(0); // checksum
        t.extend_from_slice(&[b'S'; 26]);
        t.extend_from_slice(body);
        let n = t.len();
        fix_checksum(&mut t, 9, n);
        t
    }

    fn mcfg(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
        let mut body = Vec::from([0u8; 8]);
        for &(base, seg, s, e) in entries {
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&seg.to_le_bytes());
            body.extend_from_slice(&[s, e, 0, 0, 0, 0]);
        }
        table(b"MCFG", &body)
    }

    #[test]
    fn rsdp_names_the_xsdt_or_the_rsdt() {
        assert_eq!(
            root_table(&rsdp(2, 0x7fe1_0000, 0x7fe2_0000)),
            Ok(RootTable {
                address: 0x7fe2_0000,
                entry_size: 8
            })
        );
        assert_eq!(
            root_table(&rsdp(0, 0x7fe1_0000, 0)[..20]),
            Ok(RootTable {
                address: 0x7fe1_0000,
                entry_size: 4
            })
        );
        // Revision 2 with no XSDT address: the RSDT.
        assert_eq!(root_table(&rsdp(2, 0x1000, 0)).unwrap().entry_size, 4);
    }

    #[test]
    fn a_damaged_rsdp_is_refused() {
        let mut r = rsdp(2, 0x1000, 0x2000);
        r[0] = b'X';
        assert_eq!(root_table(&r), Err(AcpiError::BadRsdpSignature));
        let mut r = rsdp(2, 0x1000, 0x2000);
        r[17] ^= 1;
        assert_eq!(root_table(&r), Err(AcpiError::BadChecksum));
        let mut r = rsdp(2, 0x1000, 0x2000);
        r[25] ^= 1; // only the extended checksum covers the XSDT address
        assert_eq!(root_table(&r), Err(AcpiError::BadChecksum));
        assert_eq!(
            root_table(&rsdp(2, 0x1000, 0x2000)[..30]),
            Err(AcpiError::Truncated)
        );
        assert_eq!(root_table(b"RSD PTR "), Err(AcpiError::Truncated));
    }

    /// The boundaries: an RSDP whose length field ends before the XSDT address is truncated,
    /// one that ends right after it is whole; a header of exactly 36 bytes, a table of only a
    /// header, are valid.
    #[test]
    fn lengths_at_their_boundaries() {
        let mut short = rsdp(2, 0x1000, 0x2000);
        short[20..24].copy_from_slice(&31u32.to_le_bytes());
        fix_checksum(&mut short, 32, 31);
        fix_checksum(&mut short, 8, 20);
        assert_eq!(root_table(&short), Err(AcpiError::Truncated));
        // Length 32: the extended checksum covers bytes 0..32, so the XSDT address's top byte
        // evens it (bytes 0..20 already sum to zero).
        let mut exact = rsdp(2, 0x1000, 0x2000);
        exact[20..24].copy_from_slice(&32u32.to_le_bytes());
        fix_checksum(&mut exact, 31, 32);
        let xsdt = u64::from_le_bytes(exact[24..32].try_into().unwrap());
        assert_eq!(root_table(&exact).unwrap().address, xsdt);
        let empty = table(b"XSDT", &[]);
        assert_eq!(header(&empty), Ok((*b"XSDT", 36)));
        assert_eq!(validate(&empty, b"XSDT"), Ok(()));
        assert_eq!(root_entries(&empty, 8).count(), 0);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(AcpiError::BadChecksum.to_string().contains("checksum"));
        assert!(AcpiError::Truncated.to_string().contains("shorter"));
        assert!(AcpiError::BadRsdpSignature.to_string().contains("RSD PTR"));
        assert!(AcpiError::WrongSignature.to_string().contains("signature"));
    }

    #[test]
    fn root_table_entries_are_read_at_their_width() {
        let mut body = Vec::new();
        body.extend_from_slice(&0x1111_2222_3333u64.to_le_bytes());
        body.extend_from_slice(&0x4444u64.to_le_bytes());
        let x = table(b"XSDT", &body);
        assert_eq!(validate(&x, b"XSDT"), Ok(()));
        assert_eq!(
            root_entries(&x, 8).collect::<Vec<_>>(),
            [0x1111_2222_3333, 0x4444]
        );
        let r = table(b"RSDT", &[0x10, 0, 0, 0, 0x20, 0, 0, 0]);
        assert_eq!(root_entries(&r, 4).collect::<Vec<_>>(), [0x10, 0x20]);
    }

    #[test]
    fn tables_are_checked_before_use() {
        let m = mcfg(&[(0xb000_0000, 0, 0, 255)]);
        assert_eq!(validate(&m, b"MCFG"), Ok(()));
        assert_eq!(validate(&m, b"APIC"), Err(AcpiError::WrongSignature));
        assert_eq!(
            validate(&m[..m.len() - 1], b"MCFG"),
            Err(AcpiError::Truncated)
        );
        let mut bad = m.clone();
        bad[40] ^= 0x80;
        assert_eq!(validate(&bad, b"MCFG"), Err(AcpiError::BadChecksum));
        assert_eq!(header(&m[..35]), Err(AcpiError::Truncated));
        let mut short = m.clone();
        short[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(header(&short), Err(AcpiError::Truncated));
    }

    #[test]
    fn mcfg_gives_the_ecam_windows() {
        let m = mcfg(&[
            (0xb000_0000, 0, 0, 255),
            (0, 0, 0, 255),
            (0xe000_0000, 1, 0x80, 0x7f),
            (0xe000_0000, 1, 0x10, 0x1f),
        ]);
        let regions: Vec<_> = mcfg_regions(&m).collect();
        assert_eq!(
            regions,
            [
                EcamRegion {
                    base: 0xb000_0000,
                    segment: 0,
                    bus_start: 0,
                    bus_end: 255
                },
                EcamRegion {
                    base: 0xe000_0000,
                    segment: 1,
                    bus_start: 0x10,
                    bus_end: 0x1f
                }
            ]
        );
        // A table with a partial trailing entry yields only the whole ones.
        assert_eq!(mcfg_regions(&m[..m.len() - 3]).count(), 1);
    }
}
