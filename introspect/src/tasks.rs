//! The guest's processes and their sockets, read from kernel memory: what the management
//! plane's `/tasks` and the `ListTasks` VMCALL answer.
//!
//! The walk follows the profile's [`TaskWalk`]: from `init_task` along `task_struct.tasks` (one
//! entry per process, its thread-group leader), each task's identity through the same field
//! programs attribution uses, and, when asked, its file table: every file whose inode is a socket
//! (`S_IFSOCK`) leads through `private_data` to a `struct socket` and its `sk`, whose IPv4 and
//! IPv6 addresses, ports, protocol and TCP state are read. Nothing here trusts the guest: every
//! pointer must be a kernel address, the list may be cut or looped by a hostile or racing kernel,
//! and a [`WalkLimits`] bounds tasks, descriptors, sockets and reads, so one request costs a
//! bounded number of guest reads whatever the guest's state. The list is read while the guest's
//! other CPUs run: a task that exits during the walk can end it early (reported in [`WalkEnd`]).

use shoji_shared::profile::{TaskWalk, S_IFMT, S_IFSOCK};
use shoji_shared::{GuestMemory, TaskIdentity};

use crate::kmem::KernelView;
use crate::paging::WalkError;
use crate::task::{CpuState, Introspector};

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// How much one walk may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkLimits {
    /// Processes listed at most.
    pub max_tasks: u32,
    /// File descriptors looked at per process (the lowest ones).
    pub max_fds: u32,
    /// Sockets reported per process.
    pub max_sockets: usize,
    /// Guest reads the walk itself may make (identities not counted: each is bounded by its
    /// profile's programs).
    pub max_reads: u32,
}

impl WalkLimits {
    /// The limits of `/tasks` and `ListTasks`: 1,024 processes, their first 256 descriptors,
    /// 16 sockets each, 65,536 reads.
    pub const DEFAULT: WalkLimits = WalkLimits {
        max_tasks: 1024,
        max_fds: 256,
        max_sockets: MAX_SOCKETS,
        max_reads: 65_536,
    };
}

/// Room for sockets per task in one [`TaskEntry`].
pub const MAX_SOCKETS: usize = 16;

/// One IPv4 or IPv6 socket of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Socket {
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// `sk_protocol` (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u16,
    /// `sk_type` (1 stream, 2 datagram, 3 raw).
    pub sock_type: u16,
    /// `skc_state` (Linux's TCP state numbers; UDP uses 1 when connected, 7 otherwise).
    pub state: u8,
    /// Local address: IPv4 in the first 4 bytes (network order) or IPv6.
    pub local: [u8; 16],
    /// Local port.
    pub local_port: u16,
    /// Remote address, as `local`.
    pub remote: [u8; 16],
    /// Remote port (0 when unconnected).
    pub remote_port: u16,
}

/// One process as the walk found it.
#[derive(Debug, Clone, Copy)]
pub struct TaskEntry {
    /// Its identity (pid, uid, executable, namespaces, cgroup...).
    pub id: TaskIdentity,
    /// Whether it is a kernel thread (`PF_KTHREAD`), if known.
    pub kthread: Option<bool>,
    /// Its sockets (the first `sockets_len` of `sockets`).
    pub sockets: [Socket; MAX_SOCKETS],
    /// How many of `sockets` are filled.
    pub sockets_len: usize,
    /// Whether it has more sockets (or descriptors) than were looked at.
    pub sockets_cut: bool,
}

impl TaskEntry {
    /// The sockets found.
    pub fn sockets(&self) -> &[Socket] {
        self.sockets.get(..self.sockets_len).unwrap_or(&[])
    }
}

