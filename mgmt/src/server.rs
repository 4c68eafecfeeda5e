//! The management server: a smoltcp interface on Shoji's own MAC and IPv4 address, a few TCP
//! sockets listening on the HTTP port, and the routes.
//!
//! The hypervisor hands received frames to [`Server::receive`] (from its receive path, after
//! [`crate::guard::Guard::rx`] said they are Shoji's), calls [`Server::poll`] from its periodic
//! poll with a millisecond clock and its [`Backend`], and sends what [`Server::pop_tx`] gives on
//! the wire through its own transmit buffers. Every queue is bounded; a full queue drops and
//! counts. Connections are closed after one answer; one that sends no complete request within
//! [`REQUEST_TIMEOUT_MS`] is aborted.

use crate::auth::{AuthError, Verifier};
use crate::http::{self, Parsed, Request, SliceWriter};
use crate::prom::{Exposition, Kind, CONTENT_TYPE};
use crate::settings::Settings;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

/// TCP connections served at once.
pub const SOCKETS: usize = 4;
/// Frames queued in each direction between the NIC and the interface.
pub const QUEUE: usize = 16;
/// Largest frame the interface takes or gives (Ethernet, no FCS, no tag).
pub const FRAME: usize = 1514;
/// A connection must deliver its whole request within this time.
pub const REQUEST_TIMEOUT_MS: u64 = 20_000;
/// Bytes of each socket's receive buffer.
pub const SOCKET_RX: usize = 2048;
/// Bytes of each socket's transmit buffer.
pub const SOCKET_TX: usize = 8192;
/// Bytes of the shared answer buffer (the largest answer, e.g. `/metrics`).
pub const ANSWER: usize = 256 * 1024;
/// Bytes of each connection's own buffer (its request, and its short answers).
pub const CONN_BUF: usize = http::MAX_HEAD + http::MAX_BODY + 512;
// A request that fits no buffer is refused by the parser's limits before the buffer is full.
const _: () = assert!(CONN_BUF > http::MAX_HEAD + http::MAX_BODY);

/// Bytes of each connection's buffer for short answers.
pub const SMALL_ANSWER: usize = 1024;
/// Most events one `/events` answer carries.
pub const EVENTS_PER_ANSWER: usize = 256;
/// The longest `/events?wait=` in seconds.
pub const MAX_WAIT_S: u64 = 60;
/// Connections that may wait in a long poll at once (the others are answered at once).
pub const MAX_WAITING: usize = 2;

/// What the hypervisor provides: the guest's and Shoji's state, rendered on request.
pub trait Backend {
    /// Shoji's metric families (the server appends its own).
    fn metrics(&mut self, out: &mut Exposition<'_>) -> fmt::Result;
    /// The events from sequence `from` on (at most `max`), one JSON object per line; returns
    /// the sequence number to ask for next.
    fn events(&mut self, from: u64, max: usize, out: &mut dyn Write) -> Result<u64, fmt::Error>;
    /// The container registry as one JSON document.
    fn containers(&mut self, out: &mut dyn Write) -> fmt::Result;
    /// The sequence number the next event will get (events so far plus one).
    fn next_event(&mut self) -> u64;
    /// Add an administrator rule from a request body (`POST /block`): its id, or the status to
    /// answer (400 for a bad rule, 409 for a full table) with the reason written to `why`.
    fn block(&mut self, body: &[u8], why: &mut dyn Write) -> Result<u32, u16>;
    /// The administrator's rules as one JSON document (`GET /blocks`).
    fn blocks(&mut self, out: &mut dyn Write) -> fmt::Result;
    /// Remove administrator rule `id` (`DELETE /block/ID`); whether it existed.
    fn unblock(&mut self, id: u32) -> bool;
    /// Why `/tasks` cannot be answered now (no kernel profile, or one without the task walk),
    /// or `Ok` when it can.
    fn tasks_ready(&mut self) -> Result<(), &'static str>;
    /// The guest's processes (with their sockets when `sockets`), one JSON object per line and
    /// a last `{"end":...}` line, in at most `budget` bytes.
    fn tasks(&mut self, sockets: bool, budget: usize, out: &mut dyn Write) -> fmt::Result;
}

/// A bounded queue of frames.
struct FrameRing {
    /// `QUEUE` slots of `FRAME` bytes.
    frames: Box<[u8]>,
    lens: [u16; QUEUE],
    head: usize,
    len: usize,
}

impl FrameRing {
    fn new() -> Self {
        FrameRing {
            frames: vec![0; QUEUE * FRAME].into_boxed_slice(),
            lens: [0; QUEUE],
            head: 0,
            len: 0,
        }
    }
    fn push(&mut self, f: &[u8]) -> bool {
        if self.len == QUEUE || f.len() > FRAME {
            return false;
        }
        let i = (self.head + self.len) % QUEUE;
        self.frames[i * FRAME..i * FRAME + f.len()].copy_from_slice(f);
        self.lens[i] = f.len() as u16;
        self.len += 1;
        true
    }
    fn front(&self) -> Option<&[u8]> {
        let at = self.head * FRAME;
        (self.len > 0).then(|| &self.frames[at..at + usize::from(self.lens[self.head])])
    }
    fn pop(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % QUEUE;
            self.len -= 1;
        }
    }
}

