//! Builders of the raw frames the attack tools send: a forged ARP reply and an Ethernet/IPv4/UDP
//! frame with chosen source addresses. Pure functions, tested on the host.

use std::net::Ipv4Addr;

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// Shortest Ethernet frame without the FCS; shorter frames are zero-padded to it.
pub const MIN_FRAME: usize = 60;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Largest UDP payload in one untagged 1500-byte IPv4 packet.
pub const MAX_UDP_PAYLOAD: usize = 1472;

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts
            .next()
            .ok_or_else(|| format!("bad MAC address {s:?}"))?;
        if p.is_empty() || p.len() > 2 {
            return Err(format!("bad MAC address {s:?}"));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC address {s:?}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("bad MAC address {s:?}"));
    }
    Ok(mac)
}

/// Render a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn show_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ethernet(dst: &Mac, src: &Mac, ethertype: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(dst);
    out.extend_from_slice(src);
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn pad(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
    f
}

/// An ARP reply ("SENDER_IP is at SENDER_MAC") sent from `sender_mac` to `target_mac`.
pub fn arp_reply(
    sender_mac: &Mac,
    sender_ip: Ipv4Addr,
    target_mac: &Mac,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME);
    ethernet(target_mac, sender_mac, ETHERTYPE_ARP, &mut f);
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes()); // protocol type: IPv4
    f.push(6); // hardware address length
    f.push(4); // protocol address length
    f.extend_from_slice(&2u16.to_be_bytes()); // operation: reply
    f.extend_from_slice(sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(target_mac);
    f.extend_from_slice(&target_ip.octets());
    pad(f)
}

/// The Internet checksum (RFC 1071) of `data`, starting from the partial sum `init`.
pub fn checksum(init: u32, data: &[u8]) -> u16 {
    let mut sum = init;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Addresses of a UDP frame.
#[derive(Debug, Clone, Copy)]
pub struct UdpAddrs {
    /// Source MAC.
    pub src_mac: Mac,
    /// Source IPv4 address.
    pub src_ip: Ipv4Addr,
    /// Destination MAC.
    pub dst_mac: Mac,
    /// Destination IPv4 address.
    pub dst_ip: Ipv4Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// An Ethernet/IPv4/UDP frame with valid IPv4 and UDP checksums. The payload is cut to
/// [`MAX_UDP_PAYLOAD`].
pub fn udp_frame(a: &UdpAddrs, ip_id: u16, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_UDP_PAYLOAD)];
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + total);
    ethernet(&a.dst_mac, &a.src_mac, ETHERTYPE_IPV4, &mut f);
    let ip_start = f.len();
    f.push(0x45); // version 4, IHL 5
    f.push(0); // DSCP/ECN
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&ip_id.to_be_bytes());
    f.extend_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    f.push(64); // TTL
    f.push(17); // UDP
    f.extend_from_slice(&[0, 0]); // checksum, below
    f.extend_from_slice(&a.src_ip.octets());
    f.extend_from_slice(&a.dst_ip.octets());
    let ip_sum = checksum(0, &f[ip_start..ip_start + 20]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let udp_start = f.len();
    f.extend_from_slice(&a.src_port.to_be_bytes());
    f.extend_from_slice(&a.dst_port.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // checksum, below
    f.extend_from_slice(payload);
    // Pseudo-header: source, destination, zero + protocol, UDP length.
    let mut pseudo = 0u32;
    for w in [a.src_ip.octets(), a.dst_ip.octets()] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 17 + udp_len as u32;
    let mut udp_sum = checksum(pseudo, &f[udp_start..]);
    if udp_sum == 0 {
        udp_sum = 0xffff; // zero means "no checksum" in UDP
    }
    f[udp_start + 6..udp_start + 8].copy_from_slice(&udp_sum.to_be_bytes());
    pad(f)
}

/// One IPv4 fragment of a UDP datagram, framed: `ip_payload` are the datagram's bytes from
/// `offset` (a multiple of 8), `more` the more-fragments flag. The IPv4 header checksum is
/// valid; a first fragment's UDP header is the caller's (in `ip_payload`).
pub fn ipv4_fragment(
    a: &UdpAddrs,
    ip_id: u16,
    offset: u16,
    more: bool,
    ip_payload: &[u8],
) -> Vec<u8> {
    let total = 20 + ip_payload.len();
    let mut f = Vec::with_capacity(14 + total);
    ethernet(&a.dst_mac, &a.src_mac, ETHERTYPE_IPV4, &mut f);
    let ip_start = f.len();
    f.push(0x45);
    f.push(0);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&ip_id.to_be_bytes());
    let flags = if more { 0x2000 } else { 0 } | (offset / 8);
    f.extend_from_slice(&flags.to_be_bytes());
    f.push(64);
    f.push(17);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&a.src_ip.octets());
    f.extend_from_slice(&a.dst_ip.octets());
    let ip_sum = checksum(0, &f[ip_start..ip_start + 20]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    f.extend_from_slice(ip_payload);
    pad(f)
}