/// Why a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// The list came back to `init_task`: every process was listed.
    Complete,
    /// [`WalkLimits::max_tasks`] processes were listed.
    TaskLimit,
    /// [`WalkLimits::max_reads`] reads were spent.
    ReadBudget,
    /// The visitor asked to stop (its output is full).
    Stopped,
    /// A `tasks` link is not a kernel address (a task exiting under the walk, or a hostile list).
    BadLink(u64),
    /// A read of the list failed.
    Read(WalkError),
    /// The active profile has no task walk.
    NoWalk,
    /// No kernel profile is active (nothing was walked).
    NoProfile,
    /// The guest was not in 64-bit paging at this exit (nothing was walked).
    NotPaged,
}

impl WalkEnd {
    /// A short name for answers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WalkEnd::Complete => "complete",
            WalkEnd::TaskLimit => "task limit",
            WalkEnd::ReadBudget => "read budget",
            WalkEnd::Stopped => "output full",
            WalkEnd::BadLink(_) => "broken task list",
            WalkEnd::Read(_) => "unreadable task list",
            WalkEnd::NoWalk => "the kernel profile has no task walk",
            WalkEnd::NoProfile => "no kernel profile",
            WalkEnd::NotPaged => "the guest is not in 64-bit paging at this exit",
        }
    }
}

/// What a walk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkSummary {
    /// Processes listed (the visitor took them).
    pub tasks: u32,
    /// Sockets of those.
    pub sockets: u32,
    /// Guest reads the walk made (identities excluded).
    pub reads: u32,
    /// Why it ended.
    pub end: WalkEnd,
}

/// Guest reads with a budget.
struct Budget<'v, 'm, M: GuestMemory + ?Sized> {
    view: &'v KernelView<'m, M>,
    left: u32,
    used: u32,
}

/// A read refused: out of budget, or unreadable.
enum Refused {
    Budget,
    Read(WalkError),
}

impl<M: GuestMemory + ?Sized> Budget<'_, '_, M> {
    fn read(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Refused> {
        if self.left == 0 {
            return Err(Refused::Budget);
        }
        self.left -= 1;
        self.used = self.used.saturating_add(1);
        self.view.read(va, buf).map_err(Refused::Read)
    }

    fn bytes<const N: usize>(&mut self, base: u64, off: u32) -> Result<[u8; N], Refused> {
        let va = base
            .checked_add(u64::from(off))
            .ok_or(Refused::Read(WalkError::NonCanonical))?;
        let mut b = [0u8; N];
        self.read(va, &mut b)?;
        Ok(b)
    }

    /// A pointer member that must be a kernel address (0 is `None`).
    fn ptr(&mut self, base: u64, off: u32, half: u64) -> Result<Option<u64>, Refused> {
        let v = u64::from_le_bytes(self.bytes::<8>(base, off)?);
        if v == 0 {
            Ok(None)
        } else if kernel_ptr(v, half) {
            Ok(Some(v))
        } else {
            Err(Refused::Read(WalkError::NonCanonical))
        }
    }

    fn u16(&mut self, base: u64, off: u32) -> Result<u16, Refused> {
        Ok(u16::from_le_bytes(self.bytes::<2>(base, off)?))
    }
}

fn kernel_ptr(v: u64, half: u64) -> bool {
    v >= half && v & 7 == 0
}

/// Descriptors read per guest read of the fd array.
const FD_CHUNK: usize = 32;

impl Introspector {
    /// Walk the guest's processes (`cpu` seen through page tables that map the kernel), calling
    /// `visit` for each; with `sockets`, each entry carries its IPv4/IPv6 sockets. `visit`
    /// returns `false` to stop. Identities are read afresh and do not disturb the cache.
    pub fn walk_tasks<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        cpu: &CpuState,
        sockets: bool,
        limits: WalkLimits,
        visit: &mut dyn FnMut(&TaskEntry) -> bool,
    ) -> WalkSummary {
        let mut summary = WalkSummary::not_started(WalkEnd::NoWalk);
        let Some(walk) = self.profile().walk else {
            return summary;
        };
        let half = cpu.pt.mode.kernel_half();
        let view = self.view(mem, cpu);
        let mut b = Budget {
            view: &view,
            left: limits.max_reads,
            used: 0,
        };
        let head = walk.init_task_va.wrapping_add(u64::from(walk.tasks_off));
        let mut node = match b.ptr(head, 0, half) {
            Ok(Some(n)) => n,
            Ok(None) => {
                summary.end = WalkEnd::BadLink(0);
                return summary;
            }
            Err(e) => {
                summary.end = refused(e, head);
                return summary;
            }
        };
        let end = loop {
            if node == head {
                break WalkEnd::Complete;
            }
            if summary.tasks >= limits.max_tasks {
                break WalkEnd::TaskLimit;
            }
            let Some(task) = node.checked_sub(u64::from(walk.tasks_off)) else {
                break WalkEnd::BadLink(node);
            };
            let mut entry = empty_entry();
            if sockets {
                match task_sockets(&mut b, &walk, task, half, limits, &mut entry) {
                    // An unreadable file table still lists the task (without sockets).
                    Ok(()) | Err(Refused::Read(_)) => {}
                    Err(Refused::Budget) => break WalkEnd::ReadBudget,
                }
            }
            // The next link is read before the visit, so that a failure there still lists
            // this task.
            let next = match b.ptr(node, 0, half) {
                Ok(Some(n)) => Ok(n),
                Ok(None) => Err(WalkEnd::BadLink(0)),
                Err(e) => Err(refused(e, node)),
            };
            let (id, kthread) = self.identity_uncached(mem, cpu, task);
            entry.id = id;
            entry.kthread = kthread;
            if !visit(&entry) {
                break WalkEnd::Stopped;
            }
            summary.tasks += 1;
            summary.sockets = summary.sockets.saturating_add(entry.sockets_len as u32);
            match next {
                Ok(n) => node = n,
                Err(e) => break e,
            }
        };
        summary.reads = b.used;
        summary.end = end;
        summary
    }
}

