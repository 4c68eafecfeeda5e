//! The task-list walk behind `/tasks` and `ListTasks`, on a synthetic guest laid out by the real
//! Debian 12 profile: every process in list order with its identity and its IPv4/IPv6 sockets;
//! other files skipped; looped, cut and hostile lists and every limit end the walk with the reason
//! named; the attribution cache is left alone.

mod common;

use common::*;
use shoji_introspect::tasks::{WalkEnd, WalkLimits, AF_INET, AF_INET6};
use shoji_introspect::{Introspector, PagingMode};
use shoji_shared::profile::{KernelProfile, TaskWalk};
use shoji_shared::GuestMemory;

/// Where `init_task` lives: the kernel image, outside the direct map.
const INIT_TASK_VA: u64 = 0xffff_ffff_8261_4000;

/// The Debian 12 fixture's walk (its real file, socket and `struct sock` offsets), with
/// `tasks` and `files` moved past every member the profile's field programs touch in the 16 KiB
/// a synthetic task has.
fn walk() -> TaskWalk {
    TaskWalk {
        init_task_va: INIT_TASK_VA,
        tasks_off: 0x3f00,
        files_off: 0x3f10,
        ..fixture("debian12-6.1")
            .walk
            .expect("the fixture has the task walk")
    }
}

fn profile() -> KernelProfile {
    let mut p = fixture("debian12-6.1");
    p.walk = Some(walk());
    p
}

struct World {
    g: Guest,
    /// Physical address of init_task.
    init_pa: u64,
    tasks: Vec<u64>,
}

#[derive(Clone, Copy)]
enum File {
    Regular,
    Unix,
    Tcp4 {
        local: [u8; 4],
        lport: u16,
        remote: [u8; 4],
        rport: u16,
        state: u8,
    },
    Udp6 {
        local: [u8; 16],
        lport: u16,
    },
}

impl World {
    fn new() -> World {
        let mut g = Guest::new(profile(), PagingMode::Level4);
        let init_pa = g.alloc(0x4000);
        for page in 0..4 {
            g.map(
                INIT_TASK_VA + page * 0x1000,
                init_pa + page * 0x1000,
                0x1000,
                P | RW,
            );
        }
        let mut w = World {
            g,
            init_pa,
            tasks: Vec::new(),
        };
        w.link();
        w
    }

    fn head_va(&self) -> u64 {
        INIT_TASK_VA + walk().tasks_off as u64
    }

    /// Link init_task and every task into one circular list, in order.
    fn link(&mut self) {
        let off = walk().tasks_off as u64;
        let head = self.head_va();
        let mut prev_pa = self.init_pa + off;
        for &t in &self.tasks.clone() {
            self.g.w64(prev_pa, t + off);
            prev_pa = self.g.pa(t) + off;
        }
        self.g.w64(prev_pa, head);
    }

    fn add(&mut self, pid: u32, uid: u32, exe: u64, files: &[File]) -> u64 {
        let spec = Spec {
            pid,
            tgid: pid,
            uid,
            euid: uid,
            exe,
            ..Spec::default()
        };
        let t = self.g.make_task(&spec);
        self.tasks.push(t);
        self.link();
        if !files.is_empty() {
            self.files(t, files);
        }
        t
    }

