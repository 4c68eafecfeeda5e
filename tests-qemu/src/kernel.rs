//! Debian's kernel for the guest: fetched once with apt, unpacked and cached.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util::{cache_dir, cmd, run_ok};

/// Which Debian kernel the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// Debian 12's `linux-image-amd64` (Linux 6.1): the default.
    Bookworm,
    /// Debian 13's `linux-image-amd64` (Linux 6.12, `pcpu_hot`), fetched with a separate apt
    /// configuration naming the `trixie` suite. For the later introspection tests.
    Trixie,
}

impl Flavour {
    /// Short name used for cache directories.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Bookworm => "bookworm",
            Flavour::Trixie => "trixie",
        }
    }
}

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The package name (`linux-image-6.1.0-N-amd64`).
    pub package: String,
    /// The compressed kernel image (EFI stub).
    pub vmlinuz: PathBuf,
    /// The uncompressed `e1000.ko`.
    pub e1000: PathBuf,
    /// The module tree (`lib/modules/<version>`), for further modules.
    pub modules: PathBuf,
}

const APT_TIMEOUT: Duration = Duration::from_secs(900);

/// Extra `apt-get`/`apt-cache` options for a flavour (a private apt configuration for trixie).
fn apt_options(flavour: Flavour, dir: &Path) -> Result<Vec<String>> {
    match flavour {
        Flavour::Bookworm => Ok(Vec::new()),
        Flavour::Trixie => {
            let apt = dir.join("apt");
            for d in ["lists/partial", "cache/archives/partial"] {
                std::fs::create_dir_all(apt.join(d))?;
            }
            let sources = apt.join("sources.list");
            if !sources.exists() {
                std::fs::write(&sources, format!("deb {} trixie main\n", debian_mirror()?))?;
            }
            let opts = vec![
                format!("Dir::Etc::SourceList={}", sources.display()),
                "Dir::Etc::SourceParts=/nonexistent".to_owned(),
                format!("Dir::State::Lists={}", apt.join("lists").display()),
                format!("Dir::Cache={}", apt.join("cache").display()),
            ];
            let lists_empty = std::fs::read_dir(apt.join("lists"))?.count() <= 1;
            if lists_empty {
                let mut c = cmd("apt-get", ["-q"]);
                for o in &opts {
                    c.args(["-o", o]);
                }
                c.arg("update");
                run_ok(&mut c, APT_TIMEOUT).context("apt-get update (trixie)")?;
            }
            Ok(opts)
        }
    }
}

/// The Debian mirror this machine's apt uses (so no host name is written into the project).
fn debian_mirror() -> Result<String> {
    let mut texts = Vec::new();
    for f in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        if let Ok(t) = std::fs::read_to_string(f) {
            texts.push(t);
        }
    }
    for t in &texts {
        for line in t.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("URIs:") {
                if let Some(u) = rest.split_whitespace().find(|u| !u.contains("security")) {
                    return Ok(u.to_owned());
                }
            }
            if let Some(rest) = line.strip_prefix("deb ") {
                if let Some(u) = rest
                    .split_whitespace()
                    .find(|w| w.contains("://") && !w.contains("security"))
                {
                    return Ok(u.to_owned());
                }
            }
        }
    }
    bail!("no Debian mirror found in this machine's apt sources")
}

