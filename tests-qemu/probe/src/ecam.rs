//! `probe ecam-bar-move`: the attack of a guest kernel on a hypervisor that mediates PCI
//! configuration through ports 0xCF8/0xCFC only. It writes a device's memory BAR through the
//! device's PCI Express configuration space in ECAM (MMCONFIG, found in the ACPI MCFG table),
//! a plain MMIO write through `/dev/mem` (root, kernel booted with `iomem=relaxed`), to move the
//! BAR to a free address in a PCI window, reads a register there to see whether the device now
//! decodes at the new address, and puts the BAR back at once.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::{parse_iomem, IomemRange};

/// The ACPI MCFG table as Linux exposes it.
const MCFG_PATH: &str = "/sys/firmware/acpi/tables/MCFG";
/// Size of one mapping (an ECAM function's configuration space, and the page read at the target).
const PAGE: usize = 4096;
/// Configuration-space offset of the vendor and device IDs.
const ID: usize = 0x00;
/// Configuration-space offset of BAR 0.
const BAR0: usize = 0x10;
/// Number of BARs of a type-0 header.
const BARS: u8 = 6;
/// Low bits of a memory BAR that are flags, not address.
const BAR_FLAGS: u32 = 0xf;
/// BAR bit 0: an I/O BAR.
const BAR_IO: u32 = 1 << 0;
/// BAR bits 2:1: the memory BAR's type (0: 32-bit, 2: 64-bit).
const BAR_TYPE: u32 = 0b11 << 1;
/// What a read of nothing returns.
const ALL_ONES: u32 = u32::MAX;
/// Targets lie below this (a 32-bit BAR).
const FOUR_GIB: u64 = 1 << 32;
/// Windows below this (the legacy VGA hole) are decoded by devices without BARs: not free.
const LEGACY_END: u64 = 1 << 20;

/// Byte ranges of the MCFG table.
mod field {
    use core::ops::Range;
    /// The table's signature, `MCFG`.
    pub const SIGNATURE: Range<usize> = 0..4;
    /// The length of the whole table in bytes.
    pub const LENGTH: Range<usize> = 4..8;
    /// The first allocation entry: after the 36-byte SDT header and 8 reserved bytes.
    pub const ENTRIES: usize = 44;
    /// Size of one allocation entry.
    pub const ENTRY_SIZE: usize = 16;
    /// In an entry: the ECAM base address (the address of bus 0).
    pub const BASE: Range<usize> = 0..8;
    /// In an entry: the PCI segment group.
    pub const SEGMENT: Range<usize> = 8..10;
    /// In an entry: the first bus decoded.
    pub const START_BUS: usize = 10;
    /// In an entry: the last bus decoded.
    pub const END_BUS: usize = 11;
}

/// A PCI function's address: segment, bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    segment: u16,
    bus: u8,
    dev: u8,
    func: u8,
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.dev, self.func
        )
    }
}

