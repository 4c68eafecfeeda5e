//! Emulators: Bochs (software VMX), QEMU+KVM (hardware VMX, where the machine has it) and
//! QEMU with TCG (no VMX). A [`Machine`] is one running emulator whose serial logs the
//! scenarios watch; dropping it kills the emulator and removes Bochs's lock files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{Netns, GUEST_MAC, TAP};
use crate::util::{check_cancelled, GroupChild};

/// Debian's OVMF (one 2 MiB image with code and variables).
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// Bochs's VGA BIOS.
const VGABIOS: &str = "/usr/share/bochs/VGABIOS-lgpl-latest";
/// Guest memory in MiB.
pub const MEMORY_MIB: u32 = 256;
/// Bochs's emulated instructions per second (`SHOJI_BOCHS_IPS` overrides).
///
/// Bochs's clock runs on instruction counts (`clock: sync=none`), so a lower value makes every
/// firmware delay and timer period cost fewer host instructions; see docs/testing.md.
pub const BOCHS_IPS: u64 = 50_000_000;

/// Which emulator runs a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Bochs 2.7: software VMX with EPT (slow, available everywhere).
    Bochs,
    /// QEMU with KVM and `-cpu host`: hardware VMX through nested virtualization.
    QemuKvm,
    /// QEMU with TCG: no VMX at all.
    QemuTcg,
    /// The user's QEMU+KVM bed without hardware VMX: Bochs runs Linux with KVM and QEMU (L1),
    /// which runs OVMF and Shoji under KVM's nested VMX ([`crate::nested`]).
    Nested(crate::nested::L2Machine),
}

impl Backend {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Bochs => "bochs",
            Backend::QemuKvm => "qemu-kvm",
            Backend::QemuTcg => "qemu-tcg",
            Backend::Nested(m) if m.q35 => "nested-kvm-q35",
            Backend::Nested(_) => "nested-kvm",
        }
    }

    /// How many times longer the peer waits for the guest's answers than on Bochs (the nested
    /// bed's network round trip passes two emulated hypervisors and takes seconds).
    pub fn patience(self) -> u32 {
        match self {
            Backend::Nested(_) => 8,
            _ => 1,
        }
    }

    /// Factor applied to the scenario time limits (Bochs is the reference).
    pub fn time_factor(self) -> f64 {
        let base = match self {
            Backend::Bochs => 1.0,
            Backend::QemuKvm => 0.3,
            Backend::QemuTcg => 0.4,
            // L1's boot in Bochs, then OVMF in L2 under nested KVM (platform.md: ~13 min in all).
            Backend::Nested(_) => 3.0,
        };
        let scale = std::env::var("SHOJI_TIMEOUT_SCALE")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(1.0);
        base * scale
    }
}

/// Is hardware VMX usable through KVM here (the `vmx` flag and a working `/dev/kvm`)?
pub fn kvm_usable() -> bool {
    let vmx = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx"))
        })
        .unwrap_or(false);
    vmx && std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The backend for scenarios that need VMX: `SHOJI_BACKEND=bochs|kvm` forces one, else KVM
/// where usable, else Bochs.
pub fn vmx_backend() -> Backend {
    match std::env::var("SHOJI_BACKEND").as_deref() {
        Ok("bochs") => Backend::Bochs,
        Ok("kvm") | Ok("qemu-kvm") => Backend::QemuKvm,
        _ if kvm_usable() => Backend::QemuKvm,
        _ => Backend::Bochs,
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// The emulator.
    pub backend: Backend,
    /// Number of CPUs.
    pub cpus: u32,
    /// The ESP image (first disk).
    pub esp: PathBuf,
    /// An optional second disk (ext2 data disk).
    pub data_disk: Option<PathBuf>,
    /// Directory for the logs (console.log, shoji.log, emulator log).
    pub dir: PathBuf,
    /// Where the firmware should start Linux itself (no Shoji): kernel, initramfs and command
    /// line. The UEFI shell's `startup.nsh` on the ESP does it on Bochs and QEMU; the nested bed
    /// hands them to QEMU (`-kernel`, `-initrd`, `-append`: OVMF boots them), since OVMF's shell
    /// countdown does not advance in L2.
    pub direct: Option<DirectBoot>,
    /// Whether the machine has its e1000 (false: no NIC at all, to show Shoji failing closed
    /// when it has nothing to mediate).
    pub nic: bool,
}

/// A kernel the firmware starts without Shoji.
#[derive(Debug, Clone)]
pub struct DirectBoot {
    /// The kernel.
    pub vmlinuz: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The command line, without `initrd=`.
    pub cmdline: String,
}

/// Which serial log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// COM1: OVMF, the EFI console (Shoji's `shoji:` lines), Linux's `console=ttyS0`.
    Console,
    /// COM2 (port 0x2F8): Shoji's own log (`shoji-hv:` lines).
    ShojiLog,
}

