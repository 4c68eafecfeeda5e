//! shojictl: the guest-side tool for Shoji.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoji_netfilter::report::CountersView;
use shoji_shared::profile::{FieldId, KernelProfile, Op};
use shoji_shared::vmcall::{
    Function, ProfileState, Status, AGENT_KEY_LEN, PUSH_PROFILE_LEN, WHOAMI_LEN,
};
use shojictl::agent::{Agent, Loaded, Transport, Vmcall};
use shojictl::btfprofile::{build, describe, BuildOptions, Symbols};
use shojictl::oci_hook::HookConfig;
use shojictl::report_text::{event_line, stats_lines};
use shojictl::vmcall::{detect, nic_mediated, vmcall, Presence};
use shojictl::whoami::{
    compare, map_up, ns_inode, render, stat_starttime, status_list, KernelSays,
};

/// Shift the last step of the network-namespace program (a test of Shoji's checks).
fn corrupt(p: &mut KernelProfile) {
    let i = FieldId::ALL
        .iter()
        .position(|f| *f == FieldId::NetNsId)
        .unwrap_or(0);
    let prog = &mut p.fields[i];
    let n = prog.len as usize;
    if let Some(s) = prog.steps.get_mut(n.wrapping_sub(1)) {
        if s.op == Op::Value {
            s.off += 8;
        }
    }
}

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
        /// Push the profile to Shoji (needs the agent key and root in the initial namespaces).
        #[arg(long)]
        push: bool,
        /// The agent key file: 64 hex digits, provisioned by the operator, readable only by root.
        #[arg(long, default_value = "/etc/shoji/agent.key")]
        key_file: PathBuf,
        /// Testing only: corrupt the network-namespace field's offset (a wrong profile).
        #[arg(long, hide = true)]
        corrupt_offsets: bool,
        /// Use a profile written earlier with `--out` instead of building one.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Ask Shoji who is calling and compare every field with what the kernel says.
    Whoami {
        /// Testing only: hand Shoji this buffer address instead of a real buffer (to check that
        /// a buffer the caller cannot write is refused).
        #[arg(long, hide = true, value_parser = parse_addr)]
        buffer_addr: Option<u64>,
    },
    /// Register the container(s) described in a TOML policy file.
    Register {
        /// The policy file.
        file: PathBuf,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Replace the registered container(s) described in a TOML policy file (same ids).
    Update {
        /// The policy file.
        file: PathBuf,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Unregister a container.
    Unregister {
        /// The container's id.
        id: u32,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Print Shoji's frame counters: host, total, unattributed, then per container.
    Stats {
        #[command(flatten)]
        key: KeyArg,
    },
    /// Print Shoji's security events.
    Events {
        /// First sequence number to print (default: the oldest Shoji still holds).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep polling (every 200 ms) until killed.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        key: KeyArg,
    },
    /// List the guest's processes as Shoji reads them from kernel memory (JSON lines; the
    /// last says whether the list is complete). Needs a pushed profile with the task walk.
    Tasks {
        /// Each process's IPv4/IPv6 sockets too.
        #[arg(long)]
        sockets: bool,
        #[command(flatten)]
        key: KeyArg,
    },
    /// OCI runtime hook: reads the OCI state on standard input; registers on create,
    /// unregisters on stop, and sweeps stale registrations.
    OciHook {
        /// The bridge the containers' veths are ports of.
        #[arg(long, default_value = "br0")]
        bridge: String,
        /// The bridge's uplink port (gets every container VLAN, tagged).
        #[arg(long, default_value = "eth0")]
        uplink: String,
        /// Where the hook records its registrations.
        #[arg(long, default_value = "/run/shoji")]
        state_dir: PathBuf,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Unregister the containers the OCI hook registered whose process is gone, and take their
    /// VLANs off the uplink.
    Gc {
        /// The bridge's uplink port (where the hook added each container's VLAN).
        #[arg(long, default_value = "eth0")]
        uplink: String,
        /// Where the hook records its registrations.
        #[arg(long, default_value = "/run/shoji")]
        state_dir: PathBuf,
        #[command(flatten)]
        key: KeyArg,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// For every container in the file: update it if registered, else register it.
    Load {
        /// The policy file.
        file: PathBuf,
        #[command(flatten)]
        key: KeyArg,
    },
}

#[derive(clap::Args)]
struct KeyArg {
    /// The agent key file: 64 hex digits, provisioned by the operator, readable only by root.
    #[arg(long, default_value = "/etc/shoji/agent.key")]
    key_file: PathBuf,
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let t = s.trim_start_matches("0x");
    u64::from_str_radix(t, 16).map_err(|e| e.to_string())
}

/// Say plainly that Shoji is absent (and why) and return the failure exit code.
fn require_shoji() -> Result<(), ExitCode> {
    match detect() {
        Presence::Shoji { .. } => Ok(()),
        Presence::Absent { other } => {
            match other {
                Some(sig) => eprintln!(
                    "shojictl: Shoji is absent: another hypervisor answers ({:?})",
                    String::from_utf8_lossy(&sig)
                ),
                None => eprintln!("shojictl: Shoji is absent: no hypervisor detected"),
            }
            Err(ExitCode::FAILURE)
        }
    }
}

fn read_key(path: &std::path::Path) -> Result<[u8; AGENT_KEY_LEN], String> {
    use std::os::unix::fs::PermissionsExt;
    let key = shojictl::agent::read_key(path)?;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "shojictl: warning: {} is readable by others than its owner (chmod 600)",
                path.display()
            );
        }
    }
    Ok(key)
}

fn load_profile(path: &std::path::Path) -> Result<KernelProfile, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    KernelProfile::decode(&bytes)
        .map_err(|e| format!("{}: not a valid profile: {e:?}", path.display()))
}