/// The smoltcp device: frames from the NIC in, frames for the NIC out.
struct Link {
    rx: FrameRing,
    tx: FrameRing,
    tx_dropped: u64,
}

struct LinkRx<'a>(&'a mut FrameRing);
struct LinkTx<'a>(&'a mut FrameRing, &'a mut u64);

impl RxToken for LinkRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.0.front().unwrap_or(&[]));
        self.0.pop();
        r
    }
}

impl TxToken for LinkTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = [0u8; FRAME];
        let n = len.min(FRAME);
        let r = f(&mut frame[..n]);
        if len > FRAME || !self.0.push(&frame[..n]) {
            *self.1 += 1;
        }
        r
    }
}

impl Device for Link {
    type RxToken<'a> = LinkRx<'a>;
    type TxToken<'a> = LinkTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(LinkRx<'_>, LinkTx<'_>)> {
        if self.rx.len == 0 {
            return None;
        }
        Some((
            LinkRx(&mut self.rx),
            LinkTx(&mut self.tx, &mut self.tx_dropped),
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<LinkTx<'_>> {
        (self.tx.len < QUEUE).then_some(LinkTx(&mut self.tx, &mut self.tx_dropped))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = FRAME;
        caps.max_burst_size = Some(QUEUE / 2);
        caps
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Listening, or reading a request.
    Reading,
    /// Sending `range` of its own buffer (`own`) or of the shared answer buffer.
    Answering { own: bool, at: usize, end: usize },
    /// A long poll of `/events` from `from`, until time `until` (ms) at the latest.
    Waiting { from: u64, until: u64 },
    /// Everything queued; the socket is closing.
    Closing,
}

/// One connection's state.
struct Conn {
    handle: SocketHandle,
    /// The request as received.
    buf: Box<[u8]>,
    /// Short answers (refusals, `/nonce`).
    out: Box<[u8]>,
    len: usize,
    phase: Phase,
    /// When the current connection was first seen established (ms).
    since: Option<u64>,
}

/// Counts of what the server did (exported in `/metrics`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerCounters {
    /// Frames the interface received.
    pub rx_frames: u64,
    /// Frames dropped because the receive queue was full (or too long).
    pub rx_dropped: u64,
    /// Frames the interface made that found the transmit queue full (or were too long).
    pub tx_dropped: u64,
    /// Frames the interface sent.
    pub tx_frames: u64,
    /// Answers by status class: 2xx, 4xx, 5xx.
    pub answers: [u64; 3],
    /// Refusals of signatures by reason (missing, malformed, no key, bad, stale).
    pub auth_refused: [u64; 5],
    /// Connections from sources outside `mgmt_allow`.
    pub not_allowed: u64,
    /// Connections aborted for not finishing a request in time.
    pub timeouts: u64,
}

/// The management server.
pub struct Server {
    settings: Settings,
    iface: Interface,
    link: Link,
    sockets: SocketSet<'static>,
    conns: [Conn; SOCKETS],
    answer: Box<[u8]>,
    /// The connection whose answer is in `answer`.
    answer_owner: Option<usize>,
    verifier: Verifier,
    counters: ServerCounters,
    now_ms: u64,
    started_ms: u64,
}

fn ms(now_ms: u64) -> Instant {
    Instant::from_millis(now_ms.min(i64::MAX as u64) as i64)
}

impl Server {
    /// A server with `settings` (which must be enabled), started at `now_ms`. Everything it
    /// needs is allocated here, once (about 400 KiB); nothing is allocated afterwards.
    pub fn new(settings: Settings, now_ms: u64) -> Server {
        let mut link = Link {
            rx: FrameRing::new(),
            tx: FrameRing::new(),
            tx_dropped: 0,
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(settings.mac)));
        config.random_seed = u64::from_le_bytes(settings.boot_id[..8].try_into().unwrap_or([0; 8]));
        let mut iface = Interface::new(config, &mut link, ms(now_ms));
        let [a, b, c, d] = settings.ip.addr;
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(Ipv4Address::new(a, b, c, d)),
                settings.ip.prefix,
            ));
        });
        if settings.gateway_set != 0 {
            let [a, b, c, d] = settings.gateway;
            let _ = iface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Address::new(a, b, c, d));
        }
        let mut set = SocketSet::new(Vec::with_capacity(SOCKETS));
        let mut handles = [None; SOCKETS];
        for h in handles.iter_mut() {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; SOCKET_RX]),
                tcp::SocketBuffer::new(vec![0; SOCKET_TX]),
            );
            // Longer than the longest long poll: an idle connection is cut only after it.
            s.set_timeout(Some(smoltcp::time::Duration::from_millis(
                MAX_WAIT_S * 1000 + 2 * REQUEST_TIMEOUT_MS,
            )));
            let _ = s.listen(settings.port);
            *h = Some(set.add(s));
        }
        let conns = handles.map(|h| Conn {
            handle: h.expect("every socket was added"),
            buf: vec![0; CONN_BUF].into_boxed_slice(),
            out: vec![0; SMALL_ANSWER].into_boxed_slice(),
            len: 0,
            phase: Phase::Reading,
            since: None,
        });
        Server {
            verifier: Verifier::new(settings.key(), settings.boot_id),
            settings,
            iface,
            link,
            sockets: set,
            conns,
            answer: vec![0; ANSWER].into_boxed_slice(),
            answer_owner: None,
            counters: ServerCounters::default(),
            now_ms,
            started_ms: now_ms,
        }
    }

    /// The counters.
    pub fn counters(&self) -> ServerCounters {
        ServerCounters {
            tx_dropped: self.link.tx_dropped,
            ..self.counters
        }
    }

    /// A frame from the wire for Shoji (false: the queue was full and it was dropped).
    pub fn receive(&mut self, frame: &[u8]) -> bool {
        if self.link.rx.push(frame) {
            self.counters.rx_frames += 1;
            true
        } else {
            self.counters.rx_dropped += 1;
            false
        }
    }

    /// How many of the sockets are listening for a new connection (all of them when no
    /// connection is open: a finished one never holds its socket in TIME-WAIT).
    pub fn listening(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| self.sockets.get::<tcp::Socket>(c.handle).state() == tcp::State::Listen)
            .count()
    }

    /// The next frame to send, handed to `send` (which says whether the NIC took it; a frame
    /// the NIC did not take stays queued).
    pub fn pop_tx(&mut self, send: &mut dyn FnMut(&[u8]) -> bool) {
        while let Some(f) = self.link.tx.front() {
            if !send(f) {
                return;
            }
            self.link.tx.pop();
            self.counters.tx_frames += 1;
        }
    }

    /// Run the interface and the connections at time `now_ms`.
    pub fn poll(&mut self, now_ms: u64, backend: &mut dyn Backend) {
        self.now_ms = now_ms;
        let now = ms(now_ms);
        self.iface.poll(now, &mut self.link, &mut self.sockets);
        for i in 0..SOCKETS {
            self.serve(i, backend);
        }
        self.iface.poll(now, &mut self.link, &mut self.sockets);
    }

    fn serve(&mut self, i: usize, backend: &mut dyn Backend) {
        let port = self.settings.port;
        let handle = self.conns[i].handle;
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        match s.state() {
            tcp::State::Closed | tcp::State::TimeWait => {
                // Done (or dropped): listen again at once rather than holding the socket for
                // TIME-WAIT (smoltcp lets a socket in TIME-WAIT listen); the answer was
                // delivered and acknowledged before the close.
                let _ = s.listen(port);
                self.reset(i);
                return;
            }
            tcp::State::Listen | tcp::State::SynReceived => return,
            _ => {}
        }
        let since = *self.conns[i].since.get_or_insert(self.now_ms);
        match self.conns[i].phase {
            Phase::Reading => {
                let remote = s.remote_endpoint();
                let allowed = match remote.map(|e| e.addr) {
                    Some(IpAddress::Ipv4(a)) => self.settings.allowed(a.octets()),
                    _ => false,
                };
                if !allowed {
                    self.counters.not_allowed += 1;
                    self.small_answer(i, 403, "this source is not in mgmt_allow");
                    return;
                }
                let c = &mut self.conns[i];
                if s.can_recv() {
                    if let Ok(n) = s.recv_slice(&mut c.buf[c.len..]) {
                        c.len += n;
                    }
                }
                let len = c.len;
                if !s.may_recv() && len == 0 {
                    s.close();
                    self.conns[i].phase = Phase::Closing;
                    return;
                }
                self.try_answer(i, since, backend);
            }
            Phase::Answering { own, at, end } => {
                let src = if own {
                    &self.conns[i].out[at..end]
                } else {
                    &self.answer[at..end]
                };
                let sent = s.send_slice(src).unwrap_or(0);
                let at = at + sent;
                if at == end {
                    s.close();
                    self.conns[i].phase = Phase::Closing;
                    if self.answer_owner == Some(i) {
                        self.answer_owner = None;
                    }
                } else {
                    self.conns[i].phase = Phase::Answering { own, at, end };
                }
            }
            Phase::Waiting { from, until } => {
                if !s.is_active() {
                    return;
                }
                let ready = backend.next_event() > from.max(1) || self.now_ms >= until;
                if ready && self.answer_owner.is_none() {
                    self.build(i, Route::Events { from, wait_ms: 0 }, backend);
                }
            }
            Phase::Closing => {}
        }
    }

    fn reset(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if matches!(c.phase, Phase::Answering { own: false, .. }) {
            self.answer_owner = None;
        }
        c.len = 0;
        c.phase = Phase::Reading;
        c.since = None;
    }

    /// Answer with a short text body from the connection's own buffer.
    fn small_answer(&mut self, i: usize, status: u16, text: &str) {
        self.count_status(status);
        let boot = *self.verifier.boot_id();
        let c = &mut self.conns[i];
        let range = http::respond(
            &mut c.out,
            status,
            "text/plain; charset=utf-8",
            &|w| boot_header(w, &boot),
            &mut |w| {
                w.write_str(text)?;
                w.write_char('\n')
            },
        );
        c.phase = match range {
            Some(r) => Phase::Answering {
                own: true,
                at: r.start,
                end: r.end,
            },
            None => Phase::Closing,
        };
    }

    fn count_status(&mut self, status: u16) {
        let class = match status {
            200..=299 => 0,
            400..=499 => 1,
            _ => 2,
        };
        self.counters.answers[class] += 1;
    }

    fn try_answer(&mut self, i: usize, since: u64, backend: &mut dyn Backend) {
        let len = self.conns[i].len;
        let parsed = http::parse(&self.conns[i].buf[..len]);
        let (status, text): (u16, &str) = match parsed {
            Parsed::Partial => {
                if self.now_ms.saturating_sub(since) > REQUEST_TIMEOUT_MS {
                    self.counters.timeouts += 1;
                    (408, "no complete request in time")
                } else {
                    return;
                }
            }
            Parsed::Error(e) => (e.status(), e.message()),
            Parsed::Complete(_) => {
                if self.answer_owner.is_some_and(|o| o != i) {
                    // Another answer is being sent; this one waits its turn.
                    return;
                }
                self.route(i, backend);
                return;
            }
        };
        self.small_answer(i, status, text);
    }

    /// Route a complete request (in connection `i`'s buffer) and build its answer.
    fn route(&mut self, i: usize, backend: &mut dyn Backend) {
        let decided = {
            let c = &self.conns[i];
            let Parsed::Complete(req) = http::parse(&c.buf[..c.len]) else {
                return;
            };
            Route::of(&req).and_then(|route| {
                if route.signed(self.settings.metrics_auth != 0) {
                    let v = &mut self.verifier;
                    if let Err(e) = v.verify(req.authorization, req.method, req.target, req.body) {
                        self.counters.auth_refused[auth_index(e)] += 1;
                        return Err((e.status(), e.message()));
                    }
                }
                Ok(route)
            })
        };
        match decided {
            Err((status, text)) => self.small_answer(i, status, text),
            Ok(route) => self.build(i, route, backend),
        }
    }

    /// Connections waiting in a long poll.
    fn waiting(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| matches!(c.phase, Phase::Waiting { .. }))
            .count()
    }

    /// Build the answer to an accepted request (its signature already checked).
    fn build(&mut self, i: usize, route: Route, backend: &mut dyn Backend) {
        let boot = *self.verifier.boot_id();
        let next_nonce = self.verifier.next_nonce();
        let counters = self.counters();
        let uptime = self.now_ms.saturating_sub(self.started_ms);
        let (content_type, built) = match route {
            Route::Nonce => {
                let mut hexbuf = [0u8; 32];
                let b = crate::auth::hex(&boot, &mut hexbuf);
                let r = http::respond(
                    &mut self.conns[i].out,
                    200,
                    "text/plain; charset=utf-8",
                    &|w| boot_header(w, &boot),
                    &mut |w| write!(w, "boot={b}\nnext={next_nonce}\n"),
                );
                return self.own_answer(i, r);
            }
            Route::Metrics => (
                CONTENT_TYPE,
                http::respond(
                    &mut self.answer,
                    200,
                    CONTENT_TYPE,
                    &|w| boot_header(w, &boot),
                    &mut |w| {
                        let mut e = Exposition::new(w);
                        backend.metrics(&mut e)?;
                        server_metrics(&mut e, &counters, uptime)
                    },
                ),
            ),
            Route::Events { from, wait_ms } => {
                // Long poll: nothing to say yet, so hold the connection (a bounded number of
                // them, for a bounded time) and answer from `serve` once there is.
                if wait_ms > 0
                    && backend.next_event() <= from.max(1)
                    && self.waiting() < MAX_WAITING
                {
                    self.conns[i].phase = Phase::Waiting {
                        from,
                        until: self.now_ms.saturating_add(wait_ms),
                    };
                    return;
                }
                // `respond` renders the body before the headers, so the next sequence number
                // the body's rendering found goes into its header in the same pass.
                let next_event = core::cell::Cell::new(from);
                let r = http::respond(
                    &mut self.answer,
                    200,
                    "application/x-ndjson",
                    &|w| {
                        boot_header(w, &boot)?;
                        write!(w, "X-Shoji-Next-Event: {}\r\n", next_event.get())
                    },
                    &mut |w| {
                        next_event.set(backend.events(from, EVENTS_PER_ANSWER, w)?);
                        Ok(())
                    },
                );
                ("application/x-ndjson", r)
            }
            Route::Tasks { sockets } => {
                if let Err(why) = backend.tasks_ready() {
                    return self.small_answer(i, 503, why);
                }
                let r = http::respond(
                    &mut self.answer,
                    200,
                    "application/x-ndjson",
                    &|w| boot_header(w, &boot),
                    &mut |w| backend.tasks(sockets, TASKS_BUDGET, w),
                );
                ("application/x-ndjson", r)
            }
            Route::Containers => (
                "application/json",
                http::respond(
                    &mut self.answer,
                    200,
                    "application/json",
                    &|w| boot_header(w, &boot),
                    &mut |w| backend.containers(w),
                ),
            ),
            Route::Blocks => (
                "application/json",
                http::respond(
                    &mut self.answer,
                    200,
                    "application/json",
                    &|w| boot_header(w, &boot),
                    &mut |w| backend.blocks(w),
                ),
            ),
            Route::Block => return self.add_block(i, backend),
            Route::Unblock(id) => {
                if !backend.unblock(id) {
                    return self.small_answer(i, 404, "no administrator rule has this id");
                }
                let r = http::respond(
                    &mut self.conns[i].out,
                    200,
                    "application/json",
                    &|w| boot_header(w, &boot),
                    &mut |w| writeln!(w, "{{\"removed\":{id}}}"),
                );
                return self.own_answer(i, r);
            }
        };
        let _ = content_type;
        match built {
            Some(r) => {
                self.count_status(200);
                self.answer_owner = Some(i);
                self.conns[i].phase = Phase::Answering {
                    own: false,
                    at: r.start,
                    end: r.end,
                };
            }
            None => self.small_answer(i, 500, "the answer does not fit Shoji's answer buffer"),
        }
    }

    /// `POST /block`: hand the body to the backend, answer 201 with the new rule's id or the
    /// backend's refusal.
    fn add_block(&mut self, i: usize, backend: &mut dyn Backend) {
        let mut why = [0u8; 192];
        let mut why = SliceWriter::new(&mut why);
        let added = {
            let c = &self.conns[i];
            let Parsed::Complete(req) = http::parse(&c.buf[..c.len]) else {
                return;
            };
            backend.block(req.body, &mut why)
        };
        match added {
            Ok(id) => {
                let boot = *self.verifier.boot_id();
                let r = http::respond(
                    &mut self.conns[i].out,
                    201,
                    "application/json",
                    &|w| {
                        boot_header(w, &boot)?;
                        write!(w, "Location: /block/{id}\r\n")
                    },
                    &mut |w| writeln!(w, "{{\"id\":{id}}}"),
                );
                self.own_answer_with(i, r, 201);
            }
            Err(status) => {
                let text = core::str::from_utf8(why.written()).unwrap_or("refused");
                self.small_answer(i, status, text);
            }
        }
    }

    fn own_answer(&mut self, i: usize, r: Option<core::ops::Range<usize>>) {
        self.own_answer_with(i, r, 200)
    }

    fn own_answer_with(&mut self, i: usize, r: Option<core::ops::Range<usize>>, status: u16) {
        match r {
            Some(r) => {
                self.count_status(status);
                self.conns[i].phase = Phase::Answering {
                    own: true,
                    at: r.start,
                    end: r.end,
                };
            }
            None => self.small_answer(i, 500, "answer too large"),
        }
    }
}

