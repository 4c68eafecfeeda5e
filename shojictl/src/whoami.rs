//! `shojictl whoami`: what Shoji says about the caller, compared field by field with what the
//! kernel says (system calls and `/proc/self`).

use std::fmt::Write as _;

use shoji_shared::{ExecContext, TaskIdentity};

/// What the kernel itself says about the calling process. `None`: not observable from here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSays {
    /// Global pid (first `NSpid` entry, /proc mounted from the initial pid namespace).
    pub pid: Option<u32>,
    /// Global tgid (first `NStgid` entry).
    pub tgid: Option<u32>,
    /// Thread id in the caller's own pid namespace (`gettid`).
    pub pid_local: Option<u32>,
    /// Process id in the caller's own pid namespace (`getpid`).
    pub tgid_local: Option<u32>,
    /// Global process group (first `NSpgid` entry).
    pub pgid: Option<u32>,
    /// Global uid (`getuid` mapped through `/proc/self/uid_map`).
    pub uid: Option<u32>,
    /// Global euid.
    pub euid: Option<u32>,
    /// uid in the caller's user namespace (`getuid`), `None` when unmapped.
    pub uid_local: Option<u32>,
    /// `/proc/self/ns/user` inode.
    pub userns_id: Option<u32>,
    /// `/proc/self/ns/net` inode.
    pub netns_id: Option<u32>,
    /// `/proc/self/ns/pid` inode.
    pub pidns_id: Option<u32>,
    /// Inode of the process's cgroup v2 directory (`None` without a cgroup2 mount).
    pub cgroup_id: Option<u64>,
    /// Whether cgroup2 is mounted at `/sys/fs/cgroup` (without it, and only then, cgroup_id may
    /// go unchecked).
    pub cgroup2: bool,
    /// Start time in clock ticks after boot (`/proc/self/stat` field 22).
    pub start_ticks: Option<u64>,
    /// Clock ticks per second.
    pub hz: u64,
    /// Inode of `/proc/self/exe`.
    pub exe_inode: Option<u64>,
    /// `/proc/self/comm`.
    pub comm: Option<String>,
    /// Whether the uid map could be read (an empty map means "unmapped").
    pub uid_map_known: bool,
}

/// One field's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Field name.
    pub name: &'static str,
    /// Shoji's value, rendered ("unknown" when Shoji could not read it).
    pub shoji: String,
    /// The kernel's value, rendered.
    pub kernel: String,
    /// `Match`, `Mismatch`, `Unknown` (Shoji could not read a value the kernel has),
    /// `Unchecked` (the kernel's value is not observable from here, allowed only for cgroup_id
    /// without a cgroup2 mount) or `Unreadable` (the kernel's value of a field whoami promises
    /// to compare could not be read).
    pub verdict: Verdict,
}

/// Per-field verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Equal.
    Match,
    /// Different.
    Mismatch,
    /// Shoji reported nothing for a value the kernel has.
    Unknown,
    /// Not observable from the caller's side (cgroup_id without a cgroup2 mount).
    Unchecked,
    /// The kernel's value of a field that must be compared could not be read: no comparison,
    /// so no MATCH.
    Unreadable,
}

/// Every field whoami compares (shojictl/README.md lists them); a MATCH needs each of them
/// compared, except cgroup_id without a cgroup2 mount.
pub const FIELDS: [&str; 16] = [
    "context",
    "pid",
    "tgid",
    "pid_local",
    "tgid_local",
    "pgid",
    "uid",
    "euid",
    "uid_local",
    "userns_id",
    "netns_id",
    "pidns_id",
    "cgroup_id",
    "start_time",
    "exe_inode",
    "comm",
];

fn show<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into())
}

