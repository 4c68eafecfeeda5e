//! Mediation of the NIC's PCI configuration space: BAR moves and sizing, and the command
//! register's memory-space and bus-master bits (Shoji's own rings need both kept on).

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
        }
    }
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
}