/// A UDP datagram of 8 header and 16 payload bytes in two fragments: the first (UDP header and
/// 8 bytes, more-fragments set) and the last (8 bytes at offset 16). The UDP checksum is 0
/// (none), so the fragments need no pseudo-header sum across them.
pub fn udp_in_two_fragments(a: &UdpAddrs, ip_id: u16, payload: &[u8; 16]) -> (Vec<u8>, Vec<u8>) {
    let mut first = Vec::with_capacity(16);
    first.extend_from_slice(&a.src_port.to_be_bytes());
    first.extend_from_slice(&a.dst_port.to_be_bytes());
    first.extend_from_slice(&24u16.to_be_bytes());
    first.extend_from_slice(&[0, 0]);
    first.extend_from_slice(&payload[..8]);
    (
        ipv4_fragment(a, ip_id, 0, true, &first),
        ipv4_fragment(a, ip_id, 16, false, &payload[8..]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_fragments_of_one_datagram() {
        let a = UdpAddrs {
            src_mac: B,
            src_ip: Ipv4Addr::new(10, 0, 2, 22),
            dst_mac: A,
            dst_ip: Ipv4Addr::new(10, 0, 2, 21),
            src_port: 40000,
            dst_port: 7000,
        };
        let (first, last) = udp_in_two_fragments(&a, 0xd001, b"0123456789abcdef");
        for f in [&first, &last] {
            assert_eq!(checksum(0, &f[14..34]), 0, "IPv4 header checksum");
            assert_eq!(&f[18..20], &[0xd0, 0x01], "same identification");
            assert_eq!(f[23], 17);
        }
        // First: MF, offset 0, total 20 + 16; last: no MF, offset 16 bytes = 2 units.
        assert_eq!(&first[20..22], &[0x20, 0x00]);
        assert_eq!(&first[16..18], &36u16.to_be_bytes());
        assert_eq!(&first[34..38], &[0x9c, 0x40, 0x1b, 0x58]);
        assert_eq!(&last[20..22], &[0x00, 0x02]);
        assert_eq!(&last[16..18], &28u16.to_be_bytes());
        assert_eq!(&last[34..42], b"89abcdef");
    }

    const A: Mac = [0x02, 0, 0, 0, 0, 0x0a];
    const B: Mac = [0x02, 0, 0, 0, 0, 0x0b];

    #[test]
    fn macs_parse_and_show() {
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap(), A);
        assert_eq!(
            show_mac(&parse_mac("aa:BB:cc:dd:ee:ff").unwrap()),
            "aa:bb:cc:dd:ee:ff"
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:0a:01",
            "02:00:00:00:00:zz",
            "020:0:0:0:0:1",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arp_reply_layout() {
        let f = arp_reply(
            &B,
            Ipv4Addr::new(10, 0, 2, 21),
            &A,
            Ipv4Addr::new(10, 0, 2, 2),
        );
        assert_eq!(f.len(), MIN_FRAME);
        assert_eq!(&f[0..6], &A); // to the target
        assert_eq!(&f[6..12], &B); // from the sender
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 0x08, 0, 6, 4, 0, 2]);
        assert_eq!(&f[22..28], &B);
        assert_eq!(&f[28..32], &[10, 0, 2, 21]);
        assert_eq!(&f[32..38], &A);
        assert_eq!(&f[38..42], &[10, 0, 2, 2]);
        assert!(f[42..].iter().all(|&b| b == 0));
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071's example words 0001 f203 f4f5 f6f7 sum to 0xddf2 (complement 0x220d).
        assert_eq!(
            checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // An odd length pads with a zero byte.
        assert_eq!(checksum(0, &[0x01]), !0x0100);
    }

    #[test]
    fn udp_frame_is_valid() {
        let a = UdpAddrs {
            src_mac: A,
            src_ip: Ipv4Addr::new(10, 0, 2, 21),
            dst_mac: B,
            dst_ip: Ipv4Addr::new(10, 0, 2, 2),
            src_port: 40000,
            dst_port: 9999,
        };
        let f = udp_frame(&a, 7, b"hello");
        assert_eq!(f.len(), MIN_FRAME); // 14 + 20 + 8 + 5 = 47, padded
        assert_eq!(&f[0..6], &B);
        assert_eq!(&f[6..12], &A);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let ip = &f[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 33);
        assert_eq!(ip[9], 17);
        assert_eq!(&ip[12..16], &[10, 0, 2, 21]);
        assert_eq!(&ip[16..20], &[10, 0, 2, 2]);
        // A correct header sums to zero (complemented: 0).
        assert_eq!(checksum(0, ip), 0);
        let udp = &f[34..47];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 40000);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 9999);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 13);
        assert_eq!(&udp[8..], b"hello");
        // UDP checksum over pseudo-header + datagram verifies to zero.
        let pseudo = (0x0a00 + 0x0215) + (0x0a00 + 0x0202) + 17 + 13;
        assert_eq!(checksum(pseudo, udp), 0);
    }

    #[test]
    fn udp_payload_is_capped() {
        let a = UdpAddrs {
            src_mac: A,
            src_ip: Ipv4Addr::new(10, 0, 2, 22),
            dst_mac: B,
            dst_ip: Ipv4Addr::new(10, 0, 2, 2),
            src_port: 1,
            dst_port: 2,
        };
        let f = udp_frame(&a, 0, &[0u8; 4000]);
        assert_eq!(f.len(), 14 + 20 + 8 + MAX_UDP_PAYLOAD);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 1500);
    }
}