    fn files(&mut self, task: u64, files: &[File]) {
        let w = walk();
        let g = &mut self.g;
        let fs = g.alloc(0x100);
        let fdt = g.alloc(0x100);
        let arr = g.alloc(0x1000);
        let task_pa = g.pa(task);
        g.w64(task_pa + w.files_off as u64, g.va(fs));
        g.w64(fs + w.fdt_off as u64, g.va(fdt));
        g.w32(fdt + w.max_fds_off as u64, 64);
        g.w64(fdt + w.fd_off as u64, g.va(arr));
        for (i, f) in files.iter().enumerate() {
            let file = g.alloc(0x100);
            let inode = g.alloc(0x100);
            // Descriptors 0, 2, 4...: holes in between.
            g.w64(arr + 16 * i as u64, g.va(file));
            g.w64(file + w.f_inode_off as u64, g.va(inode));
            let mode: u16 = match f {
                File::Regular => 0o100644,
                _ => 0o140777,
            };
            g.mem
                .write(inode + w.i_mode_off as u64, &mode.to_le_bytes())
                .unwrap();
            if matches!(f, File::Regular) {
                continue;
            }
            let sock = g.alloc(0x100);
            let sk = g.alloc(0x1000);
            g.w64(file + w.private_data_off as u64, g.va(sock));
            g.w64(sock + w.sk_off as u64, g.va(sk));
            let put = |g: &mut Guest, off: u32, b: &[u8]| g.mem.write(sk + off as u64, b).unwrap();
            match *f {
                File::Unix => put(g, w.family_off, &1u16.to_le_bytes()),
                File::Tcp4 {
                    local,
                    lport,
                    remote,
                    rport,
                    state,
                } => {
                    put(g, w.family_off, &AF_INET.to_le_bytes());
                    put(g, w.rcv_saddr_off, &local);
                    put(g, w.daddr_off, &remote);
                    put(g, w.num_off, &lport.to_le_bytes());
                    put(g, w.dport_off, &rport.to_be_bytes());
                    put(g, w.state_off, &[state]);
                    put(g, w.protocol_off, &6u16.to_le_bytes());
                    put(g, w.type_off, &1u16.to_le_bytes());
                }
                File::Udp6 { local, lport } => {
                    put(g, w.family_off, &AF_INET6.to_le_bytes());
                    put(g, w.v6_rcv_saddr_off.unwrap(), &local);
                    put(g, w.num_off, &lport.to_le_bytes());
                    put(g, w.state_off, &[7]);
                    put(g, w.protocol_off, &17u16.to_le_bytes());
                    put(g, w.type_off, &2u16.to_le_bytes());
                }
                File::Regular => {}
            }
        }
    }

    /// Physical address of `task`'s `fdtable` (its file table must exist).
    fn fd_table(&self, task: u64) -> u64 {
        let wk = walk();
        let g = &self.g;
        let fs = g.pa(g.r64(g.pa(task) + wk.files_off as u64));
        g.pa(g.r64(fs + wk.fdt_off as u64))
    }

    /// Physical address of `task`'s fd array.
    fn fd_array(&self, task: u64) -> u64 {
        self.g
            .pa(self.g.r64(self.fd_table(task) + walk().fd_off as u64))
    }

    fn intro(&self) -> Introspector {
        Introspector::new(self.g.profile).unwrap()
    }
}

const TCP: File = File::Tcp4 {
    local: [10, 0, 2, 15],
    lport: 40_000,
    remote: [10, 0, 2, 2],
    rport: 7777,
    state: 1,
};

fn v6() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[15] = 0x15;
    a
}

/// Walk with `limits`, collecting (pid, uid, exe, sockets, cut).
type Seen = (
    Option<u32>,
    Option<u32>,
    Option<u64>,
    Vec<shoji_introspect::tasks::Socket>,
    bool,
);

fn collect(
    w: &World,
    sockets: bool,
    limits: WalkLimits,
) -> (Vec<Seen>, shoji_introspect::tasks::WalkSummary) {
    let mut intro = w.intro();
    let mut seen = Vec::new();
    let s = intro.walk_tasks(&w.g.mem, &w.g.cpu(), sockets, limits, &mut |e| {
        seen.push((
            e.id.pid,
            e.id.uid,
            e.id.exe_inode,
            e.sockets().to_vec(),
            e.sockets_cut,
        ));
        true
    });
    (seen, s)
}

#[test]
fn every_process_is_listed_in_list_order_with_its_inet_sockets() {
    let mut w = World::new();
    w.add(1, 0, 11, &[File::Regular]);
    w.add(
        300,
        1000,
        22,
        &[
            File::Regular,
            File::Unix,
            TCP,
            File::Udp6 {
                local: v6(),
                lport: 546,
            },
        ],
    );
    w.add(301, 0, 33, &[]);
    let (seen, s) = collect(&w, true, WalkLimits::DEFAULT);
    assert_eq!(s.end, WalkEnd::Complete);
    assert_eq!((s.tasks, s.sockets), (3, 2));
    let pids: Vec<_> = seen.iter().map(|t| (t.0, t.1, t.2)).collect();
    assert_eq!(
        pids,
        [
            (Some(1), Some(0), Some(11)),
            (Some(300), Some(1000), Some(22)),
            (Some(301), Some(0), Some(33))
        ]
    );
    assert!(seen[0].3.is_empty(), "a regular file is no socket");
    let socks = &seen[1].3;
    assert_eq!(
        socks.len(),
        2,
        "the unix socket and the regular file are skipped: {socks:?}"
    );
    let t = socks[0];
    assert_eq!(
        (t.family, t.protocol, t.sock_type, t.state),
        (AF_INET, 6, 1, 1)
    );
    assert_eq!((&t.local[..4], t.local_port), (&[10, 0, 2, 15][..], 40_000));
    assert_eq!((&t.remote[..4], t.remote_port), (&[10, 0, 2, 2][..], 7777));
    let u = socks[1];
    assert_eq!(
        (u.family, u.protocol, u.sock_type, u.state),
        (AF_INET6, 17, 2, 7)
    );
    assert_eq!(
        (u.local, u.local_port, u.remote, u.remote_port),
        (v6(), 546, [0; 16], 0)
    );
    assert!(seen.iter().all(|t| !t.4));
}

