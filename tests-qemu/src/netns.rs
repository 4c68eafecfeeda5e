//! The peer's network namespace: one per scenario, holding `tap0` (10.0.2.2/24) that the
//! emulator's e1000 is attached to. All test traffic stays inside it.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::util::{cmd, run_capture, run_cleanup, run_ok};

/// The guest's address on the test link.
pub const GUEST_IP: &str = "10.0.2.15";
/// The peer's address (tap0 in the namespace).
pub const PEER_IP: &str = "10.0.2.2";
/// The guest's MAC address (the emulated e1000).
pub const GUEST_MAC: &str = "52:54:00:12:34:56";
/// The TCP port the guest listens on for the peer's "done".
pub const DONE_PORT: u16 = 7777;
/// The tap device inside each namespace.
pub const TAP: &str = "tap0";

const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// A network namespace with a tap peer; deleted (with its tap) when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace name used for a scenario: `shoji-<harness pid>-<scenario>`, so that
    /// several harness runs on one machine never touch each other's namespaces.
    pub fn name_for(scenario: &str) -> String {
        format!("shoji-{}-{scenario}", std::process::id())
    }

    /// Create namespace `name` (removing a stale one first) with `tap0` up at 10.0.2.2/24.
    pub fn create(name: &str) -> Result<Netns> {
        remove(name);
        run_ok(&mut cmd("ip", ["netns", "add", name]), IP_TIMEOUT)
            .with_context(|| format!("creating network namespace {name} (root needed)"))?;
        let ns = Netns { name: name.into() };
        let peer_cidr = format!("{PEER_IP}/24");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["tuntap", "add", "dev", TAP, "mode", "tap"],
            vec!["addr", "add", &peer_cidr, "dev", TAP],
            vec!["link", "set", TAP, "up"],
        ] {
            let mut c = cmd("ip", ["-n", name]);
            c.args(args);
            run_ok(&mut c, IP_TIMEOUT)?;
        }
        Ok(ns)
    }

    /// A command that runs `prog args` inside the namespace.
    pub fn command<I, S>(&self, prog: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = cmd("ip", ["netns", "exec", &self.name, prog]);
        c.args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Delete namespace `name` and its tap, ignoring errors (it may not exist). Runs to the end
/// even after Ctrl-C (it is the clean-up).
pub fn remove(name: &str) {
    let _ = run_cleanup(&mut cmd("ip", ["-n", name, "link", "del", TAP]), IP_TIMEOUT);
    let _ = run_cleanup(&mut cmd("ip", ["netns", "del", name]), IP_TIMEOUT);
}

/// The harness process that owns namespace `name` (`shoji-<pid>-...`).
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("shoji-")?.split('-').next()?.parse().ok()
}

/// Delete the namespaces left by harness runs that are no longer alive (crashed or killed);
/// those of running harnesses (another engineer's, or a parallel run) are left alone.
pub fn remove_stale() {
    if let Ok(out) = run_cleanup(&mut cmd("ip", ["netns", "list"]), IP_TIMEOUT) {
        for line in out.text.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if let Some(pid) = owner_pid(name) {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    remove(name);
                }
            }
        }
    }
}

/// What the peer saw.
#[derive(Debug, Default, Clone)]
pub struct PeerResult {
    /// Echo replies received (of 3).
    pub ping_received: u32,
    /// ARP replies received (of 3).
    pub arping_received: u32,
    /// Whether "done" was delivered to the guest.
    pub done_sent: bool,
    /// Everything the tools printed.
    pub log: String,
}

