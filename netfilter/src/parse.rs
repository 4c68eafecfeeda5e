//! Frame parsing: Ethernet with 802.1Q, ARP, IPv4 (options, fragments), TCP, UDP, ICMP and IPv6
//! (with NDP recognition). ARP, ICMP and IPv6 fields are read through smoltcp's `wire` types;
//! the Ethernet, IPv4, TCP and UDP headers (nearly every frame) are read straight from the bytes.
//!
//! Every length is checked before a field is read, so no input can panic. The
//! result is a small `Copy` summary ([`ParsedFrame`]) holding what the policy needs and nothing
//! that borrows the frame.

use core::net::{Ipv4Addr, Ipv6Addr};

use shoji_shared::DropReason;
use smoltcp::wire::{ArpPacket, Icmpv4Packet, Ipv6Packet};

/// A 48-bit Ethernet address.
pub type MacAddr = [u8; 6];

/// Length of an untagged Ethernet header (no FCS).
pub const ETH_HEADER_LEN: usize = 14;
/// Length of one 802.1Q tag.
pub const VLAN_TAG_LEN: usize = 4;
/// Largest frame accepted (a 1518-byte frame plus one 802.1Q tag; no FCS). Larger is `Oversize`.
pub const MAX_FRAME: usize = 1522;
/// Size of the engine's rewrite buffer: the largest frame plus room to insert a tag.
pub const FRAME_BUFFER_LEN: usize = MAX_FRAME + VLAN_TAG_LEN;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ) service tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

const TCP_MIN_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const ICMP_MIN_HEADER: usize = 8;
const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const ARP_IPV4_LEN: usize = 28;
/// Most IPv6 extension headers walked before the packet is called malformed.
const IPV6_MAX_EXTENSION_HEADERS: usize = 8;

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the headers it claims, or lengths that disagree.
    Truncated,
    /// Structurally invalid.
    Malformed,
    /// A tiny, misaligned or out-of-range IPv4 fragment.
    BadFragment,
}

impl ParseError {
    /// The drop reason this error is counted under.
    pub fn reason(self) -> DropReason {
        match self {
            ParseError::Truncated => DropReason::Truncated,
            ParseError::Malformed => DropReason::Malformed,
            ParseError::BadFragment => DropReason::BadFragment,
        }
    }
}

/// TCP flags the policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags {
    /// SYN set.
    pub syn: bool,
    /// ACK set.
    pub ack: bool,
    /// RST set.
    pub rst: bool,
    /// FIN set.
    pub fin: bool,
}

impl TcpFlags {
    /// A connection attempt: SYN without ACK.
    pub fn is_connection_attempt(self) -> bool {
        self.syn && !self.ack
    }
}

/// The transport header of an IPv4 datagram (or of its first fragment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP segment.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Flags.
        flags: TcpFlags,
    },
    /// UDP datagram.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMP message.
    Icmp {
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        code: u8,
    },
    /// Another IP protocol (not parsed further).
    Other,
    /// A non-first fragment: the transport header is in the datagram's first fragment.
    LaterFragment,
}

impl Transport {
    /// Source and destination ports, for TCP and UDP.
    pub fn ports(self) -> Option<(u16, u16)> {
        match self {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => Some((src_port, dst_port)),
            _ => None,
        }
    }
}

/// Fragmentation state of an IPv4 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentInfo {
    /// Offset of this fragment's payload in the datagram, in bytes.
    pub offset: u32,
    /// More fragments follow.
    pub more: bool,
    /// Payload bytes carried by this fragment.
    pub len: u32,
}

impl FragmentInfo {
    /// Whether the datagram is fragmented at all.
    pub fn is_fragment(&self) -> bool {
        self.more || self.offset != 0
    }
    /// Whether this is a non-first fragment.
    pub fn is_later(&self) -> bool {
        self.offset != 0
    }
}

/// The ARP fields the policy looks at (Ethernet/IPv4 ARP only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpInfo {
    /// 1 = request, 2 = reply.
    pub operation: u16,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// The IPv4 fields the policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Identification (fragment reassembly key).
    pub ident: u16,
    /// Fragmentation state.
    pub fragment: FragmentInfo,
    /// Whether the header carries a loose or strict source-route option.
    pub source_routed: bool,
    /// The transport header.
    pub transport: Transport,
}

