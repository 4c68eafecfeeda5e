//! A small rtnetlink client: list links and IPv4 addresses, and add or remove bridge VLANs on
//! a bridge port (what `ip link`, `ip addr` and `bridge vlan` do). Messages are built and
//! parsed with `netlink-packet-route` (`RouteNetlinkMessage`: `LinkMessage`, `AddressMessage`,
//! `AfSpecBridge`/`BridgeVlanInfo`) inside `netlink-packet-core`'s `NetlinkMessage`, and sent
//! over a synchronous `netlink-sys` socket; this module only chooses what to ask and picks the
//! few fields Shoji needs out of the replies. Building and parsing are plain functions over
//! bytes (host-tested against messages captured from `ip` and `bridge`); [`Socket`] is the thin
//! I/O layer.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
pub use netlink_packet_route::link::BridgeVlanInfoFlags;
use netlink_packet_route::link::{
    AfSpecBridge, BridgeVlanInfo, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// `BRIDGE_VLAN_INFO_PVID`: the VLAN is the port's PVID (untagged ingress).
pub const BRIDGE_VLAN_INFO_PVID: BridgeVlanInfoFlags = BridgeVlanInfoFlags::Pvid;
/// `BRIDGE_VLAN_INFO_UNTAGGED`: the VLAN egresses untagged.
pub const BRIDGE_VLAN_INFO_UNTAGGED: BridgeVlanInfoFlags = BridgeVlanInfoFlags::Untagged;
/// `IFF_LOOPBACK`, as a bit of [`Link::flags`].
pub const IFF_LOOPBACK: u32 = LinkFlags::Loopback.bits();

/// A network interface as `RTM_NEWLINK` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// `IFF_*` flags.
    pub flags: u32,
    /// Name.
    pub name: String,
    /// Hardware address (empty when it has none).
    pub address: Vec<u8>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    pub link: Option<u32>,
    /// `IFLA_MASTER`: the bridge it is a port of.
    pub master: Option<u32>,
}

impl Link {
    /// Whether it is a loopback interface.
    pub fn is_loopback(&self) -> bool {
        self.flags & IFF_LOOPBACK != 0
    }

    /// Its MAC, when it has a 6-byte, non-zero hardware address.
    pub fn mac(&self) -> Option<[u8; 6]> {
        let mac: [u8; 6] = self.address.as_slice().try_into().ok()?;
        (mac != [0; 6]).then_some(mac)
    }
}

/// An IPv4 address of an interface, as `RTM_NEWADDR` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// Interface index.
    pub index: u32,
    /// Prefix length.
    pub prefix: u8,
    /// The local address (`IFA_LOCAL`, else `IFA_ADDRESS`).
    pub address: Ipv4Addr,
}

/// A route-netlink message as the crates represent it.
pub type Message = NetlinkMessage<RouteNetlinkMessage>;

