//! 8254x (82540EM) register offsets and bit definitions, the 82542 aliases, and which 4 KiB
//! pages of the 128 KiB memory BAR Shoji traps.

use bitflags::bitflags;

/// Size of the memory BAR (128 KiB).
pub const BAR_SIZE: u32 = 0x2_0000;
/// Size of a trapped page.
pub const PAGE_SIZE: u32 = 0x1000;

/// Device control.
pub const CTRL: u32 = 0x0000;
/// Device status (read only).
pub const STATUS: u32 = 0x0008;
/// EEPROM/flash control.
pub const EECD: u32 = 0x0010;
/// EEPROM read.
pub const EERD: u32 = 0x0014;
/// Extended device control.
pub const CTRL_EXT: u32 = 0x0018;
/// MDI control.
pub const MDIC: u32 = 0x0020;
/// Flow control address low: the destination of the PAUSE frames the NIC sends by itself
/// (TCTL.SWXOFF, or when its receive FIFO fills with CTRL.TFCE set).
pub const FCAL: u32 = 0x0028;
/// Flow control address high.
pub const FCAH: u32 = 0x002C;
/// Flow control type: the PAUSE frames' Ether type.
pub const FCT: u32 = 0x0030;
/// FCAL as IEEE 802.3x fixes it: 01:80:C2:00:00:01, a link-local group no bridge forwards.
pub const FCAL_8023X: u32 = 0x00C2_8001;
/// FCAH as IEEE 802.3x fixes it.
pub const FCAH_8023X: u32 = 0x0000_0100;
/// FCT as IEEE 802.3x fixes it (MAC control).
pub const FCT_8023X: u32 = 0x8808;
/// VLAN Ether type.
pub const VET: u32 = 0x0038;
/// Interrupt cause read (clear on read).
pub const ICR: u32 = 0x00C0;
/// Interrupt throttling.
pub const ITR: u32 = 0x00C4;
/// Interrupt cause set.
pub const ICS: u32 = 0x00C8;
/// Interrupt mask set / read.
pub const IMS: u32 = 0x00D0;
/// Interrupt mask clear.
pub const IMC: u32 = 0x00D8;
/// Receive control.
pub const RCTL: u32 = 0x0100;
/// Transmit control.
pub const TCTL: u32 = 0x0400;
/// Transmit IPG.
pub const TIPG: u32 = 0x0410;
/// RX descriptor base low.
pub const RDBAL: u32 = 0x2800;
/// RX descriptor base high.
pub const RDBAH: u32 = 0x2804;
/// RX descriptor ring length in bytes.
pub const RDLEN: u32 = 0x2808;
/// RX descriptor head.
pub const RDH: u32 = 0x2810;
/// RX descriptor tail.
pub const RDT: u32 = 0x2818;
/// RX interrupt delay timer.
pub const RDTR: u32 = 0x2820;
/// RX descriptor control.
pub const RXDCTL: u32 = 0x2828;
/// RX interrupt absolute delay.
pub const RADV: u32 = 0x282C;
/// Small receive packet detect (shadowed: its ICR bit is Shoji's doorbell).
pub const RSRPD: u32 = 0x2C00;
/// TX DMA control.
pub const TXDMAC: u32 = 0x3000;
/// TX descriptor base low.
pub const TDBAL: u32 = 0x3800;
/// TX descriptor base high.
pub const TDBAH: u32 = 0x3804;
/// TX descriptor ring length in bytes.
pub const TDLEN: u32 = 0x3808;
/// TX descriptor head.
pub const TDH: u32 = 0x3810;
/// TX descriptor tail.
pub const TDT: u32 = 0x3818;
/// TX interrupt delay.
pub const TIDV: u32 = 0x3820;
/// TX descriptor control.
pub const TXDCTL: u32 = 0x3828;
/// TX absolute interrupt delay.
pub const TADV: u32 = 0x382C;
/// RX checksum control.
pub const RXCSUM: u32 = 0x5000;
/// Receive address low (entry 0).
pub const RAL0: u32 = 0x5400;
/// Receive address high (entry 0).
pub const RAH0: u32 = 0x5404;
/// Receive address low of entry 3, which Shoji takes for its own (management) MAC. Entry 3,
/// not the last (15): Bochs's e1000 model stores only entries 0 to 3 (it compares the byte
/// offset with the register count); the 8254x and QEMU's model have 16.
pub const RAL_OWN: u32 = RAL0 + 3 * 8;
/// Receive address high of entry 3.
pub const RAH_OWN: u32 = RAH0 + 3 * 8;
/// RAH: address valid.
pub const RAH_AV: u32 = 1 << 31;
/// Start of the packet-buffer-memory diagnostic window.
pub const PBM_START: u32 = 0x1_0000;