fn boot_header(w: &mut dyn Write, boot: &[u8; 16]) -> fmt::Result {
    let mut h = [0u8; 32];
    write!(w, "X-Shoji-Boot: {}\r\n", crate::auth::hex(boot, &mut h))
}

fn auth_index(e: AuthError) -> usize {
    match e {
        AuthError::Missing => 0,
        AuthError::Malformed => 1,
        AuthError::NoKey => 2,
        AuthError::BadSignature => 3,
        AuthError::StaleNonce => 4,
    }
}

const AUTH_REASONS: [&str; 5] = [
    "missing",
    "malformed",
    "no_key",
    "bad_signature",
    "stale_nonce",
];

/// The server's own families.
fn server_metrics(e: &mut Exposition<'_>, c: &ServerCounters, uptime_ms: u64) -> fmt::Result {
    e.single(
        "shoji_mgmt_uptime_seconds",
        Kind::Gauge,
        "Seconds since the management endpoint started.",
        uptime_ms / 1000,
    )?;
    e.family(
        "shoji_mgmt_frames_total",
        Kind::Counter,
        "Frames of the management endpoint, by direction.",
    )?;
    e.sample(
        "shoji_mgmt_frames_total",
        &[("direction", &"rx")],
        c.rx_frames,
    )?;
    e.sample(
        "shoji_mgmt_frames_total",
        &[("direction", &"tx")],
        c.tx_frames,
    )?;
    e.single(
        "shoji_mgmt_rx_dropped_total",
        Kind::Counter,
        "Frames for the management endpoint dropped because its queue was full.",
        c.rx_dropped,
    )?;
    e.single(
        "shoji_mgmt_tx_dropped_total",
        Kind::Counter,
        "Frames of the management endpoint dropped because its transmit queue was full.",
        c.tx_dropped,
    )?;
    e.family(
        "shoji_mgmt_answers_total",
        Kind::Counter,
        "HTTP answers of the management endpoint, by status class.",
    )?;
    for (class, n) in ["2xx", "4xx", "5xx"].iter().zip(c.answers) {
        e.sample("shoji_mgmt_answers_total", &[("class", class)], n)?;
    }
    e.family(
        "shoji_mgmt_auth_refused_total",
        Kind::Counter,
        "Requests refused for their signature, by reason.",
    )?;
    for (reason, n) in AUTH_REASONS.iter().zip(c.auth_refused) {
        e.sample("shoji_mgmt_auth_refused_total", &[("reason", reason)], n)?;
    }
    e.single(
        "shoji_mgmt_not_allowed_total",
        Kind::Counter,
        "Connections refused because their source is outside mgmt_allow.",
        c.not_allowed,
    )?;
    e.single(
        "shoji_mgmt_request_timeouts_total",
        Kind::Counter,
        "Connections aborted for not sending a whole request in time.",
        c.timeouts,
    )
}

