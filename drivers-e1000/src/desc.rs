//! Descriptor layouts (16 bytes each): legacy TX, TX context, TX data, legacy RX.

/// Size of every descriptor.
pub const DESC_SIZE: u64 = 16;

/// Legacy/data command bits (byte 11 of a TX descriptor).
pub mod cmd {
    /// End of packet.
    pub const EOP: u8 = 0x01;
    /// Insert FCS.
    pub const IFCS: u8 = 0x02;
    /// Insert checksum (legacy) / TCP segmentation enable (data, context).
    pub const IC_TSE: u8 = 0x04;
    /// Report status.
    pub const RS: u8 = 0x08;
    /// Extended descriptor (context or data).
    pub const DEXT: u8 = 0x20;
    /// VLAN packet enable.
    pub const VLE: u8 = 0x40;
    /// Interrupt delay enable.
    pub const IDE: u8 = 0x80;
}

/// TX status bit: descriptor done.
pub const TX_STA_DD: u8 = 0x01;

/// Context descriptor TUCMD bits.
pub mod tucmd {
    /// TCP (1) or UDP (0).
    pub const TCP: u8 = 0x01;
    /// IPv4 (1) or IPv6 (0).
    pub const IP: u8 = 0x02;
    /// TCP segmentation enable.
    pub const TSE: u8 = 0x04;
}

/// Data descriptor POPTS bits.
pub mod popts {
    /// Insert IP checksum.
    pub const IXSM: u8 = 0x01;
    /// Insert TCP/UDP checksum.
    pub const TXSM: u8 = 0x02;
}

/// RX status bits.
pub mod rx_sta {
    /// Descriptor done.
    pub const DD: u8 = 0x01;
    /// End of packet.
    pub const EOP: u8 = 0x02;
    /// Ignore checksum indication.
    pub const IXSM: u8 = 0x04;
    /// 802.1Q packet, tag stripped into `special`.
    pub const VP: u8 = 0x08;
}

/// RX error bit: RX data error (any DMA failure is reported this way to the guest).
pub const RX_ERR_RXE: u8 = 0x80;
/// RX error bits that make a frame unusable (CE, SE, SEQ, CXE, RXE).
pub const RX_ERR_FRAME: u8 = 0x01 | 0x02 | 0x04 | 0x10 | 0x80;

/// A TX descriptor in any of its three formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxDesc {
    /// Legacy descriptor.
    Legacy {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u16,
        /// Checksum offset (IC).
        cso: u8,
        /// Command bits.
        cmd: u8,
        /// Checksum start (IC).
        css: u8,
        /// VLAN tag (VLE).
        special: u16,
    },
    /// Context descriptor: offload parameters for following data descriptors.
    Context(TxContext),
    /// Extended data descriptor.
    Data {
        /// Buffer address.
        addr: u64,
        /// Buffer length (20 bits).
        len: u32,
        /// DCMD bits.
        dcmd: u8,
        /// Packet options (first descriptor of a packet).
        popts: u8,
        /// VLAN tag (VLE).
        special: u16,
    },
    /// Extended descriptor with a reserved type: refused.
    Reserved {
        /// The command byte (for RS).
        cmd: u8,
    },
}

/// Offload context set by a context descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxContext {
    /// IP checksum start.
    pub ipcss: u8,
    /// IP checksum offset.
    pub ipcso: u8,
    /// IP checksum end (inclusive, 0 = end of packet).
    pub ipcse: u16,
    /// TCP/UDP checksum start.
    pub tucss: u8,
    /// TCP/UDP checksum offset.
    pub tucso: u8,
    /// TCP/UDP checksum end (inclusive, 0 = end of packet).
    pub tucse: u16,
    /// TSO payload length (20 bits).
    pub paylen: u32,
    /// TUCMD bits.
    pub tucmd: u8,
    /// TSO header length.
    pub hdrlen: u8,
    /// TSO maximum segment size.
    pub mss: u16,
}

impl TxDesc {
    /// Decode 16 raw bytes.
    pub fn parse(b: &[u8; 16]) -> TxDesc {
        let cmd = b[11];
        if cmd & cmd::DEXT == 0 {
            return TxDesc::Legacy {
                addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                len: u16::from_le_bytes([b[8], b[9]]),
                cso: b[10],
                cmd,
                css: b[13],
                special: u16::from_le_bytes([b[14], b[15]]),
            };
        }
        let dw2 = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        match (dw2 >> 20) & 0xf {
            0 => TxDesc::Context(TxContext {
                ipcss: b[0],
                ipcso: b[1],
                ipcse: u16::from_le_bytes([b[2], b[3]]),
                tucss: b[4],
                tucso: b[5],
                tucse: u16::from_le_bytes([b[6], b[7]]),
                paylen: dw2 & 0xf_ffff,
                tucmd: cmd,
                hdrlen: b[13],
                mss: u16::from_le_bytes([b[14], b[15]]),
            }),
            1 => TxDesc::Data {
                addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                len: dw2 & 0xf_ffff,
                dcmd: cmd,
                popts: b[13],
                special: u16::from_le_bytes([b[14], b[15]]),
            },
            _ => TxDesc::Reserved { cmd },
        }
    }

    /// The command byte (RS, EOP... live in the same place in every format).
    pub fn cmd(&self) -> u8 {
        match *self {
            TxDesc::Legacy { cmd, .. } => cmd,
            TxDesc::Context(c) => c.tucmd,
            TxDesc::Data { dcmd, .. } => dcmd,
            TxDesc::Reserved { cmd } => cmd,
        }
    }

    /// Encode a legacy descriptor (Shoji's real ring).
    pub fn legacy_bytes(addr: u64, len: u16, cmd: u8) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..10].copy_from_slice(&len.to_le_bytes());
        b[11] = cmd;
        b
    }
}

