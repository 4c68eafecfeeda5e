//! Fresh-machine set-up (`cargo xtask setup`), and the check that `demo`, `test`, `e2e` and
//! `images` make before they start: the Debian packages and the Rust targets and components the
//! build, the emulators and the scenarios need. On a fresh machine rustup does not always add
//! what `rust-toolchain.toml` lists (`RUSTUP_AUTO_INSTALL=0`), and the emulators come from
//! Debian. As root the check installs what is missing (so the README's two commands do all
//! their set-up); otherwise it stops with one line naming the command to run. This is the one
//! list of packages: `.ci/run` calls `cargo xtask setup` too.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::util::{cmd, run_capture, run_visible};

/// Debian packages (Debian 12): emulators and firmware, image tools, the peer's tools, the
/// build, and the libraries crun needs in the guest (copied from this machine).
pub const PACKAGES: &[&str] = &[
    // Bochs (software VMX), QEMU (TCG, and the nested bed's L1), firmware and option ROMs.
    "bochs",
    "bochsbios",
    "bochs-term",
    "vgabios",
    "ovmf",
    "qemu-system-x86",
    "ipxe-qemu",
    "seabios",
    // Images: FAT ESPs, ext2 disks, the guest's busybox, initramfs compression, module lists.
    "mtools",
    "dosfstools",
    "e2fsprogs",
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    "gzip",
    "kmod",
    // The peer in its namespace.
    "iproute2",
    "iputils-ping",
    "iputils-arping",
    "tcpdump",
    // The administrator's plain HTTP client (a source address outside mgmt_allow).
    "curl",
    // A real port scanner, run by the peer against the guest (`bochs-containers`).
    "nmap",
    // Checks: bpftool is the independent BTF reader the host tests compare Shoji's with;
    // objdump disassembles shoji.efi for the vector-register check.
    "bpftool",
    "binutils",
    // Build (the musl target links with cc).
    "build-essential",
    "pkg-config",
    "ca-certificates",
    // crun's libraries, copied into the guest's data disk.
    "libc-bin",
    "libsystemd0",
    "libseccomp2",
    "libcap2",
    "libgcrypt20",
    "liblzma5",
    "libzstd1",
    "liblz4-1",
    "libgpg-error0",
];

/// Rust targets the build needs beside the host's.
pub const TARGETS: &[&str] = &["x86_64-unknown-uefi", "x86_64-unknown-linux-musl"];
/// Rust components `cargo xtask test` uses.
pub const COMPONENTS: &[&str] = &["rustfmt", "clippy"];

/// A file or command each package provides, to tell cheaply whether it is installed.
const WITNESSES: &[(&str, &str)] = &[
    ("bochs", "/usr/bin/bochs"),
    ("bochsbios", "/usr/share/bochs/BIOS-bochs-latest"),
    ("vgabios", "/usr/share/bochs/VGABIOS-lgpl-latest"),
    ("ovmf", "/usr/share/ovmf/OVMF.fd"),
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("ipxe-qemu", "/usr/lib/ipxe/qemu/efi-e1000.rom"),
    ("mtools", "/usr/bin/mformat"),
    ("e2fsprogs", "/sbin/mke2fs"),
    ("busybox-static", "/bin/busybox"),
    ("cpio", "/usr/bin/cpio"),
    ("xz-utils", "/usr/bin/xz"),
    ("zstd", "/usr/bin/zstd"),
    ("kmod", "/bin/kmod"),
    ("iproute2", "/sbin/ip"),
    ("iputils-ping", "/bin/ping"),
    ("iputils-arping", "/usr/bin/arping"),
    ("tcpdump", "/usr/bin/tcpdump"),
    ("curl", "/usr/bin/curl"),
    ("nmap", "/usr/bin/nmap"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("binutils", "/usr/bin/objdump"),
    ("build-essential", "/usr/bin/cc"),
];

/// What is missing on this machine.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// Debian packages.
    pub packages: Vec<&'static str>,
    /// Rust targets.
    pub targets: Vec<&'static str>,
    /// Rust components.
    pub components: Vec<&'static str>,
}

impl Missing {
    /// Nothing is missing.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.targets.is_empty() && self.components.is_empty()
    }
}

/// Packages whose witness file is absent, given a test for a path's presence.
fn missing_packages(exists: impl Fn(&str) -> bool) -> Vec<&'static str> {
    WITNESSES
        .iter()
        .filter(|(_, path)| !exists(path))
        .map(|(pkg, _)| *pkg)
        .collect()
}

