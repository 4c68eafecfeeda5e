//! The management endpoint end to end (`bochs-shoji`, guest option `shojimgmt=1`): the
//! administrator on the peer's side talks to Shoji's own address with real clients (`shoji-admin`,
//! curl, bash's `/dev/tcp`) and Prometheus's `promtool` checks the exposition; the guest's own
//! eth0 counters and tcpdump on the peer's tap are the independent witnesses.
//!
//! Phases (the guest script's `MGMT-*` markers):
//! 1. `MGMT-READY`: requests (nonce, metrics, signed containers and events), refusals (unsigned,
//!    wrong key, replay, malformed, a source outside `mgmt_allow`), a UDP flood at Shoji's
//!    address; then `next`. The guest's rx count over this stretch must not grow by the flood.
//! 2. `MGMT-GUEST-FLOOD-READY`: the control: the same flood at the guest's address, which its rx
//!    count does see; Shoji's metrics before and after are compared with the guest's counts.
//! 3. `MGMT-SPOOF-DONE`: the guest sent UDP and ARP replies as Shoji (10.0.2.9) and, as the
//!    control, as an address nobody holds (10.0.2.77); tcpdump counts what reached the peer.
//! 4. `MGMT-BLOCK-READY` (after the introspection tests pushed the kernel profile): the
//!    administrator blocks uid 1000's TCP to the peer's port 7777; the guest tries as uid 1000
//!    and as root, the agent pushes its profile again, uid 1000 tries again
//!    (`MGMT-BLOCK-DONE`); the administrator unblocks and uid 1000 tries once more
//!    (`MGMT-UNBLOCK-DONE`). The peer's listener (`xtask tcp-lines`) is the witness of which
//!    attempts got through; uid 1000's attempt before the rule is the control.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::emulator::{Machine, Stream};
use crate::netns::{send_msg, Netns, TAP};
use crate::scenarios::Report;
use crate::util::{
    cache_dir, cargo, cmd, run_capture, run_ok, run_visible, target_dir, workspace_root, GroupChild,
};

/// Shoji's address in the test (`mgmt_ip`).
pub const MGMT_IP: &str = "10.0.2.9";
/// The HTTP port (the default, `mgmt_port` not set).
pub const MGMT_PORT: u16 = 9180;
/// The administrator's key in the test.
pub const TEST_ADMIN_KEY: &str = "a11ce0ffee0ddba11a11ce0ffee0ddba11a11ce0ffee0ddba11a11ce0ffee0dd";
/// A second address of the peer, outside `mgmt_allow`.
pub const OUTSIDER_IP: &str = "10.0.2.3";
/// Datagrams of each flood (at Shoji's address, then at the guest's).
pub const FLOOD: u64 = 600;

/// The `mgmt_*` lines of `shoji.cfg`.
pub fn config_lines() -> String {
    format!(
        "mgmt_ip = {MGMT_IP}/24\nmgmt_allow = {}/32\nmgmt_key = {TEST_ADMIN_KEY}\n",
        crate::netns::PEER_IP
    )
}

/// The administrator's tools on the peer's side.
#[derive(Debug, Clone)]
pub struct AdminTools {
    /// `shoji-admin`, built from this workspace.
    pub shoji_admin: PathBuf,
    /// Prometheus's `promtool` (Debian's `prometheus` package, unpacked into the cache).
    pub promtool: PathBuf,
}

const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// Build `shoji-admin` and fetch `promtool`.
pub fn tools() -> Result<AdminTools> {
    let st = run_visible(
        cmd(&cargo(), ["build", "--release", "-q", "-p", "shoji-admin"])
            .current_dir(workspace_root()),
        BUILD_TIMEOUT,
    )?;
    if !st.success() {
        bail!("building shoji-admin failed ({st})");
    }
    let shoji_admin = target_dir().join("release").join("shoji-admin");
    Ok(AdminTools {
        shoji_admin,
        promtool: promtool()?,
    })
}

/// `promtool` from Debian's `prometheus` package: downloaded once with apt and unpacked into the
/// cache (the package itself is not installed: it would start a server).
fn promtool() -> Result<PathBuf> {
    let dir = cache_dir().join("prometheus-bookworm");
    let root = dir.join("root");
    let bin = root.join("usr/bin/promtool");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "xtask: downloading prometheus (for promtool; once, cached in {})",
        dir.display()
    );
    crate::crun::unpack_debs(&dir, &["prometheus"])?;
    if !bin.is_file() {
        bail!("the prometheus package has no usr/bin/promtool");
    }
    Ok(bin)
}

/// One command's outcome, logged to `mgmt.log`.
struct Ran {
    ok: bool,
    code: Option<i32>,
    text: String,
}

struct Phase<'a> {
    ns: &'a Netns,
    tools: &'a AdminTools,
    dir: PathBuf,
    log: String,
    limit: Duration,
}