const NO_SUCH_PATH: &str =
    "no such path (try /metrics, /events, /containers, /tasks, /blocks, /block, /block/ID, /nonce)";
/// Bytes the `/tasks` body may take (the answer buffer less room for the status line and
/// headers).
pub const TASKS_BUDGET: usize = ANSWER - 1024;
const NO_SUCH_RULE: &str = "no administrator rule has this id";

/// The routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Nonce,
    Metrics,
    /// Events from a sequence number; with `wait_ms`, held until one exists or the time is up.
    Events {
        from: u64,
        wait_ms: u64,
    },
    Containers,
    /// `GET /tasks[?sockets=1]`: the guest's processes, with their sockets.
    Tasks {
        sockets: bool,
    },
    /// `GET /blocks`: the administrator's rules.
    Blocks,
    /// `POST /block`: add an administrator rule.
    Block,
    /// `DELETE /block/ID`: remove one.
    Unblock(u32),
}

/// A decimal query parameter (`None` when absent).
fn number(
    req: &Request<'_>,
    name: &str,
    what: &'static str,
) -> Result<Option<u64>, (u16, &'static str)> {
    match req.query(name) {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) => {
            v.parse().map(Some).map_err(|_| (400, what))
        }
        Some(_) => Err((400, what)),
    }
}

