//! Mediation of the NIC's PCI configuration space: BAR moves and sizing, and the command
//! register's memory-space and bus-master bits (Shoji's own rings need both kept on); and
//! finding the NIC at all: any bus, device and function, behind bridges, with a 32- or 64-bit
//! memory BAR.

/// Where the device's BARs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciLayout {
    /// Index (0..=5) of the 128 KiB memory BAR.
    pub mmio_bar: u8,
    /// Size of the memory BAR.
    pub mmio_size: u32,
    /// Index of the I/O BAR, if the device has one.
    pub io_bar: Option<u8>,
    /// Size of the I/O BAR.
    pub io_size: u32,
    /// What to do when the guest moves a mediated BAR.
    pub bar_move: BarMovePolicy,
    /// Whether the memory BAR is 64-bit: the next BAR holds its upper half (moves of which
    /// are always refused).
    pub mmio_64: bool,
}

impl Default for PciLayout {
    /// The 82540EM as QEMU and Bochs present it: memory BAR 0 (128 KiB), I/O BAR 1 (64 bytes).
    fn default() -> Self {
        PciLayout {
            mmio_bar: 0,
            mmio_size: 0x2_0000,
            io_bar: Some(1),
            io_size: 0x40,
            bar_move: BarMovePolicy::Deny,
            mmio_64: false,
        }
    }
}

/// Device ids of the 8254x parts the engine models (vendor 8086): 82540EM, 82545EM (copper),
/// 82543GC, 82545GM.
pub const E1000_IDS: [u16; 4] = [0x100e, 0x100f, 0x1004, 0x1015];
/// Intel's vendor id.
pub const VENDOR_INTEL: u16 = 0x8086;

/// Byte offsets of the configuration header fields discovery reads.
pub mod field {
    /// Vendor id (low word) and device id (high word).
    pub const ID: u16 = 0x00;
    /// Header type in byte 2 of this dword (bit 7: multi-function).
    pub const HEADER_DWORD: u16 = 0x0c;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Bridges: primary, secondary, subordinate bus numbers (bytes 0, 1, 2).
    pub const BRIDGE_BUSES: u16 = 0x18;
}

/// Where discovery found the NIC and how its BARs are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// `bus << 8 | dev << 3 | func`.
    pub bdf: u32,
    /// The device id.
    pub device: u16,
    /// The dword at BAR `n`, for the layout.
    pub bars: [u32; 3],
}

/// Why a NIC that was found cannot be mediated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// BAR 0 is an I/O BAR.
    NotMemory,
    /// The memory BAR holds no address (the firmware did not assign it).
    Unassigned,
    /// Reserved memory-BAR type (bits 2:1 = 01 or 11).
    ReservedType,
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            LayoutError::NotMemory => "BAR 0 is not a memory BAR",
            LayoutError::Unassigned => "the memory BAR is unassigned",
            LayoutError::ReservedType => "the memory BAR has a reserved type",
        })
    }
}

impl Found {
    /// The memory BAR's base, the I/O BAR's base (0: none) and the layout the engine mediates.
    pub fn layout(&self) -> Result<(u64, u16, PciLayout), LayoutError> {
        let bar0 = self.bars[0];
        if bar0 & 1 != 0 {
            return Err(LayoutError::NotMemory);
        }
        let (mmio, mmio_64) = match (bar0 >> 1) & 3 {
            0 => (u64::from(bar0 & !0xf), false),
            2 => (
                (u64::from(self.bars[1]) << 32) | u64::from(bar0 & !0xf),
                true,
            ),
            _ => return Err(LayoutError::ReservedType),
        };
        if mmio == 0 {
            return Err(LayoutError::Unassigned);
        }
        let io_index = if mmio_64 { 2 } else { 1 };
        let io_bar = self.bars[io_index];
        let io = if io_bar & 1 != 0 {
            (io_bar & 0xfffc) as u16
        } else {
            0
        };
        let layout = PciLayout {
            io_bar: (io != 0).then_some(io_index as u8),
            mmio_64,
            ..PciLayout::default()
        };
        Ok((mmio, io, layout))
    }
}