/// The IPv6 fields the policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Info {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Upper-layer protocol after the extension headers (`None` in a non-first fragment).
    pub upper_protocol: Option<u8>,
    /// Whether this is Neighbor Discovery (ICMPv6 types 133 to 137).
    pub is_ndp: bool,
    /// The ICMPv6 type, for ICMPv6.
    pub icmp_type: Option<u8>,
    /// The UDP source port, for UDP.
    pub udp_src_port: Option<u16>,
}

/// The network layer of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// ARP for IPv4 over Ethernet.
    Arp(ArpInfo),
    /// IPv4.
    Ipv4(Ipv4Info),
    /// IPv6.
    Ipv6(Ipv6Info),
    /// Any other EtherType (or an 802.3 length field).
    Other(u16),
}

/// A parsed frame summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFrame {
    /// Destination MAC.
    pub dst_mac: MacAddr,
    /// Source MAC.
    pub src_mac: MacAddr,
    /// VLAN id of an in-frame 802.1Q tag, if the frame carries one.
    pub vlan: Option<u16>,
    /// Offset of the EtherType field that names the network layer (12, or 16 behind a tag).
    pub ethertype_offset: usize,
    /// The network layer.
    pub network: Network,
}

/// Whether a MAC is a group (broadcast or multicast) address.
pub fn is_group_mac(mac: &MacAddr) -> bool {
    mac[0] & 1 != 0
}

/// Parse a whole frame.
pub fn parse_frame(frame: &[u8]) -> Result<ParsedFrame, ParseError> {
    if frame.len() < ETH_HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    // Read straight from the bytes (the hot path): the length is checked above.
    let dst_mac = mac_from(&frame[0..6]);
    let src_mac = mac_from(&frame[6..12]);
    let outer_type = be16(frame, 12);
    let (vlan, ethertype_offset) = match outer_type {
        ETHERTYPE_VLAN => {
            if frame.len() < ETH_HEADER_LEN + VLAN_TAG_LEN {
                return Err(ParseError::Truncated);
            }
            let tci = u16::from_be_bytes([frame[14], frame[15]]);
            let vid = tci & 0x0fff;
            if vid == 0x0fff {
                return Err(ParseError::Malformed);
            }
            let inner = u16::from_be_bytes([frame[16], frame[17]]);
            if inner == ETHERTYPE_VLAN || inner == ETHERTYPE_QINQ {
                // Stacked tags are not part of Shoji's topology.
                return Err(ParseError::Malformed);
            }
            (Some(vid), 16)
        }
        ETHERTYPE_QINQ => return Err(ParseError::Malformed),
        _ => (None, 12),
    };
    let ethertype = u16::from_be_bytes([frame[ethertype_offset], frame[ethertype_offset + 1]]);
    let payload = &frame[ethertype_offset + 2..];
    let network = match ethertype {
        ETHERTYPE_ARP => Network::Arp(parse_arp(payload)?),
        ETHERTYPE_IPV4 => Network::Ipv4(parse_ipv4(payload)?),
        ETHERTYPE_IPV6 => Network::Ipv6(parse_ipv6(payload)?),
        other => Network::Other(other),
    };
    Ok(ParsedFrame {
        dst_mac,
        src_mac,
        vlan,
        ethertype_offset,
        network,
    })
}

/// The big-endian `u16` at `at` (the caller has checked the length).
#[inline(always)]
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn ipv4_from(bytes: &[u8]) -> Ipv4Addr {
    let mut a = [0u8; 4];
    a.copy_from_slice(&bytes[..4]);
    Ipv4Addr::from(a)
}

fn mac_from(bytes: &[u8]) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&bytes[..6]);
    m
}