/// Parse `N received` from ping's summary.
fn ping_count(text: &str) -> u32 {
    text.lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| {
            l.split(',')
                .find(|p| p.contains("received"))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Parse `Received N response(s)` from iputils arping.
fn arping_count(text: &str) -> u32 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Received "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Run the peer's checks against the guest: ping, arping, then send "done" to port 7777.
/// `patience` multiplies how long the peer waits for answers (1 on Bochs; the nested bed's
/// round trip through two emulated hypervisors takes seconds of wall time).
pub fn peer_checks(ns: &Netns, patience: u32) -> PeerResult {
    let mut r = PeerResult::default();
    let t = Duration::from_secs(60 * u64::from(patience));
    let wait = (5 * patience).to_string();
    let arping_wait = (10 * patience).to_string();
    if patience > 1 {
        // A slow bed: the peer's kernel waits longer for ARP answers (ping resolves the guest's
        // address first; on the nested bed the first exchange takes about 5 s of wall time).
        let retrans = format!(
            "echo {} > /proc/sys/net/ipv4/neigh/{TAP}/retrans_time_ms",
            1000 * patience
        );
        let mut c = ns.command("sh", ["-c", &retrans]);
        match run_capture(&mut c, IP_TIMEOUT) {
            Ok(o) => r.log.push_str(&format!("$ {retrans}\n{}\n", o.text)),
            Err(e) => r.log.push_str(&format!("{retrans}: {e:#}\n")),
        }
    }
    let mut ping = ns.command("ping", ["-c", "3", "-i", "0.5", "-W", &wait, GUEST_IP]);
    match run_capture(&mut ping, t) {
        Ok(o) => {
            r.ping_received = ping_count(&o.text);
            r.log
                .push_str(&format!("$ ping -c 3 {GUEST_IP}\n{}\n", o.text));
        }
        Err(e) => r.log.push_str(&format!("ping: {e:#}\n")),
    }
    let mut arping = ns.command(
        "arping",
        ["-c", "3", "-w", &arping_wait, "-I", TAP, GUEST_IP],
    );
    match run_capture(&mut arping, t) {
        Ok(o) => {
            r.arping_received = arping_count(&o.text);
            r.log
                .push_str(&format!("$ arping -c 3 -I {TAP} {GUEST_IP}\n{}\n", o.text));
        }
        Err(e) => r.log.push_str(&format!("arping: {e:#}\n")),
    }
    r.done_sent = send_done(ns, &mut r.log);
    r
}

/// Tell the guest the peer is finished (it waits in `nc -l -p 7777`). Retries for a while,
/// since the guest may print READY-FOR-PEER a moment before it listens.
pub fn send_done(ns: &Netns, log: &mut String) -> bool {
    send_msg(ns, "done", log)
}

/// Send `msg` (one word) to the guest's listener on port 7777, retrying like [`send_done`].
pub fn send_msg(ns: &Netns, msg: &str, log: &mut String) -> bool {
    let script = format!("echo {msg} >/dev/tcp/{GUEST_IP}/{DONE_PORT}");
    for attempt in 1..=10 {
        if crate::util::check_cancelled().is_err() {
            return false;
        }
        let mut c = ns.command("timeout", ["10", "bash", "-c", &script]);
        match run_capture(&mut c, Duration::from_secs(20)) {
            Ok(o) if o.status.success() => {
                log.push_str(&format!("sent {msg} (attempt {attempt})\n"));
                return true;
            }
            Ok(o) => log.push_str(&format!("send done attempt {attempt}: {}\n", o.text.trim())),
            Err(e) => log.push_str(&format!("send done attempt {attempt}: {e:#}\n")),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    false
}

/// The peer's neighbour table on tap0 (`ip neigh show dev tap0`).
pub fn peer_neigh(ns: &Netns) -> String {
    let mut c = ns.command("ip", ["neigh", "show", "dev", TAP]);
    match run_capture(&mut c, IP_TIMEOUT) {
        Ok(o) => o.text,
        Err(e) => format!("ip neigh: {e:#}"),
    }
}

/// Empty the peer's neighbour table on tap0.
pub fn flush_peer_neigh(ns: &Netns) -> Result<()> {
    let mut c = ns.command("ip", ["neigh", "flush", "dev", TAP]);
    run_ok(&mut c, IP_TIMEOUT).map(|_| ())
}

/// The link-layer address the neighbour table `text` holds for `ip` (None: no entry, or an
/// entry without an address such as FAILED/INCOMPLETE).
pub fn neigh_mac(text: &str, ip: &str) -> Option<String> {
    text.lines().map(str::split_whitespace).find_map(|mut w| {
        (w.next()? == ip).then_some(())?;
        let words: Vec<&str> = w.collect();
        let i = words.iter().position(|x| *x == "lladdr")?;
        words.get(i + 1).map(|m| m.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_and_arping() {
        let p = "3 packets transmitted, 2 received, 33.3333% packet loss, time 1002ms";
        assert_eq!(ping_count(p), 2);
        let a = "Sent 3 probes (1 broadcast(s))\nReceived 3 response(s)\n";
        assert_eq!(arping_count(a), 3);
        assert_eq!(ping_count("nothing"), 0);
        assert_eq!(owner_pid("shoji-1234-bochs-smp"), Some(1234));
        assert_eq!(owner_pid("shoji-bochs-smp"), None);
        assert_eq!(owner_pid("other"), None);
        let n = "10.0.2.21 lladdr 02:00:00:00:00:0b STALE\n10.0.2.22 FAILED\n10.0.2.15 lladdr 52:54:00:12:34:56 REACHABLE\n";
        assert_eq!(
            neigh_mac(n, "10.0.2.21").as_deref(),
            Some("02:00:00:00:00:0b")
        );
        assert_eq!(neigh_mac(n, "10.0.2.22"), None);
        assert_eq!(neigh_mac(n, "10.0.2.2"), None);
    }
}
