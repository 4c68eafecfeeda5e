//! The management server against a real TCP/IP client: a second smoltcp interface on the same
//! simulated segment, frames carried both ways through the guard's classification, exactly as
//! the hypervisor carries them. What is checked is the text the client receives.

use shoji_mgmt::auth::{hex, sign};
use shoji_mgmt::prom::{Exposition, Kind};
use shoji_mgmt::server::Backend;
use shoji_mgmt::settings::Cidr;
use shoji_mgmt::{Guard, RxClass, Server, Settings};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use std::collections::VecDeque;
use std::fmt::{self, Write};

const KEY: [u8; 32] = [0x42; 32];
const BOOT: [u8; 16] = [0x5a; 16];
const SHOJI_IP: [u8; 4] = [10, 0, 2, 9];
const SHOJI_MAC: [u8; 6] = [0x02, 0x54, 0, 0x12, 0x34, 0xd6];

struct FakeBackend {
    metric_lines: usize,
    events: u64,
    /// Renders of /metrics so far; each render is 50 lines longer than the one before.
    renders: usize,
    /// Administrator rules: id and body.
    rules: Vec<(u32, String)>,
    next_rule: u32,
    /// What `tasks_ready` answers.
    tasks_ready: Result<(), &'static str>,
}

impl Backend for FakeBackend {
    fn metrics(&mut self, e: &mut Exposition<'_>) -> fmt::Result {
        let k = self.renders;
        self.renders += 1;
        e.single(
            "shoji_test_render",
            Kind::Gauge,
            "This render's number.",
            k as u64,
        )?;
        e.family("shoji_test_lines_total", Kind::Counter, "Test lines.")?;
        let grow = if self.metric_lines >= 3000 { 50 * k } else { 0 };
        for i in 0..self.metric_lines + grow {
            e.sample("shoji_test_lines_total", &[("line", &i)], i as u64)?;
        }
        Ok(())
    }
    fn events(&mut self, from: u64, max: usize, out: &mut dyn Write) -> Result<u64, fmt::Error> {
        let mut seq = from;
        while seq < self.events && seq < from + max as u64 {
            writeln!(out, "{{\"seq\":{seq}}}")?;
            seq += 1;
        }
        Ok(seq)
    }
    fn containers(&mut self, out: &mut dyn Write) -> fmt::Result {
        out.write_str("[]")
    }
    fn next_event(&mut self) -> u64 {
        self.events
    }
    fn block(&mut self, body: &[u8], why: &mut dyn Write) -> Result<u32, u16> {
        let body = String::from_utf8_lossy(body).into_owned();
        if body.starts_with("colour") {
            let _ = why.write_str("colour: unknown key");
            return Err(400);
        }
        if self.rules.len() == 2 {
            let _ = why.write_str("the table holds 2 rules already");
            return Err(409);
        }
        self.next_rule += 1;
        self.rules.push((self.next_rule, body));
        Ok(self.next_rule)
    }
    fn blocks(&mut self, out: &mut dyn Write) -> fmt::Result {
        for (id, body) in &self.rules {
            writeln!(out, "{id} {body}")?;
        }
        Ok(())
    }
    fn unblock(&mut self, id: u32) -> bool {
        let before = self.rules.len();
        self.rules.retain(|(i, _)| *i != id);
        self.rules.len() != before
    }
    fn tasks_ready(&mut self) -> Result<(), &'static str> {
        self.tasks_ready
    }
    fn tasks(&mut self, sockets: bool, budget: usize, out: &mut dyn Write) -> fmt::Result {
        writeln!(out, "{{\"sockets\":{sockets},\"budget\":{budget}}}")
    }
}

fn settings(allow: Option<&str>, metrics_auth: bool) -> Settings {
    let mut s = Settings {
        enabled: 1,
        metrics_auth: metrics_auth as u8,
        key_set: 1,
        key: KEY,
        boot_id: BOOT,
        ip: Cidr {
            addr: SHOJI_IP,
            prefix: 24,
        },
        mac: SHOJI_MAC,
        port: 8080,
        ..Settings::default()
    };
    if let Some(a) = allow {
        s.allow[0] = Cidr::parse(a).unwrap();
        s.allow_count = 1;
    }
    s
}

