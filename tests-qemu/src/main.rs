//! Shoji's end-to-end harness (`cargo xtask <command>`).
//!
//! Builds shoji.efi, the guest probe and the guest images (Debian's kernel, a busybox
//! initramfs, an ext2 data disk), puts them on FAT ESP images, boots them under Bochs (software
//! VMX), QEMU+KVM (hardware VMX, where available) or QEMU/TCG (no VMX) with the e1000 attached
//! to a tap peer in a network namespace, and checks what the guest and Shoji print.
//! See docs/testing.md.

mod containers;
mod crun;
mod emulator;
mod images;
mod kernel;
mod mgmt;
mod nested;
mod netns;
mod scenarios;
mod setup;
mod util;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::kernel::Flavour;
use crate::scenarios::{Inputs, Report, Scenario};
use crate::util::{cargo, cmd, run_visible, secs, workspace_root};

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "xtask", about = "Shoji's build, test and demo driver")]
struct Cli {
    /// Guest kernel flavour.
    #[arg(long, value_enum, default_value = "bookworm", global = true)]
    flavour: Flavour,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options for running emulator scenarios.
#[derive(clap::Args, Debug, Clone)]
struct E2eOpts {
    /// Emulators run side by side (the machines have 2 cores).
    #[arg(short, long, default_value_t = 2)]
    jobs: usize,
    /// Scenarios to leave out (repeatable; also SHOJI_SKIP=a,b). Reported as skipped.
    #[arg(long)]
    skip: Vec<String>,
    /// CI mode (also when the environment has CI=true): anything skipped fails the run, since
    /// CI must run every step and scenario.
    #[arg(long)]
    ci: bool,
}

impl E2eOpts {
    /// CI mode: `--ci`, or CI set to anything but empty, 0, false or no.
    fn ci(&self) -> bool {
        self.ci
            || std::env::var("CI").is_ok_and(|v| {
                !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "" | "0" | "false" | "no"
                )
            })
    }
}

/// Subcommands.
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Everything CI runs: fmt, clippy, unit tests, fuzz smoke, shoji.efi, all scenarios.
    Test {
        #[command(flatten)]
        opts: E2eOpts,
    },
    /// Only the emulator scenarios (all, or the ones named).
    E2e {
        /// Scenario names (see `cargo xtask list`); none = all.
        scenarios: Vec<String>,
        #[command(flatten)]
        opts: E2eOpts,
    },
    /// Build everything and boot the demo (containers under Shoji, an ARP spoof blocked, the
    /// witness's ARP table), printing the interesting lines.
    Demo,
    /// Only build the images (guest images, and the ESP contents when shoji.efi builds).
    Images,
    /// Install what a fresh machine lacks: Debian's packages (as root) and the Rust targets and
    /// components (`demo`, `test`, `e2e` and `images` do this themselves when run as root).
    Setup,
    /// List the scenarios and what each proves.
    List,
    /// Remove leftovers of an interrupted run (namespaces, Bochs lock files).
    Clean,
    /// Internal (run inside a scenario's namespace): accept one TCP connection on PORT, count
    /// the bytes until the sender closes, answer `received N` and print the count.
    #[command(hide = true)]
    TcpSink {
        /// Port to listen on.
        port: u16,
    },
    /// Internal (run inside a scenario's namespace): accept TCP connections on PORT until
    /// killed; print `tcp-lines: FROM LINE` for every line each one sends.
    #[command(hide = true)]
    TcpLines {
        /// Port to listen on.
        port: u16,
    },
    /// Internal (run inside a scenario's namespace): receive UDP datagrams on PORT until killed
    /// and keep SUMMARY up to date: one line `from=IP tag=TAG count=N` per source and payload
    /// tag (the payload up to " seq=").
    #[command(hide = true)]
    UdpSink {
        /// Port to listen on.
        port: u16,
        /// The summary file (rewritten as datagrams arrive).
        summary: PathBuf,
    },
    /// Internal (the peer, inside the namespace): send UDP datagrams to ADDR:PORT, paced,
    /// until killed (the RX flood of the guest's `probe udp-sink`).
    #[command(hide = true)]
    UdpFlood {
        /// Guest address.
        addr: String,
        /// Guest port.
        port: u16,
        /// Datagrams per 10 ms tick.
        #[arg(default_value_t = 40)]
        per_tick: u32,
        /// Stop after this many datagrams (default: run until killed).
        total: Option<u64>,
    },
}

