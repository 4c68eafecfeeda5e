//! The OCI hook: register a container when it is created (identity read from its network
//! namespace, VLAN set on the bridge), unregister it when it stops, and sweep registrations
//! whose process is gone.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{ContainerState, State};
use shoji_netfilter::registry::{ContainerSpec, MAX_IPV4, MAX_MACS, MAX_VLAN};
use shoji_netfilter::MacAddr;
use shoji_shared::vmcall::Status;
use shoji_shared::ContainerId;

use crate::agent::CallError;
use crate::policy_file::{format_mac, parse_inline, Policy};

/// Annotation naming the container's VLAN (required).
pub const ANNOTATION_VLAN: &str = "org.shoji.vlan";
/// Annotation naming the container's id (optional; default: the VLAN).
pub const ANNOTATION_ID: &str = "org.shoji.id";
/// Annotation carrying the container's inline TOML policy (optional).
pub const ANNOTATION_POLICY: &str = "org.shoji.policy";

/// What the runtime is telling the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// `creating` or `created`: register.
    Create,
    /// `stopped`: unregister.
    Stop,
    /// `running`: nothing to do but the sweep.
    Running,
}

/// The parts of the OCI state the hook uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookState {
    /// The OCI container id.
    pub id: String,
    /// The phase.
    pub phase: Phase,
    /// The container's process, if it has one.
    pub pid: Option<u32>,
    /// The bundle directory.
    pub bundle: PathBuf,
}

/// Parse the OCI state JSON the runtime writes on the hook's standard input.
pub fn parse_state(json: &str) -> Result<HookState, String> {
    // oci-spec defaults a missing status to "stopped": require the fields explicitly so a
    // truncated state never unregisters anything.
    let raw: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("the OCI state is not JSON: {e}"))?;
    for key in ["id", "status"] {
        if raw.get(key).is_none() {
            return Err(format!("the OCI state has no {key:?}"));
        }
    }
    let state: State =
        serde_json::from_value(raw).map_err(|e| format!("the OCI state is malformed: {e}"))?;
    check_oci_id(state.id())?;
    let phase = match state.status() {
        ContainerState::Creating | ContainerState::Created => Phase::Create,
        ContainerState::Stopped => Phase::Stop,
        ContainerState::Running => Phase::Running,
    };
    let pid = match *state.pid() {
        Some(p) if p > 0 => Some(p as u32),
        Some(p) if p != 0 => return Err(format!("the OCI state has a bad pid {p}")),
        _ => None,
    };
    Ok(HookState {
        id: state.id().clone(),
        phase,
        pid,
        bundle: state.bundle().clone(),
    })
}

/// An OCI id must be usable as a file name in the state directory.
pub fn check_oci_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 255 || id.starts_with('.') || id.contains(['/', '\0', '\n']) {
        return Err(format!("unusable OCI container id {id:?}"));
    }
    Ok(())
}

/// What the annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAnnotations {
    /// The container's id.
    pub id: u32,
    /// Its VLAN.
    pub vlan: u16,
    /// Its policy.
    pub policy: Policy,
}

/// Read the Shoji annotations; `Ok(None)` when the container has no `org.shoji.vlan` (not
/// ours to register).
pub fn parse_annotations(
    map: Option<&HashMap<String, String>>,
) -> Result<Option<HookAnnotations>, String> {
    let Some(map) = map else { return Ok(None) };
    let Some(vlan_text) = map.get(ANNOTATION_VLAN) else {
        return Ok(None);
    };
    let vlan = vlan_text
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|v| (2..=MAX_VLAN).contains(v))
        .ok_or_else(|| {
            format!("annotation {ANNOTATION_VLAN}={vlan_text:?}: the VLAN must be 2..4094")
        })?;
    let id = match map.get(ANNOTATION_ID) {
        None => u32::from(vlan),
        Some(t) => t.trim().parse::<u32>().map_err(|_| {
            format!("annotation {ANNOTATION_ID}={t:?}: the id must be a number (u32)")
        })?,
    };
    let policy = match map.get(ANNOTATION_POLICY) {
        None => Policy::default(),
        Some(t) => parse_inline(t).map_err(|e| format!("annotation {ANNOTATION_POLICY}: {e}"))?,
    };
    Ok(Some(HookAnnotations { id, vlan, policy }))
}

/// The annotations of `<bundle>/config.json`.
pub fn bundle_annotations(bundle: &Path) -> Result<Option<HashMap<String, String>>, String> {
    let path = bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(spec.annotations().clone())
}

/// One network interface of the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerIface {
    /// Its name inside the container.
    pub name: String,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// The host-side veth peer's index, if it is a veth.
    pub peer: Option<u32>,
}