/// Fetch (or reuse from the cache) the kernel of `flavour`.
///
/// The cache holds `kernel-<flavour>/<package>/` (the unpacked package) and
/// `kernel-<flavour>/current` naming it; set `SHOJI_KERNEL_REFRESH=1` to look for a newer one.
pub fn fetch(flavour: Flavour) -> Result<Kernel> {
    let dir = cache_dir().join(format!("kernel-{}", flavour.name()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let current = dir.join("current");
    let refresh = std::env::var_os("SHOJI_KERNEL_REFRESH").is_some();
    if !refresh {
        if let Ok(pkg) = std::fs::read_to_string(&current) {
            if let Ok(k) = locate(&dir, pkg.trim()) {
                return Ok(k);
            }
        }
    }
    let opts = apt_options(flavour, &dir)?;
    let mut c = cmd("apt-cache", Vec::<String>::new());
    for o in &opts {
        c.args(["-o", o]);
    }
    c.args(["depends", "linux-image-amd64"]);
    let deps = run_ok(&mut c, APT_TIMEOUT).context("apt-cache depends linux-image-amd64")?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .with_context(|| {
            format!("apt-cache names no kernel package (run `apt-get update` first?):\n{deps}")
        })?;
    if let Ok(k) = locate(&dir, &package) {
        std::fs::write(&current, &package)?;
        return Ok(k);
    }
    eprintln!(
        "xtask: downloading {package} (once; cached in {})",
        dir.display()
    );
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let mut c = cmd("apt-get", ["-q"]);
    for o in &opts {
        c.args(["-o", o]);
    }
    c.args(["download", &package]).current_dir(&debs);
    run_ok(&mut c, APT_TIMEOUT).with_context(|| format!("apt-get download {package}"))?;
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let root = dir.join(&package);
    let _ = std::fs::remove_dir_all(&root);
    run_ok(
        &mut cmd("dpkg", ["-x".as_ref(), deb.as_os_str(), root.as_os_str()]),
        APT_TIMEOUT,
    )?;
    // Decompress .ko.xz modules (trixie) so busybox insmod can load them.
    decompress_modules(&root)?;
    std::fs::remove_file(&deb)?;
    std::fs::write(&current, &package)?;
    locate(&dir, &package)
}

/// Decompress every `.ko.xz` below `root` in place (one `xz` per 256 files: a 6.12 package
/// holds thousands of modules, and one process each cost minutes).
fn decompress_modules(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "xz") {
                files.push(p);
            }
        }
    }
    for batch in files.chunks(256) {
        let mut c = cmd("xz", ["-d", "-f"]);
        c.args(batch);
        run_ok(&mut c, APT_TIMEOUT)?;
    }
    Ok(())
}

/// Find the kernel image and modules of an unpacked package.
fn locate(dir: &Path, package: &str) -> Result<Kernel> {
    let root = dir.join(package);
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("{} missing", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .context("no vmlinuz in the package")?;
    let version = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| root.join(m).join(&version))
        .find(|p| p.is_dir())
        .context("no module tree in the package")?;
    let e1000 = modules.join("kernel/drivers/net/ethernet/intel/e1000/e1000.ko");
    if !e1000.is_file() {
        bail!("{} missing", e1000.display());
    }
    Ok(Kernel {
        package: package.to_owned(),
        vmlinuz,
        e1000,
        modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_decompressed_in_batches_in_place() {
        let root = std::env::temp_dir().join(format!("shoji-kmods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let sub = root.join("kernel/drivers/net");
        std::fs::create_dir_all(&sub).unwrap();
        // More files than one batch, in two directories.
        let mut names = Vec::new();
        for i in 0..300 {
            let dir = if i % 2 == 0 { &root } else { &sub };
            let p = dir.join(format!("m{i}.ko"));
            std::fs::write(&p, format!("module {i}")).unwrap();
            run_ok(&mut cmd("xz", ["-z".as_ref(), p.as_os_str()]), APT_TIMEOUT).unwrap();
            names.push(p);
        }
        std::fs::write(root.join("keep.txt"), "not a module").unwrap();
        decompress_modules(&root).unwrap();
        for (i, p) in names.iter().enumerate() {
            assert_eq!(std::fs::read_to_string(p).unwrap(), format!("module {i}"));
            assert!(!p.with_extension("ko.xz").exists());
        }
        assert_eq!(
            std::fs::read_to_string(root.join("keep.txt")).unwrap(),
            "not a module"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
