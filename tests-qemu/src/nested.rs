//! The nested bed: the user's own configuration, Shoji under QEMU+KVM, on a machine without
//! hardware VMX.
//!
//! Bochs (L0, software VMX) boots Debian's Linux with KVM (nested VMX) and Debian's QEMU (L1,
//! init `guest/nested-l1`); QEMU in L1 runs `-machine pc|q35,accel=kvm -cpu host` with OVMF, and
//! OVMF boots `shoji.efi` (L2) from the scenario's own ESP, which then starts the test guest
//! (L3) under KVM's nested VMX. Every console comes back to the harness unchanged: QEMU writes
//! L2's COM1 and COM2 straight to L1's COM1 and COM2, which Bochs writes to the scenario's
//! `console.log` and `shoji.log`, so every scenario reads the same markers on every bed. The
//! guest's e1000 is QEMU's model on a tap in L1, bridged to L1's NIC and so to the harness's tap
//! in the scenario's namespace: the peer and witness is the same as on the other beds.
//! What L1 needs (QEMU, its libraries, OVMF, option ROMs) lives on an ext2 disk of its own,
//! built once per build directory; the scenario's ESP and data disk reach L1 as files on a
//! third disk. See docs/testing.md ("The nested bed") and `../shared/platform.md`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

use crate::emulator::{MachineSpec, MEMORY_MIB, OVMF};
use crate::images::{build_data_disk_sized, build_esp, DiskEntry, EspBoot};
use crate::util::{build_dir, cmd, run_ok};

/// L1's init script.
const L1_INIT: &str = include_str!("../guest/nested-l1");
/// Memory of L1 (Bochs) in MiB: L1's kernel and page cache plus the L2 machine.
pub const L1_MEMORY_MIB: u32 = 1024;
/// Bochs's instructions per second for L1 (`SHOJI_NESTED_IPS` overrides): the value the bed
/// was measured with (platform.md).
pub const L1_IPS: u64 = 100_000_000;
/// MAC of L1's own NIC (Bochs's e1000): not the guest's, which L1's bridge must forward.
pub const L1_MAC: &str = "52:54:00:12:34:60";
/// Size of L1's ext2 disk.
const L1_DISK_MIB: u64 = 160;
/// QEMU's binary in L1.
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Files QEMU loads from its data directory (`-L`) for the machines used here; the option
/// ROMs are Debian's iPXE (`ipxe-qemu`).
const QEMU_DATA: &[&str] = &[
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/multiboot.bin",
    "/usr/share/qemu/multiboot_dma.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/lib/ipxe/qemu/efi-e1000.rom",
    "/usr/lib/ipxe/qemu/pxe-e1000.rom",
    "/usr/lib/ipxe/qemu/efi-virtio.rom",
];
/// Modules L1 loads, with their dependencies (storage for its disks, KVM, the tap, the bridge
/// and Bochs's e1000).
const L1_MODULES: &[&str] = &[
    "ata_piix",
    "sd_mod",
    "ext4",
    "crc32c_generic",
    "kvm_intel",
    "tun",
    "bridge",
    "e1000",
];

/// How the L2 machine is configured (L1's kernel command line carries it to L1's init).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Machine {
    /// `-machine pc` (i440fx) or `q35` (PCI Express with MMCONFIG).
    pub q35: bool,
    /// QEMU's default e1000 option ROM (iPXE: the firmware drives the NIC first) or none.
    pub option_rom: bool,
}

/// What every nested run shares: L1's kernel, initramfs and QEMU disk.
#[derive(Debug, Clone)]
pub struct L1Kit {
    /// Debian's kernel (the same package the guest boots).
    pub vmlinuz: PathBuf,
    /// L1's initramfs (busybox, modules, `nested-l1`).
    pub initrd: PathBuf,
    /// The ext2 disk with QEMU, its libraries and firmware.
    pub qemu_disk: PathBuf,
}

static KIT: OnceLock<Result<L1Kit, String>> = OnceLock::new();