/// What the hook learnt about the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFacts {
    /// Its interfaces (loopback and address-less ones left out).
    pub ifaces: Vec<ContainerIface>,
    /// Its network namespace inode.
    pub netns_id: Option<u32>,
    /// Its cgroup v2 id.
    pub cgroup_id: Option<u64>,
}

/// The registration for a container.
pub fn build_spec(a: &HookAnnotations, facts: &ContainerFacts) -> Result<ContainerSpec, String> {
    let mut spec = ContainerSpec {
        id: ContainerId(a.id),
        vlan: a.vlan,
        cgroup_id: facts.cgroup_id,
        netns_id: facts.netns_id,
        macs: heapless::Vec::new(),
        ipv4: heapless::Vec::new(),
        default_egress: a.policy.default_egress,
        default_ingress: a.policy.default_ingress,
        rules: a.policy.rules.clone(),
    };
    for i in &facts.ifaces {
        if spec.macs.contains(&i.mac) {
            continue;
        }
        spec.macs.push(i.mac).map_err(|_| {
            format!("the container has more than {MAX_MACS} interfaces with a MAC address")
        })?;
        for ip in &i.ipv4 {
            if !spec.ipv4.contains(ip) {
                spec.ipv4.push(*ip).map_err(|_| {
                    format!("the container has more than {MAX_IPV4} IPv4 addresses")
                })?;
            }
        }
    }
    if spec.macs.is_empty() {
        return Err("the container has no network interface with a MAC address".into());
    }
    spec.validate().map_err(|e| {
        format!(
            "the container's registration is invalid: {}",
            crate::policy_file::registry_message(&e)
        )
    })?;
    Ok(spec)
}

/// Addresses no container may register: the host's own (the MACs and IPv4 addresses of the
/// namespace the hook runs in) and the gateways (next hops of the host's routes and of the
/// container's). A sibling sharing the container's network namespace could plant one of them
/// there before the hook looks; registering it would make Shoji treat the container as the
/// host or the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// The host's MACs.
    pub macs: Vec<MacAddr>,
    /// The host's IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// Gateways: of the host's routes, then of the container's.
    pub gateways: Vec<Ipv4Addr>,
}

/// Refuse a registration that claims a reserved address, naming it. (Another container's
/// addresses are refused by Shoji itself: the registry answers which container holds them.)
pub fn check_reserved(spec: &ContainerSpec, r: &Reserved) -> Result<(), String> {
    let refuse = |what: String| {
        Err(format!(
            "refusing to register container {}: {what}; a container must not claim it \
             (was it planted in the container's network namespace?)",
            spec.id.0
        ))
    };
    for ip in &spec.ipv4 {
        if r.gateways.contains(ip) {
            return refuse(format!(
                "{ip} is a gateway's address (a next hop of a route)"
            ));
        }
        if r.ipv4.contains(ip) {
            return refuse(format!("{ip} is one of the host's own addresses"));
        }
    }
    for mac in &spec.macs {
        if r.macs.contains(mac) {
            return refuse(format!("MAC {} is one of the host's", format_mac(mac)));
        }
    }
    Ok(())
}

/// The interfaces of a network namespace from its links and addresses.
pub fn container_ifaces(
    links: &[crate::netlink::Link],
    addrs: &[crate::netlink::Addr],
) -> Vec<ContainerIface> {
    links
        .iter()
        .filter(|l| !l.is_loopback())
        .filter_map(|l| {
            Some(ContainerIface {
                name: l.name.clone(),
                mac: l.mac()?,
                ipv4: addrs
                    .iter()
                    .filter(|a| a.index == l.index)
                    .map(|a| a.address)
                    .collect(),
                peer: l.link,
            })
        })
        .collect()
}

/// The state-directory record of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRecord {
    /// Shoji container id.
    pub id: u32,
    /// VLAN.
    pub vlan: u16,
    /// The container's process.
    pub pid: u32,
    /// Its start time (clock ticks after boot, /proc/PID/stat field 22).
    pub start: u64,
}

impl StateRecord {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "id={}", self.id);
        let _ = writeln!(s, "vlan={}", self.vlan);
        let _ = writeln!(s, "pid={}", self.pid);
        let _ = writeln!(s, "start={}", self.start);
        s
    }

    /// Parse a file's text.
    pub fn parse(text: &str) -> Result<StateRecord, String> {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("bad line {line:?}"))?;
            fields.insert(k.trim(), v.trim());
        }
        fn get<T: std::str::FromStr>(f: &HashMap<&str, &str>, k: &str) -> Result<T, String> {
            f.get(k)
                .ok_or_else(|| format!("no {k}"))?
                .parse()
                .map_err(|_| format!("bad {k}"))
        }
        Ok(StateRecord {
            id: get(&fields, "id")?,
            vlan: get(&fields, "vlan")?,
            pid: get(&fields, "pid")?,
            start: get(&fields, "start")?,
        })
    }
}