fn cmp<T: PartialEq + std::fmt::Display + Copy>(
    name: &'static str,
    shoji: Option<T>,
    kernel: Option<T>,
) -> Row {
    let verdict = match (shoji, kernel) {
        (Some(a), Some(b)) if a == b => Verdict::Match,
        (Some(_), Some(_)) => Verdict::Mismatch,
        (None, Some(_)) => Verdict::Unknown,
        (_, None) => Verdict::Unchecked,
    };
    Row {
        name,
        shoji: show(shoji),
        kernel: kernel
            .map(|v| v.to_string())
            .unwrap_or_else(|| "n/a".into()),
        verdict,
    }
}

/// Compare Shoji's answer with the kernel's, field by field.
pub fn compare(id: &TaskIdentity, k: &KernelSays) -> Vec<Row> {
    let mut rows = vec![Row {
        name: "context",
        shoji: format!("{:?}", id.context),
        kernel: "Task".into(),
        verdict: if id.context == ExecContext::Task {
            Verdict::Match
        } else {
            Verdict::Mismatch
        },
    }];
    rows.push(cmp("pid", id.pid, k.pid));
    rows.push(cmp("tgid", id.tgid, k.tgid));
    rows.push(cmp("pid_local", id.pid_local, k.pid_local));
    rows.push(cmp("tgid_local", id.tgid_local, k.tgid_local));
    rows.push(cmp("pgid", id.pgid, k.pgid));
    rows.push(cmp("uid", id.uid, k.uid));
    rows.push(cmp("euid", id.euid, k.euid));
    if k.uid_map_known && k.uid_local.is_none() {
        // Unmapped in the caller's namespace: Shoji must say unknown too.
        rows.push(Row {
            name: "uid_local",
            shoji: show(id.uid_local),
            kernel: "unmapped".into(),
            verdict: if id.uid_local.is_none() {
                Verdict::Match
            } else {
                Verdict::Mismatch
            },
        });
    } else {
        rows.push(cmp("uid_local", id.uid_local, k.uid_local));
    }
    rows.push(cmp("userns_id", id.userns_id, k.userns_id));
    rows.push(cmp("netns_id", id.netns_id, k.netns_id));
    rows.push(cmp("pidns_id", id.pidns_id, k.pidns_id));
    rows.push(cmp("cgroup_id", id.cgroup_id, k.cgroup_id));
    // start_time is in ns (monotonic); /proc counts clock ticks: allow one tick of rounding.
    let ticks = id.start_time.map(|ns| ns / (1_000_000_000 / k.hz.max(1)));
    let mut st = cmp("start_time", ticks, k.start_ticks);
    if let (Some(a), Some(b)) = (ticks, k.start_ticks) {
        if a.abs_diff(b) <= 1 {
            st.verdict = Verdict::Match;
        }
    }
    st.shoji = format!("{} ticks", st.shoji);
    rows.push(st);
    rows.push(cmp("exe_inode", id.exe_inode, k.exe_inode));
    let comm = id.comm.map(|c| {
        let n = c.iter().position(|&b| b == 0).unwrap_or(c.len());
        String::from_utf8_lossy(&c[..n]).into_owned()
    });
    rows.push(Row {
        name: "comm",
        verdict: match (&comm, &k.comm) {
            (Some(a), Some(b)) if a == b => Verdict::Match,
            (Some(_), Some(_)) => Verdict::Mismatch,
            (None, Some(_)) => Verdict::Unknown,
            (_, None) => Verdict::Unchecked,
        },
        shoji: comm.unwrap_or_else(|| "unknown".into()),
        kernel: k.comm.clone().unwrap_or_else(|| "n/a".into()),
    });
    // A field goes unchecked only where the README allows it.
    for r in &mut rows {
        if r.verdict == Verdict::Unchecked && (r.name != "cgroup_id" || k.cgroup2) {
            r.verdict = Verdict::Unreadable;
        }
    }
    rows
}