/// Default VLAN Ether type (802.1Q).
pub const VET_DEFAULT: u32 = 0x8100;

bitflags! {
    /// CTRL bits Shoji cares about.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Ctrl: u32 {
        /// Full duplex.
        const FD = 1 << 0;
        /// Set link up.
        const SLU = 1 << 6;
        /// Device reset (self-clearing).
        const RST = 1 << 26;
        /// VLAN mode enable (TX insertion / RX stripping).
        const VME = 1 << 30;
        /// PHY reset.
        const PHY_RST = 1 << 31;
        const _ = !0;
    }
}

bitflags! {
    /// RCTL bits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rctl: u32 {
        /// Receiver enable.
        const EN = 1 << 1;
        /// Store bad packets.
        const SBP = 1 << 2;
        /// Unicast promiscuous.
        const UPE = 1 << 3;
        /// Multicast promiscuous.
        const MPE = 1 << 4;
        /// Long packet enable (frames above 1522 bytes).
        const LPE = 1 << 5;
        /// Loopback mode (2 bits).
        const LBM = 3 << 6;
        /// RX descriptor minimum threshold size (2 bits).
        const RDMTS = 3 << 8;
        /// Multicast offset (2 bits).
        const MO = 3 << 12;
        /// Broadcast accept.
        const BAM = 1 << 15;
        /// Buffer size (2 bits).
        const BSIZE = 3 << 16;
        /// VLAN filter enable.
        const VFE = 1 << 18;
        /// Canonical form indicator enable.
        const CFIEN = 1 << 19;
        /// Canonical form indicator value.
        const CFI = 1 << 20;
        /// Discard pause frames.
        const DPF = 1 << 22;
        /// Pass MAC control frames.
        const PMCF = 1 << 23;
        /// Buffer size extension (x16).
        const BSEX = 1 << 25;
        /// Strip Ethernet CRC.
        const SECRC = 1 << 26;
        const _ = !0;
    }
}

impl Rctl {
    /// Receive buffer size selected by BSIZE/BSEX, `None` for the reserved encoding.
    pub fn buffer_size(self) -> Option<u32> {
        let bsize = (self.bits() >> 16) & 3;
        match (self.contains(Rctl::BSEX), bsize) {
            (false, 0) => Some(2048),
            (false, 1) => Some(1024),
            (false, 2) => Some(512),
            (false, 3) => Some(256),
            (true, 1) => Some(16384),
            (true, 2) => Some(8192),
            (true, 3) => Some(4096),
            _ => None,
        }
    }

    /// RDMTS as the shift of the ring size (1/2, 1/4, 1/8).
    pub fn rdmts_shift(self) -> u32 {
        match (self.bits() >> 8) & 3 {
            0 => 1,
            1 => 2,
            _ => 3,
        }
    }
}

bitflags! {
    /// TCTL bits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Tctl: u32 {
        /// Transmit enable.
        const EN = 1 << 1;
        /// Pad short packets.
        const PSP = 1 << 3;
        /// Collision threshold (8 bits).
        const CT = 0xff << 4;
        /// Collision distance (10 bits).
        const COLD = 0x3ff << 12;
        /// Re-transmit on late collision.
        const RTLC = 1 << 24;
        const _ = !0;
    }
}

bitflags! {
    /// Interrupt cause bits (ICR, ICS, IMS, IMC).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Int: u32 {
        /// Transmit descriptor written back.
        const TXDW = 1 << 0;
        /// Transmit queue empty.
        const TXQE = 1 << 1;
        /// Link status change.
        const LSC = 1 << 2;
        /// Receive sequence error.
        const RXSEQ = 1 << 3;
        /// Receive descriptor minimum threshold reached.
        const RXDMT0 = 1 << 4;
        /// Receiver overrun.
        const RXO = 1 << 6;
        /// Receiver timer interrupt.
        const RXT0 = 1 << 7;
        /// MDI/O access complete.
        const MDAC = 1 << 9;
        /// Receiving /C/ ordered sets.
        const RXCFG = 1 << 10;
        /// General purpose interrupts (SDP pins).
        const GPI = 0xf << 11;
        /// Transmit descriptor low threshold.
        const TXD_LOW = 1 << 15;
        /// Small receive packet detected: Shoji's doorbell for virtual interrupts.
        const SRPD = 1 << 16;
        const _ = !0;
    }
}