/// The client's side of the segment.
#[derive(Default)]
struct Wire {
    to_client: VecDeque<Vec<u8>>,
    from_client: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0; len];
        let r = f(&mut v);
        self.0.push_back(v);
        r
    }
}
impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.to_client.pop_front()?;
        Some((Rx(f), Tx(&mut self.from_client)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.from_client))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

struct Bed {
    server: Server,
    backend: FakeBackend,
    now: u64,
    guard: Guard,
    /// Frames the guard gave to the guest (none of them may be for Shoji).
    to_guest: usize,
    /// The client closes its side once the request is sent.
    half_close: bool,
    /// At this time (ms), the backend's event count becomes this.
    events_at: Option<(u64, u64)>,
}

impl Bed {
    fn new(s: Settings) -> Bed {
        Bed {
            guard: Guard {
                mac: s.mac,
                ip: s.ip.addr,
            },
            server: Server::new(s, 1),
            backend: FakeBackend {
                metric_lines: 3,
                events: 5,
                renders: 0,
                rules: Vec::new(),
                next_rule: 0,
                tasks_ready: Ok(()),
            },
            now: 1,
            to_guest: 0,
            half_close: false,
            events_at: None,
        }
    }

    /// Send `request` from a client at `client_ip` and return everything it received, or what
    /// it had when the server closed or the bound ran out.
    /// One millisecond on the segment: the client's stack runs, its frames go through the guard
    /// as the hypervisor sends them (Shoji's to the server, the rest counted as the guest's), the
    /// server runs, and its frames go back to the client.
    fn step(&mut self, iface: &mut Interface, wire: &mut Wire, set: &mut SocketSet<'_>) {
        self.now += 1;
        iface.poll(Instant::from_millis(self.now as i64), wire, set);
        while let Some(f) = wire.from_client.pop_front() {
            match self.guard.rx(&f) {
                RxClass::Shoji => {
                    self.server.receive(&f);
                }
                RxClass::Guest => self.to_guest += 1,
            }
        }
        if let Some((at, n)) = self.events_at {
            if self.now >= at {
                self.backend.events = n;
            }
        }
        self.server.poll(self.now, &mut self.backend);
        self.server.pop_tx(&mut |f| {
            wire.to_client.push_back(f.to_vec());
            true
        });
    }

    fn exchange(
        &mut self,
        client_ip: [u8; 4],
        request: &[u8],
        pause_after: Option<(usize, u64)>,
    ) -> String {
        let mut wire = Wire::default();
        let mac = EthernetAddress([0x52, 0x54, 0, 0, 0, client_ip[3]]);
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(mac)),
            &mut wire,
            Instant::from_millis(self.now as i64),
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(
                IpAddress::Ipv4(Ipv4Address::from(client_ip)),
                24,
            ))
            .unwrap();
        });
        let mut storage = [SocketStorage::EMPTY];
        let mut set = SocketSet::new(&mut storage[..]);
        let sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4096]),
            tcp::SocketBuffer::new(vec![0; 16384]),
        );
        let h = set.add(sock);
        let port = 40000 + (self.now % 20000) as u16;
        set.get_mut::<tcp::Socket>(h)
            .connect(
                iface.context(),
                (IpAddress::Ipv4(Ipv4Address::from(SHOJI_IP)), 8080),
                port,
            )
            .unwrap();
        let mut sent = 0;
        let mut got = Vec::new();
        for _ in 0..200_000 {
            self.step(&mut iface, &mut wire, &mut set);
            let s = set.get_mut::<tcp::Socket>(h);
            let limit = match pause_after {
                Some((n, until)) if self.now < until => n,
                _ => request.len(),
            };
            if s.can_send() && sent < limit {
                sent += s.send_slice(&request[sent..limit]).unwrap();
            }
            if self.half_close
                && sent == request.len()
                && s.state() == tcp::State::Established
                && s.send_queue() == 0
            {
                s.close();
            }
            while s.can_recv() {
                let mut b = [0u8; 4096];
                let n = s.recv_slice(&mut b).unwrap();
                got.extend_from_slice(&b[..n]);
            }
            if !s.may_recv()
                && s.state() != tcp::State::SynSent
                && s.state() != tcp::State::SynReceived
            {
                s.close();
                // Let the server see our FIN and recycle its socket.
                for _ in 0..50 {
                    self.step(&mut iface, &mut wire, &mut set);
                }
                break;
            }
        }
        String::from_utf8(got).expect("the answer is text")
    }

    /// Like [`Self::exchange`], but the client closes its sending side right after the request.
    fn exchange_half_closed(&mut self, client_ip: [u8; 4], request: &[u8]) -> String {
        self.half_close = true;
        let a = self.exchange(client_ip, request, None);
        self.half_close = false;
        a
    }

    fn signed(&mut self, method: &str, path: &str, body: &str, nonce: u64) -> Vec<u8> {
        let sig = sign(&KEY, method, path, &BOOT, nonce, body.as_bytes());
        let mut h = [0u8; 64];
        format!(
            "{method} {path} HTTP/1.1\r\nHost: shoji\r\nAuthorization: Shoji-HMAC-SHA256 nonce={nonce}, signature={}\r\nContent-Length: {}\r\n\r\n{body}",
            hex(&sig, &mut h),
            body.len()
        )
        .into_bytes()
    }
}