/// Find the first 8254x NIC in the configuration space `read(bdf, offset)` gives (dwords):
/// every device and function of bus 0, and of every bus behind a PCI-PCI bridge, each bus
/// once. Reads the BARs of the one it finds.
pub fn find_nic(mut read: impl FnMut(u32, u16) -> u32) -> Option<Found> {
    let mut seen = [false; 256];
    let mut stack: [u8; 256] = [0; 256];
    let mut depth = 1usize;
    seen[0] = true;
    while depth > 0 {
        depth -= 1;
        let bus = u32::from(stack[depth]);
        for dev in 0..32u32 {
            for func in 0..8u32 {
                let bdf = (bus << 8) | (dev << 3) | func;
                let id = read(bdf, field::ID);
                if id & 0xffff == 0xffff || id & 0xffff == 0 {
                    if func == 0 {
                        break;
                    }
                    continue;
                }
                let header = (read(bdf, field::HEADER_DWORD) >> 16) as u8;
                let device = (id >> 16) as u16;
                if id & 0xffff == u32::from(VENDOR_INTEL) && E1000_IDS.contains(&device) {
                    let mut bars = [0u32; 3];
                    for (i, b) in bars.iter_mut().enumerate() {
                        *b = read(bdf, field::BAR0 + 4 * i as u16);
                    }
                    return Some(Found { bdf, device, bars });
                }
                if header & 0x7f == 1 {
                    let secondary = (read(bdf, field::BRIDGE_BUSES) >> 8) as u8;
                    if !seen[usize::from(secondary)] {
                        seen[usize::from(secondary)] = true;
                        stack[depth] = secondary;
                        depth += 1;
                    }
                }
                if func == 0 && header & 0x80 == 0 {
                    break;
                }
            }
        }
    }
    None
}

/// What happens when the guest writes a new base into a mediated BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarMovePolicy {
    /// The write is discarded; the BAR keeps its address (as a fixed BAR would).
    Deny,
    /// The write goes through and the outcome reports the move, so the hypervisor re-applies
    /// its EPT traps and I/O bitmap at the new address.
    Follow,
}

/// What to write to the device's configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciWrite {
    /// Perform the guest's write unchanged.
    Pass,
    /// Discard it.
    Drop,
    /// Write this dword at the aligned offset instead.
    Replace(u32),
}

/// A mediated BAR the guest moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    /// BAR index.
    pub bar: u8,
    /// New base address (memory or I/O).
    pub base: u64,
}

/// The decision for one configuration write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciOutcome {
    /// What to write.
    pub write: PciWrite,
    /// Set when a mediated BAR moved (only with [`BarMovePolicy::Follow`]).
    pub moved: Option<BarMove>,
}

/// PCI command register: I/O space enable.
pub const CMD_IO: u32 = 1 << 0;
/// PCI command register: memory space enable.
pub const CMD_MEM: u32 = 1 << 1;
/// PCI command register: bus master enable.
pub const CMD_BUS_MASTER: u32 = 1 << 2;

/// Configuration-space state kept for the guest's view.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PciState {
    layout: PciLayout,
    /// The guest's view of MEM and BUS_MASTER.
    guest_cmd: u32,
    /// BARs being sized (all-ones written, size mask to be read back).
    sizing: [bool; 6],
    /// Guest writes discarded.
    pub denied: u64,
}

fn merge(real: u32, offset: u16, size: u8, value: u32) -> Option<u32> {
    let shift = u32::from(offset & 3) * 8;
    let mask: u32 = match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => return None,
    };
    if u32::from(offset & 3) + u32::from(size) > 4 {
        return None;
    }
    Some((real & !(mask << shift)) | ((value & mask) << shift))
}

impl PciState {
    pub fn new(layout: PciLayout) -> Self {
        PciState {
            layout,
            guest_cmd: CMD_MEM | CMD_BUS_MASTER,
            sizing: [false; 6],
            denied: 0,
        }
    }

    pub fn guest_bus_master(&self) -> bool {
        self.guest_cmd & CMD_BUS_MASTER != 0
    }