/// Serialise `payload` as a request with `flags` and sequence number `seq` (port id 0: the
/// kernel fills it in).
fn request(payload: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = Message::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// `RTM_GETLINK` dump request.
pub fn getlink_dump(seq: u32) -> Vec<u8> {
    request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// `RTM_GETADDR` dump request for IPv4.
pub fn getaddr_dump(seq: u32) -> Vec<u8> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    request(
        RouteNetlinkMessage::GetAddress(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// Add (`RTM_SETLINK`) or delete (`RTM_DELLINK`) VLAN `vid` with `flags` on bridge port
/// `index`: an `AF_BRIDGE` link message carrying `IFLA_AF_SPEC { IFLA_BRIDGE_VLAN_INFO }`, as
/// `bridge vlan add|del` sends it.
pub fn bridge_vlan(
    add: bool,
    index: u32,
    vid: u16,
    flags: BridgeVlanInfoFlags,
    seq: u32,
) -> Vec<u8> {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = index;
    msg.attributes = vec![LinkAttribute::AfSpecBridge(vec![AfSpecBridge::VlanInfo(
        BridgeVlanInfo { flags, vid },
    )])];
    let payload = if add {
        RouteNetlinkMessage::SetLink(msg)
    } else {
        RouteNetlinkMessage::DelLink(msg)
    };
    request(payload, NLM_F_REQUEST | NLM_F_ACK, seq)
}

/// `RTM_GETROUTE` dump request for IPv4 routes (every table).
pub fn getroute_dump(seq: u32) -> Vec<u8> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    request(
        RouteNetlinkMessage::GetRoute(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// Parse a received buffer: one or more netlink messages back to back, each starting at the
/// previous one's length rounded up to 4 bytes (`NLMSG_ALIGN`). Any malformed message, or
/// bytes left over that are not a message, make the whole buffer an error.
pub fn messages(buf: &[u8]) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let msg =
            Message::deserialize(rest).map_err(|e| format!("malformed netlink reply: {e}"))?;
        // `deserialize` checked that the length is at least a header and within `rest`.
        let len = (msg.header.length as usize).next_multiple_of(4);
        rest = rest.get(len..).unwrap_or_default();
        out.push(msg);
    }
    Ok(out)
}

/// The outcome of an `NLMSG_ERROR` payload: `Ok` for an acknowledgement, else the positive
/// errno.
fn error_result(e: &netlink_packet_core::ErrorMessage) -> Result<(), i32> {
    match e.code {
        None => Ok(()),
        Some(code) => Err(code.get().saturating_neg()),
    }
}

/// Feed one received part of a dump to `out`, taking what `pick` selects from each message;
/// `Ok(true)` once the dump is done (`NLMSG_DONE`).
fn collect<T>(
    buf: &[u8],
    out: &mut Vec<T>,
    pick: fn(RouteNetlinkMessage) -> Option<T>,
) -> Result<bool, String> {
    for msg in messages(buf)? {
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => out.extend(pick(m)),
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => error_result(&e).map_err(errno_text)?,
            _ => {}
        }
    }
    Ok(false)
}

fn link_of(msg: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(msg) = msg else {
        return None;
    };
    let mut link = Link {
        index: msg.header.index,
        flags: msg.header.flags.bits(),
        ..Link::default()
    };
    for attr in msg.attributes {
        match attr {
            // The name ends at its first NUL (the crate only drops a trailing one).
            LinkAttribute::IfName(name) => {
                link.name = name.split('\0').next().unwrap_or_default().to_owned()
            }
            LinkAttribute::Address(address) => link.address = address,
            LinkAttribute::Link(index) => link.link = Some(index).filter(|i| *i != 0),
            LinkAttribute::Controller(index) => link.master = Some(index).filter(|i| *i != 0),
            _ => {}
        }
    }
    Some(link)
}

fn addr_of(msg: RouteNetlinkMessage) -> Option<Addr> {
    let RouteNetlinkMessage::NewAddress(msg) = msg else {
        return None;
    };
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let mut local = None;
    let mut address = None;
    for attr in msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(ip),
            _ => {}
        }
    }
    Some(Addr {
        index: msg.header.index,
        prefix: msg.header.prefix_len,
        address: local.or(address)?,
    })
}

fn gateway_of(msg: RouteNetlinkMessage) -> Option<Ipv4Addr> {
    let RouteNetlinkMessage::NewRoute(msg) = msg else {
        return None;
    };
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    msg.attributes.into_iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(ip),
        _ => None,
    })
}

/// Add the IPv4 gateways (next hops) of one received part of a `RTM_GETROUTE` dump to `out`;
/// `Ok(true)` once the dump is done.
pub fn collect_gateways(buf: &[u8], out: &mut Vec<Ipv4Addr>) -> Result<bool, String> {
    collect(buf, out, gateway_of)
}

/// Add the links of one received part of a `RTM_GETLINK` dump to `out`; `Ok(true)` once the
/// dump is done.
pub fn collect_links(buf: &[u8], out: &mut Vec<Link>) -> Result<bool, String> {
    collect(buf, out, link_of)
}

/// Add the IPv4 addresses of one received part of a `RTM_GETADDR` dump to `out`; `Ok(true)`
/// once the dump is done.
pub fn collect_addrs(buf: &[u8], out: &mut Vec<Addr>) -> Result<bool, String> {
    collect(buf, out, addr_of)
}

