//! The containers scenario: crun containers A and B in the guest, B attacking A and the peer;
//! a CONTROL phase without the Shoji hooks (the attacks succeed) and a PROTECTED phase with them
//! (the attacks are dropped), in one boot. The peer (tap0 in the namespace) is the witness: its
//! neighbour table and a UDP sink on it. The guest's side is `guest/containers.sh`.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::emulator::{Machine, Stream};
use crate::netns::{flush_peer_neigh, neigh_mac, peer_neigh, send_msg, Netns};
use crate::scenarios::{markers, Report};
use crate::util::GroupChild;

/// Container A's MAC and address.
const A_MAC: &str = "02:00:00:00:00:0a";
const A_IP: &str = "10.0.2.21";
/// Container B's MAC and address.
const B_MAC: &str = "02:00:00:00:00:0b";
const B_IP: &str = "10.0.2.22";
/// The peer's UDP sink port (only A may reach it).
pub const SINK_PORT: u16 = 9999;

/// IPv4 identifications of B's fragmented datagrams (`probe raw-frag --first-id`): control and
/// protected phase, 5 each.
const FRAG_IDS_CONTROL: std::ops::Range<u16> = 0xc000..0xc005;
const FRAG_IDS_PROTECTED: std::ops::Range<u16> = 0xd000..0xd005;

/// The witness for the fragment attacks: tcpdump on the peer's tap, capturing the later IPv4
/// fragments (offset > 0) that come from B, independent of Shoji's counters.
pub struct FragCapture {
    child: GroupChild,
    text: std::path::PathBuf,
}

impl FragCapture {
    /// Start the capture in `ns`, writing what it sees to `DIR/frag-capture.txt`.
    pub fn start(ns: &Netns, dir: &Path) -> Result<FragCapture> {
        let text = dir.join("frag-capture.txt");
        let out = std::fs::File::create(&text)?;
        let filter = format!("ip and src host {B_IP} and (ip[6:2] & 0x1fff) != 0");
        let mut c = ns.command(
            "tcpdump",
            ["-i", crate::netns::TAP, "-n", "-l", "-U", "-v", &filter],
        );
        c.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(std::fs::File::create(dir.join("frag-capture.log"))?);
        Ok(FragCapture {
            child: GroupChild::spawn(&mut c)?,
            text,
        })
    }

    /// Later fragments seen whose identification is in `ids`.
    fn later_fragments(&self, ids: std::ops::Range<u16>) -> usize {
        let text = std::fs::read_to_string(&self.text).unwrap_or_default();
        later_fragment_ids(&text)
            .filter(|id| ids.contains(id))
            .count()
    }
}

impl Drop for FragCapture {
    fn drop(&mut self) {
        self.child.kill();
    }
}

/// The identification of each later fragment in `tcpdump -v` output ("IP (tos 0x0, ttl 64, id
/// 53248, offset 16, flags [none], ...").
fn later_fragment_ids(text: &str) -> impl Iterator<Item = u16> + '_ {
    text.lines().filter_map(|l| {
        let id = l
            .split_once(" id ")?
            .1
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()?;
        let offset: u32 = l
            .split_once(" offset ")?
            .1
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()?;
        (offset > 0).then_some(id)
    })
}

/// The peer's UDP sink, running in the namespace until dropped.
pub struct UdpSink {
    child: GroupChild,
    summary: std::path::PathBuf,
}

impl UdpSink {
    /// Start `xtask udp-sink` on `port` in `ns`, writing its summary and log into `dir` as
    /// `NAME.txt` and `NAME.log`.
    pub fn start(ns: &Netns, dir: &Path, port: u16, name: &str) -> Result<UdpSink> {
        let exe = std::env::current_exe()?;
        let summary = dir.join(format!("{name}.txt"));
        let _ = std::fs::remove_file(&summary);
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut c = ns.command(
            &exe.to_string_lossy(),
            [
                "udp-sink".as_ref(),
                port.to_string().as_ref(),
                summary.as_os_str(),
            ],
        );
        c.stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(UdpSink {
            child: GroupChild::spawn(&mut c)?,
            summary,
        })
    }

    /// Datagrams received so far from `ip` whose payload tag is `tag`.
    pub fn count(&self, ip: &str, tag: &str) -> u64 {
        let text = std::fs::read_to_string(&self.summary).unwrap_or_default();
        sink_count(&text, ip, tag)
    }

    /// Datagrams received so far from `ip`, whatever their payload.
    pub fn total(&self, ip: &str) -> u64 {
        let text = std::fs::read_to_string(&self.summary).unwrap_or_default();
        let from = format!("from={ip}");
        text.lines()
            .filter(|l| l.split_whitespace().next() == Some(from.as_str()))
            .filter_map(|l| l.rsplit_once("count=")?.1.trim().parse::<u64>().ok())
            .sum()
    }

    /// The whole summary, for the report.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.summary).unwrap_or_default()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.child.kill();
    }
}

/// Count in a sink summary (`from=IP tag=TAG count=N` lines).
fn sink_count(text: &str, ip: &str, tag: &str) -> u64 {
    let (from, t) = (format!("from={ip}"), format!("tag={tag}"));
    text.lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(from.as_str()) && w.next() == Some(t.as_str())
        })
        .filter_map(|l| {
            l.rsplit_once("count=")
                .and_then(|(_, n)| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// A check line of the guest script: `SHOJI-TEST: ctr NAME rc=RC :: LAST`.
struct Step<'a> {
    line: &'a str,
    rc: Option<i32>,
    /// The indented output lines (`  [NAME] ...`).
    output: Vec<&'a str>,
}

impl Step<'_> {
    fn ok(&self) -> bool {
        self.rc == Some(0)
    }
    fn failed(&self) -> bool {
        self.rc.is_some_and(|r| r != 0)
    }
}

/// The guest's step `name`. A step that ran more than once is refused (no rc, so neither ok nor
/// failed): its result line and output could belong to any of the runs.
fn step<'a>(console: &'a str, name: &str) -> Step<'a> {
    let prefix = format!("{} {name} rc=", markers::CTR);
    let lines: Vec<&str> = console
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(&prefix))
        .collect();
    let (line, rc) = match lines[..] {
        [] => ("no line", None),
        [line] => (
            line,
            line.strip_prefix(&prefix)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|r| r.parse().ok()),
        ),
        _ => ("step name used more than once in the guest script", None),
    };
    let tag = format!("[{name}] ");
    let output = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix(tag.as_str()))
        .collect();
    Step { line, rc, output }
}