const PEER: [u8; 4] = [10, 0, 2, 2];

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

#[test]
fn nonce_metrics_and_signed_requests() {
    let mut bed = Bed::new(settings(None, false));
    let a = bed.exchange(PEER, b"GET /nonce HTTP/1.1\r\nHost: x\r\n\r\n", None);
    assert_eq!(status(&a), 200, "{a}");
    assert!(
        a.contains("X-Shoji-Boot: 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\r\n"),
        "{a}"
    );
    assert_eq!(body(&a), "boot=5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\nnext=1\n");

    let a = bed.exchange(PEER, b"GET /metrics HTTP/1.1\r\n\r\n", None);
    assert_eq!(status(&a), 200, "{a}");
    assert!(a.contains("Content-Type: text/plain; version=0.0.4"), "{a}");
    assert!(
        body(&a).contains("shoji_test_lines_total{line=\"2\"} 2\n"),
        "{a}"
    );
    assert!(
        body(&a).contains("shoji_mgmt_answers_total{class=\"2xx\"} 1\n"),
        "{a}"
    );

    // Unsigned: refused. Signed: served. The same bytes again: a replay, refused.
    let a = bed.exchange(PEER, b"GET /containers HTTP/1.1\r\n\r\n", None);
    assert_eq!(status(&a), 401, "{a}");
    assert!(body(&a).starts_with("no Authorization header"), "{a}");
    let req = bed.signed("GET", "/containers", "", 1000);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 200, "{a}");
    assert_eq!(body(&a), "[]");
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 409, "{a}");
    // A forged signature.
    let mut forged = bed.signed("GET", "/containers", "", 2000);
    let at = forged.windows(10).position(|w| w == b"signature=").unwrap() + 10;
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    let a = bed.exchange(PEER, &forged, None);
    assert_eq!(status(&a), 401, "{a}");
    // The nonce the forgery carried was not spent: 1001 still works.
    let req = bed.signed("GET", "/events?from=3", "", 1001);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 200, "{a}");
    assert!(a.contains("X-Shoji-Next-Event: 5\r\n"), "{a}");
    assert_eq!(body(&a), "{\"seq\":3}\n{\"seq\":4}\n");
    let a = bed.exchange(PEER, b"GET /nonce HTTP/1.1\r\n\r\n", None);
    assert!(body(&a).ends_with("next=1002\n"), "{a}");
    assert_eq!(
        bed.to_guest, 0,
        "every frame to Shoji's address was Shoji's"
    );
    let c = bed.server.counters();
    assert!(c.rx_frames > 20 && c.tx_frames > 20, "{c:?}");
    assert_eq!((c.rx_dropped, c.tx_dropped), (0, 0));
    assert_eq!(c.answers, [5, 3, 0]);
    assert_eq!(c.auth_refused, [1, 0, 0, 1, 1]);
}