/// The answer to a request sent with `NLM_F_ACK`, if `buf` holds it: `Some(Ok(()))` for the
/// acknowledgement, `Some(Err(errno))` for a refusal, `None` when `buf` has no `NLMSG_ERROR`.
/// A malformed buffer is `Some(Err(EPROTO))`.
pub fn ack(buf: &[u8]) -> Option<Result<(), i32>> {
    let Ok(msgs) = messages(buf) else {
        return Some(Err(libc::EPROTO));
    };
    msgs.iter().find_map(|m| match &m.payload {
        NetlinkPayload::Error(e) => Some(error_result(e)),
        _ => None,
    })
}

/// Describe a positive errno.
pub fn errno_text(e: i32) -> String {
    format!("{} (errno {e})", std::io::Error::from_raw_os_error(e))
}

/// A `NETLINK_ROUTE` socket.
#[cfg(target_os = "linux")]
pub struct Socket {
    sock: netlink_sys::Socket,
    seq: u32,
}

#[cfg(target_os = "linux")]
impl Socket {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Socket, String> {
        let sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
            .map_err(|e| format!("cannot open a netlink socket: {e}"))?;
        Ok(Socket { sock, seq: 1 })
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), String> {
        // Port 0: the kernel.
        let kernel = netlink_sys::SocketAddr::new(0, 0);
        match self.sock.send_to(msg, &kernel, 0) {
            Ok(n) if n == msg.len() => Ok(()),
            Ok(n) => Err(format!(
                "netlink send failed: sent {n} of {} bytes",
                msg.len()
            )),
            Err(e) => Err(format!("netlink send failed: {e}")),
        }
    }

    /// Receive one datagram into `buf` (whose capacity bounds its size).
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        loop {
            buf.clear();
            match self.sock.recv(buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("netlink receive failed: {e}")),
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn dump<T>(
        &mut self,
        request: Vec<u8>,
        collect: fn(&[u8], &mut Vec<T>) -> Result<bool, String>,
    ) -> Result<Vec<T>, String> {
        self.send(&request)?;
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            self.recv(&mut buf)?;
            if buf.is_empty() {
                return Err("netlink socket closed during a dump".into());
            }
            if collect(&buf, &mut out)? {
                return Ok(out);
            }
        }
    }