/// Parse `SSSS:BB:DD.F` (hex).
fn parse_bdf(s: &str) -> Result<Bdf, String> {
    let bad = || format!("bad PCI address {s:?} (want SSSS:BB:DD.F)");
    let mut parts = s.split(':');
    let (Some(seg), Some(bus), Some(devfn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let bdf = Bdf {
        segment: u16::from_str_radix(seg, 16).map_err(|_| bad())?,
        bus: u8::from_str_radix(bus, 16).map_err(|_| bad())?,
        dev: u8::from_str_radix(dev, 16).map_err(|_| bad())?,
        func: u8::from_str_radix(func, 16).map_err(|_| bad())?,
    };
    if bdf.dev >= 32 || bdf.func >= 8 {
        return Err(bad());
    }
    Ok(bdf)
}

/// One allocation entry of the MCFG table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct McfgEntry {
    base: u64,
    segment: u16,
    start_bus: u8,
    end_bus: u8,
}

/// The allocation entries of an MCFG table.
fn parse_mcfg(table: &[u8]) -> Result<Vec<McfgEntry>, String> {
    if table.len() < field::ENTRIES {
        return Err(format!(
            "MCFG table truncated: {} bytes, the header alone is {}",
            table.len(),
            field::ENTRIES
        ));
    }
    if table[field::SIGNATURE] != *b"MCFG" {
        return Err(format!(
            "not an MCFG table: signature {:?}",
            String::from_utf8_lossy(&table[field::SIGNATURE])
        ));
    }
    let length = u32::from_le_bytes(table[field::LENGTH].try_into().expect("4 bytes")) as usize;
    if length > table.len() {
        return Err(format!(
            "MCFG table truncated: length field {length}, {} bytes present",
            table.len()
        ));
    }
    if length < field::ENTRIES || !(length - field::ENTRIES).is_multiple_of(field::ENTRY_SIZE) {
        return Err(format!(
            "bad MCFG length {length}: not a header plus whole entries"
        ));
    }
    Ok(table[field::ENTRIES..length]
        .chunks_exact(field::ENTRY_SIZE)
        .map(|e| McfgEntry {
            base: u64::from_le_bytes(e[field::BASE].try_into().expect("8 bytes")),
            segment: u16::from_le_bytes(e[field::SEGMENT].try_into().expect("2 bytes")),
            start_bus: e[field::START_BUS],
            end_bus: e[field::END_BUS],
        })
        .collect())
}

/// The ECAM address of the function's configuration space. The MCFG base is the address of bus
/// 0 even when the entry starts at a later bus (as Linux reads it).
fn ecam_address(entries: &[McfgEntry], bdf: Bdf) -> Result<u64, String> {
    let e = entries
        .iter()
        .find(|e| e.segment == bdf.segment && (e.start_bus..=e.end_bus).contains(&bdf.bus))
        .ok_or_else(|| {
            format!(
                "no MCFG entry covers segment {:04x} bus {:02x}",
                bdf.segment, bdf.bus
            )
        })?;
    let offset = u64::from(bdf.bus) << 20 | u64::from(bdf.dev) << 15 | u64::from(bdf.func) << 12;
    e.base
        .checked_add(offset)
        .ok_or_else(|| format!("MCFG base {:#x} overflows", e.base))
}

/// The size of BAR `bar` from the text of the function's sysfs `resource` file.
fn bar_size(resource: &str, bar: u8) -> Result<u64, String> {
    let line = resource
        .lines()
        .nth(usize::from(bar))
        .ok_or_else(|| format!("no line for BAR {bar} in the resource file"))?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut fields = line.split_whitespace().map(hex);
    let (Some(Some(start)), Some(Some(end))) = (fields.next(), fields.next()) else {
        return Err(format!("bad resource line for BAR {bar}: {line:?}"));
    };
    match end.checked_sub(start) {
        Some(n) if end != 0 => Ok(n + 1),
        _ => Err(format!("BAR {bar} has no size (resource {line:?})")),
    }
}

/// The lowest `size`-aligned address of a free `size`-byte slot in a top-level `PCI Bus` window
/// of `/proc/iomem` below 4 GiB (above the legacy hole): free means overlapping no entry other
/// than the window itself, at any depth.
fn find_target(ranges: &[IomemRange], size: u64) -> Result<u64, String> {
    if size == 0 {
        return Err("BAR size 0".into());
    }
    ranges
        .iter()
        .enumerate()
        .filter(|(_, w)| {
            w.depth == 0
                && w.name.starts_with("PCI Bus ")
                && w.start >= LEGACY_END
                && w.end < FOUR_GIB
        })
        .filter_map(|(i, _)| first_free(ranges, i, size))
        .min()
        .ok_or_else(|| format!("no free {size:#x}-byte slot in a PCI window below 4 GiB"))
}

/// The lowest free aligned slot in window `ranges[window]`.
fn first_free(ranges: &[IomemRange], window: usize, size: u64) -> Option<u64> {
    let w = &ranges[window];
    let mut x = w.start.checked_next_multiple_of(size)?;
    loop {
        let last = x.checked_add(size - 1)?;
        if last > w.end {
            return None;
        }
        let blocker = ranges
            .iter()
            .enumerate()
            .filter(|&(i, r)| i != window && r.start <= last && x <= r.end)
            .map(|(_, r)| r.end)
            .max();
        match blocker {
            None => return Some(x),
            Some(end) => x = end.checked_add(1)?.checked_next_multiple_of(size)?,
        }
    }
}

/// One 4 KiB page of physical address space, mapped uncached through `/dev/mem`.
struct Page {
    ptr: *mut u32,
}

impl Page {
    /// Map the page at `phys` (4 KiB-aligned).
    fn map(mem: &File, phys: u64) -> io::Result<Self> {
        let offset = libc::off_t::try_from(phys)
            .map_err(|_| io::Error::other(format!("address {phys:#x} out of range")))?;
        // SAFETY: a new shared mapping at an address the kernel picks; it aliases no memory of
        // this process. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                mem.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("mmap of /dev/mem at {phys:#x}: {e}"),
            ));
        }
        Ok(Self { ptr: ptr.cast() })
    }

    /// Read the dword at byte offset `off`.
    fn read(&self, off: usize) -> u32 {
        assert!(off.is_multiple_of(4) && off < PAGE, "offset {off:#x}");
        // SAFETY: `ptr` maps PAGE bytes for the life of `self`; `off` is an aligned dword in them.
        unsafe { core::ptr::read_volatile(self.ptr.add(off / 4)) }
    }

    /// Write the dword at byte offset `off`.
    fn write(&self, off: usize, value: u32) {
        assert!(off.is_multiple_of(4) && off < PAGE, "offset {off:#x}");
        // SAFETY: `ptr` maps PAGE bytes, writable, for the life of `self`; `off` is an aligned
        // dword in them.
        unsafe { core::ptr::write_volatile(self.ptr.add(off / 4), value) }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made; nothing borrowed from it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.cast(), PAGE);
        }
    }
}