/// A `stats container id=ID ...` line from a step's output.
fn stats_line<'a>(s: &Step<'a>, id: u32) -> Option<&'a str> {
    let pat = format!("container id={id} ");
    s.output.iter().copied().find(|l| l.contains(&pat))
}

/// `key=N` from a line.
fn num(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// How many calls answered `status` in a `uniq -c` summary of `probe log-counters` lines
/// joined on one line ("72 probe log-counters: status=10 (rate limited) 8 probe ...").
fn status_count(line: &str, status: u64) -> u64 {
    let want = format!("status={status}");
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(4)
        .filter(|w| w[1] == "probe" && w[2] == "log-counters:" && w[3] == want)
        .filter_map(|w| w[0].parse::<u64>().ok())
        .sum()
}

/// Was the refusal a refusal for who the caller is (not some other failure)?
fn refused(s: &Step<'_>) -> bool {
    let text = s.output.join(" ").to_ascii_lowercase().replace(' ', "");
    s.failed() && text.contains("notauthorized")
}

/// Wait for a sync point, look at the peer's side with `look`, then answer the guest.
fn sync(
    m: &mut Machine,
    ns: &Netns,
    rep: &mut Report,
    name: &str,
    timeout: Duration,
    peer_log: &mut String,
    look: impl FnOnce(&mut Report, &mut String),
) -> Result<()> {
    let pat = format!("{} {name}", markers::SYNC);
    let (_, at) = m.wait_for(Stream::Console, &pat, timeout, &[])?;
    rep.times.push((format!("sync {name}"), at));
    // Let the last datagrams reach the sink and its summary be written.
    std::thread::sleep(Duration::from_millis(1500));
    look(rep, peer_log);
    let sent = send_msg(ns, "go", peer_log);
    rep.check(
        format!("peer answers the guest at sync point {name}"),
        sent,
        if sent { "sent" } else { "NOT sent" },
    );
    Ok(())
}

/// The peer-side checks of one phase: its neighbour entry for A, whether B's ARP reached it,
/// and what its UDP sink received.
fn peer_phase(
    rep: &mut Report,
    ns: &Netns,
    sink: &UdpSink,
    protected: bool,
    peer_log: &mut String,
) {
    let neigh = peer_neigh(ns);
    peer_log.push_str(&format!(
        "ip neigh ({}):\n{neigh}\nudp sink:\n{}\n",
        if protected { "protected" } else { "control" },
        sink.text()
    ));
    let phase = if protected { "protected" } else { "control" };
    rep.highlights.push(format!(
        "witness (the peer) ARP table after the {phase} phase's attacks:"
    ));
    for l in neigh.lines().filter(|l| !l.trim().is_empty()) {
        rep.highlights.push(format!("    {}", l.trim()));
    }
    let a = neigh_mac(&neigh, A_IP);
    let b = neigh_mac(&neigh, B_IP);
    let show = |m: &Option<String>| m.clone().unwrap_or_else(|| "no entry".into());
    let detail = format!("{A_IP} -> {}, {B_IP} -> {}", show(&a), show(&b));
    if protected {
        rep.check(
            "ARP spoof blocked: the peer's entry for A keeps A's MAC",
            a.as_deref() == Some(A_MAC),
            detail.clone(),
        );
        rep.check(
            "isolation: B's ARP never reached the peer (no entry for B)",
            b.is_none(),
            detail,
        );
        for (tag, what) in [
            (
                "imp-protected",
                "impersonation (A's MAC and IP from B) dropped",
            ),
            ("imp-flood", "impersonation while flooding dropped"),
            ("imp-setsid", "impersonation after setsid dropped"),
        ] {
            let n = sink.count(A_IP, tag);
            rep.check(what, n == 0, format!("sink got {n} datagrams tagged {tag}"));
        }
        let n = sink.count(B_IP, "b-protected");
        rep.check(
            "isolation: B's IPv4 to the peer dropped",
            n == 0,
            format!("sink got {n} datagrams tagged b-protected"),
        );
        let n = sink.count(A_IP, "a-protected");
        rep.check(
            "A's own UDP to the peer passes",
            n > 0,
            format!("sink got {n} datagrams tagged a-protected"),
        );
        let n = sink.count(A_IP, "dhcp-server-protected");
        rep.check(
            "first-hop guard: A's UDP from port 67 (a DHCP server's answer) never reaches the peer",
            n == 0,
            format!("sink got {n} datagrams tagged dhcp-server-protected"),
        );
    } else {
        rep.check(
            "control: B's forged ARP replies poison the peer's entry for A (B's MAC)",
            a.as_deref() == Some(B_MAC),
            detail.clone(),
        );
        rep.check(
            "control: B's ARP reaches the peer (entry for B)",
            b.as_deref() == Some(B_MAC),
            detail,
        );
        let n = sink.count(A_IP, "imp-control");
        rep.check(
            "control: impersonated datagrams (A's MAC and IP from B) arrive",
            n > 0,
            format!("sink got {n} datagrams tagged imp-control from {A_IP}"),
        );
        let n = sink.count(B_IP, "b-control");
        rep.check(
            "control: B's IPv4 reaches the peer",
            n > 0,
            format!("sink got {n} datagrams tagged b-control"),
        );
        let n = sink.count(A_IP, "dhcp-server-control");
        rep.check(
            "control: A's UDP from port 67 (a DHCP server's answer) reaches the peer",
            n > 0,
            format!("sink got {n} datagrams tagged dhcp-server-control"),
        );
    }
    if let Err(e) = flush_peer_neigh(ns) {
        peer_log.push_str(&format!("ip neigh flush: {e:#}\n"));
    }
}

/// The host's address in the guest (on `br0`).
const HOST_IP: &str = "10.0.2.15";
/// The scanner's address: a second address of the peer, so that the detector's block of it
/// leaves the peer's own traffic (and the sync messages) alone.
const SCANNER_IP: &str = crate::mgmt::OUTSIDER_IP;

/// How nmap found a target's 100 ports: (closed, filtered, open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStates {
    pub closed: u32,
    pub filtered: u32,
    pub open: u32,
}

