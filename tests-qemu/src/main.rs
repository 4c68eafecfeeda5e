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
    /// Scenarios to leave out (repeatable; also SHOJI_SKIP=a,b).
    #[arg(long)]
    skip: Vec<String>,
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
    },
}

/// `xtask udp-flood ADDR PORT` (the peer side of the guest's `probe udp-sink`): paced UDP
/// datagrams (64-byte payload, 40 every 10 ms) until killed.
fn udp_flood(addr: &str, port: u16) -> Result<()> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let payload = [0x5au8; 64];
    loop {
        for _ in 0..40 {
            // The guest may not answer ARP at once or the tap queue may be full: keep going.
            let _ = sock.send_to(&payload, (addr, port));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
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
        Cmd::UdpSink { port, summary } => {
            udp_sink(port, &summary)?;
            Ok(true)
        }
        Cmd::UdpFlood { addr, port } => {
            udp_flood(&addr, port)?;
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
            let list = select(&scenarios, &opts)?;
            let shoji = shoji_if_needed(&list);
            let imgs = images::build_guest_images(cli.flavour)?;
            let reports = run_scenarios(&list, &imgs, &shoji, opts.jobs);
            Ok(summary(&[], &reports))
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

/// The scenarios to run: the named ones (or all), less the skipped ones.
fn select(names: &[String], opts: &E2eOpts) -> Result<Vec<&'static Scenario>> {
    let mut skip: Vec<String> = opts.skip.clone();
    if let Ok(s) = std::env::var("SHOJI_SKIP") {
        skip.extend(s.split(',').filter(|x| !x.is_empty()).map(str::to_owned));
    }
    for n in names.iter().chain(skip.iter()) {
        if scenarios::find(n).is_none() {
            anyhow::bail!("unknown scenario {n:?} (see `cargo xtask list`)");
        }
    }
    Ok(scenarios::ALL
        .iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .filter(|s| !skip.iter().any(|n| n == s.name))
        .collect())
}

/// Build shoji.efi when a selected scenario needs it; keep the error text otherwise.
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
    let inputs = Inputs {
        images: imgs,
        shoji,
        trixie: &trixie,
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

/// Print the summary; returns true when everything passed.
fn summary(steps: &[(String, bool)], reports: &[Report]) -> bool {
    println!();
    println!("==== summary");
    for (name, ok) in steps {
        println!("{:<40} {}", name, if *ok { "passed" } else { "FAILED" });
    }
    for r in reports {
        let init = r
            .time_to_init()
            .map(|d| format!("power-on to init {}", secs(d)))
            .unwrap_or_default();
        println!(
            "{:<40} {} [{}] {}",
            format!("e2e {}", r.name),
            if r.passed() { "passed" } else { "FAILED" },
            r.backend.name(),
            init
        );
        if !r.passed() {
            println!("{:<40}   logs: {}", "", r.dir.display());
        }
    }
    let passed =
        steps.iter().filter(|s| s.1).count() + reports.iter().filter(|r| r.passed()).count();
    let failed = steps.len() + reports.len() - passed;
    println!("{passed} passed, {failed} failed");
    failed == 0
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
    Ok(summary(&[], &reports))
}

/// One CI step: run a command with a time limit, report pass/fail.
fn step(name: &str, c: &mut std::process::Command, timeout: Duration) -> (String, bool) {
    eprintln!("==== {name}");
    let t = Instant::now();
    let ok = match run_visible(c.current_dir(workspace_root()), timeout) {
        Ok(st) => st.success(),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            false
        }
    };
    eprintln!(
        "==== {name}: {} ({})",
        if ok { "passed" } else { "FAILED" },
        secs(t.elapsed())
    );
    (name.to_owned(), ok)
}

/// `cargo xtask test`.
fn test_all(flavour: Flavour, opts: &E2eOpts) -> Result<bool> {
    let cargo = cargo();
    let min = |m: u64| Duration::from_secs(m * 60);
    let mut steps = vec![
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
        step(
            "cargo test --workspace",
            &mut cmd(&cargo, ["test", "--workspace"]),
            min(30),
        ),
    ];
    let fuzz = workspace_root().join("netfilter/fuzz/smoke.sh");
    if fuzz.is_file() {
        steps.push(step(
            "netfilter fuzz smoke",
            &mut cmd("bash", [fuzz.as_os_str(), "20".as_ref()]),
            min(15),
        ));
    } else {
        eprintln!("==== netfilter fuzz smoke: skipped (netfilter/fuzz/smoke.sh not there yet)");
    }
    util::check_cancelled()?;
    eprintln!("==== building shoji.efi");
    let shoji = images::build_shoji().map_err(|e| format!("{e:#}"));
    if let Err(e) = &shoji {
        eprintln!("xtask: {e}");
    }
    steps.push(("build shoji.efi".into(), shoji.is_ok()));
    let list = select(&[], opts)?;
    let reports = match images::build_guest_images(flavour) {
        Ok(imgs) => {
            steps.push(("build guest images".into(), true));
            run_scenarios(&list, &imgs, &shoji, opts.jobs)
        }
        Err(e) => {
            eprintln!("xtask: guest images: {e:#}");
            steps.push(("build guest images".into(), false));
            Vec::new()
        }
    };
    Ok(summary(&steps, &reports))
}
