//! Guest and boot images: the probe and shoji.efi builds, the initramfs (busybox, e1000.ko,
//! init script, probe), the optional ext2 data disk, Shoji's config and the FAT ESP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::kernel::Kernel;
use crate::util::{
    build_dir, cargo, cmd, run_capture, run_ok, run_visible, target_dir, workspace_root,
};

/// Time limit for one cargo build.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);
/// Time limit for one image tool invocation.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);
/// The guest's init script.
const INIT_SCRIPT: &str = include_str!("../guest/init");
/// The agent key written into the test config (and into the guest for later agent tests).
pub const TEST_AGENT_KEY: &str = "5e0f1c2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100";
/// Size of the FAT ESP image in MiB (FAT32 wants at least ~33 MiB).
const ESP_MIB: u64 = 40;

/// Build a guest program of the workspace (static musl binary, stripped, small) and return the
/// path of its binary `bin`.
fn build_guest_program(package: &str, bin: &str) -> Result<PathBuf> {
    let target = "x86_64-unknown-linux-musl";
    let st = run_visible(
        cmd(
            &cargo(),
            [
                "build",
                "--release",
                "-q",
                "-p",
                package,
                "--bin",
                bin,
                "--target",
                target,
            ],
        )
        // Small: every byte of the initramfs goes through OVMF's slow ATA path under Bochs.
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "z")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .current_dir(workspace_root()),
        BUILD_TIMEOUT,
    )?;
    if !st.success() {
        bail!("building {package} failed ({st})");
    }
    Ok(target_dir().join(target).join("release").join(bin))
}

/// Build the guest probe (static musl binary, stripped) and return its path.
pub fn build_probe() -> Result<PathBuf> {
    build_guest_program("shoji-probe", "probe")
}

/// Build the guest tool `shojictl` (static musl binary, stripped) and return its path.
pub fn build_shojictl() -> Result<PathBuf> {
    build_guest_program("shojictl", "shojictl")
}

/// Build `shoji.efi` and return its path.
pub fn build_shoji() -> Result<PathBuf> {
    let target = "x86_64-unknown-uefi";
    let st = run_visible(
        cmd(
            &cargo(),
            [
                "build",
                "--release",
                "-q",
                "-p",
                "shoji-boot",
                "--target",
                target,
            ],
        )
        .current_dir(workspace_root()),
        BUILD_TIMEOUT,
    )?;
    if !st.success() {
        bail!("building shoji-boot (shoji.efi) failed ({st})");
    }
    let p = target_dir().join(target).join("release").join("shoji.efi");
    if !p.is_file() {
        bail!("{} was not produced", p.display());
    }
    Ok(p)
}

/// The instructions of `efi` that touch the FPU, MMX, SSE or AVX register state, from
/// `objdump -d` (binutils, independent of the compiler that built it).
///
/// Shoji saves none of the guest's x87/vector state on a VM exit, so any such instruction in
/// shoji.efi silently corrupts the guest's registers. The UEFI target has no SSE, but a crate can
/// still select vector code at run time (sha2 does, unless `force-soft`).
pub fn vector_state_instructions(efi: &Path) -> Result<Vec<String>> {
    let out = run_capture(
        cmd("objdump", ["-d", "--no-show-raw-insn"]).arg(efi),
        TOOL_TIMEOUT,
    )
    .context("running objdump (binutils)")?;
    if !out.status.success() {
        bail!("objdump -d {} failed ({})", efi.display(), out.status);
    }
    if !out.text.contains("<.text>:") && !out.text.contains("Disassembly of section .text") {
        bail!("objdump printed no .text disassembly for {}", efi.display());
    }
    Ok(out
        .text
        .lines()
        .filter(|l| touches_vector_state(l))
        .map(|l| l.trim().to_owned())
        .collect())
}