impl Phase<'_> {
    fn addr(&self) -> String {
        format!("{MGMT_IP}:{MGMT_PORT}")
    }

    fn run(&mut self, what: &str, prog: &str, args: &[&str]) -> Ran {
        let mut c = self.ns.command(prog, args);
        let r = match run_capture(&mut c, self.limit) {
            Ok(o) => Ran {
                ok: o.status.success(),
                code: o.status.code(),
                text: o.text,
            },
            Err(e) => Ran {
                ok: false,
                code: None,
                text: format!("{e:#}"),
            },
        };
        self.log.push_str(&format!(
            "## {what}\n$ {prog} {}\nexit {:?}\n{}\n",
            args.join(" "),
            r.code,
            r.text
        ));
        r
    }

    fn admin(&mut self, what: &str, args: &[&str]) -> Ran {
        self.admin_with_key(what, "admin.key", args)
    }

    /// `shoji-admin` with the key in `key_file` (in the scenario's directory).
    fn admin_with_key(&mut self, what: &str, key_file: &str, args: &[&str]) -> Ran {
        let exe = self.tools.shoji_admin.to_string_lossy().into_owned();
        let addr = self.addr();
        let key = self.dir.join(key_file).to_string_lossy().into_owned();
        let timeout = (self.limit.as_secs() / 2).max(30).to_string();
        let mut full = vec!["--addr", &addr, "--key-file", &key, "--timeout", &timeout];
        full.extend_from_slice(args);
        self.run(what, &exe, &full)
    }

    /// Scrape `/metrics` (unsigned: metrics are open in the test), saving it as `NAME.txt`.
    fn scrape(&mut self, name: &str) -> Option<String> {
        let r = self.admin(&format!("scrape {name}"), &["--no-key", "metrics"]);
        let _ = std::fs::write(self.dir.join(format!("{name}.txt")), &r.text);
        r.ok.then_some(r.text)
    }

    fn flood(&mut self, what: &str, ip: &str) {
        let exe = std::env::current_exe().unwrap_or_else(|_| "xtask".into());
        let exe = exe.to_string_lossy().into_owned();
        let n = FLOOD.to_string();
        self.run(what, &exe, &["udp-flood", ip, "9", "20", &n]);
    }
}

/// A sample's value in Prometheus text: the first line that starts with `series` (name and
/// labels exactly as Shoji writes them).
pub fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The HTTP status in a raw answer (`HTTP/1.1 409 Conflict`).
fn status_of(text: &str) -> Option<u16> {
    text.lines()
        .find_map(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
}

/// tcpdump on the peer's tap for the guest's attempts to speak as Shoji (UDP port 9003 and ARP
/// replies, with MACs), written to `mgmt-capture.txt`.
struct Capture {
    child: GroupChild,
    text: PathBuf,
}

impl Capture {
    fn start(ns: &Netns, dir: &Path) -> Result<Capture> {
        let text = dir.join("mgmt-capture.txt");
        let mut c = ns.command(
            "tcpdump",
            [
                "-i",
                TAP,
                "-n",
                "-e",
                "-l",
                "-U",
                "udp dst port 9003 or (arp and arp[6:2] = 2)",
            ],
        );
        c.stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&text)?)
            .stderr(std::fs::File::create(dir.join("mgmt-capture.log"))?);
        Ok(Capture {
            child: GroupChild::spawn(&mut c)?,
            text,
        })
    }

    fn lines(&self) -> String {
        std::fs::read_to_string(&self.text).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.child.kill();
    }
}

/// The port the guest's connection attempts go to (`admin_connect` in the guest script).
pub const BLOCK_PORT: &str = "7777";

/// The peer's listener for the guest's connection attempts (`xtask tcp-lines`), its lines in
/// `admin-lines.txt`.
struct Lines {
    child: GroupChild,
    text: PathBuf,
}

impl Lines {
    fn start(ns: &Netns, dir: &Path) -> Result<Lines> {
        let text = dir.join("admin-lines.txt");
        let exe = std::env::current_exe().unwrap_or_else(|_| "xtask".into());
        let mut c = ns.command(&exe.to_string_lossy(), ["tcp-lines", BLOCK_PORT]);
        c.stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&text)?)
            .stderr(std::fs::File::create(dir.join("admin-lines.log"))?);
        Ok(Lines {
            child: GroupChild::spawn(&mut c)?,
            text,
        })
    }

    /// Whether the line `hello-LABEL` arrived from the guest.
    fn saw(&self, label: &str) -> bool {
        saw_attempt(
            &std::fs::read_to_string(&self.text).unwrap_or_default(),
            label,
        )
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.child.kill();
    }
}

/// Whether `tcp-lines` output holds the guest's line `hello-LABEL`.
pub fn saw_attempt(lines: &str, label: &str) -> bool {
    let want = format!("tcp-lines: {} hello-{label}", crate::netns::GUEST_IP);
    lines.lines().any(|l| l.trim() == want)
}

/// The guest's `admin-connect LABEL rc=N` exit status.
pub fn attempt_rc(console: &str, label: &str) -> Option<i32> {
    let key = format!("SHOJI-TEST: admin-connect {label} rc=");
    console
        .lines()
        .find_map(|l| l.split_once(&key).map(|(_, rc)| rc.trim().parse().ok()))
        .flatten()
}

/// One `shoji-admin` call from the peer's namespace with the test's admin key, for scenarios
/// other than `bochs-shoji`'s phases (its command and output appended to `mgmt.log` in `dir`).
/// Returns whether it exited 0, and its output.
pub fn admin_once(
    ns: &Netns,
    tools: &AdminTools,
    dir: &Path,
    what: &str,
    args: &[&str],
    limit: Duration,
) -> (bool, String) {
    let _ = std::fs::write(dir.join("admin.key"), format!("{TEST_ADMIN_KEY}\n"));
    let mut p = Phase {
        ns,
        tools,
        dir: dir.to_path_buf(),
        log: String::new(),
        limit,
    };
    let r = p.admin(what, args);
    let log = dir.join("mgmt.log");
    let old = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::write(&log, old + &p.log);
    (r.ok, r.text)
}

/// The id in `shoji-admin block`'s answer (`{"id":N}`).
pub fn rule_id(text: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(text.trim())
        .ok()?
        .get("id")?
        .as_u64()
}