fn refused(e: Refused, at: u64) -> WalkEnd {
    match e {
        Refused::Budget => WalkEnd::ReadBudget,
        Refused::Read(WalkError::NonCanonical) => WalkEnd::BadLink(at),
        Refused::Read(w) => WalkEnd::Read(w),
    }
}

fn empty_entry() -> TaskEntry {
    TaskEntry {
        id: TaskIdentity::default(),
        kthread: None,
        sockets: [Socket::default(); MAX_SOCKETS],
        sockets_len: 0,
        sockets_cut: false,
    }
}

/// The IPv4/IPv6 sockets in `task`'s file table, into `entry`.
fn task_sockets<M: GuestMemory + ?Sized>(
    b: &mut Budget<'_, '_, M>,
    w: &TaskWalk,
    task: u64,
    half: u64,
    limits: WalkLimits,
    entry: &mut TaskEntry,
) -> Result<(), Refused> {
    // Kernel threads and exiting tasks have no file table.
    let Some(files) = b.ptr(task, w.files_off, half)? else {
        return Ok(());
    };
    let Some(fdt) = b.ptr(files, w.fdt_off, half)? else {
        return Ok(());
    };
    let max_fds = u32::from_le_bytes(b.bytes::<4>(fdt, w.max_fds_off)?);
    let Some(fd) = b.ptr(fdt, w.fd_off, half)? else {
        return Ok(());
    };
    let n = max_fds.min(limits.max_fds) as usize;
    if max_fds > limits.max_fds {
        entry.sockets_cut = true;
    }
    let mut chunk = [0u8; FD_CHUNK * 8];
    let mut i = 0usize;
    while i < n {
        let count = (n - i).min(FD_CHUNK);
        let bytes = chunk.get_mut(..count * 8).unwrap_or(&mut []);
        b.read(fd.wrapping_add(i as u64 * 8), bytes)?;
        for file in bytes.chunks_exact(8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(file);
            let file = u64::from_le_bytes(a);
            if file == 0 || !kernel_ptr(file, half) {
                continue;
            }
            match socket_of(b, w, file, half) {
                Ok(Some(s)) => {
                    if let Some(slot) = entry.sockets.get_mut(entry.sockets_len) {
                        if entry.sockets_len < limits.max_sockets {
                            *slot = s;
                            entry.sockets_len += 1;
                            continue;
                        }
                    }
                    entry.sockets_cut = true;
                }
                Ok(None) | Err(Refused::Read(_)) => {}
                Err(Refused::Budget) => return Err(Refused::Budget),
            }
        }
        i += count;
    }
    Ok(())
}