/// Count port states in nmap's grepable output (`-oG -`): the listed ports and the
/// `Ignored State: STATE (N)` summary.
pub fn port_states(grepable: &str) -> PortStates {
    let mut p = PortStates::default();
    let mut add = |state: &str, n: u32| match state {
        "closed" => p.closed += n,
        "open" => p.open += n,
        s if s.contains("filtered") => p.filtered += n,
        _ => {}
    };
    for line in grepable.lines().filter(|l| l.starts_with("Host:")) {
        for field in line.split('\t') {
            if let Some(ports) = field.strip_prefix("Ports: ") {
                for port in ports.split(", ") {
                    if let Some(state) = port.split('/').nth(1) {
                        add(state, 1);
                    }
                }
            } else if let Some(ignored) = field.strip_prefix("Ignored State: ") {
                if let Some((state, n)) = ignored.split_once(" (") {
                    add(state, n.trim_end_matches(')').parse().unwrap_or(0));
                }
            }
        }
    }
    p
}

/// nmap from the peer's second address: a SYN scan of ports 1-100 of `target`, its output in
/// `nmap-LABEL.txt`.
fn nmap(ns: &Netns, dir: &Path, label: &str, target: &str, limit: Duration) -> PortStates {
    let mut c = ns.command(
        "nmap",
        [
            "-n",
            "-Pn",
            "-sS",
            "-p",
            "1-100",
            "-T4",
            "--max-retries",
            "1",
            "-S",
            SCANNER_IP,
            "-e",
            crate::netns::TAP,
            "-oG",
            "-",
            target,
        ],
    );
    let text = match crate::util::run_capture(&mut c, limit) {
        Ok(o) => o.text,
        Err(e) => format!("{e:#}"),
    };
    let _ = std::fs::write(dir.join(format!("nmap-{label}.txt")), &text);
    port_states(&text)
}

/// The peer scans A, then the host, with nmap. Without Shoji's detector every port answers
/// (closed: a RST); under it the scan of A is detected and the scanner's address blocked, so
/// the host's ports then answer it no more (filtered).
fn scan_checks(rep: &mut Report, ns: &Netns, dir: &Path, limit: Duration, protected: bool) {
    let phase = if protected { "protected" } else { "control" };
    let a = nmap(ns, dir, &format!("{phase}-a"), A_IP, limit);
    let host = nmap(ns, dir, &format!("{phase}-host"), HOST_IP, limit);
    let detail = format!("nmap from {SCANNER_IP}: A {a:?}; host {host:?}");
    if protected {
        // Blocked, the scanner gets no answer from the host at all: not to its SYNs, not to its
        // ARP requests (nmap then reports the host down).
        rep.check(
            "port scan: after nmap's scan of A, the scanner's address is blocked: none of the host's 100 ports answers it (the control phase's identical scan gets 100 answers)",
            host.closed == 0 && host.open == 0,
            detail,
        );
    } else {
        rep.check(
            "control: nmap's SYN scans of A and the host get their answers (closed ports reply)",
            a.closed + a.open >= 90 && host.closed + host.open >= 90,
            detail,
        );
    }
}

/// The containers scenario after the guest's init has started. `with_shoji`: the PROTECTED
/// phase runs too.
pub fn run(
    m: &mut Machine,
    ns: &Netns,
    rep: &mut Report,
    dir: &Path,
    t: &dyn Fn(u64) -> Duration,
    with_shoji: bool,
    admin: Option<&crate::mgmt::AdminTools>,
) -> Result<()> {
    let sink = UdpSink::start(ns, dir, SINK_PORT, "udp-sink")?;
    let frags = FragCapture::start(ns, dir)?;
    let mut c = ns.command(
        "ip",
        [
            "addr",
            "add",
            &format!("{SCANNER_IP}/24"),
            "dev",
            crate::netns::TAP,
        ],
    );
    crate::util::run_ok(&mut c, Duration::from_secs(30))?;
    let mut peer_log = String::new();
    let (ready, at) = m.wait_for(Stream::Console, markers::CONTAINERS_READY_HOST, t(600), &[])?;
    rep.times.push(("containers host ready".into(), at));
    rep.check(
        "guest bridge br0 with VLAN filtering, crun found, peer MAC known",
        ready.contains("vlan_filtering=1")
            && !ready.contains("peer-mac=unknown")
            && ready.contains("crun version"),
        ready.trim(),
    );
    let r = sync(
        m,
        ns,
        rep,
        "control-attacks",
        t(1200),
        &mut peer_log,
        |rep, log| peer_phase(rep, ns, &sink, false, log),
    );
    let _ = std::fs::write(dir.join("peer.log"), &peer_log);
    r?;
    sync(
        m,
        ns,
        rep,
        "control-scan",
        t(600),
        &mut peer_log,
        |rep, _| scan_checks(rep, ns, dir, t(300), false),
    )?;
    if with_shoji {
        let r = sync(
            m,
            ns,
            rep,
            "protected-attacks",
            t(1500),
            &mut peer_log,
            |rep, log| peer_phase(rep, ns, &sink, true, log),
        );
        let _ = std::fs::write(dir.join("peer.log"), &peer_log);
        r?;
        sync(
            m,
            ns,
            rep,
            "protected-scan",
            t(600),
            &mut peer_log,
            |rep, _| scan_checks(rep, ns, dir, t(300), true),
        )?;
        if let Some(tools) = admin {
            admin_block(m, ns, rep, dir, t, tools, &mut peer_log)?;
        }
    }
    let (_, at) = m.wait_for(Stream::Console, markers::GUEST_DONE, t(1500), &[])?;
    rep.times.push(("guest done".into(), at));
    let _ = std::fs::write(dir.join("peer.log"), &peer_log);
    let console = m.text(Stream::Console);
    // Let the capture write out what it saw last.
    std::thread::sleep(Duration::from_millis(1500));
    let n = frags.later_fragments(FRAG_IDS_CONTROL);
    rep.check(
        "control: B's later fragments reach the peer (their first fragments went to A)",
        n >= 1,
        format!("the peer's capture saw {n} of 5"),
    );
    if with_shoji {
        let n = frags.later_fragments(FRAG_IDS_PROTECTED);
        rep.check(
            "fragments: B's later fragments to the peer go nowhere (their first fragments, \
             to A, were all that B's policy allowed)",
            n == 0,
            format!("the peer's capture saw {n} of 5"),
        );
    }
    drop(frags);
    guest_checks(rep, &console, with_shoji);
    start_times(rep, &console, with_shoji);
    if with_shoji {
        per_frame(rep, &m.text(Stream::ShojiLog));
    }
    Ok(())
}