#[test]
fn administrator_rules_are_added_listed_and_removed_only_when_signed() {
    let mut bed = Bed::new(settings(None, false));
    let unsigned = b"POST /block HTTP/1.1\r\nContent-Length: 8\r\n\r\nuid=1000";
    let a = bed.exchange(PEER, unsigned, None);
    assert_eq!(status(&a), 401, "{a}");
    // The signature covers the body: the same signature on another body is refused.
    let req = bed.signed("POST", "/block", "uid=1000", 10);
    let mut other = req.clone();
    let n = other.len();
    other[n - 1] = b'1';
    let a = bed.exchange(PEER, &other, None);
    assert_eq!(status(&a), 401, "{a}");
    assert!(bed.backend.rules.is_empty());
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 201, "{a}");
    assert!(a.starts_with("HTTP/1.1 201 Created\r\n"), "{a}");
    assert!(a.contains("Location: /block/1\r\n"), "{a}");
    assert_eq!(body(&a), "{\"id\":1}\n");
    // A refusal carries the backend's reason.
    let req = bed.signed("POST", "/block", "colour=red", 11);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 400, "{a}");
    assert_eq!(body(&a), "colour: unknown key\n");
    let req = bed.signed("POST", "/block", "container=2", 12);
    assert_eq!(status(&bed.exchange(PEER, &req, None)), 201);
    let req = bed.signed("POST", "/block", "container=3", 13);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 409, "{a}");
    assert_eq!(body(&a), "the table holds 2 rules already\n");
    let req = bed.signed("GET", "/blocks", "", 14);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 200, "{a}");
    assert!(a.contains("Content-Type: application/json\r\n"), "{a}");
    assert_eq!(body(&a), "1 uid=1000\n2 container=2\n");
    // Removal: signed only, then gone.
    let a = bed.exchange(PEER, b"DELETE /block/1 HTTP/1.1\r\n\r\n", None);
    assert_eq!(status(&a), 401, "{a}");
    let req = bed.signed("DELETE", "/block/1", "", 15);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 200, "{a}");
    assert_eq!(body(&a), "{\"removed\":1}\n");
    let req = bed.signed("DELETE", "/block/1", "", 16);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 404, "{a}");
    assert_eq!(bed.backend.rules.len(), 1);
    // Wrong methods and malformed ids are refused before any signature is looked at.
    for (req, want) in [
        (&b"GET /block HTTP/1.1\r\n\r\n"[..], 405),
        (b"POST /blocks HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /block/2 HTTP/1.1\r\n\r\n", 405),
        (b"DELETE /block/x HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /block/ HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /block/+1 HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /block/99999999999 HTTP/1.1\r\n\r\n", 404),
    ] {
        let a = bed.exchange(PEER, req, None);
        assert_eq!(status(&a), want, "{a}");
    }
    assert_eq!(bed.backend.rules.len(), 1);
}

#[test]
fn a_client_that_closes_its_side_after_the_request_still_gets_the_answer() {
    let mut bed = Bed::new(settings(None, false));
    let a = bed.exchange_half_closed(PEER, b"GET /nonce HTTP/1.1\r\n\r\n");
    assert_eq!(status(&a), 200, "{a}");
    // A connection that sends nothing and closes is closed, and its socket listens again.
    let a = bed.exchange_half_closed(PEER, b"");
    assert_eq!(a, "");
    assert_eq!(bed.server.listening(), shoji_mgmt::server::SOCKETS);
}