/// Parse an Ethernet/IPv4 ARP packet.
pub fn parse_arp(payload: &[u8]) -> Result<ArpInfo, ParseError> {
    if payload.len() < 8 {
        return Err(ParseError::Truncated);
    }
    // Fixed part: hardware type, protocol type, lengths, operation.
    let htype = u16::from_be_bytes([payload[0], payload[1]]);
    let ptype = u16::from_be_bytes([payload[2], payload[3]]);
    if htype != 1 || ptype != ETHERTYPE_IPV4 || payload[4] != 6 || payload[5] != 4 {
        return Err(ParseError::Malformed);
    }
    if payload.len() < ARP_IPV4_LEN {
        return Err(ParseError::Truncated);
    }
    let arp = ArpPacket::new_checked(payload).map_err(|_| ParseError::Truncated)?;
    let operation = u16::from(arp.operation());
    if operation != 1 && operation != 2 {
        return Err(ParseError::Malformed);
    }
    Ok(ArpInfo {
        operation,
        sender_mac: mac_from(arp.source_hardware_addr()),
        sender_ip: ipv4_from(arp.source_protocol_addr()),
        target_mac: mac_from(arp.target_hardware_addr()),
        target_ip: ipv4_from(arp.target_protocol_addr()),
    })
}

/// Walk IPv4 options; returns whether a source-route option is present.
fn scan_ipv4_options(options: &[u8]) -> Result<bool, ParseError> {
    let mut source_routed = false;
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => break,  // end of option list
            1 => i += 1, // no-operation
            kind => {
                if i + 1 >= options.len() {
                    return Err(ParseError::Malformed);
                }
                let len = options[i + 1] as usize;
                if len < 2 || i + len > options.len() {
                    return Err(ParseError::Malformed);
                }
                // Loose (131) and strict (137) source routing.
                if kind == 131 || kind == 137 {
                    source_routed = true;
                }
                i += len;
            }
        }
    }
    Ok(source_routed)
}