    /// Whether BAR `idx` is the upper half of the 64-bit memory BAR.
    fn is_upper_half(&self, idx: usize) -> bool {
        self.layout.mmio_64 && idx == usize::from(self.layout.mmio_bar) + 1
    }

    fn bar_info(&self, idx: usize) -> Option<(u32, u32)> {
        if idx == usize::from(self.layout.mmio_bar) {
            Some((self.layout.mmio_size, 0xf))
        } else if Some(idx) == self.layout.io_bar.map(usize::from) {
            Some((self.layout.io_size, 0x3))
        } else {
            None
        }
    }

    pub fn read(&self, offset: u16, size: u8, real: u32) -> u32 {
        let aligned = offset & !3;
        let mut v = real;
        if aligned == 0x04 {
            v = (v & !(CMD_MEM | CMD_BUS_MASTER)) | self.guest_cmd;
        } else if (0x10..0x28).contains(&aligned) {
            let idx = usize::from((aligned - 0x10) / 4);
            if let Some((sz, flags)) = self.bar_info(idx) {
                if self.sizing[idx] {
                    v = !(sz.max(flags + 1) - 1) | (real & flags);
                }
            } else if self.is_upper_half(idx) && self.sizing[idx] {
                // The BAR is smaller than 4 GiB: every upper address bit is writable.
                v = u32::MAX;
            }
        }
        let shift = u32::from(offset & 3) * 8;
        let mask: u32 = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        (v >> shift) & mask
    }

    pub fn write(&mut self, offset: u16, size: u8, value: u32, real: u32) -> PciOutcome {
        let pass = PciOutcome {
            write: PciWrite::Pass,
            moved: None,
        };
        let aligned = offset & !3;
        let Some(new) = merge(real, offset, size, value) else {
            self.denied += 1;
            return PciOutcome {
                write: PciWrite::Drop,
                moved: None,
            };
        };
        if aligned == 0x04 {
            self.guest_cmd = new & (CMD_MEM | CMD_BUS_MASTER);
            // Status bits are write-one-to-clear: only pass those the guest wrote itself.
            let status_written = match (offset & 3, size) {
                (_, 4) => 0xffff_0000,
                (2, 2) => 0xffff_0000,
                (2, 1) => 0x00ff_0000,
                (3, 1) => 0xff00_0000,
                _ => 0,
            };
            let v = (new & (0xffff | status_written)) | CMD_MEM | CMD_BUS_MASTER;
            return PciOutcome {
                write: PciWrite::Replace(v),
                moved: None,
            };
        }
        if (0x10..0x28).contains(&aligned) {
            let idx = usize::from((aligned - 0x10) / 4);
            if self.is_upper_half(idx) {
                return self.write_upper_half(idx, new, real);
            }
            let Some((sz, flags)) = self.bar_info(idx) else {
                return pass;
            };
            let size_mask = !(sz.max(flags + 1) - 1);
            if new & size_mask == size_mask {
                self.sizing[idx] = true;
                return PciOutcome {
                    write: PciWrite::Drop,
                    moved: None,
                };
            }
            self.sizing[idx] = false;
            let base = new & size_mask;
            if base == real & size_mask {
                return PciOutcome {
                    write: PciWrite::Drop,
                    moved: None,
                };
            }
            return match self.layout.bar_move {
                BarMovePolicy::Deny => {
                    self.denied += 1;
                    if self.denied <= 8 {
                        log::warn!("e1000: guest tried to move BAR{idx} to {base:#x}; refused");
                    }
                    PciOutcome {
                        write: PciWrite::Drop,
                        moved: None,
                    }
                }
                BarMovePolicy::Follow => PciOutcome {
                    write: PciWrite::Replace((new & size_mask) | (real & flags)),
                    moved: Some(BarMove {
                        bar: idx as u8,
                        base: u64::from(base),
                    }),
                },
            };
        }
        pass
    }
}