/// The L1 kit, built once per process into `build/images/nested/`.
pub fn kit() -> Result<L1Kit> {
    KIT.get_or_init(|| build_kit().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("nested bed: {e}"))
}

fn build_kit() -> Result<L1Kit> {
    let kernel = crate::kernel::fetch(crate::kernel::Flavour::Bookworm)?;
    let dir = build_dir().join("images").join("nested");
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("l1-initrd.img");
    build_l1_initrd(&kernel, &initrd)?;
    let qemu_disk = dir.join("l1-qemu.img");
    build_qemu_disk(&qemu_disk)?;
    Ok(L1Kit {
        vmlinuz: kernel.vmlinuz,
        initrd,
        qemu_disk,
    })
}

fn build_l1_initrd(kernel: &crate::kernel::Kernel, out: &Path) -> Result<()> {
    let mut c = crate::images::busybox_cpio(
        &[
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "mnt",
            "lib",
            "lib/modules",
        ],
        L1_INIT,
    )?;
    let mut order = String::new();
    for (name, path) in crate::images::module_load_order(&kernel.modules, L1_MODULES)? {
        c.file(
            &format!("lib/modules/{name}.ko"),
            0o644,
            &std::fs::read(&path)?,
        );
        order.push_str(&format!("{name}.ko\n"));
    }
    for needed in [
        "kvm_intel.ko",
        "tun.ko",
        "bridge.ko",
        "e1000.ko",
        "ata_piix.ko",
    ] {
        if !order.lines().any(|l| l == needed) {
            bail!("the kernel package has no {needed} (L1 needs it)");
        }
    }
    c.file("lib/modules/load-order", 0o644, order.as_bytes());
    crate::images::compress(c.finish(), out)
}

/// `ldd`'s answer: (name to install under, host path) for every library, the loader included.
fn libraries(binary: &str) -> Result<Vec<(String, PathBuf)>> {
    let out = run_ok(
        &mut cmd("ldd", [binary]),
        std::time::Duration::from_secs(60),
    )?;
    parse_ldd(&out)
}

/// Parse `ldd` output (`name => /path (0x..)`, `/lib64/ld-linux-x86-64.so.2 (0x..)`).
fn parse_ldd(text: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut libs = Vec::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with("linux-vdso") || l.is_empty() {
            continue;
        }
        let path = match l.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => l.split_whitespace().next().unwrap_or(""),
        };
        if path == "not" || !path.starts_with('/') {
            bail!("ldd: unresolved library: {l}");
        }
        let p = PathBuf::from(path);
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .context("library without a name")?
            .to_owned();
        libs.push((name, p));
    }
    if !libs.iter().any(|(n, _)| n.starts_with("ld-linux")) {
        bail!("ldd named no loader");
    }
    Ok(libs)
}

fn build_qemu_disk(out: &Path) -> Result<()> {
    if !Path::new(QEMU).is_file() {
        bail!("{QEMU} missing (install qemu-system-x86)");
    }
    let mut entries = vec![
        DiskEntry::File("qemu-system-x86_64".into(), QEMU.into()),
        DiskEntry::File("share/OVMF.fd".into(), OVMF.into()),
    ];
    for (name, path) in libraries(QEMU)? {
        entries.push(DiskEntry::File(format!("lib/{name}"), path));
    }
    for f in QEMU_DATA {
        let p = Path::new(f);
        if !p.exists() {
            bail!("{f} missing (install qemu-system-x86 and ipxe-qemu)");
        }
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        entries.push(DiskEntry::File(format!("share/{name}"), p.into()));
    }
    build_data_disk_sized(out, &entries, "shoji-l1", L1_DISK_MIB)
}

/// L1's kernel command line (its init reads the `l2*` options).
pub fn l1_cmdline(spec: &MachineSpec, l2: L2Machine) -> String {
    format!(
        "initrd=\\initrd.img console=ttyS0,115200 quiet panic=0 nokaslr mitigations=off tsc=reliable \
         no_timer_check random.trust_cpu=on l2smp={} l2machine={} l2rom={} l2data={} l2mem={}",
        spec.cpus,
        if l2.q35 { "q35" } else { "pc" },
        if l2.option_rom { "default" } else { "none" },
        u8::from(spec.data_disk.is_some()),
        MEMORY_MIB
    )
}