#[test]
fn refusals_keep_the_server_serving() {
    let mut bed = Bed::new(settings(Some("10.0.2.2/32"), true));
    let cases: &[(&[u8], u16)] = &[
        (b"GET /metrics HTTP/1.1\r\n\r\n", 401),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
        (b"GET /nothing HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /events?from=x HTTP/1.1\r\n\r\n", 400),
        (
            b"GET /nonce HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
        ),
        (
            b"POST /nonce HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
            413,
        ),
    ];
    for (req, want) in cases {
        let a = bed.exchange(PEER, req, None);
        assert!(
            !a.is_empty(),
            "no answer to {}",
            String::from_utf8_lossy(req)
        );
        assert_eq!(status(&a), *want, "{a}");
    }
    // A source outside mgmt_allow.
    let a = bed.exchange([10, 0, 2, 3], b"GET /nonce HTTP/1.1\r\n\r\n", None);
    assert_eq!(status(&a), 403, "{a}");
    // A request that never completes is cut off.
    let a = bed.exchange(
        PEER,
        b"GET /nonce HTTP/1.1\r\nHost: slow\r\n\r\n",
        Some((10, u64::MAX)),
    );
    assert_eq!(status(&a), 408, "{a}");
    // Still serving, and the counters saw it all.
    let req = bed.signed("GET", "/metrics", "", 7);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 200, "{a}");
    let b = body(&a);
    assert!(b.contains("shoji_mgmt_not_allowed_total 1\n"), "{b}");
    assert!(
        b.contains("shoji_mgmt_auth_refused_total{reason=\"missing\"} 1\n"),
        "{b}"
    );
    assert!(b.contains("shoji_mgmt_request_timeouts_total 1\n"), "{b}");
    assert!(
        b.contains("shoji_mgmt_answers_total{class=\"4xx\"} 8\n"),
        "{b}"
    );
}

#[test]
fn a_large_answer_arrives_whole_and_sockets_recycle() {
    let mut bed = Bed::new(settings(None, false));
    bed.backend.metric_lines = 4000;
    for round in 0..6 {
        let a = bed.exchange(PEER, b"GET /metrics HTTP/1.1\r\n\r\n", None);
        assert_eq!(status(&a), 200, "round {round}");
        let b = body(&a);
        let len: usize = a
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(b.len(), len);
        assert!(b.len() > 100_000);
        assert!(b.contains("shoji_test_lines_total{line=\"3999\"} 3999\n"));
        assert_eq!(
            bed.server.listening(),
            shoji_mgmt::server::SOCKETS,
            "round {round}"
        );
    }
    bed.backend.metric_lines = 20_000;
    let a = bed.exchange(PEER, b"GET /metrics HTTP/1.1\r\n\r\n", None);
    assert_eq!(status(&a), 500, "too large for the answer buffer: {a}");
}

#[test]
fn shoji_answers_ping_from_the_peer() {
    use smoltcp::socket::icmp;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr};
    let mut bed = Bed::new(settings(None, false));
    let mut wire = Wire::default();
    let mac = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ethernet(mac)),
        &mut wire,
        Instant::from_millis(1),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(PEER)), 24))
            .unwrap();
    });
    let mut storage = [SocketStorage::EMPTY];
    let mut set = SocketSet::new(&mut storage[..]);
    let mut s = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    );
    s.bind(icmp::Endpoint::Ident(7)).unwrap();
    let h = set.add(s);
    let mut sent = false;
    let mut answered = false;
    for _ in 0..2000 {
        bed.step(&mut iface, &mut wire, &mut set);
        let s = set.get_mut::<icmp::Socket>(h);
        if !sent && s.can_send() {
            let repr = Icmpv4Repr::EchoRequest {
                ident: 7,
                seq_no: 1,
                data: b"shoji",
            };
            let buf = s
                .send(
                    repr.buffer_len(),
                    IpAddress::Ipv4(Ipv4Address::from(SHOJI_IP)),
                )
                .unwrap();
            repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &Default::default());
            sent = true;
        }
        if s.can_recv() {
            let (data, _) = s.recv().unwrap();
            let p = Icmpv4Packet::new_checked(data).unwrap();
            answered = matches!(
                Icmpv4Repr::parse(&p, &Default::default()),
                Ok(Icmpv4Repr::EchoReply {
                    ident: 7,
                    seq_no: 1,
                    ..
                })
            );
            break;
        }
    }
    assert!(answered, "no echo reply from Shoji's address");
}