/// Whether one line of `objdump -d` (AT&T syntax) is an instruction that names an x87, MMX,
/// XMM, YMM or ZMM register, or loads or resets that state.
fn touches_vector_state(line: &str) -> bool {
    // "  4011a0:\tmovdqa %xmm0,(%rsp)": the instruction follows the address's tab.
    let Some((_, insn)) = line.split_once(":\t") else {
        return false;
    };
    let mnemonic = insn.split_whitespace().next().unwrap_or("");
    const STATE_OPS: [&str; 12] = [
        "emms",
        "femms",
        "fninit",
        "finit",
        "fldcw",
        "frstor",
        "fxrstor",
        "fxrstor64",
        "xrstor",
        "xrstor64",
        "xrstors",
        "ldmxcsr",
    ];
    if STATE_OPS.contains(&mnemonic) || mnemonic.starts_with("vldmxcsr") {
        return true;
    }
    insn.match_indices('%').any(|(i, _)| {
        let reg = &insn[i + 1..];
        let digit_after = |p: &str| {
            reg.strip_prefix(p)
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        };
        digit_after("mm")
            || digit_after("xmm")
            || digit_after("ymm")
            || digit_after("zmm")
            || reg.starts_with("st")
    })
}

/// A minimal writer of the `newc` cpio format (what the kernel unpacks as initramfs).
#[derive(Default)]
pub struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.data.extend_from_slice(hdr.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    /// Add a directory.
    pub fn dir(&mut self, name: &str) {
        self.header(name, 0o040755, 0, (0, 0));
    }

    /// Add a regular file with `mode` permission bits.
    pub fn file(&mut self, name: &str, mode: u32, content: &[u8]) {
        self.header(name, 0o100000 | mode, content.len(), (0, 0));
        self.data.extend_from_slice(content);
        self.pad();
    }

    /// Add a symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.header(name, 0o120777, target.len(), (0, 0));
        self.data.extend_from_slice(target.as_bytes());
        self.pad();
    }

    /// Add a character device node.
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) {
        self.header(name, 0o020600, 0, (major, minor));
    }

    /// Finish the archive and return its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        while !self.data.len().is_multiple_of(512) {
            self.data.push(0);
        }
        self.data
    }
}

/// How the initramfs is compressed (`SHOJI_INITRD_COMPRESS`: gzip, xz, zstd, none).
pub(crate) fn compress(raw: Vec<u8>, out: &Path) -> Result<()> {
    let method = std::env::var("SHOJI_INITRD_COMPRESS").unwrap_or_else(|_| "gzip".into());
    let tmp = out.with_extension("cpio");
    std::fs::write(&tmp, raw)?;
    let args: &[&str] = match method.as_str() {
        "none" => {
            std::fs::rename(&tmp, out)?;
            return Ok(());
        }
        "gzip" => &["gzip", "-9", "-n", "-c"],
        "xz" => &["xz", "--check=crc32", "-9", "-c"],
        "zstd" => &["zstd", "-19", "-q", "-c"],
        other => bail!("unknown SHOJI_INITRD_COMPRESS={other}"),
    };
    let file = std::fs::File::create(out)?;
    let mut c = cmd(args[0], &args[1..]);
    c.arg(&tmp).stdout(file);
    let st = run_visible(&mut c, TOOL_TIMEOUT)?;
    std::fs::remove_file(&tmp)?;
    if !st.success() {
        bail!("{} failed", args[0]);
    }
    Ok(())
}

/// Modules the guest needs to mount the ext2 data disk on the IDE bus; their dependencies
/// (from each module's `.modinfo`) are added and everything is put in load order.
const STORAGE_MODULES: &[&str] = &["ata_piix", "sd_mod", "ext4", "crc32c_generic"];

/// Index a module tree: module name (with `_`) to path.
fn module_index(dir: &Path) -> Result<std::collections::HashMap<String, PathBuf>> {
    let mut idx = std::collections::HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = n.strip_suffix(".ko") {
                    idx.insert(stem.replace('-', "_"), p.clone());
                }
            }
        }
    }
    Ok(idx)
}