/// The rules of a `GET /blocks` answer.
pub fn rules_of(text: &str) -> Option<Vec<serde_json::Value>> {
    serde_json::from_str::<serde_json::Value>(text.trim())
        .ok()?
        .get("rules")?
        .as_array()
        .cloned()
}

/// Lines of a tcpdump capture: UDP to port 9003 from `ip`, and ARP replies claiming `ip` sent
/// from `mac` (Shoji's own replies, from Shoji's MAC, are not the guest's).
pub fn spoofs_seen(capture: &str, ip: &str, mac: &str) -> (usize, usize) {
    let udp = capture
        .lines()
        .filter(|l| l.contains(&format!(" {ip}.")) && l.contains(".9003:"))
        .count();
    let arp = capture
        .lines()
        .filter(|l| l.contains(&format!("Reply {ip} is-at {mac}")))
        .count();
    (udp, arp)
}

/// Whether the raw bytes of the ESP image hold the admin key's hex text anywhere (in a file or
/// in a freed cluster: root in the guest reads the raw disk too).
pub fn esp_holds_key(esp: &Path) -> bool {
    let bytes = std::fs::read(esp).unwrap_or_default();
    let key = TEST_ADMIN_KEY.as_bytes();
    bytes
        .windows(key.len())
        .any(|w| w.eq_ignore_ascii_case(key))
}

/// The hex text the guest printed of every UEFI variable it can read (`efivars-hex` lines).
pub fn efivars_hex(console: &str) -> String {
    console
        .lines()
        .filter_map(|l| {
            l.split_once("SHOJI-TEST: efivars-hex ")
                .map(|(_, h)| h.trim())
        })
        .collect()
}

/// Run the phases (the guest is at `MGMT-READY` or about to be).
pub fn run(
    m: &mut Machine,
    ns: &Netns,
    rep: &mut Report,
    dir: &Path,
    tools: &AdminTools,
    t: &dyn Fn(u64) -> Duration,
) -> Result<()> {
    let mut p = Phase {
        ns,
        tools,
        dir: dir.to_path_buf(),
        log: String::new(),
        limit: t(120),
    };
    let result = phases(m, &mut p, rep, t);
    let _ = std::fs::write(dir.join("mgmt.log"), &p.log);
    result
}

