//! The attack and traffic tools: raw frames through an `AF_PACKET` socket (needs
//! `CAP_NET_RAW` in the network namespace's user namespace) and plain UDP send/receive.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::frames::{
    arp_reply as build_arp_reply, parse_mac, show_mac, udp_frame, udp_in_two_fragments, Mac,
    UdpAddrs,
};

/// An `AF_PACKET` socket bound for sending on one interface.
struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

fn bad_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl RawSocket {
    /// Open a send-only `AF_PACKET` raw socket for `iface`.
    fn open(iface: &str) -> io::Result<RawSocket> {
        let name = std::ffi::CString::new(iface)
            .map_err(|_| bad_input(format!("bad interface name {iface:?}")))?;
        // SAFETY: `name` is a valid NUL-terminated string that lives across the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {iface}"),
            ));
        }
        // SAFETY: socket() takes no pointers. Protocol 0: this socket receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(RawSocket {
            fd,
            ifindex: ifindex as i32,
        })
    }

    /// Send one complete Ethernet frame (its first 6 bytes are the destination).
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `sll` are valid for the lengths given for the whole call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn mac(s: &str) -> io::Result<Mac> {
    parse_mac(s).map_err(bad_input)
}

/// `probe arp-reply`.
pub fn arp_reply(
    iface: &str,
    sender_ip: Ipv4Addr,
    sender_mac: &str,
    target_ip: Ipv4Addr,
    target_mac: &str,
    count: u64,
) -> io::Result<()> {
    let (smac, tmac) = (mac(sender_mac)?, mac(target_mac)?);
    let sock = RawSocket::open(iface)?;
    let frame = build_arp_reply(&smac, sender_ip, &tmac, target_ip);
    let (mut sent, mut errors, mut last_err) = (0u64, 0u64, String::new());
    for i in 0..count {
        match sock.send(&frame) {
            Ok(()) => sent += 1,
            Err(e) => {
                errors += 1;
                last_err = e.to_string();
            }
        }
        if i + 1 < count {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!(
        "probe arp-reply: iface={iface} claims {sender_ip} is-at {} to {target_ip}/{} sent={sent} errors={errors}{}",
        show_mac(&smac),
        show_mac(&tmac),
        if last_err.is_empty() { String::new() } else { format!(" last_error={last_err}") }
    );
    Ok(())
}

/// Arguments of `probe raw-udp`.
pub struct RawUdpArgs<'a> {
    /// Source MAC text.
    pub src_mac: &'a str,
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination MAC text.
    pub dst_mac: &'a str,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub port: u16,
    /// Frames to send (0 = unlimited with `seconds`).
    pub count: u64,
    /// Flood duration.
    pub seconds: Option<u64>,
    /// Payload text.
    pub payload: &'a str,
}

impl RawUdpArgs<'_> {
    /// The frame's addresses, the MACs parsed.
    fn addrs(&self) -> io::Result<UdpAddrs> {
        Ok(UdpAddrs {
            src_mac: mac(self.src_mac)?,
            src_ip: self.src_ip,
            dst_mac: mac(self.dst_mac)?,
            dst_ip: self.dst_ip,
            src_port: self.src_port,
            dst_port: self.port,
        })
    }
}

/// `probe raw-udp`.
pub fn raw_udp(iface: &str, a: RawUdpArgs<'_>) -> io::Result<()> {
    let addrs = a.addrs()?;
    if a.count == 0 && a.seconds.is_none() {
        return Err(bad_input("COUNT 0 needs SECONDS".into()));
    }
    let sock = RawSocket::open(iface)?;
    let start = Instant::now();
    let limit = a.seconds.map(Duration::from_secs);
    let (mut sent, mut errors, mut last_err) = (0u64, 0u64, String::new());
    let mut seq = 0u64;
    loop {
        if a.count != 0 && seq >= a.count {
            break;
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            break;
        }
        let text = format!("{} seq={seq}", a.payload);
        let frame = udp_frame(&addrs, seq as u16, text.as_bytes());
        match sock.send(&frame) {
            Ok(()) => sent += 1,
            Err(e) => {
                errors += 1;
                last_err = e.to_string();
                // A full queue under flood: give the driver a moment.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        seq += 1;
        if limit.is_none() && seq < a.count {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "probe raw-udp: iface={iface} from {}/{} to {}/{}:{} payload={:?} sent={sent} errors={errors} seconds={secs:.3}{}",
        show_mac(&addrs.src_mac),
        a.src_ip,
        show_mac(&addrs.dst_mac),
        a.dst_ip,
        a.port,
        a.payload,
        if last_err.is_empty() { String::new() } else { format!(" last_error={last_err}") }
    );
    Ok(())
}

/// `probe udp-send`.
pub fn udp_send(addr: Ipv4Addr, port: u16, count: u64, payload: &str) -> io::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    let (mut sent, mut errors, mut last_err) = (0u64, 0u64, String::new());
    for seq in 0..count {
        match sock.send_to(format!("{payload} seq={seq}").as_bytes(), (addr, port)) {
            Ok(_) => sent += 1,
            Err(e) => {
                errors += 1;
                last_err = e.to_string();
            }
        }
        if seq + 1 < count {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "probe udp-send: to {addr}:{port} payload={payload:?} sent={sent} errors={errors}{}",
        if last_err.is_empty() {
            String::new()
        } else {
            format!(" last_error={last_err}")
        }
    );
    Ok(())
}

/// `probe udp-listen`.
pub fn udp_listen(port: u16, seconds: u64) -> io::Result<()> {
    let sock = UdpSocket::bind(("0.0.0.0", port))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let start = Instant::now();
    let limit = Duration::from_secs(seconds);
    let mut buf = [0u8; 2048];
    let mut received = 0u64;
    let mut sources: Vec<String> = Vec::new();
    let mut first = String::new();
    while start.elapsed() < limit {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                received += 1;
                let ip = from.ip().to_string();
                if !sources.contains(&ip) {
                    sources.push(ip);
                }
                if first.is_empty() {
                    first = String::from_utf8_lossy(&buf[..n]).into_owned();
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    println!(
        "probe udp-listen: port={port} received={received} sources={} first={first:?}",
        if sources.is_empty() {
            "none".to_owned()
        } else {
            sources.join(",")
        }
    );
    Ok(())
}

/// `probe raw-frag`: COUNT UDP datagrams (identifications FIRST_ID, FIRST_ID+1, ...) in two
/// fragments each, the first to FIRST_MAC and the last to LATER_MAC: a later fragment sent
/// somewhere its first fragment did not go.
pub fn raw_frag(iface: &str, a: RawUdpArgs<'_>, later_mac: &str, first_id: u16) -> io::Result<()> {
    let addrs = a.addrs()?;
    let later = UdpAddrs {
        dst_mac: mac(later_mac)?,
        ..addrs
    };
    let sock = RawSocket::open(iface)?;
    let mut sent = 0u64;
    for i in 0..a.count {
        let id = first_id.wrapping_add(i as u16);
        let (first, _) = udp_in_two_fragments(&addrs, id, b"first-fragment..");
        let (_, last) = udp_in_two_fragments(&later, id, b"first-fragment..");
        sock.send(&first)?;
        std::thread::sleep(Duration::from_millis(20));
        sock.send(&last)?;
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "probe raw-frag: iface={iface} from {}/{} first to {} later to {} dst {}:{} ids {first_id:#x}.. pairs={sent}",
        show_mac(&addrs.src_mac),
        a.src_ip,
        show_mac(&addrs.dst_mac),
        show_mac(&later.dst_mac),
        a.dst_ip,
        a.port
    );
    Ok(())
}