    /// The IPv4 gateways of every route (each once).
    pub fn ipv4_gateways(&mut self) -> Result<Vec<Ipv4Addr>, String> {
        let seq = self.next_seq();
        let mut gws = self.dump(getroute_dump(seq), collect_gateways)?;
        gws.sort();
        gws.dedup();
        Ok(gws)
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, String> {
        let seq = self.next_seq();
        self.dump(getlink_dump(seq), collect_links)
    }

    /// Every IPv4 address.
    pub fn ipv4_addrs(&mut self) -> Result<Vec<Addr>, String> {
        let seq = self.next_seq();
        self.dump(getaddr_dump(seq), collect_addrs)
    }

    /// Add or delete a bridge VLAN on a port; returns the kernel's errno on refusal.
    pub fn bridge_vlan(
        &mut self,
        add: bool,
        index: u32,
        vid: u16,
        flags: BridgeVlanInfoFlags,
    ) -> Result<(), i32> {
        let seq = self.next_seq();
        self.send(&bridge_vlan(add, index, vid, flags, seq))
            .map_err(|_| libc::EIO)?;
        let mut buf = Vec::with_capacity(8192);
        loop {
            self.recv(&mut buf).map_err(|_| libc::EIO)?;
            if buf.is_empty() {
                return Err(libc::EIO);
            }
            if let Some(result) = ack(&buf) {
                return result;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The vectors are messages captured from `ip` and `bridge` on a real kernel; see
    //! `tests/netlink_vectors/README.md` for how.

    use super::*;
    use netlink_packet_core::{DefaultNla, NetlinkBuffer, NLMSG_DONE, NLMSG_ERROR};
    use proptest::prelude::*;

    const VLAN_ADD_REQUEST: &[u8] = include_bytes!("../tests/netlink_vectors/vlan_add_request.bin");
    const VLAN_DEL_REQUEST: &[u8] = include_bytes!("../tests/netlink_vectors/vlan_del_request.bin");
    const VLAN_ADD_EOPNOTSUPP: &[u8] =
        include_bytes!("../tests/netlink_vectors/vlan_add_reply_eopnotsupp.bin");
    const VLAN_DEL_ACK: &[u8] = include_bytes!("../tests/netlink_vectors/vlan_del_reply_ack.bin");
    const LINK_DUMP: [&[u8]; 3] = [
        include_bytes!("../tests/netlink_vectors/link_dump_reply_1.bin"),
        include_bytes!("../tests/netlink_vectors/link_dump_reply_2.bin"),
        include_bytes!("../tests/netlink_vectors/link_dump_reply_3.bin"),
    ];
    const ADDR_DUMP: [&[u8]; 2] = [
        include_bytes!("../tests/netlink_vectors/addr_dump_reply_1.bin"),
        include_bytes!("../tests/netlink_vectors/addr_dump_reply_2.bin"),
    ];
    /// Every captured vector.
    const VECTORS: [&[u8]; 9] = [
        VLAN_ADD_REQUEST,
        VLAN_DEL_REQUEST,
        VLAN_ADD_EOPNOTSUPP,
        VLAN_DEL_ACK,
        LINK_DUMP[0],
        LINK_DUMP[1],
        LINK_DUMP[2],
        ADDR_DUMP[0],
        ADDR_DUMP[1],
    ];

    /// The capture's interfaces (see the README): veth0 is the bridge port.
    const LO: u32 = 1;
    const BR0: u32 = 3;
    const VETH1: u32 = 5;
    const VETH0: u32 = 6;

    /// The sequence number a captured request was sent with.
    fn seq_of(request: &[u8]) -> u32 {
        Message::deserialize(request)
            .unwrap()
            .header
            .sequence_number
    }

    #[test]
    fn constants() {
        assert_eq!(IFF_LOOPBACK as i32, libc::IFF_LOOPBACK);
        assert_eq!(BRIDGE_VLAN_INFO_PVID.bits(), 2);
        assert_eq!(BRIDGE_VLAN_INFO_UNTAGGED.bits(), 4);
    }

    /// Our VLAN requests are the bytes `bridge vlan add|del` sent, byte for byte. The only field
    /// taken from the capture is the sequence number (bytes 8..12), which `bridge` picks from
    /// the clock; the port id is 0 in both, and `bridge` uses the same
    /// `NLM_F_REQUEST | NLM_F_ACK` flags, `AF_BRIDGE` header and un-flagged `IFLA_AF_SPEC`.
    #[test]
    fn vlan_requests_match_bridge() {
        let add = bridge_vlan(
            true,
            VETH0,
            101,
            BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED,
            seq_of(VLAN_ADD_REQUEST),
        );
        assert_eq!(add, VLAN_ADD_REQUEST);
        let del = bridge_vlan(
            false,
            VETH0,
            1,
            BridgeVlanInfoFlags::empty(),
            seq_of(VLAN_DEL_REQUEST),
        );
        assert_eq!(del, VLAN_DEL_REQUEST);
    }

    #[test]
    fn dump_requests() {
        let l = Message::deserialize(&getlink_dump(3)).unwrap();
        assert_eq!(l.header.length, 32);
        assert_eq!(l.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(l.header.sequence_number, 3);
        assert_eq!(
            l.payload,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        );
        let a = Message::deserialize(&getaddr_dump(4)).unwrap();
        assert_eq!(a.header.length, 24);
        assert_eq!(a.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetAddress(m)) = a.payload else {
            panic!("not RTM_GETADDR: {a:?}");
        };
        assert_eq!(m.header.family, AddressFamily::Inet);
    }

    #[test]
    fn parses_the_captured_link_dump() {
        let mut links = Vec::new();
        // Two messages per datagram, then NLMSG_DONE on its own: not done until the last.
        assert_eq!(collect_links(LINK_DUMP[0], &mut links), Ok(false));
        assert_eq!(collect_links(LINK_DUMP[1], &mut links), Ok(false));
        assert_eq!(collect_links(LINK_DUMP[2], &mut links), Ok(true));
        let up = (libc::IFF_UP | libc::IFF_RUNNING | libc::IFF_LOWER_UP) as u32;
        let ether = up | (libc::IFF_BROADCAST | libc::IFF_MULTICAST) as u32;
        let want = [
            Link {
                index: LO,
                flags: up | IFF_LOOPBACK,
                name: "lo".into(),
                address: vec![0; 6],
                link: None,
                master: None,
            },
            Link {
                index: BR0,
                flags: ether,
                name: "br0".into(),
                address: vec![2, 0, 0, 0, 0x0b, 1],
                link: None,
                master: None,
            },
            Link {
                index: VETH1,
                flags: ether,
                name: "veth1".into(),
                address: vec![2, 0, 0, 0, 0x0a, 2],
                link: Some(VETH0),
                master: None,
            },
            Link {
                index: VETH0,
                flags: ether,
                name: "veth0".into(),
                address: vec![2, 0, 0, 0, 0x0a, 1],
                link: Some(VETH1),
                master: Some(BR0),
            },
        ];
        assert_eq!(links, want);
        assert!(links[0].is_loopback() && !links[3].is_loopback());
        assert_eq!(links[0].mac(), None);
        assert_eq!(links[3].mac(), Some([2, 0, 0, 0, 0x0a, 1]));
        // The kernel's messages carry many attributes we do not use (and the vectors hold
        // ones such as IFLA_LINKINFO and IFLA_AF_SPEC): they are parsed and ignored.
        let msgs = messages(LINK_DUMP[0]).unwrap();
        assert_eq!(msgs.len(), 2);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) = &msgs[1].payload else {
            panic!("not RTM_NEWLINK");
        };
        assert!(m.attributes.len() > 10, "{:?}", m.attributes.len());
    }

    #[test]
    fn parses_the_captured_addr_dump() {
        let mut addrs = Vec::new();
        assert_eq!(collect_addrs(ADDR_DUMP[0], &mut addrs), Ok(false));
        assert_eq!(collect_addrs(ADDR_DUMP[1], &mut addrs), Ok(true));
        let addr = |index, a, b, c, d, prefix| Addr {
            index,
            prefix,
            address: Ipv4Addr::new(a, b, c, d),
        };
        assert_eq!(
            addrs,
            [
                addr(LO, 127, 0, 0, 1, 8),
                addr(BR0, 192, 168, 77, 1, 16),
                addr(VETH1, 10, 0, 2, 21, 24),
            ]
        );
    }

    #[test]
    fn acks_and_errors() {
        assert_eq!(ack(VLAN_DEL_ACK), Some(Ok(())));
        assert_eq!(ack(VLAN_ADD_EOPNOTSUPP), Some(Err(libc::EOPNOTSUPP)));
        // Parts of a dump hold no answer; garbage is a protocol error.
        assert_eq!(ack(LINK_DUMP[0]), None);
        assert_eq!(ack(ADDR_DUMP[1]), None);
        assert_eq!(ack(&VLAN_DEL_ACK[..20]), Some(Err(libc::EPROTO)));
        // An error during a dump ends it with the errno's text; an ack in it is ignored.
        let err = collect_links(VLAN_ADD_EOPNOTSUPP, &mut Vec::new()).unwrap_err();
        assert_eq!(err, errno_text(libc::EOPNOTSUPP));
        assert!(
            err.contains(&format!("errno {}", libc::EOPNOTSUPP)),
            "{err}"
        );
        assert_eq!(collect_addrs(VLAN_DEL_ACK, &mut Vec::new()), Ok(false));
    }

    /// Serialise `payload` as a kernel reply would carry it.
    fn reply(payload: RouteNetlinkMessage) -> Vec<u8> {
        request(payload, 2, 1)
    }

    #[test]
    fn skips_what_it_does_not_use() {
        // An unknown link attribute, and a link message that is not RTM_NEWLINK.
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.attributes = vec![
            LinkAttribute::Other(DefaultNla::new(999, vec![1, 2, 3])),
            LinkAttribute::IfName("eth0".into()),
        ];
        let mut buf = reply(RouteNetlinkMessage::NewLink(m.clone()));
        buf.extend(reply(RouteNetlinkMessage::DelLink(m)));
        let mut links = Vec::new();
        assert_eq!(collect_links(&buf, &mut links), Ok(false));
        assert_eq!(links.len(), 1);
        assert_eq!((links[0].index, links[0].name.as_str()), (7, "eth0"));
        // IPv6 addresses are not listed; IFA_LOCAL wins over IFA_ADDRESS.
        let mut v6 = AddressMessage::default();
        v6.header.family = AddressFamily::Inet6;
        v6.attributes = vec![AddressAttribute::Address("fe80::1".parse().unwrap())];
        let mut v4 = AddressMessage::default();
        v4.header.family = AddressFamily::Inet;
        v4.header.index = 2;
        v4.header.prefix_len = 32;
        v4.attributes = vec![
            AddressAttribute::Address("10.9.9.9".parse().unwrap()),
            AddressAttribute::Local("10.0.0.1".parse().unwrap()),
        ];
        let mut only_address = v4.clone();
        only_address.attributes.truncate(1);
        let mut none = v4.clone();
        none.attributes.clear();
        let mut buf = reply(RouteNetlinkMessage::NewAddress(v6));
        for m in [v4, only_address, none] {
            buf.extend(reply(RouteNetlinkMessage::NewAddress(m)));
        }
        let mut addrs = Vec::new();
        assert_eq!(collect_addrs(&buf, &mut addrs), Ok(false));
        let at = |a: &str| Addr {
            index: 2,
            prefix: 32,
            address: a.parse().unwrap(),
        };
        assert_eq!(addrs, [at("10.0.0.1"), at("10.9.9.9")]);
    }

    /// Where each message of a well-formed buffer ends.
    fn boundaries(buf: &[u8]) -> Vec<usize> {
        let mut at = 0;
        messages(buf)
            .unwrap()
            .iter()
            .map(|m| {
                at += (m.header.length as usize).next_multiple_of(4);
                at.min(buf.len())
            })
            .collect()
    }

    /// Run every parser over `buf`; they may refuse it but must not panic.
    fn parse_everything(buf: &[u8]) -> bool {
        let ok = messages(buf).is_ok();
        let links = collect_links(buf, &mut Vec::new());
        let addrs = collect_addrs(buf, &mut Vec::new());
        let answer = ack(buf);
        if !ok {
            assert!(links.is_err() && addrs.is_err());
            assert_eq!(answer, Some(Err(libc::EPROTO)));
        }
        ok
    }

    #[test]
    fn truncated_vectors_are_errors() {
        for v in VECTORS {
            let ends = boundaries(v);
            assert_eq!(ends.last(), Some(&v.len()));
            for len in 0..v.len() {
                let ok = parse_everything(&v[..len]);
                assert_eq!(ok, len == 0 || ends.contains(&len), "cut at {len}");
            }
        }
        // A length field pointing past the buffer, or shorter than a header.
        let mut bad = VLAN_DEL_ACK.to_vec();
        NetlinkBuffer::new(&mut bad).set_length(200);
        assert!(messages(&bad).is_err());
        NetlinkBuffer::new(&mut bad).set_length(3);
        assert!(messages(&bad).is_err());
        // Bytes after the last message that are not a message.
        let mut bad = LINK_DUMP[2].to_vec();
        bad.extend([0; 8]);
        assert!(messages(&bad).is_err());
    }

    /// A message of type `ty` around `payload`, its length field right.
    fn framed(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; 16 + payload.len()];
        let mut nl = NetlinkBuffer::new(&mut buf);
        nl.set_length(16 + payload.len() as u32);
        nl.set_message_type(ty);
        nl.payload_mut().copy_from_slice(payload);
        buf
    }

    proptest! {
        #[test]
        fn random_bytes_do_not_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            parse_everything(&buf);
        }

        /// Random payloads in well-framed messages reach the attribute parsers.
        #[test]
        fn random_payloads_do_not_panic(
            ty in prop::sample::select(vec![16u16, 17, 19, 20, NLMSG_DONE, NLMSG_ERROR]),
            payload in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            parse_everything(&framed(ty, &payload));
        }

        /// Captured vectors with some bytes changed.
        #[test]
        fn mutated_vectors_do_not_panic(
            which in 0..VECTORS.len(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut buf = VECTORS[which].to_vec();
            for (at, byte) in edits {
                let i = at.index(buf.len());
                buf[i] = byte;
            }
            parse_everything(&buf);
        }
    }
}