/// Write `<dir>/<oci_id>` (through a temporary file and a rename).
pub fn write_record(dir: &Path, oci_id: &str, rec: &StateRecord) -> Result<(), String> {
    check_oci_id(oci_id)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(oci_id);
    let tmp = dir.join(format!(".{oci_id}.tmp"));
    std::fs::write(&tmp, rec.to_text())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Read `<dir>/<oci_id>`; `Ok(None)` when there is none.
pub fn read_record(dir: &Path, oci_id: &str) -> Result<Option<StateRecord>, String> {
    check_oci_id(oci_id)?;
    let path = dir.join(oci_id);
    match std::fs::read_to_string(&path) {
        Ok(t) => StateRecord::parse(&t)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Remove `<dir>/<oci_id>` (absent is fine).
pub fn remove_record(dir: &Path, oci_id: &str) -> Result<(), String> {
    let path = dir.join(oci_id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// Unregister `id`, treating "not registered" as done.
pub fn unregister_gone(
    unregister: &mut dyn FnMut(u32) -> Result<(), CallError>,
    id: u32,
) -> Result<(), CallError> {
    match unregister(id) {
        Err(e) if e.status() == Some(Status::NotFound) => Ok(()),
        r => r,
    }
}

/// What taking a container's VLAN off the uplink found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlanRelease {
    /// The uplink carried the VLAN; it no longer does.
    Removed,
    /// The uplink did not carry the VLAN (already removed).
    Absent,
}

/// Release `vlan` from the uplink through `release`: the text for the hook's line; a failure
/// goes to `errors` (the registration is gone either way).
fn release_text(
    release: &mut dyn FnMut(u16) -> Result<VlanRelease, String>,
    vlan: u16,
    errors: &mut Vec<String>,
) -> String {
    match release(vlan) {
        Ok(VlanRelease::Removed) => format!("VLAN {vlan} removed from the uplink"),
        Ok(VlanRelease::Absent) => format!("VLAN {vlan} was not on the uplink"),
        Err(e) => {
            errors.push(format!("VLAN {vlan} stays on the uplink: {e}"));
            format!("VLAN {vlan} not removed from the uplink")
        }
    }
}

/// Sweep the state directory: every record (but `except`) whose process is gone, or whose
/// start time differs (the pid was reused), is unregistered and removed, and its VLAN is taken
/// off the uplink (`release`). Returns the lines to print and the errors met (records that
/// could not be unregistered stay for the next sweep).
pub fn sweep(
    dir: &Path,
    except: Option<&str>,
    start_time_of: &dyn Fn(u32) -> Option<u64>,
    unregister: &mut dyn FnMut(u32) -> Result<(), CallError>,
    release: &mut dyn FnMut(u16) -> Result<VlanRelease, String>,
) -> (Vec<String>, Vec<String>) {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (done, errors),
        Err(e) => {
            errors.push(format!("cannot read {}: {e}", dir.display()));
            return (done, errors);
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_oci_id(n).is_ok() && Some(n.as_str()) != except)
        .collect();
    names.sort();
    for name in names {
        let rec = match read_record(dir, &name) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if start_time_of(rec.pid) == Some(rec.start) {
            continue;
        }
        match unregister_gone(unregister, rec.id) {
            Ok(()) => match remove_record(dir, &name) {
                Ok(()) => {
                    done.push(format!(
                        "shojictl: cleaned up stale registration {} (oci {name}); {}",
                        rec.id,
                        release_text(release, rec.vlan, &mut errors)
                    ));
                }
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(format!("stale registration {} (oci {name}): {e}", rec.id)),
        }
    }
    (done, errors)
}

/// The start time of `pid` (/proc/PID/stat field 22), `None` if it is gone.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    live_start_time(&stat)
}

/// The start time in a `/proc/PID/stat` text, `None` when the process has died: a zombie
/// (state `Z`, not yet reaped by its parent) or dead (`X`) keeps its pid and start time, but its
/// container is gone.
pub fn live_start_time(stat: &str) -> Option<u64> {
    // Field 3 is the state.
    if matches!(crate::whoami::stat_field(stat, 3)?, "Z" | "X" | "x") {
        return None;
    }
    crate::whoami::stat_starttime(stat)
}

/// The network-namespace inode of `pid`.
pub fn proc_netns(pid: u32) -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/{pid}/ns/net");
    let ino = std::fs::metadata(&path)
        .map_err(|e| format!("cannot stat {path}: {e}"))?
        .ino();
    u32::try_from(ino).map_err(|_| format!("{path}: inode {ino} does not fit 32 bits"))
}

/// The cgroup v2 path in a /proc/PID/cgroup text.
pub fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// The cgroup v2 id (inode of its directory) of `pid`; `None` without cgroup v2.
pub fn proc_cgroup_id(pid: u32) -> Result<Option<u64>, String> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read /proc/{pid}/cgroup: {e}"))?;
    let Some(path) = cgroup_v2_path(&text) else {
        return Ok(None);
    };
    let dir = format!("/sys/fs/cgroup{path}");
    match std::fs::metadata(&dir) {
        Ok(m) => Ok(Some(m.ino())),
        Err(e) => Err(format!("cannot stat {dir}: {e}")),
    }
}

/// List the links, IPv4 addresses and route gateways of `pid`'s network namespace, from a
/// helper thread that enters it (`setns` acts on the calling thread only, so this process stays
/// where it is).
#[cfg(target_os = "linux")]
pub fn netns_ifaces(pid: u32) -> Result<(Vec<ContainerIface>, Vec<Ipv4Addr>), String> {
    let path = format!("/proc/{pid}/ns/net");
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
    let handle = std::thread::spawn(
        move || -> Result<(Vec<ContainerIface>, Vec<Ipv4Addr>), String> {
            use std::os::fd::AsRawFd;
            // SAFETY: `file` is an open namespace file; setns changes only this thread's network
            // namespace, and the thread ends right after.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "cannot enter the network namespace {path}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let mut sock = crate::netlink::Socket::open()?;
            let links = sock.links()?;
            let addrs = sock.ipv4_addrs()?;
            let gateways = sock.ipv4_gateways()?;
            Ok((container_ifaces(&links, &addrs), gateways))
        },
    );
    handle
        .join()
        .map_err(|_| "the network-namespace helper thread panicked".to_string())?
}

/// The host's own addresses and its routes' gateways (the namespace this process runs in).
#[cfg(target_os = "linux")]
pub fn host_reserved() -> Result<Reserved, String> {
    let mut sock = crate::netlink::Socket::open()?;
    Ok(Reserved {
        macs: sock.links()?.iter().filter_map(|l| l.mac()).collect(),
        ipv4: sock.ipv4_addrs()?.iter().map(|a| a.address).collect(),
        gateways: sock.ipv4_gateways()?,
    })
}

/// Put the host-side veth `port` on `vlan` (PVID, untagged; VLAN 1 removed) and add `vlan`
/// tagged on `uplink`. Both must be ports of `bridge`.
#[cfg(target_os = "linux")]
pub fn set_bridge_vlan(port: u32, vlan: u16, bridge: &str, uplink: &str) -> Result<(), String> {
    use crate::netlink::{
        errno_text, BridgeVlanInfoFlags, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED,
    };
    let mut sock = crate::netlink::Socket::open()?;
    let links = sock.links()?;
    let by_name = |n: &str| links.iter().find(|l| l.name == n);
    let br = by_name(bridge).ok_or_else(|| format!("no interface {bridge} (the bridge)"))?;
    let up = by_name(uplink).ok_or_else(|| format!("no interface {uplink} (the uplink)"))?;
    let veth = links.iter().find(|l| l.index == port).ok_or_else(|| {
        format!("the container's veth peer (ifindex {port}) is not in this namespace")
    })?;
    for l in [veth, up] {
        if l.master != Some(br.index) {
            return Err(format!("{} is not a port of the bridge {bridge}", l.name));
        }
    }
    sock.bridge_vlan(
        true,
        port,
        vlan,
        BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED,
    )
    .map_err(|e| format!("cannot set VLAN {vlan} on {}: {}", veth.name, errno_text(e)))?;
    if vlan != 1 {
        match sock.bridge_vlan(false, port, 1, BridgeVlanInfoFlags::empty()) {
            Ok(()) | Err(libc::ENOENT) => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove VLAN 1 from {}: {}",
                    veth.name,
                    errno_text(e)
                ))
            }
        }
    }
    sock.bridge_vlan(true, up.index, vlan, BridgeVlanInfoFlags::empty())
        .map_err(|e| format!("cannot add VLAN {vlan} to {uplink}: {}", errno_text(e)))
}