/// Build the profile from BTF and kallsyms and print it.
fn build_profile(
    btf: &std::path::Path,
    kallsyms: &std::path::Path,
    release: Option<String>,
    thread_size: u32,
) -> Result<KernelProfile, String> {
    let built = build_profile_quiet(btf, kallsyms, release, thread_size)?;
    print!("{}", describe(&built.profile));
    for n in &built.notes {
        println!("note: {n}");
    }
    Ok(built.profile)
}

/// Build the profile from BTF and kallsyms.
fn build_profile_quiet(
    btf: &std::path::Path,
    kallsyms: &std::path::Path,
    release: Option<String>,
    thread_size: u32,
) -> Result<shojictl::btfprofile::Built, String> {
    let btf_bytes =
        std::fs::read(btf).map_err(|e| format!("cannot read {}: {e}", btf.display()))?;
    let text = std::fs::read_to_string(kallsyms)
        .map_err(|e| format!("cannot read {}: {e}", kallsyms.display()))?;
    let syms = Symbols::parse(&text);
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
    let built = build(
        &btf_bytes,
        &syms,
        &BuildOptions {
            release,
            thread_size,
        },
    )
    .map_err(|e| format!("cannot build the kernel profile: {e}"))?;
    Ok(built)
}

fn status_of(rax: u64) -> String {
    match Status::from_u64(rax) {
        Some(s) => format!("{s:?} ({})", s.describe()),
        None => format!("unknown status {rax:#x}"),
    }
}

/// The PushProfile request: the agent key, then the encoded profile.
fn push_request(profile: &KernelProfile, key: &[u8; AGENT_KEY_LEN]) -> Result<Vec<u8>, String> {
    let mut req = vec![0u8; PUSH_PROFILE_LEN];
    req[..AGENT_KEY_LEN].copy_from_slice(key);
    profile
        .encode(&mut req[AGENT_KEY_LEN..])
        .map_err(|e| format!("cannot encode the kernel profile: {e:?}"))?;
    Ok(req)
}