/// The administrator's block of B (`admin_block_b` in the guest script), from the peer's side:
/// block at sync point `admin-block`; at `admin-unblock`, read the rule's hits and remove it.
fn admin_block(
    m: &mut Machine,
    ns: &Netns,
    rep: &mut Report,
    dir: &Path,
    t: &dyn Fn(u64) -> Duration,
    tools: &crate::mgmt::AdminTools,
    peer_log: &mut String,
) -> Result<()> {
    use crate::mgmt::{admin_once, first_line, rule_id, rules_of, task_lines};
    let limit = t(120);
    let mut id = None;
    let mut tasks = (false, String::new());
    sync(m, ns, rep, "admin-block", t(1500), peer_log, |rep, _| {
        tasks = admin_once(ns, tools, dir, "tasks", &["tasks"], limit);
        let args = ["block", "--container", "102"];
        let (ok, text) = admin_once(ns, tools, dir, "block B", &args, limit);
        id = rule_id(&text);
        rep.check(
            "management: `shoji-admin block --container 102` (B) from the peer is accepted",
            ok && id.is_some(),
            first_line(&text),
        );
    })?;
    // The containers' first processes (crun's pids, printed by the guest before the sync) in
    // the administrator's task list, each with its container; the host's init with none.
    let console = m.text(Stream::Console);
    let pid_of = |name: &str| -> Option<u64> {
        console
            .lines()
            .find_map(|l| l.split_once("SHOJI-TEST: ctr-pids ").map(|(_, r)| r))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let lines = task_lines(&tasks.1).unwrap_or_default();
    let container_of = |pid: Option<u64>| {
        let t = lines
            .iter()
            .find(|t| pid.is_some() && t["pid"].as_u64() == pid)?;
        Some(t["container"].clone())
    };
    let (a, b) = (container_of(pid_of("A")), container_of(pid_of("B")));
    let init = container_of(Some(1));
    rep.check(
        "management: `shoji-admin tasks` lists each container's first process (crun's pid) with its container (A 101, B 102) and the host's init with none",
        tasks.0
            && a == Some(serde_json::json!(101))
            && b == Some(serde_json::json!(102))
            && init == Some(serde_json::Value::Null),
        format!(
            "pids A={:?} B={:?}: container {a:?} / {b:?}; init: {init:?}; {} lines ({})",
            pid_of("A"),
            pid_of("B"),
            lines.len(),
            lines.last().map(|l| l.to_string()).unwrap_or_else(|| first_line(&tasks.1))
        ),
    );
    sync(m, ns, rep, "admin-unblock", t(1500), peer_log, |rep, _| {
        let (_, listed) = admin_once(ns, tools, dir, "blocks", &["blocks"], limit);
        let rule = rules_of(&listed).and_then(|r| r.first().cloned());
        let hits = rule
            .as_ref()
            .and_then(|r| r.get("hits")?.as_u64())
            .unwrap_or(0);
        let pinned = rule
            .as_ref()
            .and_then(|r| r.get("pinned_ipv4")?.as_array().cloned())
            .unwrap_or_default();
        rep.check(
            "management: the rule on B pinned B's address and counted the frames it dropped (GET /blocks)",
            hits > 0 && pinned.iter().any(|a| a.as_str() == Some(B_IP)),
            format!("hits={hits}, pinned_ipv4={pinned:?}"),
        );
        let (ok, text) = match id {
            Some(id) => admin_once(
                ns,
                tools,
                dir,
                "unblock B",
                &["unblock", &id.to_string()],
                limit,
            ),
            None => (false, "no rule id".into()),
        };
        rep.check(
            "management: `shoji-admin unblock ID` removes the rule on B",
            ok,
            first_line(&text),
        );
    })
}

/// The guard's event: a `rogue_dhcp` spoof event naming A (sender=101), from the step's mark on.
fn rogue_dhcp_event(s: &Step<'_>) -> (bool, String) {
    event_since(s, |l| {
        l.contains(" spoof reason=rogue_dhcp ") && l.contains("sender=101")
    })
}

/// The guest's side of the administrator's block of B: B's pings to A (allowed by B's own
/// policy) before, during and after; A untouched; every agent move to undo it run and without
/// effect.
fn admin_checks(rep: &mut Report, c: &str) {
    let ok = |name: &str| step(c, name);
    let s = ok("admin-b-ping-a-before");
    rep.check(
        "management: control: before the administrator's rule, B pings A (its policy allows it)",
        s.ok(),
        s.line,
    );
    let s = ok("admin-b-ping-a-blocked");
    rep.check(
        "management: `block --container 102` cuts B off: its ping to A fails",
        s.failed(),
        s.line,
    );
    let s = ok("admin-a-ping-peer");
    rep.check(
        "management: A is untouched by the rule on B (A pings the peer)",
        s.ok(),
        s.line,
    );
    let agent: Vec<Step<'_>> = [
        "admin-agent-unregister",
        "admin-agent-register",
        "admin-agent-load-wide",
        "admin-agent-unregister-2",
        "admin-agent-register-renamed",
        "admin-agent-unregister-renamed",
        "admin-agent-restore",
    ]
    .iter()
    .map(|n| step(c, n))
    .collect();
    let failed: Vec<&str> = agent.iter().filter(|s| !s.ok()).map(|s| s.line).collect();
    let stays: Vec<Step<'_>> = [
        "admin-b-ping-a-reregistered",
        "admin-b-ping-peer-wide",
        "admin-b-ping-a-renamed",
    ]
    .iter()
    .map(|n| step(c, n))
    .collect();
    let through: Vec<&str> = stays
        .iter()
        .filter(|s| !s.failed())
        .map(|s| s.line)
        .collect();
    rep.check(
        "management: root with the agent key cannot undo the rule: after unregistering and registering B again, loading an allow-all policy for B, and registering B's addresses under another id, B's pings still fail",
        failed.is_empty() && through.is_empty(),
        format!(
            "agent steps that failed: {failed:?}; pings that got through: {through:?}"
        ),
    );
    let s = ok("admin-b-ping-a-after");
    rep.check(
        "management: after `unblock`, B pings A again",
        s.ok(),
        s.line,
    );
}