#[test]
fn events_long_poll_waits_for_an_event_or_the_time() {
    let mut bed = Bed::new(settings(None, false));
    // No event from 5 on: the answer comes when the wait is over, empty.
    let start = bed.now;
    let req = bed.signed("GET", "/events?from=5&wait=2", "", 1);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 200, "{a}");
    assert_eq!(body(&a), "");
    assert!(a.contains("X-Shoji-Next-Event: 5\r\n"), "{a}");
    let waited = bed.now - start;
    assert!((2000..3000).contains(&waited), "answered after {waited} ms");
    // An event arrives during the wait: the answer comes with it, long before the time is up.
    let start = bed.now;
    bed.events_at = Some((start + 700, 6));
    let req = bed.signed("GET", "/events?from=5&wait=30", "", 2);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(body(&a), "{\"seq\":5}\n", "{a}");
    let waited = bed.now - start;
    assert!((700..2000).contains(&waited), "answered after {waited} ms");
    // Events already there: no waiting at all.
    let start = bed.now;
    let req = bed.signed("GET", "/events?from=0&wait=30", "", 3);
    let a = bed.exchange(PEER, &req, None);
    assert!(body(&a).starts_with("{\"seq\":0}\n"), "{a}");
    assert!(bed.now - start < 700);
    // Bounds.
    for bad in [
        "/events?wait=61",
        "/events?wait=x",
        "/events?from=-1",
        "/events?from=+1",
        "/events?wait=+1",
        "/events?from=",
    ] {
        let req = bed.signed("GET", bad, "", 10);
        let a = bed.exchange(PEER, &req, None);
        assert_eq!(status(&a), 400, "{bad}: {a}");
    }
}

#[test]
fn uptime_and_a_long_head_within_the_limits() {
    let mut bed = Bed::new(settings(None, false));
    // Shoji's clock moves on by 5.4 s with nothing to do.
    bed.now = 5_401;
    bed.server.poll(bed.now, &mut bed.backend);
    let mut req = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    req.resize(3000, b'p');
    req.extend_from_slice(b"\r\n\r\n");
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 200, "{a}");
    assert!(body(&a).contains("shoji_mgmt_uptime_seconds 5\n"), "{a}");
}

#[test]
fn two_clients_at_once_each_get_their_own_whole_answer() {
    let mut bed = Bed::new(settings(None, false));
    bed.backend.metric_lines = 3000;
    let req = b"GET /metrics HTTP/1.1\r\n\r\n".to_vec();
    let got: Vec<String> = concurrent(&mut bed, &[req.clone(), req])
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    let mut renders = Vec::new();
    for a in &got {
        assert_eq!(status(a), 200);
        let b = body(a);
        let len: usize = a
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(b.len(), len, "an answer arrived whole");
        // The answer is one render, start to end: its number says how many lines it has.
        let k: usize = b
            .lines()
            .find_map(|l| l.strip_prefix("shoji_test_render "))
            .unwrap()
            .parse()
            .unwrap();
        let last = 3000 + 50 * k - 1;
        assert_eq!(
            b.matches("shoji_test_lines_total{").count(),
            last + 1,
            "render {k}"
        );
        assert!(b.contains(&format!(
            "shoji_test_lines_total{{line=\"{last}\"}} {last}\n"
        )));
        assert!(b.ends_with("shoji_mgmt_request_timeouts_total 0\n"));
        renders.push(k);
    }
    renders.sort();
    assert_eq!(renders, [0, 1], "two renders, one per client");
}