/// `xtask udp-flood ADDR PORT PER_TICK [TOTAL]` (the peer side of the guest's `probe
/// udp-sink`): paced UDP datagrams (64-byte payload, `per_tick` every 10 ms) until killed, or
/// until `total` have been sent.
fn udp_flood(addr: &str, port: u16, per_tick: u32, total: Option<u64>) -> Result<()> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let payload = [0x5au8; 64];
    let mut sent = 0u64;
    loop {
        for _ in 0..per_tick {
            if total.is_some_and(|t| sent >= t) {
                println!("udp-flood: {sent} datagrams to {addr}:{port}");
                return Ok(());
            }
            // The guest may not answer ARP at once or the tap queue may be full: keep going.
            let _ = sock.send_to(&payload, (addr, port));
            sent += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `xtask tcp-lines PORT`: the peer's listener for connection attempts the test must see (or
/// not): every line received is printed with its sender, one connection after the other, each
/// for at most 20 s.
fn tcp_lines(port: u16) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
    println!("tcp-lines: listening on {port}");
    loop {
        let (s, from) = listener.accept()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            println!("tcp-lines: {} {}", from.ip(), line.trim());
            let _ = std::io::stdout().flush();
        }
    }
}

/// `xtask tcp-sink PORT` (the peer side of the guest's `probe tcp-send`).
fn tcp_sink(port: u16) -> Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
    println!("tcp-sink: listening on {port}");
    let (mut s, from) = listener.accept()?;
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    let _ = writeln!(s, "received {total}");
    println!(
        "tcp-sink: received {total} bytes from {from} in {:.3} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `xtask udp-sink PORT SUMMARY` (the peer's witness of what reached it over UDP).
fn udp_sink(port: u16, summary: &std::path::Path) -> Result<()> {
    let sock = std::net::UdpSocket::bind(("0.0.0.0", port))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    let mut buf = vec![0u8; 65536];
    let mut dirty = true;
    let mut written = Instant::now();
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                let tag = text.split(" seq=").next().unwrap_or("").trim();
                let tag: String = tag
                    .chars()
                    .take(40)
                    .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                    .collect();
                let key = (from.ip().to_string(), tag);
                let new = !counts.contains_key(&key);
                *counts.entry(key).or_default() += 1;
                dirty = true;
                if !new && written.elapsed() < Duration::from_millis(200) {
                    continue;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        if dirty {
            let text: String = counts
                .iter()
                .map(|((ip, tag), n)| format!("from={ip} tag={tag} count={n}\n"))
                .collect();
            let tmp = summary.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, summary)?;
            dirty = false;
            written = Instant::now();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = util::install_interrupt_handler() {
        eprintln!("xtask: {e:#}");
    }
    let code = match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    };
    if util::CANCELLED.load(std::sync::atomic::Ordering::SeqCst) {
        return ExitCode::from(130);
    }
    code
}

fn run(cli: Cli) -> Result<bool> {
    match cli.cmd {
        Cmd::List => {
            for s in scenarios::KNOWN_FAILING {
                println!(
                    "{:<16} [{}] BY NAME ONLY, not in `test` (README: Known limits): {}",
                    s.name,
                    s.backend().name(),
                    s.about
                );
            }
            for s in scenarios::ALL {
                println!(
                    "{:<16} [{}{}] {}",
                    s.name,
                    s.backend().name(),
                    if s.needs_shoji {
                        ", needs shoji.efi"
                    } else {
                        ""
                    },
                    s.about
                );
            }
            Ok(true)
        }
        Cmd::Clean => {
            clean();
            Ok(true)
        }
        Cmd::TcpSink { port } => {
            tcp_sink(port)?;
            Ok(true)
        }
        Cmd::TcpLines { port } => {
            tcp_lines(port)?;
            Ok(true)
        }
        Cmd::UdpSink { port, summary } => {
            udp_sink(port, &summary)?;
            Ok(true)
        }
        Cmd::UdpFlood {
            addr,
            port,
            per_tick,
            total,
        } => {
            udp_flood(&addr, port, per_tick, total)?;
            Ok(true)
        }
        Cmd::Setup => {
            setup::install()?;
            let left = setup::missing();
            if !left.is_empty() {
                anyhow::bail!("still missing after set-up: {left:?}");
            }
            println!("xtask setup: done");
            Ok(true)
        }
        Cmd::Images => {
            setup::ensure()?;
            let imgs = images::build_guest_images(cli.flavour)?;
            println!(
                "kernel:    {} ({})",
                imgs.kernel.vmlinuz.display(),
                imgs.kernel.package
            );
            println!(
                "initramfs: {} ({} KiB)",
                imgs.initrd.display(),
                kib(&imgs.initrd)
            );
            println!("data disk: {}", imgs.data_disk.display());
            println!(
                "probe:     {} ({} KiB)",
                imgs.probe.display(),
                kib(&imgs.probe)
            );
            println!(
                "shojictl:  {} ({} KiB)",
                imgs.shojictl.display(),
                kib(&imgs.shojictl)
            );
            match images::build_shoji() {
                Ok(p) => println!("shoji.efi: {}", p.display()),
                Err(e) => println!("shoji.efi: not built: {e:#}"),
            }
            Ok(true)
        }
        Cmd::E2e { scenarios, opts } => {
            setup::ensure()?;
            let (list, skipped) = select(&scenarios, &opts)?;
            let shoji = shoji_if_needed(&list);
            let imgs = images::build_guest_images(cli.flavour)?;
            let reports = run_scenarios(&list, &imgs, &shoji, opts.jobs);
            let mut rows = skipped;
            rows.extend(reports.iter().map(Row::scenario));
            Ok(summary(&rows, opts.ci()))
        }
        Cmd::Demo => {
            setup::ensure()?;
            demo(cli.flavour)
        }
        Cmd::Test { opts } => {
            setup::ensure()?;
            test_all(cli.flavour, &opts)
        }
    }
}

fn kib(p: &PathBuf) -> u64 {
    std::fs::metadata(p).map(|m| m.len() / 1024).unwrap_or(0)
}

/// Remove stale namespaces and Bochs lock files.
fn clean() {
    netns::remove_stale();
    for s in scenarios::ALL {
        let _ = std::fs::remove_file(s.dir().join("esp.img.lock"));
        let _ = std::fs::remove_file(s.dir().join("data.img.lock"));
    }
}

/// The scenarios to run: the named ones (or all), less the skipped ones, which come back as
/// summary rows.
fn select(names: &[String], opts: &E2eOpts) -> Result<(Vec<&'static Scenario>, Vec<Row>)> {
    let mut skip: Vec<String> = opts.skip.clone();
    if let Ok(s) = std::env::var("SHOJI_SKIP") {
        skip.extend(s.split(',').filter(|x| !x.is_empty()).map(str::to_owned));
    }
    for n in names.iter().chain(skip.iter()) {
        if scenarios::find(n).is_none() {
            anyhow::bail!("unknown scenario {n:?} (see `cargo xtask list`)");
        }
    }
    let (mut list, mut skipped) = (Vec::new(), Vec::new());
    // Known-failing scenarios run only when named.
    let named_known_failing = scenarios::KNOWN_FAILING
        .iter()
        .filter(|s| names.iter().any(|n| n == s.name));
    for s in scenarios::ALL.iter().chain(named_known_failing) {
        if !names.is_empty() && !names.iter().any(|n| n == s.name) {
            continue; // not asked for: neither run nor skipped
        }
        if skip.iter().any(|n| n == s.name) {
            skipped.push(Row {
                name: format!("e2e {}", s.name),
                outcome: Outcome::Skipped("left out by --skip / SHOJI_SKIP".into()),
                note: String::new(),
            });
        } else {
            list.push(s);
        }
    }
    Ok((list, skipped))
}

/// Build shoji.efi when a selected scenario needs it; keep the error text otherwise.
/// The administrator's tools when a selected scenario talks to Shoji's management endpoint.
fn admin_if_needed(list: &[&Scenario]) -> Result<mgmt::AdminTools, String> {
    if list.iter().any(|s| s.mgmt_endpoint()) {
        mgmt::tools().map_err(|e| format!("{e:#}"))
    } else {
        Err("not needed".into())
    }
}

fn shoji_if_needed(list: &[&Scenario]) -> Result<PathBuf, String> {
    if list.iter().any(|s| s.needs_shoji) {
        images::build_shoji().map_err(|e| format!("{e:#}"))
    } else {
        Err("not needed".into())
    }
}

/// Guest images with Debian 13's kernel when a selected scenario needs them (the main images
/// when they already are Debian 13's).
fn trixie_if_needed(
    list: &[&'static Scenario],
    imgs: &images::GuestImages,
) -> Result<images::GuestImages, String> {
    if !list.iter().any(|s| s.needs_trixie()) {
        return Err("not needed".into());
    }
    if imgs.kernel.package.contains("+deb13") {
        return Ok(imgs.clone());
    }
    images::build_guest_images(Flavour::Trixie).map_err(|e| format!("{e:#}"))
}

/// Run scenarios on `jobs` workers; reports come back in the scenario order.
fn run_scenarios(
    list: &[&'static Scenario],
    imgs: &images::GuestImages,
    shoji: &Result<PathBuf, String>,
    jobs: usize,
) -> Vec<Report> {
    netns::remove_stale();
    let queue: Mutex<VecDeque<&'static Scenario>> = Mutex::new(list.iter().copied().collect());
    let done: Mutex<Vec<Report>> = Mutex::new(Vec::new());
    let trixie = trixie_if_needed(list, imgs);
    let admin = admin_if_needed(list);
    let inputs = Inputs {
        images: imgs,
        shoji,
        trixie: &trixie,
        admin: &admin,
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                if util::check_cancelled().is_err() {
                    break;
                }
                let Some(sc) = queue.lock().map(|mut q| q.pop_front()).ok().flatten() else {
                    break;
                };
                let rep = scenarios::run(sc, &inputs);
                eprint!("{}", rep.render());
                if let Ok(mut d) = done.lock() {
                    d.push(rep);
                }
            });
        }
    });
    eprintln!("xtask: scenarios took {}", secs(started.elapsed()));
    let mut reports = done.into_inner().unwrap_or_default();
    reports.sort_by_key(|r| list.iter().position(|s| s.name == r.name));
    reports
}