/// Parse an IPv4 datagram (or fragment) and its transport header.
pub fn parse_ipv4(payload: &[u8]) -> Result<Ipv4Info, ParseError> {
    if payload.len() < IPV4_MIN_HEADER {
        return Err(ParseError::Truncated);
    }
    if payload[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let header_len = ((payload[0] & 0x0f) as usize) * 4;
    if header_len < IPV4_MIN_HEADER {
        return Err(ParseError::Malformed);
    }
    if payload.len() < header_len {
        return Err(ParseError::Truncated);
    }
    let total_len = u16::from_be_bytes([payload[2], payload[3]]) as usize;
    if total_len < header_len {
        return Err(ParseError::Malformed);
    }
    if total_len > payload.len() {
        return Err(ParseError::Truncated);
    }
    // Every length is checked above, so the fields are read straight from the bytes.
    let source_routed = scan_ipv4_options(&payload[IPV4_MIN_HEADER..header_len])?;
    let body = &payload[header_len..total_len];
    let flags_offset = be16(payload, 6);
    let fragment = FragmentInfo {
        offset: u32::from(flags_offset & 0x1fff) << 3,
        more: flags_offset & 0x2000 != 0,
        len: body.len() as u32,
    };
    let protocol = payload[9];
    if fragment.is_fragment() {
        // Non-last fragments carry a multiple of 8 bytes; nothing may reach past 65535.
        if (fragment.more && (fragment.len == 0 || fragment.len & 7 != 0))
            || fragment.offset + fragment.len > 65535
        {
            return Err(ParseError::BadFragment);
        }
        // A later fragment that starts inside the transport header rewrites it (RFC 1858).
        if fragment.is_later() && (fragment.offset as usize) < min_transport_header(protocol) {
            return Err(ParseError::BadFragment);
        }
    }
    let transport = if fragment.is_later() {
        Transport::LaterFragment
    } else {
        match parse_transport(protocol, body, fragment.more) {
            Ok(t) => t,
            // A first fragment too small to hold the transport header is a tiny fragment.
            Err(ParseError::Truncated) if fragment.more => return Err(ParseError::BadFragment),
            Err(e) => return Err(e),
        }
    };
    Ok(Ipv4Info {
        src: ipv4_from(&payload[12..16]),
        dst: ipv4_from(&payload[16..20]),
        protocol,
        ident: be16(payload, 4),
        fragment,
        source_routed,
        transport,
    })
}

fn min_transport_header(protocol: u8) -> usize {
    match protocol {
        IPPROTO_TCP => TCP_MIN_HEADER,
        IPPROTO_UDP => UDP_HEADER,
        IPPROTO_ICMP => ICMP_MIN_HEADER,
        _ => 0,
    }
}

/// The transport header of `body`; `first_fragment`: the body is the first fragment of a larger
/// datagram, whose length fields count bytes in the later fragments too.
fn parse_transport(
    protocol: u8,
    body: &[u8],
    first_fragment: bool,
) -> Result<Transport, ParseError> {
    match protocol {
        IPPROTO_TCP => {
            if body.len() < TCP_MIN_HEADER {
                return Err(ParseError::Truncated);
            }
            let data_offset = ((body[12] >> 4) as usize) * 4;
            if data_offset < TCP_MIN_HEADER {
                return Err(ParseError::Malformed);
            }
            if data_offset > body.len() {
                return Err(ParseError::Truncated);
            }
            let flags = body[13];
            Ok(Transport::Tcp {
                src_port: be16(body, 0),
                dst_port: be16(body, 2),
                flags: TcpFlags {
                    syn: flags & 0x02 != 0,
                    ack: flags & 0x10 != 0,
                    rst: flags & 0x04 != 0,
                    fin: flags & 0x01 != 0,
                },
            })
        }
        IPPROTO_UDP => {
            if body.len() < UDP_HEADER {
                return Err(ParseError::Truncated);
            }
            let udp_len = u16::from_be_bytes([body[4], body[5]]) as usize;
            if udp_len < UDP_HEADER {
                return Err(ParseError::Malformed);
            }
            // The UDP length covers the whole datagram: in a first fragment it reaches into the
            // later ones.
            if udp_len > body.len() && !first_fragment {
                return Err(ParseError::Truncated);
            }
            Ok(Transport::Udp {
                src_port: be16(body, 0),
                dst_port: be16(body, 2),
            })
        }
        IPPROTO_ICMP => {
            if body.len() < ICMP_MIN_HEADER {
                return Err(ParseError::Truncated);
            }
            let icmp = Icmpv4Packet::new_checked(body).map_err(|_| ParseError::Truncated)?;
            Ok(Transport::Icmp {
                icmp_type: u8::from(icmp.msg_type()),
                code: icmp.msg_code(),
            })
        }
        _ => Ok(Transport::Other),
    }
}

/// Parse an IPv6 packet far enough to find its upper-layer protocol and recognise NDP.
pub fn parse_ipv6(payload: &[u8]) -> Result<Ipv6Info, ParseError> {
    if payload.len() < IPV6_HEADER {
        return Err(ParseError::Truncated);
    }
    if payload[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let ip = Ipv6Packet::new_checked(payload).map_err(|_| ParseError::Truncated)?;
    let body = ip.payload();
    let mut next = u8::from(ip.next_header());
    let mut at = 0usize;
    let mut upper = None;
    for _ in 0..=IPV6_MAX_EXTENSION_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                if body.len() < at + 8 {
                    return Err(ParseError::Truncated);
                }
                let len = (body[at + 1] as usize + 1) * 8;
                if body.len() < at + len {
                    return Err(ParseError::Truncated);
                }
                next = body[at];
                at += len;
            }
            // Fragment header: fixed 8 bytes; a non-first fragment hides the upper layer.
            44 => {
                if body.len() < at + 8 {
                    return Err(ParseError::Truncated);
                }
                let offset = u16::from_be_bytes([body[at + 2], body[at + 3]]) >> 3;
                next = body[at];
                at += 8;
                if offset != 0 {
                    return Ok(Ipv6Info {
                        src: ip.src_addr(),
                        dst: ip.dst_addr(),
                        upper_protocol: None,
                        is_ndp: false,
                        icmp_type: None,
                        udp_src_port: None,
                    });
                }
            }
            proto => {
                upper = Some(proto);
                break;
            }
        }
    }
    let Some(upper_protocol) = upper else {
        return Err(ParseError::Malformed);
    };
    let icmp_type = if upper_protocol == IPPROTO_ICMPV6 {
        if body.len() < at + 4 {
            return Err(ParseError::Truncated);
        }
        Some(body[at])
    } else {
        None
    };
    let udp_src_port = if upper_protocol == IPPROTO_UDP {
        if body.len() < at + 8 {
            return Err(ParseError::Truncated);
        }
        Some(u16::from_be_bytes([body[at], body[at + 1]]))
    } else {
        None
    };
    Ok(Ipv6Info {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        upper_protocol: Some(upper_protocol),
        is_ndp: icmp_type.is_some_and(|t| (133..=137).contains(&t)),
        icmp_type,
        udp_src_port,
    })
}