/// The guest's own results: each step as expected.
fn guest_checks(rep: &mut Report, c: &str, with_shoji: bool) {
    for (name, what) in [
        ("start-A-0", "control: crun starts A (veth hook only)"),
        ("start-B-0", "control: crun starts B (veth hook only)"),
        ("control-a-ping", "control: A pings the peer"),
        ("control-b-ping", "control: B pings the peer"),
        ("flood-control", "control: A's UDP flood runs"),
    ] {
        let s = step(c, name);
        rep.check(what, s.ok(), s.line);
    }
    for (name, what) in [
        (
            "control-b-arp-spoof",
            "control: B (CAP_NET_RAW) sends forged ARP replies",
        ),
        (
            "control-b-impersonate",
            "control: B sends frames with A's MAC and IP",
        ),
    ] {
        let s = step(c, name);
        rep.check(what, s.ok() && s.line.contains("errors=0"), s.line);
    }
    let s = step(c, "control-b-frag");
    rep.check(
        "control: B sends 5 datagrams in two fragments (first to A, later to the peer)",
        s.ok() && s.line.contains("pairs=5"),
        s.line,
    );
    if !with_shoji {
        let skipped = c.contains(markers::CONTAINERS_NO_SHOJI);
        rep.check(
            "without Shoji the protected phase is skipped",
            skipped,
            if skipped { "skipped" } else { "no skip line" },
        );
        return;
    }
    for (name, what) in [
        (
            "start-A-1",
            "crun starts A with the Shoji hooks (createRuntime: veth, shojictl oci-hook)",
        ),
        (
            "start-B-1",
            "crun starts B with the Shoji hooks (createRuntime: veth, shojictl oci-hook)",
        ),
    ] {
        let s = step(c, name);
        let hook = s
            .output
            .iter()
            .copied()
            .find(|l| l.contains("registered container"));
        rep.check(what, s.ok(), hook.unwrap_or(s.line));
    }
    let s = step(c, "registered");
    rep.check(
        "the agent's stats list containers 101 and 102",
        s.ok() && stats_line(&s, 101).is_some() && stats_line(&s, 102).is_some(),
        s.line,
    );
    let s = step(c, "prot-a-ping");
    rep.check("isolation: A pings the peer", s.ok(), s.line);
    let s = step(c, "prot-b-ping");
    rep.check(
        "isolation: B's ping (ARP) to the peer fails",
        s.failed(),
        s.line,
    );
    for (name, what) in [
        ("prot-b-arp-spoof", "B sends the forged ARP replies"),
        ("prot-b-impersonate", "B sends frames with A's MAC and IP"),
        ("prot-b-impersonate-flood", "B floods with A's MAC and IP"),
        (
            "prot-b-impersonate-setsid",
            "B sends with A's MAC and IP after setsid",
        ),
    ] {
        let s = step(c, name);
        let sent = num(s.line, "sent").unwrap_or(0);
        rep.check(what, s.ok() && sent > 0, s.line);
    }
    for (name, what, arp) in [
        (
            "events-arp",
            "spoof event: B's forged ARP (sender=102, claimed=101)",
            true,
        ),
        (
            "events-impersonation",
            "spoof event: B's frames with A's identity (sender=102)",
            false,
        ),
        (
            "events-setsid",
            "spoof events after setsid still name B (sender=102)",
            false,
        ),
    ] {
        let s = step(c, name);
        let (ok, detail) = spoof_event_since(&s, arp);
        rep.check(what, ok, detail);
    }
    let s = step(c, "prot-a-ping-b");
    rep.check(
        "A pings B as both policies allow (relayed by Shoji)",
        s.ok(),
        s.line,
    );
    // Each needs B's send to have gone out and A's listener to have run to the end, so that
    // "received=0" means dropped and not "never sent" or "listener failed".
    let sent = |name: &str| {
        let s = step(c, &format!("{name}-send"));
        s.ok() && num(s.line, "sent").unwrap_or(0) > 0
    };
    let before = step(c, "prot-b-to-a-before");
    rep.check(
        "B's UDP to A's port 7000 dropped before the rule",
        sent("prot-b-to-a-before") && before.ok() && num(before.line, "received") == Some(0),
        before.line,
    );
    let s = step(c, "prot-update");
    rep.check(
        "the agent adds the rule at run time (shojictl update)",
        s.ok(),
        s.line,
    );
    let after = step(c, "prot-b-to-a-after");
    rep.check(
        "the new rule takes effect at once: B's UDP reaches A",
        sent("prot-b-to-a-after")
            && after.ok()
            && num(after.line, "received").unwrap_or(0) > 0
            && after.line.contains(&format!("sources={B_IP}")),
        after.line,
    );
    let s = step(c, "stats-relay");
    let relayed: u64 = [101, 102]
        .iter()
        .filter_map(|&id| stats_line(&s, id).and_then(|l| num(l, "relayed")))
        .sum();
    rep.check(
        "A <-> B traffic went through Shoji (relayed > 0)",
        relayed > 0,
        format!(
            "relayed={relayed}; {}",
            stats_line(&s, 102).unwrap_or(s.line)
        ),
    );
    for (name, what) in [
        (
            "refuse-register",
            "inside B: register (itself, key copy) refused",
        ),
        (
            "refuse-update",
            "inside B: update (widening its rules) refused",
        ),
        ("refuse-unregister", "inside B: unregister A refused"),
        ("refuse-events", "inside B: reading events refused"),
        (
            "refuse-netns-root",
            "uid 0 in the initial user namespace, in A's network namespace: unregister A refused",
        ),
    ] {
        let s = step(c, name);
        rep.check(what, refused(&s), s.line);
    }
    for (name, what, why) in [
        (
            "refuse-planted-host",
            "OCI hook: a container holding the host's own address is refused",
            "10.0.2.15 is one of the host's own addresses",
        ),
        (
            "refuse-planted-gateway",
            "OCI hook: a container holding the gateway's address is refused",
            "10.0.2.2 is a gateway's address",
        ),
    ] {
        let s = step(c, name);
        let said = s.output.iter().find(|l| l.contains(why)).copied();
        rep.check(what, s.failed() && said.is_some(), said.unwrap_or(s.line));
    }
    let s = step(c, "after-refusals-stats");
    let b = stats_line(&s, 102);
    rep.check(
        "after the refusals: A and B registered, nothing else; B's drops counted",
        stats_line(&s, 101).is_some()
            && b.is_some()
            && stats_line(&s, 7).is_none()
            && stats_line(&s, 103).is_none()
            && b.and_then(|l| num(l, "dropped")).unwrap_or(0) > 0,
        b.unwrap_or(s.line),
    );
    let s = step(c, "after-refusals-b-ping");
    rep.check(
        "after the refusals: B's policy unchanged (peer unreachable)",
        s.failed(),
        s.line,
    );
    let s = step(c, "prot-b-frag");
    rep.check(
        "B sends 5 datagrams in two fragments (first to A, later to the peer)",
        s.ok() && s.line.contains("pairs=5"),
        s.line,
    );
    let s = step(c, "prot-a-ping-b-fragmented");
    rep.check(
        "fragmented pings between A and B (2,000 bytes) pass both ways through Shoji",
        s.ok(),
        s.line,
    );
    // Rate limits per caller class: "N probe log-counters: status=S (...)" per status seen.
    let s = step(c, "ratelimit-b-loop");
    let (ok, limited) = (status_count(s.line, 0), status_count(s.line, 10));
    rep.check(
        "B looping on LogCounters: its class's budget runs out (8 at once, one per 5 s)",
        s.ok() && (1..=24).contains(&ok) && limited >= 56 && ok + limited == 80,
        format!("ok={ok} rate-limited={limited}: {}", s.line),
    );
    let s = step(c, "ratelimit-host");
    rep.check(
        "after B's loop, the host's LogCounters is still served (a budget of its own)",
        s.line.contains(markers::LOG_COUNTERS_OK),
        s.line,
    );
    let s = step(c, "ratelimit-b-refilled");
    rep.check(
        "6 s later, B is served again (the budget refills with time)",
        s.line.contains(markers::LOG_COUNTERS_OK),
        s.line,
    );
    let s = step(c, "flood-protected");
    rep.check("A's UDP flood runs under policy", s.ok(), s.line);
    let want = format!(" inbound-scan source={SCANNER_IP} ");
    let (ok, detail) = event_since(&step(c, "events-inbound-scan"), |l| {
        l.contains(&want) && l.contains("blocked_until=")
    });
    rep.check(
        "port scan: nmap's scan of A is an inbound-scan event naming the scanner's address, which is blocked",
        ok,
        detail,
    );
    let (ok, detail) = rogue_dhcp_event(&step(c, "events-dhcp-server"));
    rep.check(
        "first-hop guard: A's DHCP-server datagrams are recorded as rogue_dhcp events naming A",
        ok,
        detail,
    );
    admin_checks(rep, c);
    let s = step(c, "stop-B-protected");
    rep.check("crun delete B (poststop hook)", s.ok(), s.line);
    // The kernel acknowledged deleting VLAN 102 from eth0 (it answers ENOENT when absent).
    let line = s.output.iter().copied().find(|l| {
        l.contains("hook: shojictl: unregistered container 102")
            && l.contains("VLAN 102 removed from the uplink")
    });
    rep.check(
        "poststop: B unregistered and its VLAN taken off the uplink",
        line.is_some(),
        line.unwrap_or(s.line),
    );
    let s = step(c, "after-stop-stats");
    rep.check(
        "after B stopped: B unregistered, A still registered",
        s.ok() && stats_line(&s, 102).is_none() && stats_line(&s, 101).is_some(),
        s.line,
    );
    let s = step(c, "events-final");
    let line = s
        .output
        .iter()
        .copied()
        .find(|l| l.contains("change=unregistered") && l.contains("container=102"));
    rep.check(
        "event: B unregistered",
        line.is_some(),
        line.unwrap_or(s.line),
    );
    let s = step(c, "after-unregister-b-ping");
    rep.check(
        "after unregistering, B (restarted without the hook) reaches the peer again: default restored",
        s.ok(),
        s.line,
    );
    // A died with its runtime: no poststop. Its registration outlives it until the sweep.
    let s = step(c, "stale-before-gc");
    rep.check(
        "A killed without a poststop: its registration is still there",
        s.ok() && stats_line(&s, 101).is_some(),
        s.line,
    );
    let s = step(c, "gc-stale");
    let line = s.output.iter().copied().find(|l| {
        l.contains("cleaned up stale registration 101 (oci A)")
            && l.contains("VLAN 101 removed from the uplink")
    });
    rep.check(
        "shojictl gc cleans up A's stale registration and its uplink VLAN",
        s.ok() && line.is_some(),
        line.unwrap_or(s.line),
    );
    let s = step(c, "stale-after-gc");
    rep.check(
        "after the sweep: A is no longer registered",
        s.ok() && stats_line(&s, 101).is_none(),
        s.line,
    );
}