/// How a CI step or a scenario ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    /// Not run (or ran without testing anything), with the reason.
    Skipped(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Passed => write!(f, "passed"),
            Outcome::Failed => write!(f, "FAILED"),
            Outcome::Skipped(why) => write!(f, "SKIPPED ({why})"),
        }
    }
}

/// One line of the summary.
#[derive(Clone, Debug)]
struct Row {
    name: String,
    outcome: Outcome,
    /// Shown after the outcome (backend, time to init, logs).
    note: String,
}

impl Row {
    fn step(name: &str, ok: bool) -> Row {
        let outcome = if ok { Outcome::Passed } else { Outcome::Failed };
        Row {
            name: name.to_owned(),
            outcome,
            note: String::new(),
        }
    }

    fn scenario(r: &Report) -> Row {
        let mut note = format!("[{}]", r.backend.name());
        if let Some(d) = r.time_to_init() {
            note += &format!(" power-on to init {}", secs(d));
        }
        if !r.passed() {
            note += &format!(" logs: {}", r.dir.display());
        }
        Row::step(&format!("e2e {}", r.name), r.passed()).with_note(note)
    }

    fn with_note(mut self, note: String) -> Row {
        self.note = note;
        self
    }
}

/// Passed, failed and skipped counts.
#[derive(Debug, PartialEq, Eq)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Tally {
    fn of<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Tally {
        let mut t = Tally {
            passed: 0,
            failed: 0,
            skipped: 0,
        };
        for o in outcomes {
            match o {
                Outcome::Passed => t.passed += 1,
                Outcome::Failed => t.failed += 1,
                Outcome::Skipped(_) => t.skipped += 1,
            }
        }
        t
    }

    /// The run passes with no failure and, in CI (which must run everything), no skip.
    fn ok(&self, ci: bool) -> bool {
        self.failed == 0 && !(ci && self.skipped > 0)
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Tally {
            passed,
            failed,
            skipped,
        } = self;
        write!(f, "{passed} passed, {failed} failed, {skipped} skipped")
    }
}