/// A running emulator.
pub struct Machine {
    child: GroupChild,
    /// When the emulator was started (power-on).
    pub started: Instant,
    /// COM1 log file.
    pub console: PathBuf,
    /// COM2 log file.
    pub shoji_log: PathBuf,
    locks: Vec<PathBuf>,
    /// Strings that end the run at once when they appear on the console.
    pub fatal: Vec<String>,
    /// Strings that end the run at once when they appear in Shoji's log (COM2).
    pub fatal_hv: Vec<String>,
    /// Console lines to time without waiting for them: (label, pattern, first seen).
    watches: Vec<(String, String, Option<Duration>)>,
}

fn lock_of(img: &Path) -> PathBuf {
    let mut s = img.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// What differs between a plain Bochs machine and the nested bed's L1.
struct BochsBoard {
    megs: u32,
    ips: u64,
    /// The `ata0-master:` ... lines.
    disks: String,
    mac: &'static str,
    cpus: u32,
}

impl BochsBoard {
    /// The scenario's own machine: its ESP and data disk, the guest's MAC.
    fn plain(spec: &MachineSpec) -> Self {
        let mut disks = format!(
            "ata0-master: type=disk, path={}, mode=flat\n",
            spec.esp.display()
        );
        if let Some(d) = &spec.data_disk {
            disks.push_str(&format!(
                "ata0-slave: type=disk, path={}, mode=flat\n",
                d.display()
            ));
        }
        Self {
            megs: MEMORY_MIB,
            ips: std::env::var("SHOJI_BOCHS_IPS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(BOCHS_IPS),
            disks,
            mac: GUEST_MAC,
            cpus: spec.cpus,
        }
    }

    /// The nested bed's L1 (one CPU: `spec.cpus` is the L2 machine's).
    fn nested_l1(disks: String) -> Self {
        Self {
            megs: crate::nested::L1_MEMORY_MIB,
            ips: std::env::var("SHOJI_NESTED_IPS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(crate::nested::L1_IPS),
            disks,
            mac: crate::nested::L1_MAC,
            cpus: 1,
        }
    }
}

fn bochsrc(board: &BochsBoard, console: &Path, shoji_log: &Path, net: bool) -> String {
    let ips = board.ips;
    let clock =
        std::env::var("SHOJI_BOCHS_CLOCK").unwrap_or_else(|_| "sync=none, time0=local".into());
    // Bochs reports every EPT-violation VM exit as a CPU "error": millions of lines (and minutes)
    // once Shoji traps device registers. Its CPU errors are kept only on request, for debugging
    // failed VM entries (Shoji's own log dumps the guest state either way).
    let cpu_errors: String = if std::env::var_os("SHOJI_BOCHS_CPU_ERRORS").is_some() {
        String::new()
    } else {
        (0..board.cpus)
            .map(|c| format!(", cpu{c}=ignore"))
            .collect()
    };
    let mut rc = format!(
        "# Written by tests-qemu for one run.\n\
         megs: {megs}\n\
         romimage: file={OVMF}, address=0xffe00000\n\
         vgaromimage: file={VGABIOS}\n\
         cpu: model=corei7_skylake_x, count={cpus}, ips={ips}\n\
         pci: enabled=1, chipset=i440fx{slot}\n\
         clock: {clock}\n\
         boot: disk\n\
         ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14\n\
         {disks}\
         com1: enabled=1, mode=file, dev={console}\n\
         com2: enabled=1, mode=file, dev={shoji}\n\
         port_e9_hack: enabled=1\n\
         display_library: rfb, options=\"timeout=0\"\n\
         log: bochs.log\n\
         panic: action=fatal\n\
         error: action=report{cpu_errors}\n\
         info: action=ignore\n\
         debug: action=ignore\n",
        megs = board.megs,
        disks = board.disks,
        cpus = board.cpus,
        slot = if net { ", slot1=e1000" } else { "" },
        console = console.display(),
        shoji = shoji_log.display(),
    );
    if net {
        rc.push_str(&format!(
            "e1000: enabled=1, mac={}, ethmod=tuntap, ethdev=/dev/net/tun:{TAP}, script=\"\"\n",
            board.mac
        ));
    }
    rc
}

fn qemu_args(spec: &MachineSpec, console: &Path, shoji_log: &Path, net: bool) -> Vec<String> {
    let mut a: Vec<String> = vec!["-nodefaults".into(), "-no-reboot".into()];
    match spec.backend {
        Backend::QemuKvm => a.extend(["-enable-kvm", "-cpu", "host"].map(String::from)),
        _ => a.extend(["-accel", "tcg", "-cpu", "max"].map(String::from)),
    }
    a.extend([
        "-machine".into(),
        "pc".into(),
        "-m".into(),
        MEMORY_MIB.to_string(),
        "-smp".into(),
        spec.cpus.to_string(),
        "-bios".into(),
        OVMF.into(),
        "-display".into(),
        "none".into(),
        "-drive".into(),
        format!("file={},format=raw,if=ide,index=0", spec.esp.display()),
        "-serial".into(),
        format!("file:{}", console.display()),
        "-serial".into(),
        format!("file:{}", shoji_log.display()),
        "-debugcon".into(),
        format!("file:{}", spec.dir.join("debugcon.log").display()),
    ]);
    if let Some(d) = &spec.data_disk {
        a.extend([
            "-drive".into(),
            format!("file={},format=raw,if=ide,index=1", d.display()),
        ]);
    }
    if net {
        a.extend([
            "-netdev".into(),
            format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
            "-device".into(),
            format!("e1000,netdev=n0,mac={GUEST_MAC},romfile="),
        ]);
    }
    a
}

impl Machine {
    /// Power on: write the emulator's config into `spec.dir` and start it inside `ns`.
    pub fn start(spec: &MachineSpec, ns: &Netns) -> Result<Machine> {
        check_cancelled()?;
        std::fs::create_dir_all(&spec.dir)?;
        let console = spec.dir.join("console.log");
        let shoji_log = spec.dir.join("shoji.log");
        for f in [&console, &shoji_log] {
            std::fs::write(f, b"")?;
        }
        let mut images = vec![spec.esp.clone()];
        images.extend(spec.data_disk.clone());
        let board = match spec.backend {
            Backend::Nested(l2) => {
                let (disks, imgs) = crate::nested::prepare(spec, l2)?;
                images = imgs;
                BochsBoard::nested_l1(disks)
            }
            _ => BochsBoard::plain(spec),
        };
        let locks: Vec<PathBuf> = images.iter().map(|i| lock_of(i)).collect();
        for l in &locks {
            let _ = std::fs::remove_file(l);
        }
        let out = std::fs::File::create(spec.dir.join("emulator.out"))?;
        let err = out.try_clone()?;
        let mut c: Command = match spec.backend {
            Backend::Bochs | Backend::Nested(_) => {
                let rc = spec.dir.join("bochsrc");
                std::fs::write(&rc, bochsrc(&board, &console, &shoji_log, spec.nic))?;
                let dbg = spec.dir.join("bochs-debugger.rc");
                // One `c` starts the simulation; more resume it should anything break into the
                // debugger (each stop is visible as a "Next at t=" line in emulator.out).
                std::fs::write(&dbg, "c\n".repeat(20))?;
                // SHOJI_BOCHS_BIN: another Bochs binary (e.g. a self-built one).
                let bin = std::env::var("SHOJI_BOCHS_BIN").unwrap_or_else(|_| "bochs-bin".into());
                let mut c = ns.command(&bin, ["-q", "-f"]);
                c.arg(&rc).arg("-rc").arg(&dbg);
                c
            }
            Backend::QemuKvm | Backend::QemuTcg => {
                let args = qemu_args(spec, &console, &shoji_log, true);
                std::fs::write(
                    spec.dir.join("qemu.cmdline"),
                    format!("qemu-system-x86_64 {}\n", args.join(" ")),
                )?;
                ns.command("qemu-system-x86_64", args)
            }
        };
        c.current_dir(&spec.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = GroupChild::spawn(&mut c).context("starting the emulator")?;
        Ok(Machine {
            child,
            started: Instant::now(),
            console,
            shoji_log,
            locks,
            fatal: Vec::new(),
            fatal_hv: Vec::new(),
            watches: Vec::new(),
        })
    }

    /// Current text of a serial log (carriage returns removed).
    pub fn text(&self, stream: Stream) -> String {
        let path = match stream {
            Stream::Console => &self.console,
            Stream::ShojiLog => &self.shoji_log,
        };
        let bytes = std::fs::read(path).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    /// The first line of `stream` containing `pat`.
    pub fn find_line(&self, stream: Stream, pat: &str) -> Option<String> {
        // Only whole lines: the emulator may be in the middle of writing the last one.
        let text = self.text(stream);
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .find(|l| l.contains(pat))
            .map(str::to_owned)
    }

    /// Like [`Machine::find_line`], also accepting an unterminated last line (once the
    /// emulator has exited and nothing more will be written).
    fn find_line_final(&self, stream: Stream, pat: &str) -> Option<String> {
        self.text(stream)
            .lines()
            .find(|l| l.contains(pat))
            .map(str::to_owned)
    }

    /// Record when a console line containing `pat` first appears, without waiting for it
    /// (checked whenever the harness polls the logs).
    pub fn watch(&mut self, label: &str, pat: &str) {
        self.watches.push((label.to_owned(), pat.to_owned(), None));
    }

    /// The watched lines seen so far, with their times since power-on.
    pub fn watched(&self) -> Vec<(String, Duration)> {
        self.watches
            .iter()
            .filter_map(|(l, _, t)| t.map(|t| (l.clone(), t)))
            .collect()
    }

    fn poll_watches(&mut self, console: &str) {
        let now = self.elapsed();
        for (_, pat, seen) in self.watches.iter_mut().filter(|w| w.2.is_none()) {
            if console.contains(pat.as_str()) {
                *seen = Some(now);
            }
        }
    }

    /// Time since power-on.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Wait until `n` complete lines of `stream` contain `pat`, at most `timeout` (or until the
    /// emulator exits, or Ctrl-C). Returns how many there are then.
    pub fn wait_for_lines(
        &mut self,
        stream: Stream,
        pat: &str,
        n: usize,
        timeout: Duration,
    ) -> usize {
        let start = Instant::now();
        loop {
            let text = self.text(stream);
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            let have = complete.lines().filter(|l| l.contains(pat)).count();
            let exited = !matches!(self.child.try_wait(), Ok(None));
            if have >= n || exited || start.elapsed() >= timeout || check_cancelled().is_err() {
                return have;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Wait until a line containing `pat` appears on `stream`; returns it with the time since
    /// power-on. Fails on timeout, on a fatal console string, when the emulator exits, or on
    /// Ctrl-C. `abort_on` names further strings that end the wait with an error.
    pub fn wait_for(
        &mut self,
        stream: Stream,
        pat: &str,
        timeout: Duration,
        abort_on: &[&str],
    ) -> Result<(String, Duration)> {
        let start = Instant::now();
        loop {
            let console = self.text(Stream::Console);
            self.poll_watches(&console);
            if let Some(line) = self.find_line(stream, pat) {
                return Ok((line, self.elapsed()));
            }
            if !self.fatal_hv.is_empty() {
                let hv = self.text(Stream::ShojiLog);
                for bad in &self.fatal_hv {
                    if let Some(l) = hv.lines().find(|l| l.contains(bad.as_str())) {
                        bail!(
                            "while waiting for {pat:?}: Shoji's log shows {:?}",
                            l.trim()
                        );
                    }
                }
            }
            for bad in self
                .fatal
                .iter()
                .map(String::as_str)
                .chain(abort_on.iter().copied())
            {
                if let Some(l) = console.lines().find(|l| l.contains(bad)) {
                    bail!("while waiting for {pat:?}: console shows {:?}", l.trim());
                }
            }
            if let Some(st) = self.child.try_wait()? {
                // One last look: the line may have been written just before the exit.
                if let Some(line) = self.find_line_final(stream, pat) {
                    return Ok((line, self.elapsed()));
                }
                bail!(
                    "emulator exited ({st}) after {:.0}s before {pat:?} appeared",
                    self.elapsed().as_secs_f64()
                );
            }
            check_cancelled()?;
            if std::env::var_os("SHOJI_DEBUG_WAIT").is_some() {
                eprintln!(
                    "wait {pat:?}: console {} bytes",
                    self.text(Stream::Console).len()
                );
            }
            if start.elapsed() >= timeout {
                bail!(
                    "timed out after {:.0}s waiting for {pat:?} ({:.0}s since power-on)",
                    timeout.as_secs_f64(),
                    self.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Check that no line containing `pat` appears on `stream` for `window`; fails early if it
    /// does. Returns Ok when the window passed (or the emulator exited) without it.
    pub fn expect_absent(&mut self, stream: Stream, pat: &str, window: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < window {
            if let Some(l) = self.find_line(stream, pat) {
                bail!("unexpected line {:?}", l.trim());
            }
            if self.child.try_wait()?.is_some() {
                break;
            }
            check_cancelled()?;
            std::thread::sleep(Duration::from_millis(250));
        }
        match self.find_line(stream, pat) {
            Some(l) => bail!("unexpected line {:?}", l.trim()),
            None => Ok(()),
        }
    }

    /// Let the guest power off by itself for up to `grace`, then kill the emulator.
    pub fn stop(&mut self, grace: Duration) {
        let _ = self.child.wait_timeout(grace);
        self.child.kill();
        for l in &self.locks {
            let _ = std::fs::remove_file(l);
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bochsrc_has_the_measured_lines() {
        let spec = MachineSpec {
            nic: true,
            backend: Backend::Bochs,
            cpus: 2,
            esp: "/x/esp.img".into(),
            data_disk: None,
            dir: "/x".into(),
            direct: None,
        };
        let rc = bochsrc(
            &BochsBoard::plain(&spec),
            Path::new("/x/c.log"),
            Path::new("/x/s.log"),
            true,
        );
        for l in [
            "romimage: file=/usr/share/ovmf/OVMF.fd, address=0xffe00000",
            "count=2",
            "slot1=e1000",
            "com2: enabled=1, mode=file, dev=/x/s.log",
            "ethdev=/dev/net/tun:tap0",
            "display_library: rfb",
        ] {
            assert!(rc.contains(l), "{l} missing");
        }
    }

    #[test]
    fn qemu_tcg_has_no_kvm() {
        let spec = MachineSpec {
            nic: true,
            backend: Backend::QemuTcg,
            cpus: 1,
            esp: "/x/esp.img".into(),
            data_disk: Some("/x/data.img".into()),
            dir: "/x".into(),
            direct: None,
        };
        let a = qemu_args(&spec, Path::new("/x/c.log"), Path::new("/x/s.log"), true).join(" ");
        assert!(a.contains("-accel tcg -cpu max"));
        assert!(!a.contains("kvm"));
        assert!(a.contains("file:/x/s.log"));
        assert!(a.contains("index=1"));
    }
}