impl Route {
    fn of(req: &Request<'_>) -> Result<Route, (u16, &'static str)> {
        let route = match req.path() {
            "/nonce" => Route::Nonce,
            "/metrics" => Route::Metrics,
            "/events" => {
                let from = number(req, "from", "`from` must be a decimal number")?.unwrap_or(0);
                let wait = number(req, "wait", "`wait` must be a number of seconds, 0 to 60")?
                    .unwrap_or(0);
                if wait > MAX_WAIT_S {
                    return Err((400, "`wait` must be a number of seconds, 0 to 60"));
                }
                Route::Events {
                    from,
                    wait_ms: wait * 1000,
                }
            }
            "/containers" => Route::Containers,
            "/tasks" => Route::Tasks {
                sockets: match req.query("sockets") {
                    None | Some("0") => false,
                    Some("1") => true,
                    Some(_) => return Err((400, "`sockets` must be 0 or 1")),
                },
            },
            "/blocks" => Route::Blocks,
            "/block" => Route::Block,
            path => match path.strip_prefix("/block/") {
                Some(id) if !id.is_empty() && id.bytes().all(|c| c.is_ascii_digit()) => {
                    Route::Unblock(id.parse().map_err(|_| (404, NO_SUCH_RULE))?)
                }
                Some(_) => return Err((404, NO_SUCH_RULE)),
                None => return Err((404, NO_SUCH_PATH)),
            },
        };
        let (method, refusal) = match route {
            Route::Block => ("POST", "only POST is allowed on this path"),
            Route::Unblock(_) => ("DELETE", "only DELETE is allowed on this path"),
            _ => ("GET", "only GET is allowed on this path"),
        };
        if req.method != method {
            return Err((405, refusal));
        }
        Ok(route)
    }