/// Print the summary; returns true when the run passed (see `Tally::ok`).
fn summary(rows: &[Row], ci: bool) -> bool {
    println!();
    println!("==== summary");
    for r in rows {
        let line = format!("{:<40} {} {}", r.name, r.outcome, r.note);
        println!("{}", line.trim_end());
    }
    let tally = Tally::of(rows.iter().map(|r| &r.outcome));
    if ci && tally.skipped > 0 {
        println!("CI mode: CI must run every step and scenario, so a skip fails the run");
    }
    println!("{tally}");
    tally.ok(ci)
}

/// `cargo xtask demo`.
fn demo(flavour: Flavour) -> Result<bool> {
    let imgs = images::build_guest_images(flavour)?;
    let shoji = images::build_shoji().map_err(|e| format!("{e:#}"));
    if let Err(e) = &shoji {
        eprintln!("xtask: shoji.efi did not build: {e}");
    }
    // Containers on one guest, an ARP spoof between them blocked, the witness's ARP table.
    let sc = scenarios::find("bochs-containers").expect("scenario exists");
    eprintln!(
        "xtask: booting Linux with two crun containers under Shoji on {} (a few minutes under Bochs)...",
        sc.backend().name()
    );
    let reports = run_scenarios(&[sc], &imgs, &shoji, 1);
    println!();
    println!("==== what Shoji and the guest printed");
    for r in &reports {
        for l in &r.highlights {
            println!("  {l}");
        }
    }
    let rows: Vec<Row> = reports.iter().map(Row::scenario).collect();
    Ok(summary(&rows, false))
}