#[test]
fn without_sockets_no_file_table_is_read() {
    let mut w = World::new();
    w.add(300, 1000, 22, &[TCP]);
    let (with, a) = collect(&w, true, WalkLimits::DEFAULT);
    let (without, b) = collect(&w, false, WalkLimits::DEFAULT);
    assert_eq!(with[0].3.len(), 1);
    assert!(without[0].3.is_empty());
    // The list head and one link per task only.
    assert_eq!(b.reads, 2);
    assert!(a.reads > b.reads + 5, "{} vs {}", a.reads, b.reads);
}

#[test]
fn an_empty_list_is_complete_and_a_missing_walk_is_named() {
    let w = World::new();
    let (seen, s) = collect(&w, true, WalkLimits::DEFAULT);
    assert!(seen.is_empty());
    assert_eq!((s.end, s.tasks), (WalkEnd::Complete, 0));
    let mut p = w.g.profile;
    p.walk = None;
    let mut intro = Introspector::new(p).unwrap();
    let s = intro.walk_tasks(&w.g.mem, &w.g.cpu(), true, WalkLimits::DEFAULT, &mut |_| {
        panic!("no visit")
    });
    assert_eq!(s.end, WalkEnd::NoWalk);
}

#[test]
fn a_looped_list_ends_at_the_task_limit() {
    let mut w = World::new();
    let a = w.add(10, 0, 1, &[]);
    let b = w.add(11, 0, 1, &[]);
    // b points back to a: never returns to init_task.
    let off = walk().tasks_off as u64;
    let b_pa = w.g.pa(b);
    w.g.w64(b_pa + off, a + off);
    let limits = WalkLimits {
        max_tasks: 7,
        ..WalkLimits::DEFAULT
    };
    let (seen, s) = collect(&w, false, limits);
    assert_eq!(s.end, WalkEnd::TaskLimit);
    assert_eq!(seen.len(), 7);
    assert_eq!(seen[6].0, Some(10));
}

#[test]
fn a_link_that_is_no_kernel_address_ends_the_walk_after_the_tasks_before_it() {
    for bad in [0x0000_7fff_0000_1000u64, 0xffff_8880_0000_1003, 0] {
        let mut w = World::new();
        w.add(10, 0, 1, &[]);
        let b = w.add(11, 0, 1, &[]);
        w.add(12, 0, 1, &[]);
        let b_pa = w.g.pa(b);
        w.g.w64(b_pa + walk().tasks_off as u64, bad);
        let (seen, s) = collect(&w, false, WalkLimits::DEFAULT);
        assert_eq!(
            seen.iter().map(|t| t.0).collect::<Vec<_>>(),
            [Some(10), Some(11)],
            "{bad:#x}"
        );
        assert!(
            matches!(s.end, WalkEnd::BadLink(_)),
            "{bad:#x}: {:?}",
            s.end
        );
    }
    // A head that points nowhere.
    let mut w = World::new();
    w.add(10, 0, 1, &[]);
    let at = w.init_pa + walk().tasks_off as u64;
    w.g.w64(at, 0x1234);
    let (seen, s) = collect(&w, false, WalkLimits::DEFAULT);
    assert!(seen.is_empty());
    assert!(matches!(s.end, WalkEnd::BadLink(_)), "{:?}", s.end);
}

