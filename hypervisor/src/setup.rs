//! The hand-over from the boot application to the hypervisor: one page of plain data at a fixed
//! place in Shoji's reserved region, written before VMX starts and read by every CPU's launch.

/// "SHOJISET": marks a filled [`Setup`] page.
pub const SETUP_MAGIC: u64 = 0x5445_5349_4a4f_4853;

/// Layout of Shoji's reserved region: the canary page first, then the setup page, then the copy
/// of Shoji's image, then the arena that all other structures are allocated from.
pub mod layout {
    /// Offset of the canary page.
    pub const CANARY: u64 = 0;
    /// Offset of the setup page.
    pub const SETUP: u64 = 0x1000;
    /// Offset of the relocated image.
    pub const IMAGE: u64 = 0x2000;
    /// Prefix of the canary text Shoji writes into its own memory (tests search the guest's view
    /// of memory for it).
    pub const CANARY_PREFIX: &[u8; 13] = b"SHOJI-CANARY-";
}

/// Everything the hypervisor needs from the boot application.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// [`SETUP_MAGIC`].
    pub magic: u64,
    /// Physical base of the reserved region.
    pub region_base: u64,
    /// Size of the reserved region in bytes.
    pub region_size: u64,
    /// Physical base of Shoji's relocated image inside the region.
    pub image_base: u64,
    /// Size of the image.
    pub image_size: u64,
    /// Next free byte of the arena (page aligned); advanced as structures are allocated.
    pub arena_next: u64,
    /// End of the arena.
    pub arena_end: u64,
    /// Shoji's own page tables (identity map), built by the boot application.
    pub host_cr3: u64,
    /// Highest physical address (plus one) the host page tables and the EPT map.
    pub phys_top: u64,
    /// I/O port of Shoji's log UART (0 = no log).
    pub log_port: u16,
    /// Log level: 0 error, 1 warn, 2 info, 3 debug, 4 trace.
    pub log_level: u8,
    /// Test-only: leave Shoji's memory visible to the guest (1) instead of hiding it (0).
    pub expose_memory: u8,
    /// Whether `agent_key` was provisioned.
    pub agent_key_set: u8,
    /// The agent key from the configuration.
    pub agent_key: [u8; 32],
    /// Number of CPUs the boot application will virtualize.
    pub cpu_count: u32,
    /// Number of valid entries in `ram`.
    pub ram_count: u32,
    /// Guest RAM as `[start, end)` ranges from the firmware's memory map (sorted, merged): the
    /// only memory Shoji reads or writes on the guest's behalf.
    pub ram: [[u64; 2]; MAX_RAM_RANGES],
    /// Whether Shoji mediates the e1000 NIC (1, the default) or leaves it to the guest (0, for
    /// comparison measurements only: the guest then reaches the NIC directly).
    pub mediate_nic: u8,
    /// The TSC frequency in Hz as the boot application measured it against the firmware's
    /// timer (0 = not measured). Used only when CPUID leaves 0x15/0x16 do not give it.
    pub tsc_hz: u64,
    /// The management endpoint (`mgmt_*` in `shoji.cfg`; `enabled` 0: none).
    pub mgmt: shoji_mgmt::Settings,
    /// PCI segment 0's ECAM window from the firmware's MCFG table (0 = none: configuration
    /// space only through ports 0xCF8/0xCFC), and the buses it decodes.
    pub ecam_base: u64,
    /// First bus of the ECAM window.
    pub ecam_bus_start: u8,
    /// Last bus of the ECAM window.
    pub ecam_bus_end: u8,
}

#[cfg(test)]
impl Setup {
    /// A setup page with every field zero (no region, no RAM, no NIC, no ECAM window).
    pub(crate) fn zeroed_for_tests() -> Setup {
        Setup {
            magic: 0,
            region_base: 0,
            region_size: 0,
            image_base: 0,
            image_size: 0,
            arena_next: 0,
            arena_end: 0,
            host_cr3: 0,
            phys_top: 0,
            log_port: 0,
            log_level: 0,
            expose_memory: 0,
            agent_key_set: 0,
            agent_key: [0; 32],
            cpu_count: 0,
            ram_count: 0,
            ram: [[0; 2]; MAX_RAM_RANGES],
            mediate_nic: 0,
            tsc_hz: 0,
            mgmt: shoji_mgmt::Settings::default(),
            ecam_base: 0,
            ecam_bus_start: 0,
            ecam_bus_end: 0,
        }
    }
}

/// The platform's ECAM window (segment 0), as the boot application read it from the MCFG:
/// where the PCI Express configuration space of each bus, device and function lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamWindow {
    /// Physical address the window's bus numbers count from: bus 0's place, whether or not
    /// the window decodes bus 0 (PCI Firmware Specification; Linux reads it so too).
    pub base: u64,
    /// First bus decoded.
    pub bus_start: u8,
    /// Last bus decoded.
    pub bus_end: u8,
}

