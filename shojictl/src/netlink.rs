//! A small rtnetlink client: list links and IPv4 addresses, and add or remove bridge VLANs on
//! a bridge port (what `ip link`, `ip addr` and `bridge vlan` do).
//!
//! Message building and parsing are plain functions over bytes (host-tested); [`Socket`] does
//! the system calls.

use std::net::Ipv4Addr;

/// `RTM_NEWLINK`.
pub const RTM_NEWLINK: u16 = 16;
/// `RTM_DELLINK`.
pub const RTM_DELLINK: u16 = 17;
/// `RTM_GETLINK`.
pub const RTM_GETLINK: u16 = 18;
/// `RTM_SETLINK`.
pub const RTM_SETLINK: u16 = 19;
/// `RTM_NEWADDR`.
pub const RTM_NEWADDR: u16 = 20;
/// `RTM_GETADDR`.
pub const RTM_GETADDR: u16 = 22;
/// `NLMSG_ERROR`.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 1;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// `IFLA_ADDRESS`.
pub const IFLA_ADDRESS: u16 = 1;
/// `IFLA_IFNAME`.
pub const IFLA_IFNAME: u16 = 3;
/// `IFLA_LINK`.
pub const IFLA_LINK: u16 = 5;
/// `IFLA_MASTER`.
pub const IFLA_MASTER: u16 = 10;
/// `IFLA_AF_SPEC`.
pub const IFLA_AF_SPEC: u16 = 26;
/// `IFLA_BRIDGE_VLAN_INFO` (inside `IFLA_AF_SPEC`).
pub const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
/// `IFA_ADDRESS`.
pub const IFA_ADDRESS: u16 = 1;
/// `IFA_LOCAL`.
pub const IFA_LOCAL: u16 = 2;
/// `BRIDGE_VLAN_INFO_PVID`.
pub const BRIDGE_VLAN_INFO_PVID: u16 = 2;
/// `BRIDGE_VLAN_INFO_UNTAGGED`.
pub const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 4;
/// `AF_UNSPEC`.
pub const AF_UNSPEC: u8 = 0;
/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_BRIDGE`.
pub const AF_BRIDGE: u8 = 7;
/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 0x8000;
/// `IFF_LOOPBACK`.
pub const IFF_LOOPBACK: u32 = 8;

const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;
const IFADDRMSG: usize = 8;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

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

/// A message in a netlink reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A payload of this type (`RTM_NEWLINK`, `RTM_NEWADDR`...).
    Data(u16, &'a [u8]),
    /// End of a dump.
    Done,
    /// An error (0: acknowledgement), as a positive errno.
    Error(i32),
}

/// Split a received buffer into messages.
pub fn messages(buf: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < NLMSG_HDR || at + len > buf.len() {
            return Err(format!("malformed netlink message (length {len})"));
        }
        let payload = &buf[at + NLMSG_HDR..at + len];
        out.push(match ty {
            NLMSG_DONE => Message::Done,
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err("truncated netlink error".into());
                }
                let code = i32::from_ne_bytes(payload[..4].try_into().unwrap_or_default());
                Message::Error(code.saturating_neg())
            }
            t => Message::Data(t, payload),
        });
        at += align4(len);
    }
    Ok(out)
}

/// Iterate over the attributes in `buf` as (type without flags, payload).
pub fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[at], buf[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & 0x3fff;
        if len < 4 || at + len > buf.len() {
            return None;
        }
        let payload = &buf[at + 4..at + len];
        at += align4(len);
        Some((ty, payload))
    })
}

fn u32_attr(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

/// Parse an `RTM_NEWLINK` payload.
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < IFINFOMSG {
        return None;
    }
    let index = u32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(payload[8..12].try_into().ok()?);
    let mut link = Link {
        index,
        flags,
        ..Link::default()
    };
    for (ty, p) in attributes(&payload[IFINFOMSG..]) {
        match ty {
            IFLA_IFNAME => {
                let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
                link.name = String::from_utf8_lossy(&p[..end]).into_owned();
            }
            IFLA_ADDRESS => link.address = p.to_vec(),
            IFLA_LINK => link.link = u32_attr(p).filter(|i| *i != 0),
            IFLA_MASTER => link.master = u32_attr(p).filter(|i| *i != 0),
            _ => {}
        }
    }
    Some(link)
}

/// Parse an `RTM_NEWADDR` payload (IPv4 only; others give `None`).
pub fn parse_addr(payload: &[u8]) -> Option<Addr> {
    if payload.len() < IFADDRMSG || payload[0] != AF_INET {
        return None;
    }
    let prefix = payload[1];
    let index = u32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let mut local = None;
    let mut address = None;
    for (ty, p) in attributes(&payload[IFADDRMSG..]) {
        let ip = <[u8; 4]>::try_from(p).ok().map(Ipv4Addr::from);
        match ty {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            _ => {}
        }
    }
    Some(Addr {
        index,
        prefix,
        address: local.or(address)?,
    })
}

fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `finish`
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

fn ifinfomsg(buf: &mut Vec<u8>, family: u8, index: u32) {
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&0u16.to_ne_bytes()); // type
    buf.extend_from_slice(&(index as i32).to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // flags
    buf.extend_from_slice(&0u32.to_ne_bytes()); // change
}

/// `RTM_GETLINK` dump request.
pub fn getlink_dump(seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDR + IFINFOMSG);
    header(&mut b, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq);
    ifinfomsg(&mut b, AF_UNSPEC, 0);
    finish(b)
}

/// `RTM_GETADDR` dump request for IPv4.
pub fn getaddr_dump(seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDR + IFADDRMSG);
    header(&mut b, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq);
    b.extend_from_slice(&[AF_INET, 0, 0, 0]);
    b.extend_from_slice(&0u32.to_ne_bytes());
    finish(b)
}

/// Add (`RTM_SETLINK`) or delete (`RTM_DELLINK`) VLAN `vid` on bridge port `index`, with
/// `BRIDGE_VLAN_INFO_*` `flags`.
pub fn bridge_vlan(add: bool, index: u32, vid: u16, flags: u16, seq: u32) -> Vec<u8> {
    let ty = if add { RTM_SETLINK } else { RTM_DELLINK };
    let mut b = Vec::with_capacity(NLMSG_HDR + IFINFOMSG + 12);
    header(&mut b, ty, NLM_F_REQUEST | NLM_F_ACK, seq);
    ifinfomsg(&mut b, AF_BRIDGE, index);
    // IFLA_AF_SPEC { IFLA_BRIDGE_VLAN_INFO { flags u16, vid u16 } }
    b.extend_from_slice(&12u16.to_ne_bytes());
    b.extend_from_slice(&(IFLA_AF_SPEC | NLA_F_NESTED).to_ne_bytes());
    b.extend_from_slice(&8u16.to_ne_bytes());
    b.extend_from_slice(&IFLA_BRIDGE_VLAN_INFO.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&vid.to_ne_bytes());
    finish(b)
}

/// The links of a `RTM_GETLINK` dump reply; `Ok(None)` until the dump is done.
pub fn collect_links(msgs: &[Message<'_>], out: &mut Vec<Link>) -> Result<bool, String> {
    for m in msgs {
        match m {
            Message::Data(RTM_NEWLINK, p) => out.extend(parse_link(p)),
            Message::Data(..) => {}
            Message::Done => return Ok(true),
            Message::Error(0) => {}
            Message::Error(e) => return Err(errno_text(*e)),
        }
    }
    Ok(false)
}

/// The IPv4 addresses of a `RTM_GETADDR` dump reply; `Ok(true)` once the dump is done.
pub fn collect_addrs(msgs: &[Message<'_>], out: &mut Vec<Addr>) -> Result<bool, String> {
    for m in msgs {
        match m {
            Message::Data(RTM_NEWADDR, p) => out.extend(parse_addr(p)),
            Message::Data(..) => {}
            Message::Done => return Ok(true),
            Message::Error(0) => {}
            Message::Error(e) => return Err(errno_text(*e)),
        }
    }
    Ok(false)
}

/// Describe a positive errno.
pub fn errno_text(e: i32) -> String {
    format!("{} (errno {e})", std::io::Error::from_raw_os_error(e))
}

/// A `NETLINK_ROUTE` socket.
#[cfg(target_os = "linux")]
pub struct Socket {
    fd: std::os::fd::OwnedFd,
    seq: u32,
}

#[cfg(target_os = "linux")]
impl Socket {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Socket, String> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system call with constant arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(format!(
                "cannot open a netlink socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Socket { fd, seq: 1 })
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` is valid for its length; `addr` is a valid sockaddr_nl of the size given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 || n as usize != msg.len() {
            return Err(format!(
                "netlink send failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("netlink receive failed: {e}"));
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
        collect: fn(&[Message<'_>], &mut Vec<T>) -> Result<bool, String>,
    ) -> Result<Vec<T>, String> {
        self.send(&request)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                return Err("netlink socket closed during a dump".into());
            }
            if collect(&messages(&buf[..n])?, &mut out)? {
                return Ok(out);
            }
        }
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
    pub fn bridge_vlan(&mut self, add: bool, index: u32, vid: u16, flags: u16) -> Result<(), i32> {
        let seq = self.next_seq();
        self.send(&bridge_vlan(add, index, vid, flags, seq))
            .map_err(|_| libc::EIO)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.recv(&mut buf).map_err(|_| libc::EIO)?;
            for m in messages(&buf[..n]).map_err(|_| libc::EPROTO)? {
                if let Message::Error(e) = m {
                    return if e == 0 { Ok(()) } else { Err(e) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(payload);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    fn msg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        header(&mut b, ty, 2, 1);
        b.extend_from_slice(payload);
        finish(b)
    }

    #[test]
    fn constants_match_libc() {
        assert_eq!(RTM_GETLINK, libc::RTM_GETLINK);
        assert_eq!(RTM_SETLINK, libc::RTM_SETLINK);
        assert_eq!(RTM_DELLINK, libc::RTM_DELLINK);
        assert_eq!(RTM_GETADDR, libc::RTM_GETADDR);
        assert_eq!(NLM_F_DUMP, libc::NLM_F_DUMP as u16);
        assert_eq!(IFLA_AF_SPEC, libc::IFLA_AF_SPEC);
        assert_eq!(IFLA_LINK, libc::IFLA_LINK);
        assert_eq!(IFLA_MASTER, libc::IFLA_MASTER);
        assert_eq!(AF_BRIDGE as i32, libc::AF_BRIDGE);
        assert_eq!(IFF_LOOPBACK as i32, libc::IFF_LOOPBACK);
    }

    #[test]
    fn bridge_vlan_request_bytes() {
        let m = bridge_vlan(
            true,
            5,
            101,
            BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED,
            9,
        );
        let ne16 = |v: u16| v.to_ne_bytes();
        let ne32 = |v: u32| v.to_ne_bytes();
        let mut want = Vec::new();
        want.extend_from_slice(&ne32(44));
        want.extend_from_slice(&ne16(RTM_SETLINK));
        want.extend_from_slice(&ne16(NLM_F_REQUEST | NLM_F_ACK));
        want.extend_from_slice(&ne32(9));
        want.extend_from_slice(&ne32(0));
        want.extend_from_slice(&[AF_BRIDGE, 0, 0, 0]);
        want.extend_from_slice(&ne32(5));
        want.extend_from_slice(&ne32(0));
        want.extend_from_slice(&ne32(0));
        want.extend_from_slice(&ne16(12));
        want.extend_from_slice(&ne16(IFLA_AF_SPEC | 0x8000));
        want.extend_from_slice(&ne16(8));
        want.extend_from_slice(&ne16(IFLA_BRIDGE_VLAN_INFO));
        want.extend_from_slice(&ne16(6));
        want.extend_from_slice(&ne16(101));
        assert_eq!(m, want);
        let d = bridge_vlan(false, 5, 1, 0, 10);
        assert_eq!(u16::from_ne_bytes([d[4], d[5]]), RTM_DELLINK);
        assert_eq!(d.len(), 44);
    }

    #[test]
    fn dump_requests() {
        let l = getlink_dump(3);
        assert_eq!(l.len(), 32);
        assert_eq!(u16::from_ne_bytes([l[6], l[7]]), NLM_F_REQUEST | NLM_F_DUMP);
        let a = getaddr_dump(4);
        assert_eq!(a.len(), 24);
        assert_eq!(a[16], AF_INET);
    }

    fn link_payload(index: u32, flags: u32, name: &str, mac: &[u8], link: Option<u32>) -> Vec<u8> {
        let mut p = vec![0u8, 0];
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(&index.to_ne_bytes());
        p.extend_from_slice(&flags.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        p.extend(attr(IFLA_IFNAME, &n));
        p.extend(attr(IFLA_ADDRESS, mac));
        if let Some(l) = link {
            p.extend(attr(IFLA_LINK, &l.to_ne_bytes()));
        }
        p.extend(attr(99, &[1, 2, 3])); // unknown attribute, ignored
        p
    }

    #[test]
    fn parses_a_link_dump() {
        let mut buf = msg(
            RTM_NEWLINK,
            &link_payload(1, IFF_LOOPBACK, "lo", &[0; 6], None),
        );
        buf.extend(msg(
            RTM_NEWLINK,
            &link_payload(2, 0, "eth0", &[2, 0, 0, 0, 1, 10], Some(7)),
        ));
        buf.extend(msg(NLMSG_DONE, &0i32.to_ne_bytes()));
        let msgs = messages(&buf).unwrap();
        let mut links = Vec::new();
        assert_eq!(collect_links(&msgs, &mut links), Ok(true));
        assert_eq!(links.len(), 2);
        assert!(links[0].is_loopback());
        assert_eq!(links[0].mac(), None);
        assert_eq!(links[1].name, "eth0");
        assert_eq!(links[1].mac(), Some([2, 0, 0, 0, 1, 10]));
        assert_eq!(links[1].link, Some(7));
        assert_eq!(links[1].master, None);
        // A dump split across reads is not done after the first part.
        let first = msg(RTM_NEWLINK, &link_payload(3, 0, "x", &[2; 6], None));
        let mut more = Vec::new();
        assert_eq!(
            collect_links(&messages(&first).unwrap(), &mut more),
            Ok(false)
        );
    }

    #[test]
    fn parses_an_addr_dump() {
        let mut p = vec![AF_INET, 24, 0, 0];
        p.extend_from_slice(&2u32.to_ne_bytes());
        p.extend(attr(IFA_ADDRESS, &[10, 0, 2, 21]));
        p.extend(attr(IFA_LOCAL, &[10, 0, 2, 21]));
        let mut v6 = vec![10u8, 64, 0, 0];
        v6.extend_from_slice(&2u32.to_ne_bytes());
        v6.extend(attr(
            IFA_ADDRESS,
            &[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ));
        let mut buf = msg(RTM_NEWADDR, &p);
        buf.extend(msg(RTM_NEWADDR, &v6));
        buf.extend(msg(NLMSG_DONE, &0i32.to_ne_bytes()));
        let mut addrs = Vec::new();
        assert_eq!(
            collect_addrs(&messages(&buf).unwrap(), &mut addrs),
            Ok(true)
        );
        assert_eq!(
            addrs,
            [Addr {
                index: 2,
                prefix: 24,
                address: Ipv4Addr::new(10, 0, 2, 21)
            }]
        );
    }

    #[test]
    fn errors_and_garbage() {
        let e = msg(NLMSG_ERROR, &(-libc::EOPNOTSUPP).to_ne_bytes());
        let msgs = messages(&e).unwrap();
        assert_eq!(msgs, [Message::Error(libc::EOPNOTSUPP)]);
        assert!(collect_links(&msgs, &mut Vec::new()).is_err());
        let ack = msg(NLMSG_ERROR, &0i32.to_ne_bytes());
        assert_eq!(messages(&ack).unwrap(), [Message::Error(0)]);
        // Length fields pointing past the buffer.
        let mut bad = msg(RTM_NEWLINK, &[0; 16]);
        bad[0] = 200;
        assert!(messages(&bad).is_err());
        let mut bad = msg(RTM_NEWLINK, &[0; 16]);
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(messages(&bad).is_err());
        // A short link payload or a bad attribute is skipped, not a panic.
        assert_eq!(parse_link(&[0; 4]), None);
        let mut p = link_payload(2, 0, "eth0", &[2; 6], None);
        p.extend_from_slice(&[0xff, 0xff, 1, 0]);
        assert_eq!(parse_link(&p).unwrap().name, "eth0");
        assert_eq!(parse_addr(&[AF_INET, 0, 0, 0, 1, 0, 0, 0]), None);
    }
}