/// Render the table and a one-line summary; `true` when every field of [`FIELDS`] is there
/// and matches, but cgroup_id unchecked without a cgroup2 mount.
pub fn render(rows: &[Row]) -> (String, bool) {
    let mut o = String::new();
    let mut bad: Vec<&str> = FIELDS
        .iter()
        .copied()
        .filter(|f| !rows.iter().any(|r| r.name == *f))
        .collect();
    let mut unchecked = Vec::new();
    for r in rows {
        let v = match r.verdict {
            Verdict::Match => "ok",
            Verdict::Mismatch => "MISMATCH",
            Verdict::Unknown => "UNKNOWN",
            Verdict::Unchecked => "unchecked",
            Verdict::Unreadable => "UNREADABLE",
        };
        let _ = writeln!(
            o,
            "{:<11} shoji={:<22} kernel={:<22} {v}",
            r.name, r.shoji, r.kernel
        );
        match r.verdict {
            Verdict::Mismatch | Verdict::Unknown | Verdict::Unreadable => bad.push(r.name),
            Verdict::Unchecked => unchecked.push(r.name),
            Verdict::Match => {}
        }
    }
    let compared = rows.len() - unchecked.len();
    if bad.is_empty() {
        if unchecked.is_empty() {
            let _ = write!(o, "whoami: MATCH on all {compared} fields");
        } else {
            let _ = write!(
                o,
                "whoami: MATCH on {compared} of {} fields (not observable here: {})",
                rows.len(),
                unchecked.join(",")
            );
        }
        o.push('\n');
    } else {
        let _ = writeln!(o, "whoami: MISMATCH/unknown in {}", bad.join(","));
    }
    (o, bad.is_empty())
}