/// Send `requests` from one client stack on as many connections at once; each answer with the
/// simulated time (ms since the start) at which its connection closed.
fn concurrent(bed: &mut Bed, requests: &[Vec<u8>]) -> Vec<(String, u64)> {
    let mut wire = Wire::default();
    let mac = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ethernet(mac)),
        &mut wire,
        Instant::from_millis(bed.now as i64),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(PEER)), 24))
            .unwrap();
    });
    let mut storage: Vec<SocketStorage> =
        (0..requests.len()).map(|_| SocketStorage::EMPTY).collect();
    let mut set = SocketSet::new(&mut storage[..]);
    let mut handles = Vec::new();
    for k in 0..requests.len() {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4096]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        );
        let port = 42000 + k as u16 + (bed.now % 1000) as u16 * 8;
        s.connect(
            iface.context(),
            (IpAddress::Ipv4(Ipv4Address::from(SHOJI_IP)), 8080),
            port,
        )
        .unwrap();
        handles.push(set.add(s));
    }
    let start = bed.now;
    let mut got = vec![Vec::new(); requests.len()];
    let mut sent = vec![false; requests.len()];
    let mut closed: Vec<Option<u64>> = vec![None; requests.len()];
    for _ in 0..200_000 {
        bed.step(&mut iface, &mut wire, &mut set);
        for (k, h) in handles.iter().enumerate() {
            let s = set.get_mut::<tcp::Socket>(*h);
            if !sent[k] && s.can_send() {
                s.send_slice(&requests[k]).unwrap();
                sent[k] = true;
            }
            while s.can_recv() {
                let mut b = [0u8; 4096];
                let n = s.recv_slice(&mut b).unwrap();
                got[k].extend_from_slice(&b[..n]);
            }
            if sent[k] && !s.may_recv() && closed[k].is_none() {
                closed[k] = Some(bed.now - start);
                s.close();
            }
        }
        if closed.iter().all(Option::is_some) {
            break;
        }
    }
    got.into_iter()
        .zip(closed)
        .map(|(g, t)| {
            (
                String::from_utf8_lossy(&g).into_owned(),
                t.unwrap_or(u64::MAX),
            )
        })
        .collect()
}

#[test]
fn at_most_two_long_polls_are_held_and_sixty_seconds_is_the_longest_wait() {
    let mut bed = Bed::new(settings(None, false));
    let reqs: Vec<Vec<u8>> = (1..=3)
        .map(|n| bed.signed("GET", "/events?from=5&wait=10", "", n))
        .collect();
    let answers = concurrent(&mut bed, &reqs);
    let mut times: Vec<u64> = answers
        .iter()
        .map(|(a, t)| {
            assert_eq!(status(a), 200, "{a}");
            assert_eq!(body(a), "");
            *t
        })
        .collect();
    times.sort();
    assert!(
        times[0] < 1_000,
        "the third poll is answered at once: {times:?}"
    );
    assert!(
        times[1] >= 10_000 && times[2] >= 10_000,
        "two are held for their wait: {times:?}"
    );
    // The longest wait allowed is 60 s.
    let req = bed.signed("GET", "/events?from=5&wait=60", "", 10);
    let start = bed.now;
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 200, "{a}");
    assert!(bed.now - start >= 60_000);
}

#[test]
fn tasks_are_answered_signed_only_with_or_without_sockets_and_refused_while_unavailable() {
    let mut bed = Bed::new(settings(None, false));
    let a = bed.exchange(PEER, b"GET /tasks HTTP/1.1\r\n\r\n", None);
    assert_eq!(status(&a), 401, "{a}");
    let budget = shoji_mgmt::server::TASKS_BUDGET;
    for (n, (path, sockets)) in [
        ("/tasks", false),
        ("/tasks?sockets=0", false),
        ("/tasks?sockets=1", true),
    ]
    .into_iter()
    .enumerate()
    {
        let req = bed.signed("GET", path, "", 20 + n as u64);
        let a = bed.exchange(PEER, &req, None);
        assert_eq!(status(&a), 200, "{a}");
        assert!(a.contains("Content-Type: application/x-ndjson\r\n"), "{a}");
        assert_eq!(
            body(&a),
            format!("{{\"sockets\":{sockets},\"budget\":{budget}}}\n")
        );
    }
    let req = bed.signed("GET", "/tasks?sockets=yes", "", 30);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 400, "{a}");
    assert_eq!(body(&a), "`sockets` must be 0 or 1\n");
    let a = bed.exchange(
        PEER,
        b"POST /tasks HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        None,
    );
    assert_eq!(status(&a), 405, "{a}");
    bed.backend.tasks_ready = Err("no kernel profile has been pushed");
    let req = bed.signed("GET", "/tasks", "", 31);
    let a = bed.exchange(PEER, &req, None);
    assert_eq!(status(&a), 503, "{a}");
    assert_eq!(body(&a), "no kernel profile has been pushed\n");
    // And the server keeps serving.
    bed.backend.tasks_ready = Ok(());
    let req = bed.signed("GET", "/tasks", "", 32);
    assert_eq!(status(&bed.exchange(PEER, &req, None)), 200);
}