/// An error that names what failed.
fn context(what: &str) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// `probe ecam-bar-move BDF BAR --reg REG`.
pub fn bar_move(bdf: &str, bar: u8, reg: u64) -> io::Result<()> {
    let bdf = parse_bdf(bdf).map_err(io::Error::other)?;
    if bar >= BARS {
        return Err(io::Error::other(format!("BAR {bar}: want 0 to 5")));
    }
    if !reg.is_multiple_of(4) {
        return Err(io::Error::other(format!(
            "register {reg:#x} is not a dword"
        )));
    }
    let table = std::fs::read(MCFG_PATH).map_err(context(MCFG_PATH))?;
    let ecam = parse_mcfg(&table)
        .and_then(|entries| ecam_address(&entries, bdf))
        .map_err(io::Error::other)?;
    let resource_path = format!("/sys/bus/pci/devices/{bdf}/resource");
    let resource = std::fs::read_to_string(&resource_path).map_err(context(&resource_path))?;
    let size = bar_size(&resource, bar).map_err(io::Error::other)?;
    if reg >= size {
        return Err(io::Error::other(format!(
            "register {reg:#x} lies outside the {size:#x}-byte BAR"
        )));
    }
    let iomem = std::fs::read_to_string("/proc/iomem").map_err(context("/proc/iomem"))?;
    let target = find_target(&parse_iomem(&iomem), size).map_err(io::Error::other)?;
    let new_bar = u32::try_from(target).expect("targets lie below 4 GiB");

    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")
        .map_err(context("/dev/mem"))?;
    let cfg = Page::map(&mem, ecam)?;
    let id = cfg.read(ID);
    if id == ALL_ONES {
        return Err(io::Error::other(format!(
            "no function answers at ECAM {ecam:#x} (id {id:#010x})"
        )));
    }
    let bar_off = BAR0 + 4 * usize::from(bar);
    let orig = cfg.read(bar_off);
    if orig & BAR_IO != 0 || orig & BAR_TYPE != 0 {
        return Err(io::Error::other(format!(
            "BAR {bar} ({orig:#010x}) is not a 32-bit memory BAR"
        )));
    }
    if orig & !BAR_FLAGS == 0 {
        return Err(io::Error::other(format!(
            "BAR {bar} ({orig:#010x}) is unassigned"
        )));
    }
    let reg_addr = target + reg;
    let page = reg_addr & !(PAGE as u64 - 1);
    let in_page = (reg_addr - page) as usize;
    let at_target = Page::map(&mem, page)?;
    let before = at_target.read(in_page);

    // From the move to the restore nothing can fail: the BAR is always put back.
    cfg.write(bar_off, new_bar | (orig & BAR_FLAGS));
    let readback = cfg.read(bar_off);
    let at_new = at_target.read(in_page);
    cfg.write(bar_off, orig);
    let restored = cfg.read(bar_off) == orig;

    // Nothing decodes an unassigned address: it reads all-ones on hardware, zeros under QEMU
    // with KVM. Either way the device answering there reads differently from before the move.
    let moved = readback & !BAR_FLAGS == new_bar && at_new != before;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!(
        "probe ecam-bar-move: bdf={bdf} bar={bar} ecam={ecam:#x} id={id:#010x} orig={orig:#010x} size={size:#x} target={target:#x} before={before:#010x} readback={readback:#010x} at_new={at_new:#010x} moved={} restored={}",
        yes_no(moved),
        yes_no(restored)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MCFG table with these (base, segment, start bus, end bus) entries.
    fn mcfg(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
        let mut t = vec![0u8; field::ENTRIES];
        t[field::SIGNATURE].copy_from_slice(b"MCFG");
        for &(base, segment, start, end) in entries {
            let mut e = [0u8; field::ENTRY_SIZE];
            e[field::BASE].copy_from_slice(&base.to_le_bytes());
            e[field::SEGMENT].copy_from_slice(&segment.to_le_bytes());
            e[field::START_BUS] = start;
            e[field::END_BUS] = end;
            t.extend_from_slice(&e);
        }
        let len = t.len() as u32;
        t[field::LENGTH].copy_from_slice(&len.to_le_bytes());
        t
    }

    fn bdf(s: &str) -> Bdf {
        parse_bdf(s).unwrap()
    }

    #[test]
    fn parses_bdf() {
        let b = bdf("0000:00:1f.2");
        assert_eq!((b.segment, b.bus, b.dev, b.func), (0, 0, 0x1f, 2));
        assert_eq!(b.to_string(), "0000:00:1f.2");
        for bad in [
            "00:02.0",
            "0000:00:20.0",
            "0000:00:02.8",
            "0000:00:02",
            "x:00:02.0",
            "0000:00:02.0:1",
        ] {
            assert!(parse_bdf(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn q35_ecam_address() {
        let entries = parse_mcfg(&mcfg(&[(0xb000_0000, 0, 0, 0xff)])).unwrap();
        assert_eq!(
            entries,
            [McfgEntry {
                base: 0xb000_0000,
                segment: 0,
                start_bus: 0,
                end_bus: 0xff
            }]
        );
        assert_eq!(ecam_address(&entries, bdf("0000:00:02.0")), Ok(0xb001_0000));
        assert_eq!(ecam_address(&entries, bdf("0000:01:00.1")), Ok(0xb010_1000));
        assert!(ecam_address(&entries, bdf("0001:00:02.0")).is_err());
    }

    #[test]
    fn picks_the_entry_of_the_bus() {
        let t = mcfg(&[
            (0xe000_0000, 0, 0, 0x3f),
            (0xc000_0000, 0, 0x80, 0xff),
            (0xd000_0000, 1, 0, 0xff),
        ]);
        let entries = parse_mcfg(&t).unwrap();
        // The base is that of bus 0, also for an entry that starts at bus 0x80.
        assert_eq!(
            ecam_address(&entries, bdf("0000:81:03.0")),
            Ok(0xc000_0000 + (0x81 << 20) + (3 << 15))
        );
        assert_eq!(ecam_address(&entries, bdf("0001:00:00.0")), Ok(0xd000_0000));
        assert!(ecam_address(&entries, bdf("0000:40:00.0")).is_err());
    }

    #[test]
    fn refuses_bad_tables() {
        let good = mcfg(&[(0xb000_0000, 0, 0, 0xff)]);
        assert!(parse_mcfg(&good[..good.len() - 1])
            .unwrap_err()
            .contains("truncated"));
        assert!(parse_mcfg(&good[..20]).unwrap_err().contains("truncated"));
        let mut apic = good.clone();
        apic[field::SIGNATURE].copy_from_slice(b"APIC");
        assert!(parse_mcfg(&apic).unwrap_err().contains("not an MCFG"));
        let mut ragged = good.clone();
        ragged[field::LENGTH].copy_from_slice(&(good.len() as u32 - 4).to_le_bytes());
        assert!(parse_mcfg(&ragged).unwrap_err().contains("bad MCFG length"));
        assert_eq!(parse_mcfg(&mcfg(&[])), Ok(vec![]));
    }

    /// The sysfs resource file of QEMU's e1000 (BAR 0 memory, BAR 1 I/O, ROM).
    const E1000_RESOURCE: &str = "\
0x00000000febc0000 0x00000000febdffff 0x0000000000040200
0x000000000000c000 0x000000000000c03f 0x0000000000040101
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000feb80000 0x00000000febbffff 0x0000000000046200
";

    #[test]
    fn bar_sizes() {
        assert_eq!(bar_size(E1000_RESOURCE, 0), Ok(0x20000));
        assert_eq!(bar_size(E1000_RESOURCE, 1), Ok(0x40));
        assert!(bar_size(E1000_RESOURCE, 2).unwrap_err().contains("no size"));
        assert!(bar_size("0x1000\n", 0)
            .unwrap_err()
            .contains("bad resource line"));
        assert!(bar_size("", 0).is_err());
    }

    /// `/proc/iomem` of a q35 guest with 2 GiB of RAM.
    const Q35_IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000a0000-000bffff : PCI Bus 0000:00
000c0000-000c99ff : Video ROM
000ca000-000cadff : Adapter ROM
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-7ffdbfff : System RAM
  01000000-01e03fff : Kernel code
7ffdc000-7fffffff : Reserved
80000000-afffffff : PCI Bus 0000:00
b0000000-bfffffff : PCI MMCONFIG 0000 [bus 00-ff]
  b0000000-bfffffff : Reserved
c0000000-febfffff : PCI Bus 0000:00
  fd000000-fdffffff : 0000:00:01.0
    fd000000-fdffffff : bochs-drm
  feb80000-febbffff : 0000:00:02.0
  febc0000-febdffff : 0000:00:02.0
    febc0000-febdffff : e1000
  febf0000-febf0fff : 0000:00:01.0
    febf0000-febf0fff : bochs-drm
  febf1000-febf1fff : 0000:00:1f.2
    febf1000-febf1fff : ahci
fec00000-fec003ff : IOAPIC 0
fed00000-fed003ff : HPET 0
  fed00000-fed003ff : PNP0103:00
fee00000-fee00fff : Local APIC
feffc000-feffffff : Reserved
fffc0000-ffffffff : Reserved
100000000-17fffffff : System RAM
7000000000-707fffffff : PCI Bus 0000:00
";

    #[test]
    fn q35_target_is_the_free_low_window() {
        // Not the legacy VGA window at 0xa0000, though it is lower and just as large.
        let r = parse_iomem(Q35_IOMEM);
        assert_eq!(find_target(&r, 0x20000), Ok(0x8000_0000));
        assert_eq!(find_target(&r, 0x1000), Ok(0x8000_0000));
    }

    #[test]
    fn target_skips_the_window_children() {
        let text = "\
c0000000-febfffff : PCI Bus 0000:00
  c0000000-c0000fff : 0000:00:03.0
  c0020000-c003ffff : 0000:00:02.0
    c0020000-c003ffff : e1000
  c0040000-c0040fff : 0000:00:1f.2
fec00000-fec003ff : IOAPIC 0
";
        let r = parse_iomem(text);
        assert_eq!(find_target(&r, 0x20000), Ok(0xc006_0000));
        assert_eq!(find_target(&r, 0x1000), Ok(0xc000_1000));
    }

    #[test]
    fn no_room_is_an_error() {
        let text = "\
000a0000-000bffff : PCI Bus 0000:00
feb80000-febfffff : PCI Bus 0000:00
  feb80000-febbffff : 0000:00:02.0
  febc0000-febdffff : 0000:00:02.0
  febf1000-febf1fff : 0000:00:1f.2
7000000000-707fffffff : PCI Bus 0000:00
";
        let r = parse_iomem(text);
        assert!(find_target(&r, 0x20000)
            .unwrap_err()
            .contains("no free 0x20000-byte slot"));
        assert!(find_target(&r, 0).is_err());
        assert_eq!(find_target(&r, 0x1000), Ok(0xfebe_0000));
    }
}