/// The socket behind `file`, if it is an IPv4 or IPv6 one.
fn socket_of<M: GuestMemory + ?Sized>(
    b: &mut Budget<'_, '_, M>,
    w: &TaskWalk,
    file: u64,
    half: u64,
) -> Result<Option<Socket>, Refused> {
    let Some(inode) = b.ptr(file, w.f_inode_off, half)? else {
        return Ok(None);
    };
    if b.u16(inode, w.i_mode_off)? & S_IFMT != S_IFSOCK {
        return Ok(None);
    }
    let Some(sock) = b.ptr(file, w.private_data_off, half)? else {
        return Ok(None);
    };
    let Some(sk) = b.ptr(sock, w.sk_off, half)? else {
        return Ok(None);
    };
    let family = b.u16(sk, w.family_off)?;
    let mut s = Socket {
        family,
        ..Socket::default()
    };
    match family {
        AF_INET => {
            let remote = b.bytes::<4>(sk, w.daddr_off)?;
            let local = b.bytes::<4>(sk, w.rcv_saddr_off)?;
            s.remote[..4].copy_from_slice(&remote);
            s.local[..4].copy_from_slice(&local);
        }
        AF_INET6 => {
            let (Some(d), Some(l)) = (w.v6_daddr_off, w.v6_rcv_saddr_off) else {
                return Ok(None);
            };
            s.remote = b.bytes::<16>(sk, d)?;
            s.local = b.bytes::<16>(sk, l)?;
        }
        _ => return Ok(None),
    }
    s.state = b.bytes::<1>(sk, w.state_off)?[0];
    s.remote_port = u16::from_be_bytes(b.bytes::<2>(sk, w.dport_off)?);
    s.local_port = b.u16(sk, w.num_off)?;
    s.protocol = match w.protocol_width {
        1 => u16::from(b.bytes::<1>(sk, w.protocol_off)?[0]),
        _ => b.u16(sk, w.protocol_off)?,
    };
    s.sock_type = b.u16(sk, w.type_off)?;
    Ok(Some(s))
}

/// Linux's TCP state names (`include/net/tcp_states.h`), by number.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// A protocol's name where it has a common one.
fn protocol_name(p: u16) -> Option<&'static str> {
    Some(match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        132 => "sctp",
        136 => "udplite",
        _ => return None,
    })
}

/// A JSON string of guest-chosen bytes (`comm`): printable ASCII as is, everything else
/// (quotes, backslashes, control bytes, bytes above 0x7e) as `\u00XX`.
struct JsonBytes<'a>(&'a [u8]);

impl core::fmt::Display for JsonBytes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("\"")?;
        for &c in self.0 {
            if (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\' {
                f.write_char(char::from(c))?;
            } else {
                write!(f, "\\u{:04x}", c)?;
            }
        }
        f.write_str("\"")
    }
}

/// An optional number, `null` when unknown.
struct Opt<T>(Option<T>);

impl<T: core::fmt::Display> core::fmt::Display for Opt<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("null"),
        }
    }
}

/// An address and port: `a.b.c.d:port` or `[v6]:port`.
struct Endpoint<'a>(u16, &'a [u8; 16], u16);