impl PciState {
    /// A write to the upper half of the 64-bit memory BAR: sizing is emulated, writing the
    /// current value back is no move, any other value would move the BAR above or below
    /// 4 GiB and is refused whatever the policy (the traps are not re-applied there).
    fn write_upper_half(&mut self, idx: usize, new: u32, real: u32) -> PciOutcome {
        let drop = PciOutcome {
            write: PciWrite::Drop,
            moved: None,
        };
        if new == u32::MAX {
            self.sizing[idx] = true;
            return drop;
        }
        self.sizing[idx] = false;
        if new != real {
            self.denied += 1;
            if self.denied <= 8 {
                log::warn!(
                    "e1000: guest tried to move the upper half of BAR{} to {new:#x}; refused",
                    idx - 1
                );
            }
        }
        drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_register_keeps_mem_and_bus_master() {
        let mut p = PciState::new(PciLayout::default());
        let out = p.write(0x04, 2, 0x0001, 0x0290_0007);
        assert_eq!(out.write, PciWrite::Replace(0x0000_0007));
        assert!(!p.guest_bus_master());
        assert_eq!(p.read(0x04, 2, 0x0290_0007), 0x0001);
        let out = p.write(0x04, 2, 0x0007, 0x0290_0007);
        assert_eq!(out.write, PciWrite::Replace(0x0000_0007));
        assert!(p.guest_bus_master());
        // A dword write passes the guest's own status bits (write one to clear).
        assert_eq!(
            p.write(0x04, 4, 0x8000_0006, 0).write,
            PciWrite::Replace(0x8000_0006)
        );
    }

    #[test]
    fn bar_sizing_is_emulated_and_moves_denied() {
        let mut p = PciState::new(PciLayout::default());
        let real = 0xfebc_0000;
        assert_eq!(p.write(0x10, 4, 0xffff_ffff, real).write, PciWrite::Drop);
        assert_eq!(p.read(0x10, 4, real), 0xfffe_0000);
        assert_eq!(p.write(0x10, 4, real, real).write, PciWrite::Drop);
        assert_eq!(p.read(0x10, 4, real), real);
        assert_eq!(
            p.denied, 0,
            "writing the current base back is not a refused move"
        );
        let out = p.write(0x10, 4, 0xe000_0000, real);
        assert_eq!(
            out,
            PciOutcome {
                write: PciWrite::Drop,
                moved: None
            }
        );
        assert_eq!(p.denied, 1, "the refused move is counted");
        // I/O BAR sizing.
        assert_eq!(p.write(0x14, 4, 0xffff_ffff, 0xc001).write, PciWrite::Drop);
        assert_eq!(p.read(0x14, 4, 0xc001), 0xffff_ffc1);
        // Other registers pass.
        assert_eq!(p.write(0x3c, 1, 0x0b, 0).write, PciWrite::Pass);
        assert_eq!(p.write(0x18, 4, 0xffff_ffff, 0).write, PciWrite::Pass);
        assert_eq!(p.write(0x0e, 4, 0, 0).write, PciWrite::Drop);
    }

    /// Byte and word reads return the bytes at their offset (the guest's view of the command
    /// register included).
    #[test]
    fn sub_dword_reads_return_the_bytes_at_their_offset() {
        let p = PciState::new(PciLayout::default());
        let real = 0x0290_0007; // status 0x0290, command 0x0007
        assert_eq!(p.read(0x04, 1, real), 0x07);
        assert_eq!(p.read(0x05, 1, real), 0x00);
        assert_eq!(p.read(0x06, 1, real), 0x90);
        assert_eq!(p.read(0x07, 1, real), 0x02);
        assert_eq!(p.read(0x06, 2, real), 0x0290);
        assert_eq!(p.read(0x04, 4, real), real);
        assert_eq!(p.read(0x3d, 1, 0x0000_010b), 0x01);
        assert_eq!(p.read(0x3e, 2, 0x1234_010b), 0x1234);
    }

    /// The status register's bits are write-one-to-clear: a write passes those the guest wrote
    /// (dword, status word or status byte), never the ones it left alone; the command keeps
    /// MEM and BUS_MASTER and the guest's other command bits.
    #[test]
    fn status_bits_pass_only_when_the_guest_writes_them() {
        let mut p = PciState::new(PciLayout::default());
        let real = 0x8290_0007;
        let replaced = |out: PciOutcome| match out.write {
            PciWrite::Replace(v) => v,
            w => panic!("{w:?}"),
        };
        assert_eq!(replaced(p.write(0x06, 2, 0x8000, real)), 0x8000_0007);
        assert_eq!(replaced(p.write(0x07, 1, 0x80, real)), 0x8000_0007);
        assert_eq!(replaced(p.write(0x06, 1, 0x10, real)), 0x0010_0007);
        assert_eq!(replaced(p.write(0x04, 1, 0x03, real)), 0x0000_0007);
        assert!(
            !p.guest_bus_master(),
            "the guest's BUS_MASTER is kept in its view"
        );
        assert_eq!(replaced(p.write(0x05, 1, 0x04, real)), 0x0000_0407);
        assert_eq!(p.denied, 0);
    }

    /// Writes that are not a byte, word or dword inside one dword are discarded and counted.
    #[test]
    fn malformed_writes_are_dropped_and_counted() {
        let mut p = PciState::new(PciLayout::default());
        assert_eq!(p.write(0x0e, 4, 0, 0).write, PciWrite::Drop);
        assert_eq!(p.write(0x10, 3, 0, 0).write, PciWrite::Drop);
        assert_eq!(p.write(0x07, 2, 0, 0).write, PciWrite::Drop);
        assert_eq!(p.write(0x11, 4, 0, 0).write, PciWrite::Drop);
        assert_eq!(p.denied, 4);
        assert_eq!(p.write(0x3c, 1, 0x0b, 0).write, PciWrite::Pass);
        assert_eq!(p.denied, 4);
    }

    /// A BAR declared smaller than the hardware minimum (16 bytes memory, 4 bytes I/O) is sized
    /// as the minimum.
    #[test]
    fn bars_are_sized_at_least_at_the_hardware_minimum() {
        let mut p = PciState::new(PciLayout {
            mmio_size: 8,
            io_size: 2,
            ..Default::default()
        });
        assert_eq!(
            p.write(0x10, 4, 0xffff_ffff, 0xfebc_0008).write,
            PciWrite::Drop
        );
        assert_eq!(p.read(0x10, 4, 0xfebc_0008), 0xffff_fff8);
        assert_eq!(p.write(0x14, 4, 0xffff_ffff, 0xc001).write, PciWrite::Drop);
        assert_eq!(p.read(0x14, 4, 0xc001), 0xffff_fffd);
        // Moved (when followed), the base keeps the 16-byte alignment and the BAR its flags.
        let mut p = PciState::new(PciLayout {
            mmio_size: 8,
            bar_move: BarMovePolicy::Follow,
            ..Default::default()
        });
        let out = p.write(0x10, 4, 0xe000_0013, 0xfebc_0008);
        assert_eq!(out.write, PciWrite::Replace(0xe000_0018));
        assert_eq!(
            out.moved,
            Some(BarMove {
                bar: 0,
                base: 0xe000_0010
            })
        );
    }

    #[test]
    fn bar_move_followed_when_configured() {
        let mut p = PciState::new(PciLayout {
            bar_move: BarMovePolicy::Follow,
            ..Default::default()
        });
        let out = p.write(0x10, 4, 0xe000_0000, 0xfebc_0000);
        assert_eq!(out.write, PciWrite::Replace(0xe000_0000));
        assert_eq!(
            out.moved,
            Some(BarMove {
                bar: 0,
                base: 0xe000_0000
            })
        );
        // Writing the current base back (flag bits aside) is no move.
        let out = p.write(0x10, 4, 0xfebc_0000, 0xfebc_0008);
        assert_eq!(
            out,
            PciOutcome {
                write: PciWrite::Drop,
                moved: None
            }
        );
        // A byte write moves it too: the top byte of BAR0.
        let out = p.write(0x13, 1, 0xe0, 0xfebc_0000);
        assert_eq!(out.write, PciWrite::Replace(0xe0bc_0000));
        assert_eq!(
            out.moved,
            Some(BarMove {
                bar: 0,
                base: 0xe0bc_0000
            })
        );
    }

    /// A fake configuration space: functions by bdf, each a map of dword offsets.
    struct Space(std::vec::Vec<(u32, std::vec::Vec<(u16, u32)>)>);

    impl Space {
        fn read(&self, bdf: u32, off: u16) -> u32 {
            self.0
                .iter()
                .find(|(b, _)| *b == bdf)
                .and_then(|(_, regs)| regs.iter().find(|(o, _)| *o == off).map(|(_, v)| *v))
                .unwrap_or(if off == 0 { u32::MAX } else { 0 })
        }
    }

    fn bdf(bus: u32, dev: u32, func: u32) -> u32 {
        (bus << 8) | (dev << 3) | func
    }

    fn nic_regs(bar0: u32, bar1: u32, bar2: u32) -> std::vec::Vec<(u16, u32)> {
        std::vec![
            (0, 0x100f_8086),
            (0x0c, 0),
            (0x10, bar0),
            (0x14, bar1),
            (0x18, bar2)
        ]
    }

    #[test]
    fn the_nic_is_found_on_bus_0() {
        let s = Space(std::vec![
            (bdf(0, 0, 0), std::vec![(0, 0x1237_8086)]),
            (bdf(0, 3, 0), nic_regs(0xfebc_0000, 0xc001, 0)),
        ]);
        let mut reads = 0;
        let f = find_nic(|b, o| {
            reads += 1;
            s.read(b, o)
        })
        .unwrap();
        assert_eq!((f.bdf, f.device), (bdf(0, 3, 0), 0x100f));
        // 00:00.0 id and header, 00:01.0 and 00:02.0 only their id (absent: no function 1-7
        // is read), 00:03.0 id, header and three BARs.
        assert_eq!(reads, 2 + 1 + 1 + 5);
        assert_eq!(f.layout(), Ok((0xfebc_0000, 0xc000, PciLayout::default())));
    }

    /// Behind a bridge, at function 1 of a multi-function device, with a 64-bit BAR (the I/O
    /// BAR then follows at index 2): what a server's 82546 looks like.
    #[test]
    fn the_nic_is_found_behind_a_bridge_at_another_function_with_a_64_bit_bar() {
        let s = Space(std::vec![
            (bdf(0, 0, 0), std::vec![(0, 0x29c0_8086)]),
            // Root port 00:1c.0 (bridge) to bus 3.
            (
                bdf(0, 0x1c, 0),
                std::vec![(0, 0x2940_8086), (0x0c, 0x0001_0000), (0x18, 0x0003_0300)]
            ),
            // 03:00.0: another device, multi-function.
            (
                bdf(3, 0, 0),
                std::vec![(0, 0x1234_1af4), (0x0c, 0x0080_0000)]
            ),
            (
                bdf(3, 0, 1),
                nic_regs(0x0000_000c, 0x0000_0040, 0x0000_e001)
            ),
        ]);
        let f = find_nic(|b, o| s.read(b, o)).unwrap();
        assert_eq!(f.bdf, bdf(3, 0, 1));
        let (mmio, io, layout) = f.layout().unwrap();
        assert_eq!((mmio, io), (0x40_0000_0000, 0xe000));
        assert!(layout.mmio_64);
        assert_eq!(layout.io_bar, Some(2));
    }

    /// Function 1 of a single-function device is not looked at (it would alias function 0 on
    /// some hardware); a bridge looping back to a bus already seen is not walked twice.
    #[test]
    fn single_function_devices_and_bridge_loops() {
        let s = Space(std::vec![
            (bdf(0, 1, 0), std::vec![(0, 0x1234_1af4), (0x0c, 0)]),
            (bdf(0, 1, 1), nic_regs(0xfebc_0000, 0, 0)),
            (
                bdf(0, 2, 0),
                std::vec![(0, 0x2940_8086), (0x0c, 0x0001_0000), (0x18, 0x0000_0000)]
            ),
        ]);
        let mut reads = 0;
        assert_eq!(
            find_nic(|b, o| {
                reads += 1;
                s.read(b, o)
            }),
            None
        );
        assert!(reads < 200, "{reads} reads: bus 0 was walked once");
    }

    #[test]
    fn unusable_bars_are_named() {
        let found = |bar0| Found {
            bdf: 0,
            device: 0x100e,
            bars: [bar0, 0, 0],
        };
        assert_eq!(found(0xc001).layout(), Err(LayoutError::NotMemory));
        assert_eq!(found(0).layout(), Err(LayoutError::Unassigned));
        assert_eq!(found(0xfebc_0002).layout(), Err(LayoutError::ReservedType));
        assert_eq!(found(0xfebc_0006).layout(), Err(LayoutError::ReservedType));
        assert_eq!(found(0x4).layout(), Err(LayoutError::Unassigned));
        // A 32-bit BAR with no I/O BAR (BAR 1 a memory BAR or nothing).
        let (_, io, l) = found(0xfebc_0000).layout().unwrap();
        assert_eq!((io, l.io_bar), (0, None));
        let other = Found {
            bdf: 0,
            device: 0x100e,
            bars: [0xfebc_0000, 0x1230, 0],
        };
        assert_eq!(other.layout().unwrap().1, 0);
        assert_eq!(other.layout().unwrap().2.io_bar, None);
        // Every error says what is wrong.
        assert!(std::format!("{}", LayoutError::NotMemory).contains("not a memory BAR"));
        assert!(std::format!("{}", LayoutError::Unassigned).contains("unassigned"));
        assert!(std::format!("{}", LayoutError::ReservedType).contains("reserved type"));
    }

    /// A function whose vendor id reads 0 is no device either (some bridges answer so).
    #[test]
    fn a_vendor_id_of_zero_is_an_empty_slot() {
        let s = Space(std::vec![
            (bdf(0, 0, 0), std::vec![(0, 0), (0x0c, 0x0080_0000)]),
            (bdf(0, 0, 1), nic_regs(0xfebc_0000, 0, 0)),
        ]);
        assert_eq!(find_nic(|b, o| s.read(b, o)), None);
    }

    /// The upper half of a 64-bit BAR: sized as all-ones, its value written back is no move,
    /// anything else is refused (counted) whatever the policy; the lower half as before.
    #[test]
    fn the_upper_half_of_a_64_bit_bar_is_mediated() {
        for policy in [BarMovePolicy::Deny, BarMovePolicy::Follow] {
            let mut p = PciState::new(PciLayout {
                mmio_64: true,
                io_bar: Some(2),
                bar_move: policy,
                ..PciLayout::default()
            });
            let real = 0x40;
            assert_eq!(p.write(0x14, 4, 0xffff_ffff, real).write, PciWrite::Drop);
            assert_eq!(p.read(0x14, 4, real), 0xffff_ffff);
            assert_eq!(p.write(0x14, 4, real, real).write, PciWrite::Drop);
            assert_eq!(p.read(0x14, 4, real), real);
            assert_eq!(p.denied, 0);
            assert_eq!(p.write(0x14, 4, 0x41, real).write, PciWrite::Drop);
            assert_eq!(p.denied, 1);
            assert_eq!(p.write(0x17, 1, 0x80, real).write, PciWrite::Drop);
            assert_eq!(p.denied, 2);
            // The lower half and the I/O BAR at index 2.
            assert_eq!(p.write(0x10, 4, 0xffff_ffff, 0xc).write, PciWrite::Drop);
            assert_eq!(p.read(0x10, 4, 0xc), 0xfffe_000c);
            assert_eq!(p.write(0x18, 4, 0xffff_ffff, 0xe001).write, PciWrite::Drop);
            assert_eq!(p.read(0x18, 4, 0xe001), 0xffff_ffc1);
        }
        // A 32-bit layout leaves BAR 1 alone when it is no I/O BAR.
        let mut p = PciState::new(PciLayout {
            io_bar: None,
            ..PciLayout::default()
        });
        assert_eq!(p.write(0x14, 4, 0x1234, 0).write, PciWrite::Pass);
    }
}