/// The entries of `wanted` that are not in `rustup`'s list (one name per line, components
/// with their target suffix).
fn missing_from(listed: &str, wanted: &[&'static str]) -> Vec<&'static str> {
    wanted
        .iter()
        .filter(|w| {
            !listed
                .lines()
                .map(str::trim)
                .any(|l| l == **w || l.starts_with(&format!("{w}-")))
        })
        .copied()
        .collect()
}

fn rustup_list(args: &[&str]) -> Option<String> {
    run_capture(&mut cmd("rustup", args), Duration::from_secs(60))
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.text)
}

/// Look at the machine.
pub fn missing() -> Missing {
    let (targets, components) = match (
        rustup_list(&["target", "list", "--installed"]),
        rustup_list(&["component", "list", "--installed"]),
    ) {
        (Some(t), Some(c)) => (missing_from(&t, TARGETS), missing_from(&c, COMPONENTS)),
        // No rustup: the toolchain came another way; the build says what it lacks.
        _ => (Vec::new(), Vec::new()),
    };
    Missing {
        packages: missing_packages(|p| Path::new(p).exists()),
        targets,
        components,
    }
}

/// Whether this process runs as root (the effective uid in `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Install everything (`cargo xtask setup`): the packages with apt-get (as root), the targets
/// and components with rustup.
pub fn install() -> Result<()> {
    if is_root() {
        let minutes = Duration::from_secs(20 * 60);
        if !run_visible(&mut cmd("apt-get", ["update", "-q"]), minutes)?.success() {
            bail!("apt-get update failed");
        }
        let mut c = cmd(
            "apt-get",
            ["install", "-y", "-q", "--no-install-recommends"],
        );
        c.args(PACKAGES).env("DEBIAN_FRONTEND", "noninteractive");
        if !run_visible(&mut c, minutes)?.success() {
            bail!("apt-get install failed");
        }
    } else {
        eprintln!(
            "xtask setup: not root: Debian packages not installed (run `sudo cargo xtask setup`)"
        );
    }
    let ten = Duration::from_secs(600);
    let mut c = cmd("rustup", ["component", "add"]);
    c.args(COMPONENTS);
    if !run_visible(&mut c, ten)?.success() {
        bail!("rustup component add failed");
    }
    let mut c = cmd("rustup", ["target", "add"]);
    c.args(TARGETS);
    if !run_visible(&mut c, ten)?.success() {
        bail!("rustup target add failed");
    }
    Ok(())
}

/// Before building or booting: set up what is missing (as root), or stop with one line naming
/// the command to run.
pub fn ensure() -> Result<()> {
    let m = missing();
    if m.is_empty() {
        return Ok(());
    }
    let what = describe(&m);
    if !is_root() {
        bail!("this machine lacks {what}: run `sudo cargo xtask setup` once");
    }
    eprintln!("xtask: this machine lacks {what}: setting up (`cargo xtask setup`)");
    install()?;
    let left = missing();
    if !left.is_empty() {
        bail!("set-up finished but {} is still missing", describe(&left));
    }
    Ok(())
}

fn describe(m: &Missing) -> String {
    let mut parts = Vec::new();
    if !m.packages.is_empty() {
        parts.push(format!("Debian packages {}", m.packages.join(" ")));
    }
    if !m.targets.is_empty() {
        parts.push(format!("Rust targets {}", m.targets.join(" ")));
    }
    if !m.components.is_empty() {
        parts.push(format!("Rust components {}", m.components.join(" ")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_witnessed_package_is_installed_by_setup() {
        for (pkg, _) in WITNESSES {
            assert!(PACKAGES.contains(pkg), "{pkg} is checked but not installed");
        }
    }

    #[test]
    fn missing_packages_follow_their_witness_files() {
        assert!(missing_packages(|_| true).is_empty());
        assert_eq!(missing_packages(|_| false).len(), WITNESSES.len());
        let m = missing_packages(|p| p != "/usr/lib/ipxe/qemu/efi-e1000.rom");
        assert_eq!(m, vec!["ipxe-qemu"]);
    }

    #[test]
    fn rustup_lists_are_read_by_name() {
        let targets = "x86_64-unknown-linux-gnu\nx86_64-unknown-uefi\n";
        assert_eq!(
            missing_from(targets, TARGETS),
            vec!["x86_64-unknown-linux-musl"]
        );
        let components = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n\
                          rustfmt-x86_64-unknown-linux-gnu\n";
        assert!(missing_from(components, COMPONENTS).is_empty());
        assert_eq!(missing_from("", COMPONENTS), vec!["rustfmt", "clippy"]);
        let m = Missing {
            packages: vec!["ovmf"],
            targets: vec!["x86_64-unknown-uefi"],
            components: vec![],
        };
        assert_eq!(
            describe(&m),
            "Debian packages ovmf, Rust targets x86_64-unknown-uefi"
        );
        assert!(!m.is_empty());
        assert!(Missing::default().is_empty());
    }
}