/// Prepare one nested run in `spec.dir`: L1's ESP, a private copy of the QEMU disk (Bochs
/// locks its disks) and an ext2 disk carrying L2's ESP and L3's data disk as files (as ATA disks
/// of their own, L0's firmware would boot L2's `BOOTX64.EFI` itself). Returns the Bochs disk
/// lines (ATA) and the images to unlock afterwards.
pub fn prepare(spec: &MachineSpec, l2: L2Machine) -> Result<(String, Vec<PathBuf>)> {
    let kit = kit()?;
    let esp = spec.dir.join("l1-esp.img");
    build_esp(
        &esp,
        &kit.vmlinuz,
        &kit.initrd,
        &EspBoot::Direct {
            cmdline: l1_cmdline(spec, l2),
        },
    )
    .context("building L1's ESP")?;
    let qemu = spec.dir.join("l1-qemu.img");
    std::fs::copy(&kit.qemu_disk, &qemu).context("copying L1's QEMU disk")?;
    let transport = spec.dir.join("l1-l2disks.img");
    let mut entries = vec![DiskEntry::File("esp.img".into(), spec.esp.clone())];
    let mut mib = file_mib(&spec.esp) + 16;
    if let Some(d) = &spec.direct {
        entries.push(DiskEntry::File("vmlinuz".into(), d.vmlinuz.clone()));
        entries.push(DiskEntry::File("initrd.img".into(), d.initrd.clone()));
        entries.push(DiskEntry::Bytes(
            "cmdline".into(),
            d.cmdline.clone().into_bytes(),
            0o644,
        ));
        mib += file_mib(&d.vmlinuz) + file_mib(&d.initrd);
    }
    if let Some(d) = &spec.data_disk {
        entries.push(DiskEntry::File("data.img".into(), d.clone()));
        mib += file_mib(d);
    }
    build_data_disk_sized(&transport, &entries, "shoji-l2", mib)
        .context("building the disk that carries L2's disks")?;
    let disks = format!(
        "ata0-master: type=disk, path={}, mode=flat\n\
         ata0-slave: type=disk, path={}, mode=flat\n\
         ata1: enabled=1, ioaddr1=0x170, ioaddr2=0x370, irq=15\n\
         ata1-master: type=disk, path={}, mode=flat\n",
        esp.display(),
        qemu.display(),
        transport.display()
    );
    Ok((disks, vec![esp, qemu, transport]))
}

fn file_mib(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len() >> 20).unwrap_or(0) + 1
}

/// Copy L1's own log (`/l1.log` on the disk that carried L2's disks; L1's init writes it) into
/// the scenario's directory as `l1.log`, after the run. Missing is not an error: L1 may not have
/// got that far.
pub fn collect_logs(dir: &Path) {
    let disk = dir.join("l1-l2disks.img");
    if !disk.exists() {
        return;
    }
    let out = dir.join("l1.log");
    let _ = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /l1.log {}", out.display()))
        .arg(&disk)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Remove the per-run disk copies after a passing run.
pub fn cleanup(dir: &Path) {
    for f in ["l1-esp.img", "l1-qemu.img", "l1-l2disks.img"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parses_and_needs_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            vec![
                (
                    "libz.so.1".to_owned(),
                    PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1")
                ),
                (
                    "ld-linux-x86-64.so.2".to_owned(),
                    PathBuf::from("/lib64/ld-linux-x86-64.so.2")
                ),
            ]
        );
        assert!(
            parse_ldd("\tlibfoo.so.1 => not found\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n").is_err()
        );
        assert!(parse_ldd("\tlibz.so.1 => /lib/libz.so.1 (0x1)\n").is_err());
    }
}