/// Take `vlan` off the bridge port `uplink` (what [`set_bridge_vlan`] added there for a
/// container that is gone).
#[cfg(target_os = "linux")]
pub fn release_uplink_vlan(vlan: u16, uplink: &str) -> Result<VlanRelease, String> {
    use crate::netlink::{errno_text, BridgeVlanInfoFlags};
    let mut sock = crate::netlink::Socket::open()?;
    let links = sock.links()?;
    let up = links
        .iter()
        .find(|l| l.name == uplink)
        .ok_or_else(|| format!("no interface {uplink} (the uplink)"))?;
    match sock.bridge_vlan(false, up.index, vlan, BridgeVlanInfoFlags::empty()) {
        Ok(()) => Ok(VlanRelease::Removed),
        Err(libc::ENOENT) => Ok(VlanRelease::Absent),
        Err(e) => Err(format!(
            "cannot remove VLAN {vlan} from {uplink}: {}",
            errno_text(e)
        )),
    }
}

/// Where the hook puts things.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// The bridge the containers' veths are ports of.
    pub bridge: String,
    /// The uplink port of that bridge.
    pub uplink: String,
    /// The state directory.
    pub state_dir: PathBuf,
}

/// The success line of a registration.
pub fn registered_line(spec: &ContainerSpec, oci_id: &str) -> String {
    let macs: Vec<String> = spec.macs.iter().map(format_mac).collect();
    let ips: Vec<String> = spec.ipv4.iter().map(|i| i.to_string()).collect();
    format!(
        "shojictl: registered container {} (oci {oci_id}) vlan {} mac {} ip {}",
        spec.id.0,
        spec.vlan,
        macs.join(","),
        if ips.is_empty() {
            "none".to_string()
        } else {
            ips.join(",")
        }
    )
}