fn phases(
    m: &mut Machine,
    p: &mut Phase<'_>,
    rep: &mut Report,
    t: &dyn Fn(u64) -> Duration,
) -> Result<()> {
    std::fs::write(p.dir.join("admin.key"), format!("{TEST_ADMIN_KEY}\n"))?;
    std::fs::write(
        p.dir.join("wrong.key"),
        format!("{}\n", crate::images::TEST_AGENT_KEY),
    )?;
    let capture = Capture::start(p.ns, &p.dir)?;
    let lines = Lines::start(p.ns, &p.dir)?;
    let mut c = p.ns.command(
        "ip",
        ["addr", "add", &format!("{OUTSIDER_IP}/24"), "dev", TAP],
    );
    run_ok(&mut c, Duration::from_secs(30)).context("adding the outsider address")?;
    m.wait_for(Stream::Console, "SHOJI-TEST: MGMT-READY", t(600), &[])?;

    // --- phase 1: the administrator's requests and the refusals --------------------------
    let r = p.admin("nonce", &["--no-key", "nonce"]);
    let boot_ok =
        r.ok && r.text.lines().any(|l| {
            l.strip_prefix("boot=")
                .is_some_and(|h| h.len() == 32 && h.bytes().all(|c| c.is_ascii_hexdigit()))
        }) && r.text.contains("next=1\n");
    rep.check(
        "management: GET /nonce answers this boot's id and next=1 (shoji-admin nonce)",
        boot_ok,
        first_line(&r.text),
    );
    let before = p.scrape("metrics-1");
    let prom = match &before {
        Some(_) => {
            let file = p.dir.join("metrics-1.txt").to_string_lossy().into_owned();
            let exe = p.tools.promtool.to_string_lossy().into_owned();
            p.run(
                "promtool check metrics",
                "sh",
                &["-c", &format!("{exe} check metrics < {file}")],
            )
        }
        None => Ran {
            ok: false,
            code: None,
            text: "no metrics scraped".into(),
        },
    };
    rep.check(
        "management: Prometheus's promtool accepts /metrics (promtool check metrics)",
        prom.ok && prom.code == Some(0),
        format!("exit {:?}: {}", prom.code, first_line(&prom.text)),
    );
    let r = p.admin("signed containers", &["containers"]);
    let json_ok = r.ok
        && serde_json::from_str::<serde_json::Value>(r.text.trim()).is_ok_and(|v| v.is_array());
    rep.check(
        "management: signed GET /containers answers a JSON array",
        json_ok,
        first_line(&r.text),
    );
    let r = p.admin("signed events", &["events", "--from", "0"]);
    rep.check(
        "management: signed GET /events answers",
        r.ok,
        first_line(&r.text),
    );
    let r = p.admin(
        "signed events, long poll",
        &["request", "GET", "/events?from=1&wait=3"],
    );
    rep.check(
        "management: a long poll of /events with nothing to report answers when its wait is over",
        r.ok && r.text.contains("HTTP/1.1 200")
            && r.text
                .lines()
                .all(|l| l.trim().is_empty() || l.starts_with("HTTP/1.1 200")),
        format!("exit {:?}: {}", r.code, first_line(&r.text)),
    );
    let r = p.admin("unsigned containers", &["--no-key", "containers"]);
    rep.check(
        "management: an unsigned request is refused with 401",
        r.code == Some(2) && r.text.contains("401"),
        first_line(&r.text),
    );
    let r = p.admin_with_key("wrong key", "wrong.key", &["containers"]);
    rep.check(
        "management: a request signed with another key (the agent's) is refused with 401",
        r.code == Some(2) && r.text.contains("401"),
        first_line(&r.text),
    );
    let saved = p
        .dir
        .join("signed-request.bin")
        .to_string_lossy()
        .into_owned();
    let r1 = p.admin(
        "signed request, saved",
        &["request", "GET", "/containers", "--save-request", &saved],
    );
    let replay = format!(
        "exec 3<>/dev/tcp/{MGMT_IP}/{MGMT_PORT} && cat {saved} >&3 && timeout {} cat <&3",
        p.limit.as_secs()
    );
    let r2 = p.run("replay of the saved request", "bash", &["-c", &replay]);
    rep.check(
        "management: the same signed request replayed is refused with 409 (its nonce is spent)",
        r1.ok && status_of(&r2.text) == Some(409),
        format!(
            "first: exit {:?}; replay: {}",
            r1.code,
            first_line(&r2.text)
        ),
    );
    let garbage = format!(
        "exec 3<>/dev/tcp/{MGMT_IP}/{MGMT_PORT} && printf '\\x16\\x03\\x01\\x00\\xa5 hello\\r\\n\\r\\n' >&3 && timeout {} cat <&3",
        p.limit.as_secs()
    );
    let r = p.run("malformed request", "bash", &["-c", &garbage]);
    rep.check(
        "management: a malformed request is refused with 400",
        status_of(&r.text) == Some(400),
        first_line(&r.text),
    );
    let r = p.run(
        "request from outside mgmt_allow",
        "curl",
        &[
            "-sS",
            "-i",
            "-m",
            &p.limit.as_secs().to_string(),
            "--interface",
            OUTSIDER_IP,
            &format!("http://{MGMT_IP}:{MGMT_PORT}/nonce"),
        ],
    );
    rep.check(
        "management: a source outside mgmt_allow is refused with 403 (curl from 10.0.2.3)",
        status_of(&r.text) == Some(403),
        first_line(&r.text),
    );
    p.flood("flood at Shoji's address", MGMT_IP);
    std::thread::sleep(Duration::from_secs(3));
    let after = p.scrape("metrics-2");
    let mgmt_rx = |t: &Option<String>| {
        t.as_deref().and_then(|t| {
            Some(
                sample(t, "shoji_mgmt_frames_total{direction=\"rx\"}")?
                    + sample(t, "shoji_mgmt_rx_dropped_total")?,
            )
        })
    };
    let (rx1, rx2) = (mgmt_rx(&before), mgmt_rx(&after));
    let r = p.admin("signed metrics after the refusals", &["metrics"]);
    rep.check(
        "management: Shoji keeps serving after the refusals (signed GET /metrics)",
        r.ok,
        first_line(&r.text),
    );
    send_msg(p.ns, "next", &mut p.log);

    // --- phase 2: the control flood at the guest's own address ---------------------------
    m.wait_for(
        Stream::Console,
        "SHOJI-TEST: MGMT-GUEST-FLOOD-READY",
        t(300),
        &[],
    )?;
    let nic_a = p.scrape("metrics-3");
    p.flood(
        "flood at the guest's address (control)",
        crate::netns::GUEST_IP,
    );
    std::thread::sleep(Duration::from_secs(3));
    let nic_b = p.scrape("metrics-4");
    send_msg(p.ns, "next", &mut p.log);
    m.wait_for(Stream::Console, "SHOJI-TEST: MGMT-SPOOF-DONE", t(300), &[])?;
    std::thread::sleep(Duration::from_secs(3));
    let captured = capture.lines();
    drop(capture);
    send_msg(p.ns, "next", &mut p.log);

    // --- the witnesses ---------------------------------------------------------------------
    let console = m.text(Stream::Console);
    let stats = |label: &str| crate::scenarios::eth0_stats(&console, label);
    let (s0, s1, s2) = (stats("mgmt-0"), stats("mgmt-1"), stats("mgmt-2"));
    let guest_rx_mgmt = s0.zip(s1).map(|(a, b)| b.1.saturating_sub(a.1));
    let guest_rx_own = s1.zip(s2).map(|(a, b)| b.1.saturating_sub(a.1));
    let shoji_took = rx1.zip(rx2).map(|(a, b)| b.saturating_sub(a));
    rep.check(
        "management: frames for Shoji's address never reach the guest (guest eth0 rx grew by < 40 while Shoji took > half the flood)",
        guest_rx_mgmt.is_some_and(|g| g < 40) && shoji_took.is_some_and(|n| n > FLOOD / 2),
        format!("guest rx +{guest_rx_mgmt:?} over the {FLOOD}-datagram flood at {MGMT_IP}; Shoji's endpoint took +{shoji_took:?} frames"),
    );
    let nic_rx = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| sample(t, "shoji_nic_frames_total{direction=\"rx\"}"))
    };
    let shoji_rx_own = nic_rx(&nic_a)
        .zip(nic_rx(&nic_b))
        .map(|(a, b)| b.saturating_sub(a));
    // The guest's count also holds the frames of the `next` connection that follow the second
    // scrape (a handful): Shoji's figure comes from /metrics, the guest's from its driver.
    rep.check(
        "management: control: the same flood at the guest's address reaches it, and /metrics counts what the guest's driver counted",
        guest_rx_own.is_some_and(|g| g > FLOOD / 2)
            && shoji_rx_own.zip(guest_rx_own).is_some_and(|(s, g)| s <= g && g - s <= 12),
        format!("guest rx +{guest_rx_own:?}; shoji_nic_frames_total{{direction=\"rx\"}} +{shoji_rx_own:?}"),
    );
    let guest_mac = crate::netns::GUEST_MAC;
    let (udp9, arp9) = spoofs_seen(&captured, MGMT_IP, guest_mac);
    let (udp77, arp77) = spoofs_seen(&captured, "10.0.2.77", guest_mac);
    // The admin key: out of the ESP (raw image), out of the guest's view of the firmware.
    let esp = p.dir.join("esp.img");
    let moved = console
        .lines()
        .find(|l| l.contains("shoji: admin key moved into the firmware"))
        .map(str::trim);
    if matches!(rep.backend, crate::emulator::Backend::Nested(_)) {
        // On the nested bed the guest's ESP is a file inside L1's disk, written through L1's
        // page cache while L1 runs: the harness's image is not the disk the guest used.
        rep.check(
            "management: Shoji moved the admin key into the firmware and overwrote its line in shoji.cfg (the raw ESP is checked on Bochs only: here it lies inside L1's disk)",
            moved.is_some(),
            moved.unwrap_or("no 'moved into the firmware' line").to_owned(),
        );
    } else {
        rep.check(
            "management: Shoji moved the admin key into the firmware and overwrote it on the ESP (raw image bytes no longer hold it)",
            moved.is_some() && !esp_holds_key(&esp),
            format!(
                "{}; key in the image now: {}",
                moved.unwrap_or("no 'moved into the firmware' line"),
                esp_holds_key(&esp)
            ),
        );
    }
    let count = console.lines().find_map(|l| {
        l.split_once("SHOJI-TEST: efivars count=")
            .map(|(_, r)| r.trim().to_owned())
    });
    let dump = efivars_hex(&console);
    let key_hex = TEST_ADMIN_KEY.to_ascii_lowercase();
    let listed = count
        .as_deref()
        .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    let shoji_vars = count
        .as_deref()
        .and_then(|c| c.split_once("shoji=")?.1.trim().parse::<u32>().ok());
    rep.check(
        "management: root in the guest cannot read the admin key through efivarfs (no Shoji variable listed, the key in no variable's bytes; efivarfs lists the firmware's variables)",
        listed > 0 && shoji_vars == Some(0) && !dump.is_empty() && !dump.contains(&key_hex),
        format!("efivars count={}; {} hex digits of variable data read", count.as_deref().unwrap_or("none"), dump.len()),
    );
    rep.check(
        "management: the guest cannot speak as Shoji (UDP from 10.0.2.9 and ARP replies claiming it never reach the peer; control from 10.0.2.77 does)",
        udp9 == 0 && arp9 == 0 && udp77 > 0 && arp77 > 0,
        format!("tcpdump on the peer's tap: as Shoji {udp9} UDP + {arp9} ARP; as 10.0.2.77 {udp77} UDP + {arp77} ARP"),
    );
    admin_tasks(m, p, rep, t)?;
    admin_rules(m, p, rep, t, &lines)
}