impl Int {
    /// Real causes passed to the guest unchanged: events of the PHY/MAC, not of the rings.
    pub const PASSTHRU: Int = Int::LSC
        .union(Int::RXSEQ)
        .union(Int::MDAC)
        .union(Int::RXCFG)
        .union(Int::GPI);
    /// Real RX-ring causes that tell Shoji to harvest.
    pub const REAL_RX: Int = Int::RXT0.union(Int::RXO).union(Int::RXDMT0);
    /// The bit Shoji sets through the real ICS to interrupt the guest for virtual causes.
    pub const DOORBELL: Int = Int::SRPD;
}

/// Map an 82542-compatible alias offset to the register it names (the 8254x still decodes them).
pub fn canonical(offset: u32) -> u32 {
    match offset {
        0x0108 => RDTR,
        0x0110 => RDBAL,
        0x0114 => RDBAH,
        0x0118 => RDLEN,
        0x0120 => RDH,
        0x0128 => RDT,
        0x0408 => TXDMAC,
        0x0420 => TDBAL,
        0x0424 => TDBAH,
        0x0428 => TDLEN,
        0x0430 => TDH,
        0x0438 => TDT,
        0x0440 => TIDV,
        o => o,
    }
}

/// Whether `offset` (canonical) is a FIFO diagnostic register or the packet buffer window:
/// raw access to the NIC's packet memory, refused (it would bypass the shadow rings).
pub fn is_raw_fifo(offset: u32) -> bool {
    matches!(offset, 0x2410..=0x2433 | 0x3410..=0x3433)
        || (0x8000..0x9000).contains(&offset)
        || (PBM_START..BAR_SIZE).contains(&offset)
}

/// Indices (offset / 4 KiB) of the memory-BAR pages that must be trapped through EPT.
///
/// Page 0 (CTRL, ICR/ICS/IMS/IMC, RCTL, TCTL, VET and the 82542 ring aliases), page 2 (RX ring,
/// RSRPD, RX FIFO), page 3 (TX ring, TX FIFO), page 8 (82542 FIFO aliases) and pages 16..31 (the
/// packet buffer window). Every other page (statistics, filters, EEPROM/PHY access) may be mapped
/// straight through to the device.
pub const TRAPPED_PAGES: [u32; 20] = [
    0, 2, 3, 8, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
];

/// The page of the receive addresses, trapped too when Shoji holds receive address 3.
pub const OWN_ADDRESS_PAGE: u32 = RAL_OWN / PAGE_SIZE;

/// Whether the 4 KiB page at `page_index` of the memory BAR must be trapped.
pub fn page_is_trapped(page_index: u32) -> bool {
    TRAPPED_PAGES.contains(&page_index)
}

/// Whether the page must be trapped when Shoji holds receive address 3 (`own_address`).
pub fn page_is_trapped_with(page_index: u32, own_address: bool) -> bool {
    page_is_trapped(page_index) || (own_address && page_index == OWN_ADDRESS_PAGE)
}

/// Registers counted individually in the exit counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RegId {
    /// CTRL.
    Ctrl,
    /// ICR.
    Icr,
    /// ICS.
    Ics,
    /// IMS.
    Ims,
    /// IMC.
    Imc,
    /// RCTL.
    Rctl,
    /// TCTL.
    Tctl,
    /// VET.
    Vet,
    /// RDBAL, RDBAH, RDLEN.
    RxRing,
    /// RDH.
    Rdh,
    /// RDT.
    Rdt,
    /// TDBAL, TDBAH, TDLEN.
    TxRing,
    /// TDH.
    Tdh,
    /// TDT.
    Tdt,
    /// RSRPD.
    Rsrpd,
    /// STATUS (read by the driver to flush posted writes).
    Status,
    /// ITR (interrupt throttling, emulated by Shoji).
    Itr,
    /// FIFO diagnostic registers and packet buffer (refused).
    RawFifo,
    /// Any other register of a trapped page (passed to the device).
    Other,
}