fn push(profile: &KernelProfile, key_file: &std::path::Path) -> ExitCode {
    if let Err(code) = require_shoji() {
        return code;
    }
    let key = match read_key(key_file) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("shojictl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let req = match push_request(profile, &key) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shojictl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (rax, _, rcx, _) = vmcall(
        Function::PushProfile.rax(),
        req.as_ptr() as u64,
        req.len() as u64,
        0,
        0,
    );
    if rax == Status::Ok as u64 {
        let state = match ProfileState::from_u64(rcx) {
            Some(ProfileState::Verified) => "fingerprint verified against the guest's BTF",
            Some(ProfileState::Unverified) => "fingerprint NOT verified (no BTF address)",
            _ => "state unknown",
        };
        println!("profile pushed: accepted by Shoji ({state})");
        ExitCode::SUCCESS
    } else {
        eprintln!("shojictl: profile push refused: {}", status_of(rax));
        ExitCode::FAILURE
    }
}

/// What the kernel says about this process (system calls and /proc/self).
fn kernel_says() -> KernelSays {
    use std::os::unix::fs::MetadataExt;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let first = |k: &str| status_list(&status, k).first().copied();
    let last = |k: &str| status_list(&status, k).last().copied();
    let uid_line = status_list(&status, "Uid");
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").ok();
    let up = |local: Option<u32>| -> Option<u32> { map_up(uid_map.as_deref()?, local?) };
    // An id outside every extent shows as the overflow uid (65534) locally.
    let mapped = |local: Option<u32>| local.filter(|l| up(Some(*l)).is_some());
    let ns = |n: &str| {
        std::fs::read_link(format!("/proc/self/ns/{n}"))
            .ok()
            .and_then(|l| ns_inode(&l.to_string_lossy()))
    };
    let cgroup2 = std::fs::metadata("/sys/fs/cgroup/cgroup.controllers").is_ok();
    let cgroup_id = cgroup2.then_some(()).and_then(|_| {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        std::fs::metadata(format!("/sys/fs/cgroup{}", path.trim()))
            .ok()
            .map(|m| m.ino())
    });
    let pid_local = last("NSpid");
    let tgid_local = Some(std::process::id()).filter(|p| last("NStgid") == Some(*p));
    KernelSays {
        pid: first("NSpid"),
        tgid: first("NStgid"),
        pid_local,
        tgid_local,
        pgid: first("NSpgid"),
        uid: up(uid_line.first().copied()),
        euid: up(uid_line.get(1).copied()),
        uid_local: mapped(uid_line.first().copied()),
        userns_id: ns("user"),
        netns_id: ns("net"),
        pidns_id: ns("pid"),
        cgroup_id,
        cgroup2,
        start_ticks: std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| stat_starttime(&s)),
        hz: 100,
        exe_inode: std::fs::metadata("/proc/self/exe").ok().map(|m| m.ino()),
        comm: std::fs::read_to_string("/proc/self/comm")
            .ok()
            .map(|s| s.trim_end_matches('\n').to_owned()),
        uid_map_known: uid_map.is_some(),
    }
}