/// The guest's port where uid 1000 listens for the peer's held connection.
const TASKS_PORT: &str = "7781";

/// What the guest's own /proc says about the process holding the peer's connection
/// (`tasks-witness` line): pid, comm, executable inode, uid, and its /proc/net/tcp line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TasksWitness {
    pub pid: u64,
    pub comm: String,
    pub exe_inode: u64,
    pub uid: u64,
    /// `a.b.c.d:port` of both ends, from /proc/net/tcp's hex.
    pub local: String,
    pub remote: String,
}

/// An endpoint of `/proc/net/tcp` (`0F02000A:1E65`: IPv4 as one host-order word) or
/// `/proc/net/tcp6` (four such words) as `10.0.2.15:7781` or `[fe80::1]:7781`; an IPv4-mapped
/// IPv6 address is written as IPv4, as [`endpoint`] writes Shoji's.
fn proc_net_endpoint(hex: &str) -> Option<String> {
    let (a, p) = hex.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.swap_bytes().to_be_bytes())
    };
    let ip = match a.len() {
        8 => std::net::IpAddr::from(word(0)?),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            std::net::IpAddr::from(b)
        }
        _ => return None,
    };
    Some(endpoint(&std::net::SocketAddr::new(ip, port).to_string()))
}

/// An `addr:port` endpoint with an IPv4-mapped IPv6 address (`[::ffff:10.0.2.15]:7781`, what a
/// dual-stack socket holds) written as IPv4 (`10.0.2.15:7781`); others unchanged.
pub fn endpoint(text: &str) -> String {
    match text.parse::<std::net::SocketAddr>() {
        Ok(std::net::SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", a.port()),
            None => text.to_owned(),
        },
        _ => text.to_owned(),
    }
}

/// Parse the guest's `SHOJI-TEST: tasks-witness ...` line.
pub fn tasks_witness(console: &str) -> Option<TasksWitness> {
    let line = console
        .lines()
        .find_map(|l| l.split_once("SHOJI-TEST: tasks-witness ").map(|(_, r)| r))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
    };
    let tcp = line.split_once("tcp=[")?.1.trim_end().trim_end_matches(']');
    let cols: Vec<&str> = tcp.split_whitespace().collect();
    Some(TasksWitness {
        pid: field("pid")?.parse().ok()?,
        comm: field("comm")?.to_owned(),
        exe_inode: field("exe_inode")?.parse().ok()?,
        uid: field("status_uid")?.parse().ok()?,
        local: proc_net_endpoint(cols.get(1)?)?,
        remote: proc_net_endpoint(cols.get(2)?)?,
    })
}

/// The JSON lines of a `/tasks` answer (`None` if any line is not a JSON object).
pub fn task_lines(text: &str) -> Option<Vec<serde_json::Value>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.is_object())
        })
        .collect()
}