#[test]
fn the_read_budget_ends_the_walk_without_losing_a_listed_task() {
    let mut w = World::new();
    for pid in 0..20 {
        w.add(100 + pid, 0, 1, &[TCP, TCP]);
    }
    let (all, full) = collect(&w, true, WalkLimits::DEFAULT);
    assert_eq!((full.end, all.len()), (WalkEnd::Complete, 20));
    let limits = WalkLimits {
        max_reads: full.reads / 2,
        ..WalkLimits::DEFAULT
    };
    let (some, s) = collect(&w, true, limits);
    assert_eq!(s.end, WalkEnd::ReadBudget);
    assert!(s.reads <= limits.max_reads);
    assert!(!some.is_empty() && some.len() < 20, "{}", some.len());
    // What was listed is listed whole.
    for t in &some {
        assert_eq!(t.3.len(), 2);
    }
}

#[test]
fn descriptors_and_sockets_past_the_limits_are_cut_and_flagged() {
    let mut w = World::new();
    w.add(10, 0, 1, &[TCP, TCP, TCP, TCP]);
    // Descriptors 0, 2, 4, 6 hold the sockets: 5 descriptors see three of them.
    let (seen, _) = collect(
        &w,
        true,
        WalkLimits {
            max_fds: 5,
            ..WalkLimits::DEFAULT
        },
    );
    assert_eq!((seen[0].3.len(), seen[0].4), (3, true));
    let (seen, _) = collect(
        &w,
        true,
        WalkLimits {
            max_sockets: 2,
            ..WalkLimits::DEFAULT
        },
    );
    assert_eq!((seen[0].3.len(), seen[0].4), (2, true));
    let (seen, _) = collect(&w, true, WalkLimits::DEFAULT);
    assert_eq!((seen[0].3.len(), seen[0].4), (4, false));
}

#[test]
fn an_unreadable_file_table_still_lists_the_task() {
    let mut w = World::new();
    let t = w.add(10, 0, 1, &[TCP]);
    w.add(11, 0, 1, &[TCP]);
    // task 10's files pointer into Shoji's own memory (unreadable), not a user address.
    let t_pa = w.g.pa(t);
    let hv = w.g.va(HV_START);
    w.g.w64(t_pa + walk().files_off as u64, hv);
    let (seen, s) = collect(&w, true, WalkLimits::DEFAULT);
    assert_eq!(s.end, WalkEnd::Complete);
    assert_eq!(
        seen.iter().map(|t| (t.0, t.3.len())).collect::<Vec<_>>(),
        [(Some(10), 0), (Some(11), 1)]
    );
}

#[test]
fn the_visitor_stops_the_walk_and_the_cache_is_untouched() {
    let mut w = World::new();
    for pid in 0..5 {
        w.add(100 + pid, 0, 1, &[]);
    }
    let mut intro = w.intro();
    let before = intro.stats();
    let mut n = 0;
    let s = intro.walk_tasks(
        &w.g.mem,
        &w.g.cpu(),
        false,
        WalkLimits::DEFAULT,
        &mut |_| {
            n += 1;
            n < 3
        },
    );
    // The third entry was refused: two are listed.
    assert_eq!((s.end, s.tasks, n), (WalkEnd::Stopped, 2, 3));
    assert_eq!(intro.stats(), before);
}