/// A step reading the events from the sequence number taken just before the step that must
/// cause them (`events from=N`, then the events): the first event line numbered N or later that
/// `wanted` accepts, with the detail to report.
fn event_since(s: &Step<'_>, wanted: impl Fn(&str) -> bool) -> (bool, String) {
    let Some(from) = s
        .output
        .iter()
        .find_map(|l| l.strip_prefix("events from="))
        .and_then(|n| n.trim().parse::<u64>().ok())
    else {
        return (false, format!("no 'events from=' line; {}", s.line));
    };
    let line = s.output.iter().copied().find(|l| {
        let seq = l
            .strip_prefix("event seq=")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        seq.is_some_and(|n| n >= from) && wanted(l)
    });
    match line {
        Some(l) if s.ok() => (true, format!("from={from}: {l}")),
        _ => (false, format!("no such event from seq {from}; {}", s.line)),
    }
}

/// [`event_since`] for the spoof event naming B. ARP: B's forged reply claiming A's address;
/// otherwise a frame with A's MAC and IP.
fn spoof_event_since(s: &Step<'_>, arp: bool) -> (bool, String) {
    event_since(s, |l| {
        l.contains(" spoof ")
            && l.contains("sender=102")
            && l.contains("claimed=101")
            && if arp {
                l.contains("reason=spoofed_arp")
            } else {
                !l.contains("reason=spoofed_arp")
                    && l.contains(&format!("mac={A_MAC}"))
                    && l.contains(&format!("ip={A_IP}"))
            }
    })
}