/// The task in `lines` holding a TCP socket from `local` to `remote` in state ESTABLISHED.
pub fn task_with_socket<'a>(
    lines: &'a [serde_json::Value],
    local: &str,
    remote: &str,
) -> Option<&'a serde_json::Value> {
    lines.iter().find(|t| {
        t["sockets"].as_array().is_some_and(|ss| {
            ss.iter().any(|s| {
                s["protocol"] == "tcp"
                    && s["state"] == "ESTABLISHED"
                    && s["local"].as_str().map(endpoint).as_deref() == Some(local)
                    && s["remote"].as_str().map(endpoint).as_deref() == Some(remote)
            })
        })
    })
}

/// Whether `task` is the witnessed process: pid, uid, comm and executable inode all agree.
fn same_process(task: &serde_json::Value, w: &TasksWitness) -> bool {
    task["pid"].as_u64() == Some(w.pid)
        && task["tgid"].as_u64() == Some(w.pid)
        && task["uid"].as_u64() == Some(w.uid)
        && task["comm"].as_str() == Some(w.comm.as_str())
        && task["exe_inode"].as_u64() == Some(w.exe_inode)
}

/// Phase 3b: the guest's processes with their sockets, as the administrator (`/tasks`) and the
/// agent (`ListTasks`) read them, against the guest's own /proc.
fn admin_tasks(
    m: &mut Machine,
    p: &mut Phase<'_>,
    rep: &mut Report,
    t: &dyn Fn(u64) -> Duration,
) -> Result<()> {
    m.wait_for(Stream::Console, "SHOJI-TEST: MGMT-TASKS-READY", t(900), &[])?;
    // The peer connects to uid 1000's listener and holds the connection open.
    let hold = format!(
        "exec 3<>/dev/tcp/{}/{TASKS_PORT} && echo tasks-hello >&3 && sleep 900",
        crate::netns::GUEST_IP
    );
    let mut c = p.ns.command("bash", ["-c", &hold]);
    c.stdin(std::process::Stdio::null());
    let mut holder = GroupChild::spawn(&mut c)?;
    m.wait_for(
        Stream::Console,
        "SHOJI-TEST: MGMT-TASKS-WITNESS-DONE",
        t(300),
        &[],
    )?;
    let with = p.admin("tasks --sockets", &["tasks", "--sockets"]);
    let without = p.admin("tasks", &["tasks"]);
    let unsigned = p.admin("unsigned tasks", &["--no-key", "tasks"]);
    holder.kill();
    send_msg(p.ns, "next", &mut p.log);
    let console = m.text(Stream::Console);
    let witness = tasks_witness(&console);
    let lines = task_lines(&with.text).unwrap_or_default();
    let found = witness
        .as_ref()
        .and_then(|w| task_with_socket(&lines, &w.local, &w.remote));
    let end = lines.last().cloned().unwrap_or_default();
    rep.check(
        "management: `shoji-admin tasks --sockets` lists the guest process holding the peer's TCP connection with the pid, uid, comm, executable inode and both endpoints the guest's /proc gives (/proc/net/tcp, the owner of the socket's inode)",
        with.ok
            && witness.as_ref().is_some_and(|w| w.uid == 1000 && w.remote.starts_with(crate::netns::PEER_IP))
            && found.zip(witness.as_ref()).is_some_and(|(t, w)| same_process(t, w)),
        format!(
            "guest: {witness:?}; Shoji: {}",
            found.map(|t| t.to_string()).unwrap_or_else(|| format!("no task with that socket in {} lines ({})", lines.len(), first_line(&with.text)))
        ),
    );
    let listed = task_lines(&without.text).unwrap_or_default();
    let init = listed.iter().find(|t| t["pid"] == 1);
    rep.check(
        "management: the list is complete and names init (pid 1, uid 0) and no sockets without ?sockets=1",
        end["end"] == "complete"
            && listed.last().is_some_and(|e| e["end"] == "complete")
            && init.is_some_and(|t| t["uid"] == 0 && t.get("sockets").is_none())
            && listed.len() > 5,
        format!("last line with sockets: {end}; without: {} lines, init: {:?}", listed.len(), init.map(|t| t.to_string())),
    );
    rep.check(
        "management: an unsigned GET /tasks is refused with 401",
        unsigned.code == Some(2) && unsigned.text.contains("401"),
        first_line(&unsigned.text),
    );
    // The agent's view through the ListTasks VMCALL (`[tasks-agent] ` lines).
    let agent_text: String = console
        .lines()
        .filter_map(|l| l.split_once("[tasks-agent] ").map(|(_, r)| r))
        .map(|l| format!("{l}\n"))
        .collect();
    let agent_lines = task_lines(&agent_text).unwrap_or_default();
    let agent_found = witness
        .as_ref()
        .and_then(|w| task_with_socket(&agent_lines, &w.local, &w.remote));
    rep.check(
        "management: the agent's `shojictl tasks --sockets` (ListTasks VMCALL) lists the same process with the same socket",
        agent_found.zip(witness.as_ref()).is_some_and(|(t, w)| same_process(t, w)),
        format!(
            "{} lines from the agent; {}",
            agent_lines.len(),
            agent_found.map(|t| t.to_string()).unwrap_or_else(|| "the process is not among them".into())
        ),
    );
    Ok(())
}