/// What a hook invocation did: lines for standard output, and problems that did not stop it
/// (a stale record that could not be cleaned).
#[derive(Debug, Default)]
pub struct HookOutcome {
    /// Lines to print.
    pub lines: Vec<String>,
    /// Warnings to print.
    pub warnings: Vec<String>,
}

/// Run the sweep with the real /proc, the agent and the bridge's `uplink` port.
#[cfg(target_os = "linux")]
pub fn gc<T: crate::agent::Transport>(
    agent: &mut crate::agent::Agent<T>,
    state_dir: &Path,
    except: Option<&str>,
    uplink: &str,
) -> (Vec<String>, Vec<String>) {
    sweep(
        state_dir,
        except,
        &proc_start_time,
        &mut |id| agent.unregister(id),
        &mut |vlan| release_uplink_vlan(vlan, uplink),
    )
}

/// Handle one hook invocation: `state_json` is the OCI state from standard input.
#[cfg(target_os = "linux")]
pub fn run<T: crate::agent::Transport>(
    agent: &mut crate::agent::Agent<T>,
    cfg: &HookConfig,
    state_json: &str,
) -> Result<HookOutcome, String> {
    let state = parse_state(state_json)?;
    let except = (state.phase == Phase::Stop).then_some(state.id.as_str());
    let (lines, warnings) = gc(agent, &cfg.state_dir, except, &cfg.uplink);
    let mut out = HookOutcome { lines, warnings };
    match state.phase {
        Phase::Running => {}
        Phase::Stop => match read_record(&cfg.state_dir, &state.id)? {
            None => out.lines.push(format!(
                "shojictl: no registration for oci {}: nothing to unregister",
                state.id
            )),
            Some(rec) => {
                unregister_gone(&mut |id| agent.unregister(id), rec.id)
                    .map_err(|e| e.to_string())?;
                remove_record(&cfg.state_dir, &state.id)?;
                let released = release_text(
                    &mut |vlan| release_uplink_vlan(vlan, &cfg.uplink),
                    rec.vlan,
                    &mut out.warnings,
                );
                out.lines.push(format!(
                    "shojictl: unregistered container {} (oci {}); {released}",
                    rec.id, state.id
                ));
            }
        },
        Phase::Create => {
            let Some(a) = parse_annotations(bundle_annotations(&state.bundle)?.as_ref())? else {
                out.lines.push(format!(
                    "shojictl: container oci {} has no {ANNOTATION_VLAN} annotation: not registered",
                    state.id
                ));
                return Ok(out);
            };
            let pid = state
                .pid
                .ok_or_else(|| format!("the OCI state of {} names no pid", state.id))?;
            let start = proc_start_time(pid)
                .ok_or_else(|| format!("process {pid} of container {} is gone", state.id))?;
            let (ifaces, container_gateways) = netns_ifaces(pid)?;
            let facts = ContainerFacts {
                ifaces,
                netns_id: Some(proc_netns(pid)?),
                cgroup_id: proc_cgroup_id(pid)?,
            };
            let spec = build_spec(&a, &facts)?;
            let mut reserved = host_reserved()?;
            reserved.gateways.extend(container_gateways);
            check_reserved(&spec, &reserved)?;
            let peers: Vec<u32> = facts.ifaces.iter().filter_map(|i| i.peer).collect();
            if peers.is_empty() {
                return Err(format!(
                    "container {} has no veth interface whose host side could carry its VLAN",
                    state.id
                ));
            }
            for port in peers {
                set_bridge_vlan(port, a.vlan, &cfg.bridge, &cfg.uplink)?;
            }
            // createRuntime and createContainer may both run the hook: the second replaces.
            let again = read_record(&cfg.state_dir, &state.id)?
                .is_some_and(|r| r.pid == pid && r.start == start && r.id == a.id);
            if again {
                agent.update(&spec).map_err(|e| e.to_string())?;
            } else {
                agent.register(&spec).map_err(|e| e.to_string())?;
            }
            let rec = StateRecord {
                id: a.id,
                vlan: a.vlan,
                pid,
                start,
            };
            write_record(&cfg.state_dir, &state.id, &rec)?;
            out.lines.push(registered_line(&spec, &state.id));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{Addr, Link, IFF_LOOPBACK};
    use std::cell::RefCell;

    const STATE: &str = r#"{"ociVersion":"1.0.2","id":"web-1","status":"creating","pid":4242,"bundle":"/run/bundles/web-1","annotations":{}}"#;

    #[test]
    fn parses_oci_state() {
        let s = parse_state(STATE).unwrap();
        assert_eq!(
            s,
            HookState {
                id: "web-1".into(),
                phase: Phase::Create,
                pid: Some(4242),
                bundle: "/run/bundles/web-1".into()
            }
        );
        let s =
            parse_state(r#"{"ociVersion":"1.0.2","id":"web-1","status":"stopped","bundle":"/b"}"#)
                .unwrap();
        assert_eq!((s.phase, s.pid), (Phase::Stop, None));
        assert_eq!(
            parse_state(r#"{"id":"a","status":"created","pid":1,"bundle":"/b"}"#)
                .unwrap()
                .phase,
            Phase::Create
        );
        // A missing status is not "stopped".
        assert!(parse_state(r#"{"id":"a","bundle":"/b"}"#)
            .unwrap_err()
            .contains("status"));
        assert!(parse_state(r#"{"id":"a","status":"exploded","bundle":"/b"}"#).is_err());
        assert!(parse_state("not json").is_err());
        assert!(parse_state(r#"{"id":"../x","status":"creating","bundle":"/b"}"#).is_err());
        assert!(parse_state(r#"{"id":"a","status":"creating","pid":-5,"bundle":"/b"}"#).is_err());
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations() {
        assert_eq!(parse_annotations(None), Ok(None));
        assert_eq!(parse_annotations(Some(&map(&[("x", "y")]))), Ok(None));
        let a = parse_annotations(Some(&map(&[(ANNOTATION_VLAN, "101")])))
            .unwrap()
            .unwrap();
        assert_eq!((a.id, a.vlan), (101, 101));
        assert_eq!(a.policy, Policy::default());
        let a = parse_annotations(Some(&map(&[
            (ANNOTATION_VLAN, "101"),
            (ANNOTATION_ID, "7"),
            (
                ANNOTATION_POLICY,
                "default_egress = \"deny\"\n[[rule]]\naction = \"allow\"\nprotocol = \"tcp\"\ndst_ports = \"80\"\n",
            ),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(a.id, 7);
        assert_eq!(a.policy.rules.len(), 1);
        for bad in ["1", "4095", "x", ""] {
            let e = parse_annotations(Some(&map(&[(ANNOTATION_VLAN, bad)]))).unwrap_err();
            assert!(e.contains(ANNOTATION_VLAN), "{e}");
        }
        let e = parse_annotations(Some(&map(&[(ANNOTATION_VLAN, "5"), (ANNOTATION_ID, "-1")])))
            .unwrap_err();
        assert!(e.contains(ANNOTATION_ID), "{e}");
        let e = parse_annotations(Some(&map(&[
            (ANNOTATION_VLAN, "5"),
            (ANNOTATION_POLICY, "vlan = 3"),
        ])))
        .unwrap_err();
        assert!(e.contains(ANNOTATION_POLICY) && e.contains("vlan"), "{e}");
    }

    #[test]
    fn reads_bundle_annotations() {
        let dir = temp_dir("bundle");
        std::fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{"org.shoji.vlan":"101"}}"#,
        )
        .unwrap();
        let a = bundle_annotations(&dir).unwrap().unwrap();
        assert_eq!(a.get(ANNOTATION_VLAN).map(String::as_str), Some("101"));
        assert!(bundle_annotations(&dir.join("nope")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ifaces_and_spec() {
        let links = [
            Link {
                index: 1,
                flags: IFF_LOOPBACK,
                name: "lo".into(),
                address: vec![0; 6],
                ..Link::default()
            },
            Link {
                index: 2,
                name: "eth0".into(),
                address: vec![2, 0, 0, 0, 1, 10],
                link: Some(9),
                ..Link::default()
            },
            Link {
                index: 3,
                name: "sit0".into(),
                address: vec![0; 4],
                ..Link::default()
            },
        ];
        let addrs = [
            Addr {
                index: 1,
                prefix: 8,
                address: Ipv4Addr::LOCALHOST,
            },
            Addr {
                index: 2,
                prefix: 24,
                address: Ipv4Addr::new(10, 0, 2, 21),
            },
        ];
        let ifaces = container_ifaces(&links, &addrs);
        assert_eq!(
            ifaces,
            [ContainerIface {
                name: "eth0".into(),
                mac: [2, 0, 0, 0, 1, 10],
                ipv4: vec![Ipv4Addr::new(10, 0, 2, 21)],
                peer: Some(9)
            }]
        );
        let a = HookAnnotations {
            id: 7,
            vlan: 101,
            policy: Policy::default(),
        };
        let facts = ContainerFacts {
            ifaces,
            netns_id: Some(4026532200),
            cgroup_id: Some(1234),
        };
        let spec = build_spec(&a, &facts).unwrap();
        assert_eq!(spec.id, ContainerId(7));
        assert_eq!(spec.netns_id, Some(4026532200));
        assert_eq!(spec.ipv4[0], Ipv4Addr::new(10, 0, 2, 21));
        assert_eq!(
            registered_line(&spec, "web-1"),
            "shojictl: registered container 7 (oci web-1) vlan 101 mac 02:00:00:00:01:0a ip 10.0.2.21"
        );
        let none = ContainerFacts {
            ifaces: vec![],
            netns_id: None,
            cgroup_id: None,
        };
        assert!(build_spec(&a, &none).is_err());
    }

    #[test]
    fn cgroup_path() {
        assert_eq!(
            cgroup_v2_path("0::/system.slice/x.scope\n"),
            Some("/system.slice/x.scope")
        );
        assert_eq!(cgroup_v2_path("1:name=systemd:/\n"), None);
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shojictl-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn state_records_round_trip() {
        let r = StateRecord {
            id: 7,
            vlan: 101,
            pid: 4242,
            start: 98765,
        };
        assert_eq!(StateRecord::parse(&r.to_text()), Ok(r));
        assert!(StateRecord::parse("id=7\nvlan=101\n").is_err());
        assert!(StateRecord::parse("garbage").is_err());
        let dir = temp_dir("records");
        write_record(&dir, "web-1", &r).unwrap();
        assert_eq!(read_record(&dir, "web-1"), Ok(Some(r)));
        assert_eq!(read_record(&dir, "web-2"), Ok(None));
        remove_record(&dir, "web-1").unwrap();
        remove_record(&dir, "web-1").unwrap();
        assert!(write_record(&dir, "../escape", &r).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dead_processes_have_no_start_time() {
        let stat = |state: &str| {
            format!("42 (sh) x) {state} 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 1234 100 0")
        };
        assert_eq!(live_start_time(&stat("S")), Some(1234));
        assert_eq!(live_start_time(&stat("R")), Some(1234));
        assert_eq!(live_start_time(&stat("Z")), None);
        assert_eq!(live_start_time(&stat("X")), None);
        assert_eq!(live_start_time("garbage"), None);
    }

    #[test]
    fn sweep_cleans_only_stale_records() {
        let dir = temp_dir("sweep");
        let rec = |id, pid, start| StateRecord {
            id,
            vlan: 100 + id as u16,
            pid,
            start,
        };
        write_record(&dir, "alive", &rec(1, 10, 100)).unwrap();
        write_record(&dir, "dead", &rec(2, 20, 200)).unwrap();
        write_record(&dir, "reused", &rec(3, 30, 300)).unwrap();
        write_record(&dir, "gone-already", &rec(4, 40, 400)).unwrap();
        write_record(&dir, "current", &rec(5, 50, 500)).unwrap();
        write_record(&dir, "refused", &rec(6, 60, 600)).unwrap();
        std::fs::write(dir.join("broken"), "nonsense").unwrap();
        let alive = |pid: u32| match pid {
            10 => Some(100),
            30 => Some(999), // pid reused by another process
            _ => None,
        };
        let calls = RefCell::new(Vec::new());
        let mut unregister = |id: u32| {
            calls.borrow_mut().push(id);
            let refuse = |s: Status| {
                Err(CallError::Refused {
                    what: format!("unregister container {id}"),
                    status: Some(s),
                    raw: s as u64,
                    detail: None,
                })
            };
            match id {
                4 => refuse(Status::NotFound),
                6 => refuse(Status::NotAuthorized),
                _ => Ok(()),
            }
        };
        let released = RefCell::new(Vec::new());
        let mut release = |vlan: u16| {
            released.borrow_mut().push(vlan);
            match vlan {
                102 => Ok(VlanRelease::Removed),
                104 => Ok(VlanRelease::Absent),
                _ => Err("cannot remove VLAN: Operation not permitted".to_string()),
            }
        };
        let (done, errors) = sweep(&dir, Some("current"), &alive, &mut unregister, &mut release);
        assert_eq!(
            done,
            [
                "shojictl: cleaned up stale registration 2 (oci dead); \
                 VLAN 102 removed from the uplink",
                "shojictl: cleaned up stale registration 4 (oci gone-already); \
                 VLAN 104 was not on the uplink",
                "shojictl: cleaned up stale registration 3 (oci reused); \
                 VLAN 103 not removed from the uplink",
            ]
        );
        // Broken file, refused unregistration, VLAN 103 kept by the kernel.
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[2].contains("VLAN 103 stays on the uplink") && errors[2].contains("permitted"),
            "{errors:?}"
        );
        assert_eq!(*calls.borrow(), [2, 4, 6, 3]);
        // Only unregistered containers give their VLAN back; the refused one keeps it.
        assert_eq!(*released.borrow(), [102, 104, 103]);
        assert!(dir.join("alive").exists());
        assert!(dir.join("current").exists());
        assert!(dir.join("refused").exists());
        assert!(!dir.join("dead").exists());
        assert!(!dir.join("reused").exists());
        // A missing directory is an empty sweep.
        let (d, e) = sweep(
            &dir.join("none"),
            None,
            &alive,
            &mut unregister,
            &mut release,
        );
        assert!(d.is_empty() && e.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod reserved_tests {
    use super::*;

    fn spec(mac: MacAddr, ip: Ipv4Addr) -> ContainerSpec {
        let mut s = ContainerSpec::new(7, 101, mac, ip);
        s.default_egress = shoji_netfilter::rules::Action::Allow;
        s
    }

    #[test]
    fn host_and_gateway_addresses_are_refused_by_name() {
        let r = Reserved {
            macs: vec![[2, 0, 0, 0, 0, 0x15]],
            ipv4: vec![Ipv4Addr::new(10, 0, 2, 15)],
            gateways: vec![Ipv4Addr::new(10, 0, 2, 2)],
        };
        let own = [2, 0, 0, 0, 1, 0x0a];
        assert_eq!(
            check_reserved(&spec(own, Ipv4Addr::new(10, 0, 2, 21)), &r),
            Ok(())
        );
        let e = check_reserved(&spec(own, Ipv4Addr::new(10, 0, 2, 2)), &r).unwrap_err();
        assert!(
            e.starts_with("refusing to register container 7: 10.0.2.2 is a gateway's address"),
            "{e}"
        );
        let e = check_reserved(&spec(own, Ipv4Addr::new(10, 0, 2, 15)), &r).unwrap_err();
        assert!(
            e.contains("10.0.2.15 is one of the host's own addresses"),
            "{e}"
        );
        let e = check_reserved(
            &spec([2, 0, 0, 0, 0, 0x15], Ipv4Addr::new(10, 0, 2, 21)),
            &r,
        )
        .unwrap_err();
        assert!(
            e.contains("MAC 02:00:00:00:00:15 is one of the host's"),
            "{e}"
        );
        // A second address of the container is checked too.
        let mut two = spec(own, Ipv4Addr::new(10, 0, 2, 21));
        two.ipv4.push(Ipv4Addr::new(10, 0, 2, 15)).unwrap();
        assert!(check_reserved(&two, &r).is_err());
    }

    /// The host's own namespace, read for real: its addresses are reserved, so a container
    /// claiming one is refused.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_hosts_own_addresses_are_reserved() {
        let r = host_reserved().unwrap();
        assert!(r.ipv4.contains(&Ipv4Addr::LOCALHOST) || r.ipv4.is_empty());
        if let Some(ip) = r.ipv4.iter().find(|ip| !ip.is_loopback()) {
            assert!(check_reserved(&spec([2, 0, 0, 0, 1, 0x0a], *ip), &r).is_err());
        }
    }
}