/// Parse a `/proc/self/status` line such as `NSpid:\t412\t1` into its numbers.
pub fn status_list(status: &str, key: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Map a namespace-local id to the parent namespace through a `uid_map` text
/// (`first lower count` per line). `None` when no extent covers it.
pub fn map_up(uid_map: &str, local: u32) -> Option<u32> {
    for l in uid_map.lines() {
        let v: Vec<u64> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [first, lower, count] = v[..] {
            let x = local as u64;
            if x >= first && x < first + count {
                return u32::try_from(lower + (x - first)).ok();
            }
        }
    }
    None
}

/// The inode in a namespace link such as `net:[4026531840]`.
pub fn ns_inode(link: &str) -> Option<u32> {
    link.split_once('[')?.1.strip_suffix(']')?.parse().ok()
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` text, for `n` >= 3: the fields
/// after the comm in parentheses, which may itself hold spaces and parentheses.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(n.checked_sub(3)?)
}

/// Field 22 (starttime) of `/proc/self/stat`.
pub fn stat_starttime(stat: &str) -> Option<u64> {
    stat_field(stat, 22)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        let st = "Name:\tsh\nNSpid:\t412\t1\nNSpgid:\t400\nUid:\t0\t0\t0\t0\n";
        assert_eq!(status_list(st, "NSpid"), vec![412, 1]);
        assert_eq!(status_list(st, "NSpgid"), vec![400]);
        assert_eq!(status_list(st, "NStgid"), Vec::<u32>::new());
        assert_eq!(map_up("         0       1000          1\n", 0), Some(1000));
        assert_eq!(map_up("         0       1000          1\n", 5), None);
        assert_eq!(map_up("0 0 4294967295\n", 1000), Some(1000));
        assert_eq!(ns_inode("net:[4026531840]"), Some(4026531840));
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 1234 100 0";
        assert_eq!(stat_starttime(stat), Some(1234));
    }

    #[test]
    fn compare_flags_differences() {
        let id = TaskIdentity {
            context: ExecContext::Task,
            pid: Some(5),
            tgid: Some(5),
            uid: Some(0),
            comm: Some(*b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
            start_time: Some(12_340_000_000),
            ..Default::default()
        };
        let k = KernelSays {
            pid: Some(5),
            tgid: Some(6),
            uid: Some(0),
            netns_id: Some(4026531840),
            comm: Some("sh".into()),
            start_ticks: Some(1235),
            hz: 100,
            ..Default::default()
        };
        let rows = compare(&id, &k);
        let v = |n: &str| rows.iter().find(|r| r.name == n).unwrap().verdict;
        assert_eq!(v("pid"), Verdict::Match);
        assert_eq!(v("tgid"), Verdict::Mismatch);
        assert_eq!(v("netns_id"), Verdict::Unknown);
        assert_eq!(v("cgroup_id"), Verdict::Unchecked);
        assert_eq!(v("comm"), Verdict::Match);
        assert_eq!(v("start_time"), Verdict::Match);
        // Fields the kernel side could not read are not skipped: no comparison, no MATCH.
        assert_eq!(v("pidns_id"), Verdict::Unreadable);
        assert_eq!(v("exe_inode"), Verdict::Unreadable);
        let (text, ok) = render(&rows);
        assert!(!ok);
        assert!(
            text.contains(
                "MISMATCH/unknown in tgid,pid_local,tgid_local,pgid,euid,uid_local,userns_id,\
                 netns_id,pidns_id,exe_inode\n"
            ),
            "{text}"
        );
    }

    fn full() -> (TaskIdentity, KernelSays) {
        let id = TaskIdentity {
            context: ExecContext::Task,
            pid: Some(5),
            tgid: Some(5),
            pid_local: Some(5),
            tgid_local: Some(5),
            pgid: Some(5),
            uid: Some(0),
            euid: Some(0),
            uid_local: Some(0),
            userns_id: Some(1),
            netns_id: Some(2),
            pidns_id: Some(3),
            cgroup_id: Some(4),
            start_time: Some(12_340_000_000),
            exe_inode: Some(6),
            comm: Some(*b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
            ..Default::default()
        };
        let k = KernelSays {
            pid: Some(5),
            tgid: Some(5),
            pid_local: Some(5),
            tgid_local: Some(5),
            pgid: Some(5),
            uid: Some(0),
            euid: Some(0),
            uid_local: Some(0),
            userns_id: Some(1),
            netns_id: Some(2),
            pidns_id: Some(3),
            cgroup_id: Some(4),
            cgroup2: true,
            start_ticks: Some(1234),
            hz: 100,
            exe_inode: Some(6),
            comm: Some("sh".into()),
            uid_map_known: true,
        };
        (id, k)
    }

    #[test]
    fn match_needs_every_promised_field_compared() {
        let (id, k) = full();
        let rows = compare(&id, &k);
        assert_eq!(rows.iter().map(|r| r.name).collect::<Vec<_>>(), FIELDS);
        let (text, ok) = render(&rows);
        assert!(
            ok && text.ends_with("whoami: MATCH on all 16 fields\n"),
            "{text}"
        );
        // Without a cgroup2 mount (and only then) cgroup_id may go unchecked.
        let k2 = KernelSays {
            cgroup_id: None,
            cgroup2: false,
            ..k.clone()
        };
        let (text, ok) = render(&compare(&id, &k2));
        assert!(ok, "{text}");
        assert!(text.contains("MATCH on 15 of 16 fields (not observable here: cgroup_id)"));
        let k3 = KernelSays {
            cgroup_id: None,
            ..k.clone()
        };
        let (text, ok) = render(&compare(&id, &k3));
        assert!(
            !ok && text.contains("MISMATCH/unknown in cgroup_id"),
            "{text}"
        );
        // A field the kernel side cannot read is no match either.
        let k4 = KernelSays {
            exe_inode: None,
            ..k.clone()
        };
        let (text, ok) = render(&compare(&id, &k4));
        assert!(
            !ok && text.contains("MISMATCH/unknown in exe_inode"),
            "{text}"
        );
        // Nor is a reply with a field missing altogether.
        let rows: Vec<Row> = compare(&id, &k)
            .into_iter()
            .filter(|r| r.name != "comm")
            .collect();
        let (text, ok) = render(&rows);
        assert!(!ok && text.contains("MISMATCH/unknown in comm"), "{text}");
    }
}