/// Phase 4: the administrator's rules against uid 1000, with root and the agent beside it.
fn admin_rules(
    m: &mut Machine,
    p: &mut Phase<'_>,
    rep: &mut Report,
    t: &dyn Fn(u64) -> Duration,
    lines: &Lines,
) -> Result<()> {
    m.wait_for(Stream::Console, "SHOJI-TEST: MGMT-BLOCK-READY", t(900), &[])?;
    let control = lines.saw("control-user");
    let unsigned = p.admin(
        "unsigned block",
        &[
            "--no-key",
            "block",
            "--uid",
            "1000",
            "--tcp-dst-port",
            BLOCK_PORT,
        ],
    );
    let block = p.admin(
        "block uid 1000",
        &["block", "--uid", "1000", "--tcp-dst-port", BLOCK_PORT],
    );
    let id = rule_id(&block.text);
    send_msg(p.ns, "next", &mut p.log);
    m.wait_for(Stream::Console, "SHOJI-TEST: MGMT-BLOCK-DONE", t(300), &[])?;
    std::thread::sleep(Duration::from_secs(2));
    let listed = p.admin("blocks while blocked", &["blocks"]);
    let rules = rules_of(&listed.text).unwrap_or_default();
    let hits = rules
        .first()
        .and_then(|r| r.get("hits")?.as_u64())
        .unwrap_or(0);
    let metrics = p.scrape("metrics-blocked");
    let denied = metrics.as_deref().and_then(|t| {
        sample(
            t,
            "shoji_policy_dropped_total{party=\"host\",reason=\"admin_denied\"}",
        )
    });
    let (blocked_user, blocked_root, agent_user) = (
        lines.saw("blocked-user"),
        lines.saw("blocked-root"),
        lines.saw("agent-user"),
    );
    let unblock = match id {
        Some(id) => p.admin("unblock", &["unblock", &id.to_string()]),
        None => Ran {
            ok: false,
            code: None,
            text: "no rule id to remove".into(),
        },
    };
    send_msg(p.ns, "next", &mut p.log);
    m.wait_for(
        Stream::Console,
        "SHOJI-TEST: MGMT-UNBLOCK-DONE",
        t(300),
        &[],
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let after = p.admin("blocks after unblock", &["blocks"]);
    let after_user = lines.saw("after-user");
    send_msg(p.ns, "next", &mut p.log);
    let console = m.text(Stream::Console);
    let rc = |label| attempt_rc(&console, label);
    let agent_push = console
        .lines()
        .find(|l| l.contains("SHOJI-TEST: intro admin-agent-push rc="))
        .map(str::trim)
        .unwrap_or("no admin-agent-push line");

    rep.check(
        "management: control: uid 1000 reaches the peer's port 7777 before any administrator rule (the peer's listener got its line)",
        control && rc("control-user") == Some(0),
        format!("peer saw it: {control}; guest nc rc={:?}", rc("control-user")),
    );
    rep.check(
        "management: an unsigned POST /block is refused with 401 and adds nothing",
        unsigned.code == Some(2) && unsigned.text.contains("401") && rules.len() == 1,
        format!(
            "{}; rules listed while blocked: {}",
            first_line(&unsigned.text),
            rules.len()
        ),
    );
    rep.check(
        "management: `shoji-admin block --uid 1000 --tcp-dst-port 7777` stops uid 1000's connections to the peer (SYN retransmissions included) while root's get through",
        block.ok && id.is_some() && !blocked_user && rc("blocked-user") != Some(0) && blocked_root && rc("blocked-root") == Some(0),
        format!(
            "block: {}; peer saw uid 1000: {blocked_user} (nc rc={:?}), root: {blocked_root} (nc rc={:?})",
            first_line(&block.text),
            rc("blocked-user"),
            rc("blocked-root")
        ),
    );
    rep.check(
        "management: the rule's hits (GET /blocks) and the host's admin_denied drops (/metrics) count the refused SYNs",
        hits >= 1 && denied.is_some_and(|d| d >= hits),
        format!("hits={hits}; shoji_policy_dropped_total{{party=\"host\",reason=\"admin_denied\"}}={denied:?}"),
    );
    rep.check(
        "management: root in the guest holding the agent key pushing its profile again does not lift the administrator's rule",
        agent_push.contains("rc=0") && !agent_user && rc("agent-user") != Some(0),
        format!("{agent_push}; peer saw uid 1000 after it: {agent_user}"),
    );
    let left = rules_of(&after.text);
    rep.check(
        "management: `shoji-admin unblock ID` removes the rule and uid 1000 reaches the peer again",
        unblock.ok
            && left.as_ref().is_some_and(|r| r.is_empty())
            && after_user
            && rc("after-user") == Some(0),
        format!(
            "unblock: {}; rules left: {:?}; peer saw uid 1000: {after_user} (nc rc={:?})",
            first_line(&unblock.text),
            left.map(|r| r.len()),
            rc("after-user")
        ),
    );
    Ok(())
}

/// The first non-blank line of `text`, trimmed, at most 200 characters.
pub fn first_line(text: &str) -> String {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tasks_witness_and_the_task_holding_its_socket() {
        let console = "x\nSHOJI-TEST: tasks-witness pid=812 comm=nc exe_inode=4321 status_uid=1000 tcp=[3: 0F02000A:1E65 0202000A:B3A2 01 00000000:00000000 00:00000000 00000000 1000 0 9876 1 0000000000000000 20 4 30 10 -1]\n";
        let w = tasks_witness(console).unwrap();
        assert_eq!(
            w,
            TasksWitness {
                pid: 812,
                comm: "nc".into(),
                exe_inode: 4321,
                uid: 1000,
                local: "10.0.2.15:7781".into(),
                remote: "10.0.2.2:45986".into(),
            }
        );
        let text = concat!(
            "{\"pid\":1,\"tgid\":1,\"uid\":0,\"comm\":\"init\",\"exe_inode\":1,\"sockets\":[]}\n",
            "{\"pid\":812,\"tgid\":812,\"uid\":1000,\"comm\":\"nc\",\"exe_inode\":4321,\"sockets\":[{\"protocol\":\"tcp\",\"state\":\"ESTABLISHED\",\"local\":\"10.0.2.15:7781\",\"remote\":\"10.0.2.2:45986\"}]}\n",
            "{\"end\":\"complete\"}\n"
        );
        let lines = task_lines(text).unwrap();
        let t = task_with_socket(&lines, &w.local, &w.remote).unwrap();
        assert!(same_process(t, &w));
        let mut other = w.clone();
        other.exe_inode = 4322;
        assert!(!same_process(t, &other));
        assert!(task_with_socket(&lines, &w.local, "10.0.2.2:1").is_none());
        assert!(task_lines("{}\nnot json\n").is_none());
        // A dual-stack listener's connection: /proc/net/tcp6 and Shoji both say IPv4-mapped.
        let v6 = "SHOJI-TEST: tasks-witness pid=310 comm=nc exe_inode=15 status_uid=1000 tcp=[1: 0000000000000000FFFF00000F02000A:1E65 0000000000000000FFFF00000202000A:BCC0 01 00000000:00000000 00:00000000 00000000 1000 0 777 1]";
        let w6 = tasks_witness(v6).unwrap();
        assert_eq!(
            (w6.local.as_str(), w6.remote.as_str()),
            ("10.0.2.15:7781", "10.0.2.2:48320")
        );
        let text6 = "{\"pid\":310,\"tgid\":310,\"uid\":1000,\"comm\":\"nc\",\"exe_inode\":15,\"sockets\":[{\"family\":\"ipv6\",\"protocol\":\"tcp\",\"state\":\"ESTABLISHED\",\"local\":\"[::ffff:10.0.2.15]:7781\",\"remote\":\"[::ffff:10.0.2.2]:48320\"}]}\n";
        let lines6 = task_lines(text6).unwrap();
        assert!(same_process(
            task_with_socket(&lines6, &w6.local, &w6.remote).unwrap(),
            &w6
        ));
        // A real IPv6 address stays IPv6.
        assert_eq!(
            proc_net_endpoint("000080FE000000000000000015000000:0222").as_deref(),
            Some("[fe80::15]:546")
        );
        assert_eq!(endpoint("[fe80::15]:546"), "[fe80::15]:546");
        assert_eq!(proc_net_endpoint("0F02000A"), None);
        assert!(tasks_witness(
            "SHOJI-TEST: tasks-witness pid=none comm= exe_inode= status_uid= tcp=[]"
        )
        .is_none());
    }

    #[test]
    fn the_admin_key_is_a_key_and_not_the_agents() {
        assert_eq!(TEST_ADMIN_KEY.len(), 64);
        assert!(TEST_ADMIN_KEY.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(TEST_ADMIN_KEY, crate::images::TEST_AGENT_KEY);
    }

    #[test]
    fn attempts_seen_by_the_peer_and_their_exit_status() {
        let lines = "tcp-lines: listening on 7777\ntcp-lines: 10.0.2.15 hello-control-user\ntcp-lines: 10.0.2.3 hello-x\n";
        assert!(saw_attempt(lines, "control-user"));
        assert!(!saw_attempt(lines, "control"));
        assert!(!saw_attempt(lines, "x"), "from another address");
        let console = "SHOJI-TEST: admin-connect blocked-user rc=1\r\nSHOJI-TEST: admin-connect blocked-root rc=0\n";
        assert_eq!(attempt_rc(console, "blocked-user"), Some(1));
        assert_eq!(attempt_rc(console, "blocked-root"), Some(0));
        assert_eq!(attempt_rc(console, "after-user"), None);
        assert_eq!(rule_id("{\"id\":3}\n"), Some(3));
        assert_eq!(rule_id("401 Unauthorized"), None);
        assert_eq!(rules_of("{\"rules\":[]}").map(|r| r.len()), Some(0));
    }

    #[test]
    fn samples_are_read_by_exact_series() {
        let t = "# HELP x y\nshoji_mgmt_frames_total{direction=\"rx\"} 12\nshoji_mgmt_frames_total{direction=\"tx\"} 7\nshoji_mgmt_rx_dropped_total 3\n";
        assert_eq!(
            sample(t, "shoji_mgmt_frames_total{direction=\"rx\"}"),
            Some(12)
        );
        assert_eq!(sample(t, "shoji_mgmt_rx_dropped_total"), Some(3));
        assert_eq!(sample(t, "shoji_mgmt_rx_dropped"), None);
    }

    #[test]
    fn spoofs_in_tcpdump_lines() {
        let cap = "\
10:00:00.1 52:54:00:12:34:56 > ff:ff:ff:ff:ff:ff, ethertype IPv4 (0x0800), length 60: 10.0.2.77.40000 > 10.0.2.2.9003: UDP, length 20
10:00:00.2 52:54:00:12:34:56 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 60: Reply 10.0.2.77 is-at 52:54:00:12:34:56, length 46
10:00:00.3 02:54:00:12:34:d6 > 12:34:56:78:9a:bc, ethertype ARP (0x0806), length 42: Reply 10.0.2.9 is-at 02:54:00:12:34:d6, length 28
";
        assert_eq!(spoofs_seen(cap, "10.0.2.77", "52:54:00:12:34:56"), (1, 1));
        assert_eq!(
            spoofs_seen(cap, "10.0.2.9", "52:54:00:12:34:56"),
            (0, 0),
            "Shoji's own reply is not a spoof"
        );
        assert_eq!(status_of("HTTP/1.1 409 Conflict\r\n"), Some(409));
    }
}