impl EcamWindow {
    /// The window the setup page names, if any.
    pub fn from_setup(setup: &Setup) -> Option<EcamWindow> {
        (setup.ecam_base != 0 && setup.ecam_bus_start <= setup.ecam_bus_end).then_some(EcamWindow {
            base: setup.ecam_base,
            bus_start: setup.ecam_bus_start,
            bus_end: setup.ecam_bus_end,
        })
    }

    /// The physical address of the 4 KiB configuration space of `bus:dev.func`, if this window
    /// decodes it.
    pub fn function_page(&self, bus: u8, dev: u8, func: u8) -> Option<u64> {
        if bus < self.bus_start || bus > self.bus_end || dev > 31 || func > 7 {
            return None;
        }
        let off = (u64::from(bus) << 20) | (u64::from(dev) << 15) | (u64::from(func) << 12);
        Some(self.base + off)
    }
}

/// Capacity of the RAM range table.
pub const MAX_RAM_RANGES: usize = 64;

/// Merge `[start, end)` into the sorted range table, returning false when the table is full.
pub fn add_ram_range(
    ram: &mut [[u64; 2]; MAX_RAM_RANGES],
    count: &mut u32,
    start: u64,
    end: u64,
) -> bool {
    if start >= end {
        return true;
    }
    let n = (*count as usize).min(MAX_RAM_RANGES);
    // Extend an adjacent or overlapping range.
    for r in ram[..n].iter_mut() {
        if start <= r[1] && end >= r[0] {
            r[0] = r[0].min(start);
            r[1] = r[1].max(end);
            return true;
        }
    }
    if n == MAX_RAM_RANGES {
        return false;
    }
    let pos = ram[..n].iter().position(|r| r[0] > start).unwrap_or(n);
    ram.copy_within(pos..n, pos + 1);
    ram[pos] = [start, end];
    *count += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecam_function_pages_count_from_bus_0() {
        let q35 = EcamWindow {
            base: 0xb000_0000,
            bus_start: 0,
            bus_end: 255,
        };
        let later = EcamWindow {
            base: 0xe000_0000,
            bus_start: 0x10,
            bus_end: 0x1f,
        };
        assert_eq!(q35.function_page(0, 2, 0), Some(0xb001_0000));
        assert_eq!(q35.function_page(1, 0x1f, 7), Some(0xb01f_f000));
        assert_eq!(later.function_page(0x11, 0, 1), Some(0xe110_1000));
        assert_eq!(
            later.function_page(0x1f, 0, 0),
            Some(0xe1f0_0000),
            "the last bus"
        );
        assert_eq!(later.function_page(0x20, 0, 0), None);
        assert_eq!(later.function_page(0x0f, 0, 0), None);
        assert_eq!(q35.function_page(0, 32, 0), None);
        assert_eq!(q35.function_page(0, 0, 8), None);
    }

    #[test]
    fn the_ecam_window_is_taken_from_the_setup_page_only_when_it_names_one() {
        let mut s = Setup::zeroed_for_tests();
        assert_eq!(EcamWindow::from_setup(&s), None, "no MCFG: base 0");
        s.ecam_base = 0xb000_0000;
        s.ecam_bus_start = 0;
        s.ecam_bus_end = 255;
        assert_eq!(
            EcamWindow::from_setup(&s),
            Some(EcamWindow {
                base: 0xb000_0000,
                bus_start: 0,
                bus_end: 255
            })
        );
        // One bus, not bus 0.
        s.ecam_base = 0xe000_0000;
        s.ecam_bus_start = 7;
        s.ecam_bus_end = 7;
        assert_eq!(
            EcamWindow::from_setup(&s),
            Some(EcamWindow {
                base: 0xe000_0000,
                bus_start: 7,
                bus_end: 7
            })
        );
        // Buses the wrong way round: no window.
        s.ecam_bus_start = 8;
        assert_eq!(EcamWindow::from_setup(&s), None);
        s.ecam_bus_start = 0;
        s.ecam_base = 0;
        assert_eq!(EcamWindow::from_setup(&s), None, "buses without a base");
    }

    #[test]
    fn ranges_merge_and_sort() {
        let mut ram = [[0u64; 2]; MAX_RAM_RANGES];
        let mut n = 0;
        assert!(add_ram_range(&mut ram, &mut n, 0x10_0000, 0x20_0000));
        assert!(add_ram_range(&mut ram, &mut n, 0, 0xa_0000));
        assert!(add_ram_range(&mut ram, &mut n, 0x20_0000, 0x30_0000));
        assert!(add_ram_range(&mut ram, &mut n, 5, 5));
        assert_eq!(n, 2);
        assert_eq!(ram[0], [0, 0xa_0000]);
        assert_eq!(ram[1], [0x10_0000, 0x30_0000]);
        let mut full = [[0u64; 2]; MAX_RAM_RANGES];
        let mut m = 0;
        for i in 0..MAX_RAM_RANGES as u64 {
            assert!(add_ram_range(
                &mut full,
                &mut m,
                i * 0x10000,
                i * 0x10000 + 0x1000
            ));
        }
        assert!(!add_ram_range(&mut full, &mut m, 0x1000_0000, 0x1000_1000));
    }
}