/// The write-back half (bytes 8..16) of a legacy RX descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxWriteBack {
    /// Bytes in this buffer.
    pub len: u16,
    /// Packet checksum (unused: Shoji reports IXSM).
    pub csum: u16,
    /// Status bits.
    pub status: u8,
    /// Error bits.
    pub errors: u8,
    /// VLAN tag when VP.
    pub special: u16,
}

impl RxWriteBack {
    /// Decode bytes 8..16 of an RX descriptor, as a little-endian u64.
    pub fn from_u64(v: u64) -> RxWriteBack {
        RxWriteBack {
            len: v as u16,
            csum: (v >> 16) as u16,
            status: (v >> 32) as u8,
            errors: (v >> 40) as u8,
            special: (v >> 48) as u16,
        }
    }

    /// Encode as the little-endian u64 at bytes 8..16.
    pub fn to_u64(self) -> u64 {
        u64::from(self.len)
            | u64::from(self.csum) << 16
            | u64::from(self.status) << 32
            | u64::from(self.errors) << 40
            | u64::from(self.special) << 48
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_formats() {
        let l = TxDesc::legacy_bytes(0x1234_5678, 60, cmd::EOP | cmd::RS);
        assert_eq!(
            TxDesc::parse(&l),
            TxDesc::Legacy {
                addr: 0x1234_5678,
                len: 60,
                cso: 0,
                cmd: 9,
                css: 0,
                special: 0
            }
        );
        let mut c = [0u8; 16];
        c[0] = 14;
        c[1] = 24;
        c[2..4].copy_from_slice(&33u16.to_le_bytes());
        c[4] = 34;
        c[5] = 50;
        c[8..12].copy_from_slice(
            &(1000u32 | (u32::from(cmd::DEXT | tucmd::TSE | tucmd::IP | tucmd::TCP) << 24))
                .to_le_bytes(),
        );
        c[13] = 54;
        c[14..16].copy_from_slice(&1460u16.to_le_bytes());
        match TxDesc::parse(&c) {
            TxDesc::Context(x) => {
                assert_eq!(
                    (x.ipcss, x.ipcso, x.ipcse, x.tucss, x.tucso),
                    (14, 24, 33, 34, 50)
                );
                assert_eq!((x.paylen, x.hdrlen, x.mss), (1000, 54, 1460));
                assert_eq!(x.tucmd & tucmd::TSE, tucmd::TSE);
            }
            d => panic!("{d:?}"),
        }
        let mut d = [0u8; 16];
        d[8..12].copy_from_slice(
            &(77u32 | (1 << 20) | (u32::from(cmd::DEXT | cmd::EOP) << 24)).to_le_bytes(),
        );
        d[13] = popts::TXSM;
        assert!(matches!(
            TxDesc::parse(&d),
            TxDesc::Data {
                len: 77,
                popts: 2,
                ..
            }
        ));
        let mut r = [0u8; 16];
        r[8..12].copy_from_slice(&((5u32 << 20) | (u32::from(cmd::DEXT) << 24)).to_le_bytes());
        assert!(matches!(TxDesc::parse(&r), TxDesc::Reserved { .. }));
    }

    #[test]
    fn rx_writeback_round_trip() {
        let w = RxWriteBack {
            len: 1514,
            csum: 0,
            status: 0x0b,
            errors: 0,
            special: 0x0064,
        };
        assert_eq!(RxWriteBack::from_u64(w.to_u64()), w);
    }

    /// Bytes 8..16 of an RX descriptor: length, checksum, status, errors, special, in that
    /// order, little-endian.
    #[test]
    fn rx_writeback_has_the_documented_layout() {
        let bytes = [0xea, 0x05, 0x34, 0x12, 0x0b, 0x80, 0x64, 0x00];
        let w = RxWriteBack::from_u64(u64::from_le_bytes(bytes));
        assert_eq!(
            w,
            RxWriteBack {
                len: 1514,
                csum: 0x1234,
                status: 0x0b,
                errors: 0x80,
                special: 0x0064,
            }
        );
        assert_eq!(w.to_u64().to_le_bytes(), bytes);
    }

    /// The command byte is byte 11 in every format (for a context descriptor, its TUCMD).
    #[test]
    fn cmd_is_byte_11_in_every_format() {
        let legacy = TxDesc::legacy_bytes(0x1000, 60, cmd::EOP | cmd::RS);
        assert_eq!(TxDesc::parse(&legacy).cmd(), cmd::EOP | cmd::RS);
        let mut context = [0u8; 16];
        context[11] = cmd::DEXT | cmd::RS | tucmd::TCP;
        assert!(matches!(TxDesc::parse(&context), TxDesc::Context(_)));
        assert_eq!(
            TxDesc::parse(&context).cmd(),
            cmd::DEXT | cmd::RS | tucmd::TCP
        );
        let mut data = [0u8; 16];
        data[10] = 1 << 4; // DTYP 1
        data[11] = cmd::DEXT | cmd::EOP | cmd::VLE;
        assert!(matches!(TxDesc::parse(&data), TxDesc::Data { .. }));
        assert_eq!(TxDesc::parse(&data).cmd(), cmd::DEXT | cmd::EOP | cmd::VLE);
        let mut reserved = [0u8; 16];
        reserved[10] = 5 << 4;
        reserved[11] = cmd::DEXT | cmd::RS;
        assert!(matches!(TxDesc::parse(&reserved), TxDesc::Reserved { .. }));
        assert_eq!(TxDesc::parse(&reserved).cmd(), cmd::DEXT | cmd::RS);
    }
}