impl core::fmt::Display for Endpoint<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let Endpoint(family, a, port) = *self;
        if family == AF_INET {
            let [x, y, z, w, ..] = *a;
            write!(f, "{}:{port}", core::net::Ipv4Addr::new(x, y, z, w))
        } else {
            write!(f, "[{}]:{port}", core::net::Ipv6Addr::from(*a))
        }
    }
}

use core::fmt::Write as _;

impl Socket {
    /// This socket as one JSON object.
    pub fn write_json(&self, w: &mut dyn core::fmt::Write) -> core::fmt::Result {
        let family = if self.family == AF_INET {
            "ipv4"
        } else {
            "ipv6"
        };
        w.write_str("{\"family\":\"")?;
        w.write_str(family)?;
        w.write_str("\",\"protocol\":")?;
        match protocol_name(self.protocol) {
            Some(n) => write!(w, "\"{n}\"")?,
            None => write!(w, "{}", self.protocol)?,
        }
        let state = if self.protocol == 6 {
            tcp_state_name(self.state)
        } else if self.state == 1 {
            "CONNECTED"
        } else {
            "UNCONNECTED"
        };
        write!(
            w,
            ",\"type\":{},\"state\":\"{state}\",\"local\":\"{}\",\"remote\":\"{}\"}}",
            self.sock_type,
            Endpoint(self.family, &self.local, self.local_port),
            Endpoint(self.family, &self.remote, self.remote_port),
        )
    }
}

impl TaskEntry {
    /// This task as one line of JSON (ending in a newline), with the container it belongs to
    /// (its registry id) and, when `sockets`, its sockets.
    pub fn write_json(
        &self,
        container: Option<u32>,
        sockets: bool,
        w: &mut dyn core::fmt::Write,
    ) -> core::fmt::Result {
        let t = &self.id;
        write!(
            w,
            "{{\"pid\":{},\"tgid\":{},\"pid_local\":{},\"tgid_local\":{},\"uid\":{},\"euid\":{},\"uid_local\":{},\"comm\":",
            Opt(t.pid),
            Opt(t.tgid),
            Opt(t.pid_local),
            Opt(t.tgid_local),
            Opt(t.uid),
            Opt(t.euid),
            Opt(t.uid_local),
        )?;
        match &t.comm {
            Some(c) => {
                let n = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                write!(w, "{}", JsonBytes(c.get(..n).unwrap_or(&[])))?
            }
            None => w.write_str("null")?,
        }
        write!(
            w,
            ",\"exe_inode\":{},\"cgroup_id\":{},\"netns\":{},\"pidns\":{},\"userns\":{},\"start_time_ns\":{},\"kthread\":{},\"container\":{}",
            Opt(t.exe_inode),
            Opt(t.cgroup_id),
            Opt(t.netns_id),
            Opt(t.pidns_id),
            Opt(t.userns_id),
            Opt(t.start_time),
            Opt(self.kthread),
            Opt(container),
        )?;
        if sockets {
            w.write_str(",\"sockets\":[")?;
            for (i, s) in self.sockets().iter().enumerate() {
                if i > 0 {
                    w.write_str(",")?;
                }
                s.write_json(w)?;
            }
            write!(w, "],\"sockets_cut\":{}", self.sockets_cut)?;
        }
        w.write_str("}\n")
    }
}

impl WalkSummary {
    /// A walk that did not start, and why.
    pub fn not_started(end: WalkEnd) -> WalkSummary {
        WalkSummary {
            tasks: 0,
            sockets: 0,
            reads: 0,
            end,
        }
    }

    /// The last line of an answer: `{"end":...}` with the counts (ending in a newline).
    pub fn write_json(&self, w: &mut dyn core::fmt::Write) -> core::fmt::Result {
        writeln!(
            w,
            "{{\"end\":\"{}\",\"complete\":{},\"tasks\":{},\"sockets\":{},\"reads\":{}}}",
            self.end.as_str(),
            self.end == WalkEnd::Complete,
            self.tasks,
            self.sockets,
            self.reads
        )
    }
}