/// The `depends=` list from a module's `.modinfo`.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    ko.windows(key.len() + 1)
        .position(|w| w[0] == 0 && &w[1..] == key)
        .map(|pos| {
            let rest = &ko[pos + 1 + key.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Resolve `wanted` modules and their dependencies into load order (dependencies first).
/// Modules not found are taken as built in.
pub(crate) fn module_load_order(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let idx = module_index(dir)?;
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    fn visit(
        name: &str,
        idx: &std::collections::HashMap<String, PathBuf>,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<()> {
        if depth > 32 || order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let Some(path) = idx.get(name) else {
            return Ok(());
        };
        for dep in module_depends(&std::fs::read(path)?) {
            visit(&dep, idx, order, depth + 1)?;
        }
        if !order.iter().any(|(n, _)| n == name) {
            order.push((name.to_owned(), path.clone()));
        }
        Ok(())
    }
    for w in wanted {
        visit(&w.replace('-', "_"), &idx, &mut order, 0)?;
    }
    Ok(order)
}

/// The base of every initramfs here: the directories `dirs` (parents first, `bin` and `dev`
/// among them), `/dev/console` and `/dev/null`, busybox-static as `/bin/busybox` and `/bin/sh`,
/// and `init`.
pub(crate) fn busybox_cpio(dirs: &[&str], init: &str) -> Result<Cpio> {
    let bb =
        std::fs::read("/bin/busybox").context("reading /bin/busybox (install busybox-static)")?;
    if !bb.windows(8).any(|w| w == b"BusyBox ") {
        bail!("/bin/busybox is not busybox");
    }
    let mut c = Cpio::default();
    for d in dirs {
        c.dir(d);
    }
    c.chardev("dev/console", 5, 1);
    c.chardev("dev/null", 1, 3);
    c.file("bin/busybox", 0o755, &bb);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, init.as_bytes());
    Ok(c)
}

/// Build the initramfs at `out`. With `storage`, the modules to mount the data disk are added.
pub fn build_initramfs(
    kernel: &Kernel,
    probe: &Path,
    shojictl: &Path,
    out: &Path,
    storage: bool,
) -> Result<()> {
    let mut c = busybox_cpio(
        &[
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "etc",
            "etc/shoji",
            "lib",
            "lib/modules",
            "root",
            "mnt",
        ],
        INIT_SCRIPT,
    )?;
    c.file("bin/probe", 0o755, &std::fs::read(probe)?);
    c.file("bin/shojictl", 0o755, &std::fs::read(shojictl)?);
    c.file(
        "lib/modules/e1000.ko",
        0o644,
        &std::fs::read(&kernel.e1000)?,
    );
    // The msr driver: the guest kernel's MSR writes on root's behalf (the MSR checks).
    let msr = kernel.modules.join("kernel/arch/x86/kernel/msr.ko");
    c.file(
        "lib/modules/msr.ko",
        0o644,
        &std::fs::read(&msr).with_context(|| format!("reading {}", msr.display()))?,
    );
    // efivarfs: what root in the guest reads of the firmware's variables (management checks).
    let efivarfs = kernel.modules.join("kernel/fs/efivarfs/efivarfs.ko");
    c.file(
        "lib/modules/efivarfs.ko",
        0o644,
        &std::fs::read(&efivarfs).with_context(|| format!("reading {}", efivarfs.display()))?,
    );
    c.file(
        "etc/shoji/agent.key",
        0o600,
        format!("{TEST_AGENT_KEY}\n").as_bytes(),
    );
    if storage {
        c.dir("lib/modules/storage");
        let mut order = String::new();
        for (name, path) in module_load_order(&kernel.modules, STORAGE_MODULES)? {
            let bytes = std::fs::read(&path)?;
            c.file(&format!("lib/modules/storage/{name}.ko"), 0o644, &bytes);
            order.push_str(&format!("{name}.ko\n"));
        }
        c.file("lib/modules/storage/load-order", 0o644, order.as_bytes());
    }
    compress(c.finish(), out)
}

/// One entry of the ext2 data disk (paths relative to its root).
#[derive(Debug, Clone)]
pub enum DiskEntry {
    /// A copy of a host file (its permissions kept).
    File(String, PathBuf),
    /// A file with this content and mode.
    Bytes(String, Vec<u8>, u32),
    /// A symbolic link to the given target.
    Symlink(String, String),
    /// An empty directory.
    Dir(String),
}

/// Build the ext2 data disk (`mke2fs -d`) from `entries`.
pub fn build_data_disk(out: &Path, entries: &[DiskEntry]) -> Result<()> {
    build_data_disk_sized(out, entries, "shoji-data", 64)
}

/// Build an ext2 disk of `mib` MiB labelled `label` (`mke2fs -d`) from `entries`.
pub fn build_data_disk_sized(
    out: &Path,
    entries: &[DiskEntry],
    label: &str,
    mib: u64,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let stage = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("bin"))?;
    std::fs::write(stage.join("shoji-data"), "shoji test data disk\n")?;
    let place = |guest: &str| -> Result<PathBuf> {
        let dst = stage.join(guest.trim_start_matches('/'));
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p)?;
        }
        Ok(dst)
    };
    for e in entries {
        match e {
            DiskEntry::File(guest, host) => {
                std::fs::copy(host, place(guest)?)
                    .with_context(|| format!("copying {}", host.display()))?;
            }
            DiskEntry::Bytes(guest, bytes, mode) => {
                let dst = place(guest)?;
                std::fs::write(&dst, bytes)?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(*mode))?;
            }
            DiskEntry::Symlink(guest, target) => {
                std::os::unix::fs::symlink(target, place(guest)?)?;
            }
            DiskEntry::Dir(guest) => std::fs::create_dir_all(place(guest)?)?,
        }
    }
    let _ = std::fs::remove_file(out);
    run_ok(
        cmd("mke2fs", ["-q", "-F", "-t", "ext2", "-L", label, "-d"])
            .arg(&stage)
            .arg(out)
            .arg(format!("{mib}M")),
        TOOL_TIMEOUT,
    )?;
    std::fs::remove_dir_all(&stage)?;
    Ok(())
}