/// Container start times with and without the hook (the guest's clock, `probe timed`).
fn start_times(rep: &mut Report, c: &str, with_shoji: bool) {
    let ms = |label: &str| -> Option<f64> {
        let pat = format!("probe timed: start {label} ms=");
        c.lines()
            .find_map(|l| l.split_once(pat.as_str()).map(|(_, r)| r))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let none: Vec<f64> = ["A hooks=none", "B hooks=none"]
        .iter()
        .filter_map(|l| ms(l))
        .collect();
    let mut line = format!("container start (guest ms) without the Shoji hook: {none:?}");
    let mut ok = none.len() == 2;
    if with_shoji {
        let with: Vec<f64> = ["A hooks=shoji", "B hooks=shoji"]
            .iter()
            .filter_map(|l| ms(l))
            .collect();
        ok &= with.len() == 2;
        if ok {
            let (a, b) = (
                none.iter().sum::<f64>() / 2.0,
                with.iter().sum::<f64>() / 2.0,
            );
            line.push_str(&format!(
                ", with: {with:?}; mean {a:.0} -> {b:.0} ms, hook adds {:.0} ms (x{:.2})",
                b - a,
                b / a.max(1e-9)
            ));
        }
    }
    rep.check("container start times measured", ok, line.clone());
    rep.highlights.push(format!("SHOJI-TEST: {line}"));
}

/// One LogCounters snapshot from Shoji's log: frames seen, NIC exits and engine cycles (TSC;
/// Bochs counts it in instructions) without the timer polls, which cost by time, not by frame.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    seen: u64,
    exits: u64,
    cycles: u64,
    /// Whole VM exits on the NIC's registers, handler entry to VM entry (TSC).
    mmio_exit_cycles: u64,
    /// Reading the running task at TDT writes (policy on only; inside the whole exits).
    attribution_cycles: u64,
    /// The policy's decisions (policy on only; inside the engine's share).
    policy_cycles: u64,
}

/// Every snapshot in Shoji's log, in order (one per LogCounters call).
fn snapshots(hv: &str) -> Vec<Snapshot> {
    let mut out: Vec<Snapshot> = Vec::new();
    let mut cur: Option<Snapshot> = None;
    for l in hv.lines() {
        if let Some((_, r)) = l.split_once(markers::HV_NIC_TOTALS) {
            if let Some(s) = cur.take() {
                out.push(s);
            }
            cur = Some(Snapshot {
                seen: r
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                ..Snapshot::default()
            });
        } else if let (Some(s), Some((_, r))) = (cur.as_mut(), l.split_once("e1000 exits: ")) {
            s.exits = num(r, "total")
                .unwrap_or(0)
                .saturating_sub(num(r, "poll").unwrap_or(0));
        } else if let (Some(s), Some((_, r))) =
            (cur.as_mut(), l.split_once("e1000 whole exits (tsc):"))
        {
            // "mmio: exits=N cycles=N timer: exits=N cycles=N attribution: calls=N cycles=N
            // policy: calls=N cycles=N".
            for (section, v) in section_cycles(r) {
                match section {
                    "mmio" => s.mmio_exit_cycles = v,
                    "attribution" => s.attribution_cycles = v,
                    "policy" => s.policy_cycles = v,
                    _ => {}
                }
            }
        } else if let (Some(s), Some((_, r))) = (cur.as_mut(), l.split_once("e1000 cost (tsc):")) {
            // "CAUSE: calls=N frames=N cycles=N per_frame=X" per exit cause.
            s.cycles += section_cycles(r)
                .filter(|(cause, _)| *cause != "poll")
                .map(|(_, v)| v)
                .sum::<u64>();
        }
    }
    out.extend(cur);
    out
}

/// The `cycles=N` of each `SECTION:` in a line of the form `A: k=N cycles=N B: k=N cycles=N`,
/// as (section, N); an unreadable number counts as 0.
fn section_cycles(r: &str) -> impl Iterator<Item = (&str, u64)> {
    let mut section = "";
    r.split_whitespace().filter_map(move |w| {
        if let Some(c) = w.strip_suffix(':') {
            section = c;
            None
        } else {
            w.strip_prefix("cycles=")
                .map(|v| (section, v.parse().unwrap_or(0)))
        }
    })
}