/// The exit code by which a step says it skipped (the automake convention), writing its reason
/// to the file named by `SHOJI_SKIP_REASON_FILE`.
const EXIT_SKIPPED: i32 = 77;

/// One CI step: run a command with a time limit, report passed, failed or skipped.
fn step(name: &str, c: &mut std::process::Command, timeout: Duration) -> Row {
    eprintln!("==== {name}");
    let t = Instant::now();
    let reason_file = std::env::temp_dir().join(format!("shoji-skip-{}", std::process::id()));
    let _ = std::fs::remove_file(&reason_file);
    c.env("SHOJI_SKIP_REASON_FILE", &reason_file);
    let outcome = match run_visible(c.current_dir(workspace_root()), timeout) {
        Ok(st) if st.success() => Outcome::Passed,
        Ok(st) if st.code() == Some(EXIT_SKIPPED) => {
            let why = std::fs::read_to_string(&reason_file).unwrap_or_default();
            let why = why.trim();
            Outcome::Skipped(
                if why.is_empty() {
                    "no reason given"
                } else {
                    why
                }
                .to_owned(),
            )
        }
        Ok(_) => Outcome::Failed,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            Outcome::Failed
        }
    };
    let _ = std::fs::remove_file(&reason_file);
    eprintln!("==== {name}: {outcome} ({})", secs(t.elapsed()));
    Row {
        name: name.to_owned(),
        outcome,
        note: String::new(),
    }
}

/// The check that shoji.efi leaves the guest's x87 and vector registers alone (Shoji does not
/// save them on a VM exit): no instruction in it names one. Its control: the same scan finds
/// such instructions in this harness's own (x86-64 Linux, SSE2) binary.
fn vector_state_row(shoji: &Result<PathBuf, String>) -> Row {
    let name = "shoji.efi touches no x87/MMX/SSE/AVX register (objdump)";
    eprintln!("==== {name}");
    let control = std::env::current_exe()
        .map_err(anyhow::Error::from)
        .and_then(|exe| images::vector_state_instructions(&exe));
    match &control {
        Ok(found) if !found.is_empty() => {
            eprintln!(
                "xtask: control: {} in the harness's own binary",
                found.len()
            )
        }
        Ok(_) => {
            eprintln!("xtask: control failed: the scan found nothing in the harness's own binary");
            return Row::step(name, false);
        }
        Err(e) => {
            eprintln!("xtask: control failed: {e:#}");
            return Row::step(name, false);
        }
    }
    let ok = match shoji {
        Err(_) => {
            eprintln!("xtask: shoji.efi did not build");
            false
        }
        Ok(efi) => match images::vector_state_instructions(efi) {
            Ok(found) if found.is_empty() => true,
            Ok(found) => {
                eprintln!(
                    "xtask: {} such instructions in shoji.efi, first:",
                    found.len()
                );
                for l in found.iter().take(10) {
                    eprintln!("  {l}");
                }
                false
            }
            Err(e) => {
                eprintln!("xtask: {e:#}");
                false
            }
        },
    };
    Row::step(name, ok)
}