/// Modules the containers need (the bridge with VLAN filtering, veth pairs); dependencies are
/// added and everything is put in load order, like [`STORAGE_MODULES`].
const CONTAINER_MODULES: &[&str] = &["bridge", "veth"];
/// The script that plays the CNI plugin's part for the test containers (a createRuntime hook).
const CNI_HOOK: &str = include_str!("../guest/cni-veth");
/// The containers test script that the init sources with `shojitest=containers`.
const CONTAINERS_SCRIPT: &str = include_str!("../guest/containers.sh");

/// The data disk's container part: crun and its libraries (`crun/`), the bridge and veth
/// modules with their load order (`modules/containers/`), the OCI bundles' root file system
/// (`rootfs/`: busybox-static, the probe, shojictl) and the veth hook (`shoji/cni-veth`).
fn container_entries(kernel: &Kernel, probe: &Path, shojictl: &Path) -> Result<Vec<DiskEntry>> {
    let crun = crate::crun::fetch()?;
    let mut v: Vec<DiskEntry> = crate::crun::disk_entries(&crun)
        .into_iter()
        .map(|(g, h)| DiskEntry::File(g, h))
        .collect();
    let mut order = String::new();
    for (name, path) in module_load_order(&kernel.modules, CONTAINER_MODULES)? {
        v.push(DiskEntry::File(
            format!("modules/containers/{name}.ko"),
            path,
        ));
        order.push_str(&format!("{name}.ko\n"));
    }
    v.push(DiskEntry::Bytes(
        "modules/containers/load-order".into(),
        order.into_bytes(),
        0o644,
    ));
    v.push(DiskEntry::Bytes(
        "shoji/cni-veth".into(),
        CNI_HOOK.as_bytes().to_vec(),
        0o755,
    ));
    v.push(DiskEntry::Bytes(
        "shoji/containers.sh".into(),
        CONTAINERS_SCRIPT.as_bytes().to_vec(),
        0o644,
    ));
    let busybox = Path::new("/bin/busybox");
    v.push(DiskEntry::File("rootfs/bin/busybox".into(), busybox.into()));
    let list = run_ok(&mut cmd("/bin/busybox", ["--list"]), TOOL_TIMEOUT)
        .context("busybox --list (install busybox-static)")?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" && !applet.contains('/') {
            v.push(DiskEntry::Symlink(
                format!("rootfs/bin/{applet}"),
                "busybox".into(),
            ));
        }
    }
    v.push(DiskEntry::File("rootfs/bin/probe".into(), probe.into()));
    v.push(DiskEntry::File(
        "rootfs/bin/shojictl".into(),
        shojictl.into(),
    ));
    for d in ["proc", "sys", "dev", "tmp", "run", "root", "etc/shoji"] {
        v.push(DiskEntry::Dir(format!("rootfs/{d}")));
    }
    v.push(DiskEntry::Bytes(
        "rootfs/etc/passwd".into(),
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    ));
    v.push(DiskEntry::Bytes(
        "rootfs/etc/group".into(),
        b"root:x:0:\n".to_vec(),
        0o644,
    ));
    Ok(v)
}

/// What happens when VMX is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Boot the next image without protection.
    Open,
    /// Refuse to boot.
    Closed,
}