fn whoami_cmd(buffer_addr: Option<u64>) -> ExitCode {
    if let Err(code) = require_shoji() {
        return code;
    }
    // A stack buffer, written first so every byte is mapped and writable.
    let mut buf = [0xa5u8; WHOAMI_LEN];
    std::hint::black_box(&mut buf);
    let addr = buffer_addr.unwrap_or(buf.as_mut_ptr() as u64);
    let (rax, _, rcx, _) = vmcall(Function::WhoAmI.rax(), addr, WHOAMI_LEN as u64, 0, 0);
    let kernel = kernel_says();
    if rax == Status::NoProfile as u64 {
        eprintln!("shojictl: Shoji is present but no kernel profile has been pushed (run `shojictl profile --push` as root)");
        return ExitCode::FAILURE;
    }
    if rax != Status::Ok as u64 {
        eprintln!("shojictl: whoami refused: {}", status_of(rax));
        return ExitCode::FAILURE;
    }
    if buffer_addr.is_some() {
        eprintln!("shojictl: whoami: Shoji ACCEPTED a buffer at {addr:#x}");
        return ExitCode::FAILURE;
    }
    let buf = std::hint::black_box(buf);
    let Some(id) = shoji_shared::vmcall::whoami::decode(&buf) else {
        eprintln!("shojictl: whoami: malformed reply from Shoji");
        return ExitCode::FAILURE;
    };
    let state = match ProfileState::from_u64(rcx) {
        Some(ProfileState::Verified) => "profile fingerprint verified",
        Some(ProfileState::Unverified) => "profile fingerprint not verified",
        _ => "profile state unknown",
    };
    println!("{state}");
    // Bytes 8..16 once carried the caller's task_struct address; a Shoji that still fills them
    // leaks a kernel address to every caller.
    if id.task != 0 {
        println!(
            "whoami: LEAK: the reply carries a kernel address ({:#x})",
            id.task
        );
        return ExitCode::FAILURE;
    }
    let (text, ok) = render(&compare(&id, &kernel));
    print!("{text}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Build the kernel profile from the running kernel and push it (the agent's answer to
/// `NoProfile`).
fn auto_push<T: Transport>(t: &mut T, key: &[u8; AGENT_KEY_LEN]) -> Result<(), String> {
    let built = build_profile_quiet(
        std::path::Path::new("/sys/kernel/btf/vmlinux"),
        std::path::Path::new("/proc/kallsyms"),
        None,
        16384,
    )?;
    let req = push_request(&built.profile, key)?;
    let reply = t.call(Function::PushProfile, &req, &mut []);
    if reply.rax != Status::Ok as u64 {
        return Err(format!("profile push refused: {}", status_of(reply.rax)));
    }
    eprintln!("shojictl: note: Shoji had no kernel profile; pushed it");
    Ok(())
}

/// The agent, after checking that Shoji is there and reading the key.
fn agent(key: &KeyArg) -> Result<Agent<Vmcall>, String> {
    if let Presence::Absent { other } = detect() {
        return Err(match other {
            Some(sig) => format!(
                "Shoji is absent: another hypervisor answers ({:?})",
                String::from_utf8_lossy(&sig)
            ),
            None => "Shoji is absent: no hypervisor detected".into(),
        });
    }
    let key = read_key(&key.key_file)?;
    Ok(Agent::new(Vmcall, key, Box::new(auto_push)))
}

fn read_policy(file: &std::path::Path) -> Result<Vec<shoji_netfilter::ContainerSpec>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    shojictl::policy_file::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()))
}

#[derive(Clone, Copy)]
enum Apply {
    Register,
    Update,
    Load,
}

fn apply_file(file: &std::path::Path, key: &KeyArg, how: Apply) -> Result<(), String> {
    let specs = read_policy(file)?;
    let mut agent = agent(key)?;
    for spec in &specs {
        let done = match how {
            Apply::Register => agent.register(spec).map(|_| "registered"),
            Apply::Update => agent.update(spec).map(|_| "updated"),
            Apply::Load => agent.load(spec).map(|l| match l {
                Loaded::Registered => "registered",
                Loaded::Updated => "updated",
            }),
        }
        .map_err(|e| e.to_string())?;
        println!("{done} container {} vlan {}", spec.id.0, spec.vlan);
    }
    Ok(())
}

fn unregister_cmd(id: u32, key: &KeyArg) -> Result<(), String> {
    agent(key)?.unregister(id).map_err(|e| e.to_string())?;
    println!("unregistered container {id}");
    Ok(())
}

fn stats_cmd(key: &KeyArg) -> Result<(), String> {
    let bytes = agent(key)?.read_counters().map_err(|e| e.to_string())?;
    let view = CountersView::parse(&bytes)
        .map_err(|e| format!("malformed counters from Shoji: {}", e.describe()))?;
    for line in stats_lines(&view) {
        println!("{line}");
    }
    Ok(())
}