    fn signed(self, metrics_auth: bool) -> bool {
        match self {
            Route::Nonce => false,
            Route::Metrics => metrics_auth,
            Route::Events { .. }
            | Route::Containers
            | Route::Tasks { .. }
            | Route::Blocks
            | Route::Block
            | Route::Unblock(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    #[test]
    fn the_frame_ring_is_a_bounded_fifo_that_wraps() {
        let mut r = FrameRing::new();
        for round in 0..3u8 {
            for i in 0..QUEUE as u8 {
                assert!(r.push(&frame(round * 100 + i, 60 + usize::from(i))));
            }
            assert!(!r.push(&frame(0xee, 60)), "full");
            for i in 0..QUEUE as u8 {
                assert_eq!(
                    r.front(),
                    Some(&frame(round * 100 + i, 60 + usize::from(i))[..])
                );
                r.pop();
            }
            assert_eq!(r.front(), None);
            // Leave the head somewhere in the middle for the next round.
            assert!(r.push(&frame(1, 60)));
            r.pop();
        }
        assert!(!r.push(&frame(2, FRAME + 1)), "too long");
        assert!(r.push(&frame(3, FRAME)));
        assert_eq!(r.front().map(<[u8]>::len), Some(FRAME));
    }

    #[test]
    fn pop_on_an_empty_ring_does_nothing() {
        let mut r = FrameRing::new();
        r.pop();
        assert_eq!((r.len, r.front()), (0, None));
        assert!(r.push(&frame(9, 60)));
        assert_eq!(r.front(), Some(&frame(9, 60)[..]));
    }

    #[test]
    fn the_counters_carry_both_queues_drops() {
        let mut s = Server::new(
            Settings {
                enabled: 1,
                mac: [2, 0, 0, 0, 0, 9],
                ip: crate::settings::Cidr {
                    addr: [10, 0, 2, 9],
                    prefix: 24,
                },
                port: 9180,
                ..Settings::default()
            },
            0,
        );
        for _ in 0..QUEUE + 4 {
            s.receive(&frame(1, 60));
        }
        s.link.tx_dropped = 3;
        let c = s.counters();
        assert_eq!(
            (c.rx_frames, c.rx_dropped, c.tx_dropped),
            (QUEUE as u64, 4, 3)
        );
    }

    #[test]
    fn the_link_gives_no_token_when_its_queue_is_full_and_counts_what_it_cannot_queue() {
        let mut link = Link {
            rx: FrameRing::new(),
            tx: FrameRing::new(),
            tx_dropped: 0,
        };
        let t = Instant::from_millis(0);
        assert!(link.receive(t).is_none());
        for i in 0..QUEUE as u8 {
            let tok = link.transmit(t).expect("room");
            tok.consume(60, |b| b.fill(i));
        }
        assert!(link.transmit(t).is_none());
        assert_eq!(link.tx_dropped, 0);
        link.tx.pop();
        link.transmit(t).unwrap().consume(FRAME + 1, |_| ());
        assert_eq!(
            link.tx_dropped, 1,
            "a frame longer than FRAME is dropped and counted"
        );
        link.transmit(t).unwrap().consume(60, |_| ());
        assert_eq!(link.tx_dropped, 1);
        assert_eq!(link.tx.len, QUEUE);
    }
}