/// Shoji's config file (`\EFI\BOOT\shoji.cfg`).
#[derive(Debug, Clone)]
pub struct ShojiConfig {
    /// The image to chain-load; `None` writes `image = none` (start nothing).
    pub image: Option<String>,
    /// The kernel command line.
    pub cmdline: String,
    /// The fail mode.
    pub fail_mode: FailMode,
    /// Test-only: leave Shoji's memory visible to the guest.
    pub expose_hypervisor_memory: bool,
    /// Mediate the e1000 (`false` only for the comparison scenario).
    pub mediate_nic: bool,
    /// Shoji's management endpoint (`mgmt_*` lines, [`crate::mgmt::config_lines`]).
    pub mgmt: bool,
}

impl ShojiConfig {
    /// Render the config file.
    pub fn render(&self) -> String {
        format!(
            "# Shoji configuration, written by the end-to-end harness (tests-qemu).\n\
             image = {}\n\
             cmdline = {}\n\
             fail_mode = {}\n\
             log_level = {}\n\
             log_port = 0x2f8\n\
             agent_key = {TEST_AGENT_KEY}\n\
             expose_hypervisor_memory = {}\n\
             mediate_nic = {}\n\
             {}",
            self.image.as_deref().unwrap_or("none"),
            self.cmdline,
            match self.fail_mode {
                FailMode::Open => "open",
                FailMode::Closed => "closed",
            },
            // SHOJI_LOG_LEVEL: debug or trace for a run that needs Shoji's exit trace.
            std::env::var("SHOJI_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            self.expose_hypervisor_memory,
            self.mediate_nic,
            if self.mgmt {
                crate::mgmt::config_lines()
            } else {
                String::new()
            }
        )
    }
}

/// What goes onto an ESP.
#[derive(Debug, Clone)]
pub enum EspBoot {
    /// `\EFI\BOOT\BOOTX64.EFI` = shoji.efi with this config beside it.
    Shoji {
        /// Path of shoji.efi.
        efi: PathBuf,
        /// Its config.
        config: ShojiConfig,
    },
    /// No boot application: the UEFI shell runs `startup.nsh`, which starts the kernel directly.
    Direct {
        /// The kernel command line.
        cmdline: String,
    },
}

/// Build a FAT ESP image (no partition table) at `out`.
pub fn build_esp(out: &Path, vmlinuz: &Path, initrd: &Path, boot: &EspBoot) -> Result<()> {
    let _ = std::fs::remove_file(out);
    let f = std::fs::File::create(out)?;
    f.set_len(ESP_MIB << 20)?;
    drop(f);
    let img = out.as_os_str();
    let mt = |prog: &str, args: &[&std::ffi::OsStr]| -> Result<()> {
        let mut c = cmd(prog, ["-i".as_ref(), img]);
        c.args(args);
        run_ok(&mut c, TOOL_TIMEOUT).map(|_| ())
    };
    mt("mformat", &["-F".as_ref(), "::".as_ref()])?;
    mt("mcopy", &[vmlinuz.as_os_str(), "::/vmlinuz".as_ref()])?;
    mt("mcopy", &[initrd.as_os_str(), "::/initrd.img".as_ref()])?;
    let dir = out.parent().unwrap_or(Path::new("."));
    match boot {
        EspBoot::Shoji { efi, config } => {
            mt("mmd", &["::/EFI".as_ref(), "::/EFI/BOOT".as_ref()])?;
            mt(
                "mcopy",
                &[efi.as_os_str(), "::/EFI/BOOT/BOOTX64.EFI".as_ref()],
            )?;
            let cfg = dir.join("shoji.cfg");
            std::fs::write(&cfg, config.render())?;
            mt(
                "mcopy",
                &[cfg.as_os_str(), "::/EFI/BOOT/shoji.cfg".as_ref()],
            )?;
        }
        EspBoot::Direct { cmdline } => {
            let nsh = dir.join("startup.nsh");
            std::fs::write(&nsh, format!("\\vmlinuz {cmdline}\r\n"))?;
            mt("mcopy", &[nsh.as_os_str(), "::/startup.nsh".as_ref()])?;
        }
    }
    Ok(())
}

/// Everything the scenarios share: kernel, initramfs, probe, data disk, shoji.efi (if built).
#[derive(Debug, Clone)]
pub struct GuestImages {
    /// The kernel.
    pub kernel: Kernel,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The initramfs plus the modules that mount the data disk.
    pub initrd_storage: PathBuf,
    /// The ext2 data disk.
    pub data_disk: PathBuf,
    /// The probe binary.
    pub probe: PathBuf,
    /// The guest tool.
    pub shojictl: PathBuf,
}

/// Build the guest images into `build/images/`.
pub fn build_guest_images(flavour: crate::kernel::Flavour) -> Result<GuestImages> {
    let kernel = crate::kernel::fetch(flavour)?;
    let probe = build_probe()?;
    let shojictl = build_shojictl()?;
    // The default flavour keeps `build/images/`; others get a directory of their own.
    let dir = match flavour {
        crate::kernel::Flavour::Bookworm => build_dir().join("images"),
        other => build_dir().join("images").join(other.name()),
    };
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.img");
    build_initramfs(&kernel, &probe, &shojictl, &initrd, false)?;
    let initrd_storage = dir.join("initrd-storage.img");
    build_initramfs(&kernel, &probe, &shojictl, &initrd_storage, true)?;
    let data_disk = dir.join("data.img");
    let mut entries = vec![DiskEntry::File("bin/probe".into(), probe.clone())];
    entries.extend(container_entries(&kernel, &probe, &shojictl)?);
    build_data_disk(&data_disk, &entries)?;
    Ok(GuestImages {
        kernel,
        initrd,
        initrd_storage,
        data_disk,
        probe,
        shojictl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_sse_in_an_x86_64_linux_binary() {
        // This test binary is x86-64 Linux code (SSE2 baseline): the scan must see vector code.
        let exe = std::env::current_exe().unwrap();
        let found = vector_state_instructions(&exe).unwrap();
        assert!(found.len() > 10, "{} found", found.len());
    }

    #[test]
    fn vector_state_lines_are_recognised() {
        // Lines as `objdump -d --no-show-raw-insn` prints them (binutils 2.40).
        for hit in [
            "  4011a0:\tsha256rnds2 %xmm0,%xmm1,%xmm2",
            "  4011a0:\tmovdqu (%rsi),%xmm3",
            "  4011a0:\tvpaddd %ymm1,%ymm2,%ymm3",
            "  4011a0:\tvmovdqu64 %zmm0,(%rdi)",
            "  4011a0:\tmovq   %mm0,%rax",
            "  4011a0:\tfstp   %st(1)",
            "  4011a0:\tfxrstor (%rax)",
            "  4011a0:\tldmxcsr 0x8(%rsp)",
            "  4011a0:\tfninit",
        ] {
            assert!(touches_vector_state(hit), "{hit}");
        }
        for miss in [
            "  4011a0:\tmov    %rsp,%rbp",
            "  4011a0:\tmov    %ss,%ax",
            "  4011a0:\tpush   %rsi",
            "  4011a0:\tfxsave (%rax)",
            "  4011a0:\tvmlaunch",
            "0000000000401000 <.text>:",
            "Disassembly of section .text:",
            "  4011a0:\tcall   4011f0 <memmove_xmm_like>",
        ] {
            assert!(!touches_vector_state(miss), "{miss}");
        }
    }

    #[test]
    fn cpio_is_newc_and_aligned() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.symlink("bin/sh", "busybox");
        let bytes = c.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 512, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("#!/bin/sh"));
    }

    #[test]
    fn modinfo_depends_parse() {
        let ko = b"\x7fELF...\0license=GPL\0depends=scsi_mod,t10-pi\0name=sd_mod\0";
        assert_eq!(module_depends(ko), vec!["scsi_mod", "t10_pi"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"nothing").is_empty());
    }

    #[test]
    fn config_renders_every_key() {
        let cfg = ShojiConfig {
            image: None,
            cmdline: "console=ttyS0".into(),
            fail_mode: FailMode::Closed,
            expose_hypervisor_memory: true,
            mediate_nic: false,
            mgmt: false,
        }
        .render();
        for k in [
            "image = none",
            "cmdline = console=ttyS0",
            "fail_mode = closed",
            "log_port = 0x2f8",
            "expose_hypervisor_memory = true",
            "mediate_nic = false",
        ] {
            assert!(cfg.contains(k), "{k} missing in {cfg}");
        }
        let key = cfg
            .lines()
            .find_map(|l| l.strip_prefix("agent_key = "))
            .unwrap();
        assert_eq!(key.len(), 64);
    }
}