fn events_cmd(from: u64, follow: bool, key: &KeyArg) -> Result<(), String> {
    use std::io::Write;
    let mut agent = agent(key)?;
    let mut next = from;
    loop {
        let batch = agent.read_events(next).map_err(|e| e.to_string())?;
        if batch.missed != 0 {
            eprintln!(
                "shojictl: warning: {} events were overwritten before they could be read",
                batch.missed
            );
        }
        let mut out = std::io::stdout().lock();
        for e in &batch.events {
            if writeln!(out, "{}", event_line(e)).is_err() {
                return Ok(()); // the reader went away
            }
        }
        let _ = out.flush();
        next = batch.next_seq.max(next);
        if !follow {
            return Ok(());
        }
        if batch.events.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

fn tasks_cmd(sockets: bool, key: &KeyArg) -> Result<(), String> {
    let text = agent(key)?.list_tasks(sockets).map_err(|e| e.to_string())?;
    print!("{text}");
    Ok(())
}

fn oci_hook_cmd(cfg: &HookConfig, key: &KeyArg) -> Result<(), String> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the OCI state from standard input: {e}"))?;
    let mut agent = agent(key)?;
    let outcome = shojictl::oci_hook::run(&mut agent, cfg, &text)?;
    for w in &outcome.warnings {
        eprintln!("shojictl: warning: {w}");
    }
    for l in &outcome.lines {
        println!("{l}");
    }
    Ok(())
}

fn gc_cmd(state_dir: &std::path::Path, uplink: &str, key: &KeyArg) -> Result<(), String> {
    let mut agent = agent(key)?;
    let (lines, errors) = shojictl::oci_hook::gc(&mut agent, state_dir, None, uplink);
    for l in &lines {
        println!("{l}");
    }
    match errors.split_last() {
        None => Ok(()),
        Some((last, rest)) => {
            for e in rest {
                eprintln!("shojictl: {e}");
            }
            Err(last.clone())
        }
    }
}

/// Exit status of a policy command.
fn finish(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shojictl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Detect => match detect() {
            Presence::Shoji { max_leaf } => {
                println!(
                    "Shoji is present (highest CPUID leaf {max_leaf:#x}); NIC mediated: {}",
                    if nic_mediated() {
                        "yes"
                    } else {
                        "NO (no policy is enforced)"
                    }
                );
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
            push: do_push,
            key_file,
            corrupt_offsets,
            from,
        } => {
            let mut profile = match from {
                Some(path) => match load_profile(&path) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("shojictl: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => match build_profile(&btf, &kallsyms, release, thread_size) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("shojictl: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            if corrupt_offsets {
                corrupt(&mut profile);
                println!("note: deliberately corrupted profile (netns_id offset +8), for tests");
            }
            if let Some(out) = out {
                let mut buf = vec![0u8; shoji_shared::profile::ENCODED_LEN];
                let n = match profile.encode(&mut buf) {
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
            if do_push {
                return push(&profile, &key_file);
            }
            ExitCode::SUCCESS
        }
        Cmd::Whoami { buffer_addr } => whoami_cmd(buffer_addr),
        Cmd::Register { file, key } => finish(apply_file(&file, &key, Apply::Register)),
        Cmd::Update { file, key } => finish(apply_file(&file, &key, Apply::Update)),
        Cmd::Policy {
            cmd: PolicyCmd::Load { file, key },
        } => finish(apply_file(&file, &key, Apply::Load)),
        Cmd::Unregister { id, key } => finish(unregister_cmd(id, &key)),
        Cmd::Stats { key } => finish(stats_cmd(&key)),
        Cmd::Events { from, follow, key } => finish(events_cmd(from, follow, &key)),
        Cmd::Tasks { sockets, key } => finish(tasks_cmd(sockets, &key)),
        Cmd::OciHook {
            bridge,
            uplink,
            state_dir,
            key,
        } => finish(oci_hook_cmd(
            &HookConfig {
                bridge,
                uplink,
                state_dir,
            },
            &key,
        )),
        Cmd::Gc {
            uplink,
            state_dir,
            key,
        } => finish(gc_cmd(&state_dir, &uplink, &key)),
    }
}