/// Shoji's cost per frame during A's flood before registration (shadow rings, no container
/// policy) and after (policy on), from the snapshots around each flood.
fn per_frame(rep: &mut Report, hv: &str) {
    let s = snapshots(hv);
    // Snapshots: control-before, control-after, protected-before, protected-after, final.
    if s.len() < 4 {
        rep.check(
            "per-frame cost measured around both floods",
            false,
            format!("{} LogCounters snapshots in shoji.log, 4 needed", s.len()),
        );
        return;
    }
    let delta = |a: Snapshot, b: Snapshot| {
        let f = b.seen.saturating_sub(a.seen).max(1) as f64;
        let per = |x: u64, y: u64| y.saturating_sub(x) as f64 / f;
        (
            b.seen.saturating_sub(a.seen),
            per(a.exits, b.exits),
            per(a.cycles, b.cycles),
            per(a.mmio_exit_cycles, b.mmio_exit_cycles),
            per(a.attribution_cycles, b.attribution_cycles),
            per(a.policy_cycles, b.policy_cycles),
        )
    };
    let (f0, e0, c0, w0, a0, _) = delta(s[0], s[1]);
    let (f1, e1, c1, w1, a1, p1) = delta(s[2], s[3]);
    let line = format!(
        "Shoji per frame, A's flood (NIC exits; TSC cycles, which Bochs counts in instructions: \
         whole NIC-register exits from handler entry to VM entry, of which the engine and the \
         task attribution; in the engine, the policy's decisions), shadow rings alone: \
         frames={f0} exits={e0:.2} whole={w0:.0} engine={c0:.0} attribution={a0:.0}; with the \
         policy on: frames={f1} exits={e1:.2} whole={w1:.0} engine={c1:.0} attribution={a1:.0} \
         policy={p1:.0}; whole x{:.3}, engine x{:.3}",
        w1 / w0.max(1e-9),
        c1 / c0.max(1e-9)
    );
    rep.check(
        "per-frame cost measured around both floods",
        f0 > 0 && f1 > 0,
        line.clone(),
    );
    rep.highlights.push(format!("SHOJI-TEST: {line}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmap_port_states_from_grepable_output() {
        let out = "# Nmap 7.93 scan initiated\nHost: 10.0.2.15 ()\tStatus: Up\nHost: 10.0.2.15 ()\tPorts: 22/open/tcp//ssh///, 80/filtered/tcp//http///\tIgnored State: closed (98)\n# Nmap done\n";
        assert_eq!(
            port_states(out),
            PortStates {
                closed: 98,
                filtered: 1,
                open: 1
            }
        );
        let out = "Host: 10.0.2.21 ()\tPorts: \tIgnored State: filtered (100)\n";
        assert_eq!(port_states(out).filtered, 100);
        assert_eq!(port_states("").closed, 0);
    }

    #[test]
    fn later_fragment_ids_from_tcpdump_v() {
        let t = "12:00:01.000000 IP (tos 0x0, ttl 64, id 53248, offset 16, flags [none], \
                 proto UDP (17), length 28)\n    10.0.2.22 > 10.0.2.21: ip-proto-17\n\
                 12:00:02.000000 IP (tos 0x0, ttl 64, id 49153, offset 16, flags [none], \
                 proto UDP (17), length 28)\n\
                 12:00:03.000000 IP (tos 0x0, ttl 64, id 7, offset 0, flags [+], proto UDP \
                 (17), length 36)\n";
        assert_eq!(later_fragment_ids(t).collect::<Vec<_>>(), [53248, 49153]);
    }

    #[test]
    fn log_counters_status_summary_counts() {
        let l = "SHOJI-TEST: ctr ratelimit-b-loop rc=0 ::  72 probe log-counters: status=10 \
                 (rate limited) 8 probe log-counters: status=0 (ok) ";
        assert_eq!((status_count(l, 0), status_count(l, 10)), (8, 72));
        assert_eq!(status_count(l, 3), 0);
        assert_eq!(status_count("no line", 0), 0);
    }

    #[test]
    fn sink_summary_counts() {
        let t = "from=10.0.2.21 tag=imp-control count=5\nfrom=10.0.2.22 tag=b-control count=3\n";
        assert_eq!(sink_count(t, A_IP, "imp-control"), 5);
        assert_eq!(sink_count(t, B_IP, "b-control"), 3);
        assert_eq!(sink_count(t, A_IP, "imp"), 0);
        assert_eq!(sink_count(t, B_IP, "imp-control"), 0);
    }

    #[test]
    fn steps_parse() {
        let c = "  [refuse-events] shojictl: refused: NotAuthorized\n\
                 SHOJI-TEST: ctr refuse-events rc=1 :: shojictl: refused: NotAuthorized\n\
                 \x20 [registered] stats container id=101 vlan=101 tx=3 relayed=2 dropped=0\n\
                 SHOJI-TEST: ctr registered rc=0 :: stats container id=101 vlan=101 tx=3\n";
        let s = step(c, "refuse-events");
        assert_eq!(s.rc, Some(1));
        assert!(refused(&s));
        let s = step(c, "registered");
        assert!(s.ok());
        assert_eq!(stats_line(&s, 101).and_then(|l| num(l, "relayed")), Some(2));
        assert!(stats_line(&s, 10).is_none());
        assert_eq!(step(c, "missing").rc, None);
    }

    #[test]
    fn a_step_that_ran_twice_is_neither_ok_nor_failed() {
        let c = "SHOJI-TEST: ctr stop-B rc=0 :: ok\nSHOJI-TEST: ctr stop-B rc=1 :: hook failed\n";
        let s = step(c, "stop-B");
        assert!(!s.ok() && !s.failed());
        assert!(s.line.contains("more than once"));
    }

    #[test]
    fn spoof_events_count_only_from_the_mark() {
        let imp = "event seq=7 time=1 spoof reason=spoofed_mac dir=tx sender=102 claimed=101 mac=02:00:00:00:00:0a ip=10.0.2.21";
        let arp = "event seq=9 time=2 spoof reason=spoofed_arp dir=tx sender=102 claimed=101 mac=02:00:00:00:00:0b ip=10.0.2.21";
        let console = |from: u64| {
            format!(
                "  [events-setsid] events from={from}\n  [events-setsid] {imp}\n  [events-setsid] {arp}\nSHOJI-TEST: ctr events-setsid rc=0 :: {arp}\n"
            )
        };
        let c = console(7);
        let s = step(&c, "events-setsid");
        assert!(spoof_event_since(&s, false).0);
        assert!(spoof_event_since(&s, true).0);
        // The impersonation event is older than the mark: it does not count.
        let c = console(8);
        let s = step(&c, "events-setsid");
        assert!(!spoof_event_since(&s, false).0);
        assert!(spoof_event_since(&s, true).0);
        // Without the mark nothing counts.
        let c = c.replace("events from=8", "events");
        assert!(!spoof_event_since(&step(&c, "events-setsid"), true).0);
    }

    #[test]
    fn snapshots_parse() {
        let hv = "shoji-hv: e1000 totals: seen=100 delivered=100 dropped=0\n\
                  shoji-hv: e1000 exits: total=50 poll=1\n\
                  shoji-hv: e1000 cost (tsc): tdt: calls=5 frames=10 cycles=1000 per_frame=100 icr: calls=1 frames=0 cycles=500 per_frame=0 poll: calls=9 frames=1 cycles=7000 per_frame=7000\n\
                  shoji-hv: e1000 totals: seen=300 delivered=290 dropped=10\n\
                  shoji-hv: e1000 exits: total=150 poll=1\n\
                  shoji-hv: e1000 whole exits (tsc): mmio: exits=9 cycles=4000 timer: exits=2 cycles=300 attribution: calls=3 cycles=600 policy: calls=3 cycles=450\n";
        let s = snapshots(hv);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].seen, s[0].exits, s[0].cycles), (100, 49, 1500));
        assert_eq!((s[1].seen, s[1].exits, s[1].cycles), (300, 149, 0));
        assert_eq!((s[0].mmio_exit_cycles, s[0].attribution_cycles), (0, 0));
        assert_eq!(
            (
                s[1].mmio_exit_cycles,
                s[1].attribution_cycles,
                s[1].policy_cycles
            ),
            (4000, 600, 450)
        );
    }
}