#[test]
fn entries_render_as_json_lines_that_parse_and_escape_what_the_guest_names() {
    let mut w = World::new();
    let t = w.add(
        300,
        1000,
        22,
        &[
            TCP,
            File::Udp6 {
                local: v6(),
                lport: 546,
            },
        ],
    );
    // A hostile comm: quote, backslash, a byte above ASCII (control bytes make it unknown).
    let comm_prog = *w.g.profile.field(shoji_shared::profile::FieldId::Comm);
    let comm_off = comm_prog.steps().last().unwrap().off as u64;
    let t_pa = w.g.pa(t);
    w.g.mem
        .write(t_pa + comm_off, b"a\"b\\c\xe9d\0\0\0\0\0\0\0\0\0")
        .unwrap();
    let mut intro = w.intro();
    let mut text = String::new();
    let s = intro.walk_tasks(&w.g.mem, &w.g.cpu(), true, WalkLimits::DEFAULT, &mut |e| {
        e.write_json(Some(7), true, &mut text).unwrap();
        true
    });
    s.write_json(&mut text).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let t = &lines[0];
    assert_eq!(t["pid"], 300);
    assert_eq!(t["uid"], 1000);
    assert_eq!(t["exe_inode"], 22);
    assert_eq!(t["container"], 7);
    assert_eq!(t["kthread"], false);
    assert_eq!(t["comm"], "a\"b\\c\u{e9}d");
    assert_eq!(t["sockets"][0]["protocol"], "tcp");
    assert_eq!(t["sockets"][0]["state"], "ESTABLISHED");
    assert_eq!(t["sockets"][0]["local"], "10.0.2.15:40000");
    assert_eq!(t["sockets"][0]["remote"], "10.0.2.2:7777");
    assert_eq!(t["sockets"][1]["family"], "ipv6");
    assert_eq!(t["sockets"][1]["protocol"], "udp");
    assert_eq!(t["sockets"][1]["state"], "UNCONNECTED");
    assert_eq!(t["sockets"][1]["local"], "[fe80::15]:546");
    assert_eq!(t["sockets"][1]["remote"], "[::]:0");
    assert_eq!(t["sockets_cut"], false);
    assert_eq!(
        lines[1],
        serde_json::json!({"end": "complete", "complete": true, "tasks": 1, "sockets": 2, "reads": s.reads})
    );
    // Without sockets, and with no container: no socket keys, container null.
    let mut intro = w.intro();
    let mut text = String::new();
    intro.walk_tasks(&w.g.mem, &w.g.cpu(), false, WalkLimits::DEFAULT, &mut |e| {
        e.write_json(None, false, &mut text).unwrap();
        true
    });
    let t: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(t["container"], serde_json::Value::Null);
    assert!(t.get("sockets").is_none());
}

/// One task whose fd array holds `max_fds` slots with sockets at the given descriptors (the
/// array's page holds 512, so descriptors past `max_fds` can hold sockets the walk must not see).
fn task_with_sockets_at(max_fds: u32, fds: &[usize]) -> World {
    let mut w = World::new();
    let t = w.add(10, 0, 1, &[]);
    w.files(t, &[]);
    let fdt = w.fd_table(t);
    w.g.w32(fdt + walk().max_fds_off as u64, max_fds);
    let arr = w.fd_array(t);
    // A donor task's socket file, placed at each descriptor.
    let donor = w.add(11, 0, 1, &[TCP]);
    let file = w.g.r64(w.fd_array(donor));
    for &fd in fds {
        w.g.w64(arr + 8 * fd as u64, file);
    }
    w
}

#[test]
fn descriptors_are_read_in_chunks_up_to_max_fds_and_no_further() {
    // 40 descriptors: two chunks (32 + 8); sockets at 0, 33 and 39 are seen, 40 and 45 are not.
    let w = task_with_sockets_at(40, &[0, 33, 39, 40, 45]);
    let (seen, _) = collect(&w, true, WalkLimits::DEFAULT);
    assert_eq!(
        (seen[0].0, seen[0].3.len(), seen[0].4),
        (Some(10), 3, false)
    );
    // max_fds exactly at the limit is not cut; one more is.
    let limits = WalkLimits {
        max_fds: 40,
        ..WalkLimits::DEFAULT
    };
    let (seen, _) = collect(&w, true, limits);
    assert_eq!((seen[0].3.len(), seen[0].4), (3, false));
    let limits = WalkLimits {
        max_fds: 39,
        ..WalkLimits::DEFAULT
    };
    let (seen, _) = collect(&w, true, limits);
    assert_eq!((seen[0].3.len(), seen[0].4), (2, true));
}

