//! shojictl: the guest-side tool for Shoji.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shojictl::btfprofile::{build, describe, BuildOptions, Symbols};
use shojictl::vmcall::{detect, Presence};

#[derive(Parser)]
#[command(
    name = "shojictl",
    version,
    about = "Guest tool for the Shoji hypervisor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check whether this system runs under Shoji.
    Detect,
    /// Build the kernel profile from BTF and kallsyms, print it, optionally write it.
    Profile {
        /// BTF of the running kernel.
        #[arg(long, default_value = "/sys/kernel/btf/vmlinux")]
        btf: PathBuf,
        /// Kernel symbols (kallsyms or System.map format). Needs root to show addresses.
        #[arg(long, default_value = "/proc/kallsyms")]
        kallsyms: PathBuf,
        /// Kernel release (default: the running kernel's).
        #[arg(long)]
        release: Option<String>,
        /// THREAD_SIZE for kernels without THREAD_INFO_IN_TASK.
        #[arg(long, default_value_t = 16384)]
        thread_size: u32,
        /// Write the binary encoding here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Detect => match detect() {
            Presence::Shoji { max_leaf } => {
                println!("Shoji is present (highest CPUID leaf {max_leaf:#x})");
                ExitCode::SUCCESS
            }
            Presence::Absent { other } => {
                match other {
                    Some(sig) => eprintln!(
                        "Shoji is absent: another hypervisor answers ({:?})",
                        String::from_utf8_lossy(&sig)
                    ),
                    None => eprintln!("Shoji is absent: no hypervisor detected"),
                }
                ExitCode::FAILURE
            }
        },
        Cmd::Profile {
            btf,
            kallsyms,
            release,
            thread_size,
            out,
        } => {
            let btf_bytes = match std::fs::read(&btf) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("shojictl: cannot read {}: {e}", btf.display());
                    return ExitCode::FAILURE;
                }
            };
            let syms = match std::fs::read_to_string(&kallsyms) {
                Ok(t) => Symbols::parse(&t),
                Err(e) => {
                    eprintln!("shojictl: cannot read {}: {e}", kallsyms.display());
                    return ExitCode::FAILURE;
                }
            };
            if syms.addresses_hidden() {
                eprintln!(
                    "shojictl: warning: {} shows no addresses (run as root); per-cpu offsets come from BTF",
                    kallsyms.display()
                );
            }
            let release = release.unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            });
            let built = match build(
                &btf_bytes,
                &syms,
                &BuildOptions {
                    release,
                    thread_size,
                },
            ) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("shojictl: cannot build the kernel profile: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print!("{}", describe(&built.profile));
            for n in &built.notes {
                println!("note: {n}");
            }
            if let Some(out) = out {
                let mut buf = vec![0u8; shoji_shared::profile::ENCODED_LEN];
                let n = match built.profile.encode(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("shojictl: cannot encode: {e:?}");
                        return ExitCode::FAILURE;
                    }
                };
                if let Err(e) = std::fs::write(&out, &buf[..n]) {
                    eprintln!("shojictl: cannot write {}: {e}", out.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {} bytes to {}", n, out.display());
            }
            ExitCode::SUCCESS
        }
    }
}