impl RegId {
    /// Number of ids.
    pub const COUNT: usize = 19;
    /// Every id, in index order.
    pub const ALL: [RegId; Self::COUNT] = [
        RegId::Ctrl,
        RegId::Icr,
        RegId::Ics,
        RegId::Ims,
        RegId::Imc,
        RegId::Rctl,
        RegId::Tctl,
        RegId::Vet,
        RegId::RxRing,
        RegId::Rdh,
        RegId::Rdt,
        RegId::TxRing,
        RegId::Tdh,
        RegId::Tdt,
        RegId::Rsrpd,
        RegId::Status,
        RegId::Itr,
        RegId::RawFifo,
        RegId::Other,
    ];

    /// Classify a canonical offset.
    pub fn of(offset: u32) -> RegId {
        match offset {
            CTRL => RegId::Ctrl,
            ICR => RegId::Icr,
            ICS => RegId::Ics,
            IMS => RegId::Ims,
            IMC => RegId::Imc,
            RCTL => RegId::Rctl,
            TCTL => RegId::Tctl,
            VET => RegId::Vet,
            RDBAL | RDBAH | RDLEN => RegId::RxRing,
            RDH => RegId::Rdh,
            RDT => RegId::Rdt,
            TDBAL | TDBAH | TDLEN => RegId::TxRing,
            TDH => RegId::Tdh,
            TDT => RegId::Tdt,
            RSRPD => RegId::Rsrpd,
            STATUS => RegId::Status,
            ITR => RegId::Itr,
            o if is_raw_fifo(o) => RegId::RawFifo,
            _ => RegId::Other,
        }
    }

    /// Short stable name (logs, Prometheus labels).
    pub fn name(self) -> &'static str {
        match self {
            RegId::Ctrl => "ctrl",
            RegId::Icr => "icr",
            RegId::Ics => "ics",
            RegId::Ims => "ims",
            RegId::Imc => "imc",
            RegId::Rctl => "rctl",
            RegId::Tctl => "tctl",
            RegId::Vet => "vet",
            RegId::RxRing => "rx_ring",
            RegId::Rdh => "rdh",
            RegId::Rdt => "rdt",
            RegId::TxRing => "tx_ring",
            RegId::Tdh => "tdh",
            RegId::Tdt => "tdt",
            RegId::Rsrpd => "rsrpd",
            RegId::Status => "status",
            RegId::Itr => "itr",
            RegId::RawFifo => "raw_fifo",
            RegId::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shadowed_register_is_on_a_trapped_page() {
        for off in [
            CTRL, ICR, ICS, IMS, IMC, RCTL, TCTL, VET, RDBAL, RDBAH, RDLEN, RDH, RDT, RSRPD, TDBAL,
            TDBAH, TDLEN, TDH, TDT, 0x0110, 0x0128, 0x0420, 0x0438, 0x2410, 0x3418, 0x8000,
            0x1_0000, 0x1_f000,
        ] {
            assert!(page_is_trapped(off / PAGE_SIZE), "{off:#x}");
        }
        assert!(
            !page_is_trapped(0x4000 / PAGE_SIZE),
            "statistics pass through"
        );
        assert!(!page_is_trapped(RAL0 / PAGE_SIZE));
        assert!(
            page_is_trapped_with(RAL_OWN / PAGE_SIZE, true),
            "receive address 3 holds Shoji's own MAC"
        );
        assert!(!page_is_trapped_with(RAL_OWN / PAGE_SIZE, false));
    }

    #[test]
    fn aliases_and_ids() {
        assert_eq!(canonical(0x0438), TDT);
        assert_eq!(canonical(0x0110), RDBAL);
        assert_eq!(canonical(STATUS), STATUS);
        for (i, r) in RegId::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        assert_eq!(RegId::of(0x3418), RegId::RawFifo);
    }

    #[test]
    fn buffer_sizes() {
        assert_eq!(Rctl::empty().buffer_size(), Some(2048));
        assert_eq!(Rctl::from_bits_retain(3 << 16).buffer_size(), Some(256));
        assert_eq!(
            (Rctl::BSEX | Rctl::from_bits_retain(1 << 16)).buffer_size(),
            Some(16384)
        );
        assert_eq!(Rctl::BSEX.buffer_size(), None);
    }
}