#[test]
fn empty_descriptors_cost_no_reads_of_their_own() {
    // One socket among 64 descriptors: the list head, the task's link, its file table (files,
    // fdt, max_fds, fd: 4 reads), two chunks of 32 descriptors, and the socket (f_inode,
    // i_mode, private_data, sk, family, two addresses, state, two ports, protocol, type: 12).
    let mut w = World::new();
    w.add(10, 0, 1, &[TCP]);
    let (seen, s) = collect(&w, true, WalkLimits::DEFAULT);
    assert_eq!(seen[0].3.len(), 1);
    assert_eq!(s.reads, 1 + 1 + 4 + 2 + 12);
    // Descriptors holding what is no kernel pointer (a user address, a misaligned one) are
    // skipped without a read.
    let mut bogus = World::new();
    let t = bogus.add(10, 0, 1, &[TCP]);
    let arr = bogus.fd_array(t);
    bogus.g.w64(arr + 8 * 5, 0x0000_7fff_0000_1000);
    bogus.g.w64(arr + 8 * 6, 0xffff_8880_0000_1004);
    let (seen, s) = collect(&bogus, true, WalkLimits::DEFAULT);
    assert_eq!(seen[0].3.len(), 1);
    assert_eq!(s.reads, 1 + 1 + 4 + 2 + 12);
    // A regular file costs its inode's two reads.
    let mut w = World::new();
    w.add(10, 0, 1, &[File::Regular]);
    let (_, s) = collect(&w, true, WalkLimits::DEFAULT);
    assert_eq!(s.reads, 1 + 1 + 4 + 2 + 2);
}

#[test]
fn state_and_protocol_names() {
    use shoji_introspect::tasks::{tcp_state_name, Socket};
    let states = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    for (i, name) in states.iter().enumerate() {
        assert_eq!(tcp_state_name(i as u8 + 1), *name);
    }
    assert_eq!(tcp_state_name(0), "UNKNOWN");
    assert_eq!(tcp_state_name(13), "UNKNOWN");
    let json = |protocol: u16, state: u8| {
        let s = Socket {
            family: AF_INET,
            protocol,
            sock_type: 2,
            state,
            ..Socket::default()
        };
        let mut out = String::new();
        s.write_json(&mut out).unwrap();
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    for (p, name) in [
        (1, "icmp"),
        (6, "tcp"),
        (17, "udp"),
        (58, "icmpv6"),
        (132, "sctp"),
        (136, "udplite"),
    ] {
        assert_eq!(json(p, 1)["protocol"], name);
    }
    assert_eq!(json(255, 1)["protocol"], 255);
    // Only TCP has TCP states; the others are connected (1) or not.
    assert_eq!(json(6, 10)["state"], "LISTEN");
    assert_eq!(json(17, 1)["state"], "CONNECTED");
    assert_eq!(json(17, 7)["state"], "UNCONNECTED");
    assert_eq!(json(1, 10)["state"], "UNCONNECTED");
}

#[test]
fn a_one_byte_protocol_is_read_as_one_byte() {
    let mut w = World::new();
    let t = w.add(10, 0, 1, &[TCP]);
    // The same socket, read with a one-byte sk_protocol whose next byte is not zero.
    let wk = walk();
    let arr = w.fd_array(t);
    let g = &mut w.g;
    let file = g.pa(g.r64(arr));
    let sock = g.pa(g.r64(file + wk.private_data_off as u64));
    let sk = g.pa(g.r64(sock + wk.sk_off as u64));
    g.mem
        .write(sk + wk.protocol_off as u64 + 1, &[0xff])
        .unwrap();
    let mut p = w.g.profile;
    p.walk = Some(TaskWalk {
        protocol_width: 1,
        ..wk
    });
    let mut intro = Introspector::new(p).unwrap();
    let mut protocols = Vec::new();
    intro.walk_tasks(&w.g.mem, &w.g.cpu(), true, WalkLimits::DEFAULT, &mut |e| {
        protocols.extend(e.sockets().iter().map(|s| s.protocol));
        true
    });
    assert_eq!(protocols, [6]);
    // Read as two bytes, the same memory is another protocol: the width matters.
    let (seen, _) = collect(&w, true, WalkLimits::DEFAULT);
    assert_eq!(seen[0].3[0].protocol, 0xff06);
}

#[test]
fn a_walk_that_did_not_start_ends_its_answer_with_the_reason() {
    use shoji_introspect::tasks::WalkSummary;
    for (end, text) in [
        (WalkEnd::NoProfile, "no kernel profile"),
        (
            WalkEnd::NotPaged,
            "the guest is not in 64-bit paging at this exit",
        ),
        (WalkEnd::NoWalk, "the kernel profile has no task walk"),
    ] {
        let mut out = String::new();
        WalkSummary::not_started(end).write_json(&mut out).unwrap();
        assert_eq!(
            out,
            format!(
                "{{\"end\":\"{text}\",\"complete\":false,\"tasks\":0,\"sockets\":0,\"reads\":0}}\n"
            )
        );
    }
}
