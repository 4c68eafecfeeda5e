//! The guest's container runtime: Debian's `crun` and the shared libraries it needs, fetched
//! once with apt and cached (like the kernel), for the ext2 data disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util::{cache_dir, cmd, run_ok};

/// The Debian packages fetched: the runtime and the one library the build machine may lack.
const PACKAGES: &[&str] = &["crun", "libyajl2"];
/// Name of the dynamic loader in the guest (`/lib64/ld-linux-x86-64.so.2`).
pub const LOADER: &str = "ld-linux-x86-64.so.2";

const APT_TIMEOUT: Duration = Duration::from_secs(900);

/// crun with its libraries, ready to copy onto the data disk.
#[derive(Debug, Clone)]
pub struct Crun {
    /// The `crun` executable.
    pub binary: PathBuf,
    /// (name the loader looks for, file to copy), the loader included.
    pub libs: Vec<(String, PathBuf)>,
}

/// Fetch (or reuse from the cache) crun and libyajl2 and resolve crun's libraries: those from
/// the packages, the rest (glibc, libsystemd, libseccomp, ...) from this Debian 12 machine.
pub fn fetch() -> Result<Crun> {
    let dir = cache_dir().join("crun-bookworm");
    let root = dir.join("root");
    let binary = root.join("usr/bin/crun");
    if !binary.is_file() {
        eprintln!(
            "xtask: downloading {} (once; cached in {})",
            PACKAGES.join(", "),
            dir.display()
        );
        unpack_debs(&dir, PACKAGES)?;
        if !binary.is_file() {
            bail!("the crun package has no usr/bin/crun");
        }
    }
    let pkg_libs = root.join("usr/lib/x86_64-linux-gnu");
    let mut c = cmd("ldd", [binary.as_os_str()]);
    c.env("LD_LIBRARY_PATH", &pkg_libs);
    let out = run_ok(&mut c, APT_TIMEOUT).context("ldd crun (libc-bin)")?;
    let libs = parse_ldd(&out)?;
    Ok(Crun { binary, libs })
}

/// Download Debian `packages` with `apt-get download` and unpack them (`dpkg -x`, not installed)
/// into `dir/root`, replacing what was there; the `.deb` files are removed afterwards. Returns
/// the root.
pub fn unpack_debs(dir: &Path, packages: &[&str]) -> Result<PathBuf> {
    let debs = dir.join("debs");
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&debs);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&debs)?;
    let mut c = cmd("apt-get", ["-q", "download"]);
    c.args(packages).current_dir(&debs);
    run_ok(&mut c, APT_TIMEOUT)
        .with_context(|| format!("apt-get download {}", packages.join(" ")))?;
    for e in std::fs::read_dir(&debs)? {
        let deb = e?.path();
        if deb.extension().is_some_and(|x| x == "deb") {
            run_ok(
                &mut cmd("dpkg", ["-x".as_ref(), deb.as_os_str(), root.as_os_str()]),
                APT_TIMEOUT,
            )?;
        }
    }
    std::fs::remove_dir_all(&debs)?;
    Ok(root)
}

/// Parse `ldd` output into (name, path) pairs; the loader is named [`LOADER`].
fn parse_ldd(text: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let no_addr = line.rsplit_once(" (").map_or(line, |(l, _)| l);
        if let Some((name, path)) = no_addr.split_once(" => ") {
            let path = path.trim();
            if path == "not found" || path.is_empty() {
                bail!("crun needs {name}, which this machine lacks:\n{text}");
            }
            libs.push((name.trim().to_owned(), PathBuf::from(path)));
        } else if no_addr.ends_with(LOADER) {
            libs.push((LOADER.to_owned(), PathBuf::from(no_addr)));
        }
    }
    if !libs.iter().any(|(n, _)| n == LOADER) {
        bail!("ldd names no {LOADER}:\n{text}");
    }
    Ok(libs)
}

/// The data-disk entries for crun: `crun/crun` and `crun/lib/<name>`.
pub fn disk_entries(crun: &Crun) -> Vec<(String, PathBuf)> {
    let mut v = vec![("crun/crun".to_owned(), crun.binary.clone())];
    for (name, path) in &crun.libs {
        v.push((format!("crun/lib/{name}"), resolve(path)));
    }
    v
}

/// The file behind a library symlink (the data disk gets the content under the link's name).
fn resolve(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parses() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibyajl.so.2 => /c/usr/lib/x86_64-linux-gnu/libyajl.so.2 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(libs.len(), 3);
        assert_eq!(libs[0].0, "libyajl.so.2");
        assert_eq!(
            libs[2],
            (LOADER.to_owned(), "/lib64/ld-linux-x86-64.so.2".into())
        );
        assert!(parse_ldd("\tlibyajl.so.2 => not found\n").is_err());
        assert!(parse_ldd("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n").is_err());
    }
}