/// `cargo xtask test`.
fn test_all(flavour: Flavour, opts: &E2eOpts) -> Result<bool> {
    let cargo = cargo();
    let min = |m: u64| Duration::from_secs(m * 60);
    let mut rows = vec![
        step(
            "cargo fmt --all --check",
            &mut cmd(&cargo, ["fmt", "--all", "--check"]),
            min(5),
        ),
        step(
            "cargo clippy -D warnings",
            &mut cmd(
                &cargo,
                [
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            ),
            min(30),
        ),
        // The firmware-side code (`cfg(target_os = "uefi")`) that the host build leaves out.
        step(
            "cargo clippy shoji.efi (x86_64-unknown-uefi) -D warnings",
            &mut cmd(
                &cargo,
                [
                    "clippy",
                    "--release",
                    "-p",
                    "shoji-boot",
                    "--target",
                    "x86_64-unknown-uefi",
                    "--",
                    "-D",
                    "warnings",
                ],
            ),
            min(30),
        ),
        // Licences (permissive only), bans (wildcards; duplicate versions reported) and sources
        // (crates.io only), by deny.toml. `.ci/run` installs cargo-deny; without it this fails.
        step(
            "cargo deny check licenses bans sources",
            &mut cmd(&cargo, ["deny", "check", "licenses", "bans", "sources"]),
            min(10),
        ),
        step(
            "cargo test --workspace",
            &mut cmd(&cargo, ["test", "--workspace"]),
            min(30),
        ),
    ];
    let fuzz = workspace_root().join("netfilter/fuzz/smoke.sh");
    if fuzz.is_file() {
        rows.push(step(
            "netfilter fuzz smoke",
            &mut cmd("bash", [fuzz.as_os_str(), "20".as_ref()]),
            min(15),
        ));
    } else {
        rows.push(Row {
            name: "netfilter fuzz smoke".into(),
            outcome: Outcome::Skipped("netfilter/fuzz/smoke.sh is missing".into()),
            note: String::new(),
        });
    }
    util::check_cancelled()?;
    eprintln!("==== building shoji.efi");
    let shoji = images::build_shoji().map_err(|e| format!("{e:#}"));
    if let Err(e) = &shoji {
        eprintln!("xtask: {e}");
    }
    rows.push(Row::step("build shoji.efi", shoji.is_ok()));
    rows.push(vector_state_row(&shoji));
    let (list, skipped) = select(&[], opts)?;
    let imgs = images::build_guest_images(flavour);
    if let Err(e) = &imgs {
        eprintln!("xtask: guest images: {e:#}");
    }
    rows.push(Row::step("build guest images", imgs.is_ok()));
    rows.extend(skipped);
    if let Ok(imgs) = &imgs {
        let reports = run_scenarios(&list, imgs, &shoji, opts.jobs);
        rows.extend(reports.iter().map(Row::scenario));
    }
    Ok(summary(&rows, opts.ci()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped() -> Outcome {
        Outcome::Skipped("why".into())
    }

    #[test]
    fn tally_counts_each_outcome_and_prints_the_closing_line() {
        let all = [
            Outcome::Passed,
            skipped(),
            Outcome::Failed,
            Outcome::Passed,
            skipped(),
            Outcome::Passed,
        ];
        let t = Tally::of(&all);
        assert_eq!(
            t,
            Tally {
                passed: 3,
                failed: 1,
                skipped: 2
            }
        );
        assert_eq!(t.to_string(), "3 passed, 1 failed, 2 skipped");
        assert_eq!(Tally::of(&[]).to_string(), "0 passed, 0 failed, 0 skipped");
    }

    #[test]
    fn a_skip_passes_locally_and_fails_in_ci_a_failure_always_fails() {
        let with_skip = Tally::of(&[Outcome::Passed, skipped()]);
        assert!(with_skip.ok(false));
        assert!(!with_skip.ok(true));
        let clean = Tally::of(&[Outcome::Passed, Outcome::Passed]);
        assert!(clean.ok(false) && clean.ok(true));
        let failed = Tally::of(&[Outcome::Passed, Outcome::Failed]);
        assert!(!failed.ok(false) && !failed.ok(true));
    }
}
