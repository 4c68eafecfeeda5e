//! `shojictl::netlink` against the running kernel, checked with independent witnesses:
//! `/sys/class/net` for the dumps, and `ip`/`bridge` (iproute2) for the bridge VLAN requests.
//! The dump test needs no privilege; the VLAN test needs root (to create a network namespace)
//! and says on stderr when, and why, it skips.

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::process::{Command, Output};

use shojictl::netlink::{
    errno_text, BridgeVlanInfoFlags, Socket, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED,
};

/// `aa:bb:...` as `/sys/class/net/*/address` writes it.
fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// name -> (ifindex, address) of the interfaces `/sys/class/net` lists.
fn sysfs_interfaces() -> BTreeMap<String, (u32, String)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        // Skips files such as bonding_masters: an interface has an ifindex.
        let Ok(index) = std::fs::read_to_string(path.join("ifindex")) else {
            continue;
        };
        let address = std::fs::read_to_string(path.join("address")).unwrap_or_default();
        out.insert(
            entry.file_name().to_string_lossy().into_owned(),
            (index.trim().parse().unwrap(), address.trim().to_string()),
        );
    }
    out
}

#[test]
fn dumps_the_current_namespace() {
    let mut sock = Socket::open().expect("open a NETLINK_ROUTE socket");
    let links = sock.links().expect("dump links");
    let addrs = sock.ipv4_addrs().expect("dump IPv4 addresses");
    // A second dump on the same socket works too (sequence numbers, no leftovers).
    assert_eq!(sock.links().expect("dump links again"), links);

    let lo = links
        .iter()
        .find(|l| l.name == "lo")
        .expect("no lo in the link dump");
    assert_eq!(lo.index, 1);
    assert!(lo.is_loopback());
    assert_eq!(links.iter().filter(|l| l.is_loopback()).count(), 1);
    if lo.flags & libc::IFF_UP as u32 != 0 {
        assert!(
            addrs.iter().any(|a| a.index == 1
                && a.prefix == 8
                && a.address == std::net::Ipv4Addr::LOCALHOST),
            "127.0.0.1/8 is not among {addrs:?}"
        );
    } else {
        eprintln!("lo is down in this namespace: the 127.0.0.1/8 check was skipped");
    }
    for a in &addrs {
        assert!(
            links.iter().any(|l| l.index == a.index),
            "{a:?} is on no link"
        );
    }

    // The same interfaces, indexes and addresses as sysfs (an independent source, provided
    // /sys was mounted from this network namespace).
    let sys = sysfs_interfaces();
    if sys.is_empty() {
        eprintln!("/sys/class/net lists nothing: the sysfs cross-check was skipped");
        return;
    }
    let ours: BTreeMap<String, (u32, String)> = links
        .iter()
        .map(|l| (l.name.clone(), (l.index, colon_hex(&l.address))))
        .collect();
    assert_eq!(
        ours, sys,
        "rtnetlink (left) and /sys/class/net (right) disagree"
    );
}

/// Whether this process is root.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Run `args` and insist it works.
fn must(program: &str, args: &[&str]) {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace made by `ip netns add`, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Netns, String> {
        let name = format!("shojictl-nl-{}", std::process::id());
        let out = run("ip", &["netns", "add", &name]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Netns(name))
    }

    /// `ip -n NS args...`, which must work.
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.0];
        all.extend(args);
        must("ip", &all);
    }

    /// `bridge args...` inside the namespace.
    fn bridge(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.0, "bridge"];
        all.extend(args);
        run("ip", &all)
    }

    /// Run `f` on a thread that has entered the namespace.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("open the netns");
        std::thread::spawn(move || {
            // SAFETY: `file` is an open network-namespace file; setns changes only this
            // thread's namespace, and the thread ends after `f`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the netns thread panicked")
    }

    /// VLAN id -> flags (as `bridge -j vlan show` names them) of `dev`.
    fn vlans(&self, dev: &str) -> BTreeMap<u64, Vec<String>> {
        let out = self.bridge(&["-j", "vlan", "show", "dev", dev]);
        assert!(out.status.success(), "bridge -j vlan show: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bridge's JSON");
        let mut vlans = BTreeMap::new();
        for port in json.as_array().into_iter().flatten() {
            if port["ifname"] != dev {
                continue;
            }
            for v in port["vlans"].as_array().into_iter().flatten() {
                let flags = v["flags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect();
                vlans.insert(v["vlan"].as_u64().expect("vlan id"), flags);
            }
        }
        vlans
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `strerror` of a positive errno, as iproute2 prints it.
fn strerror(e: i32) -> String {
    let text = std::io::Error::from_raw_os_error(e).to_string();
    text.split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Add and delete a bridge VLAN with `Socket::bridge_vlan` in a namespace of its own, checking
/// each step with `bridge -j vlan show`, and that a refusal is the one `bridge` itself gets.
#[test]
fn bridge_vlan_end_to_end() {
    if !is_root() {
        eprintln!("bridge_vlan_end_to_end: SKIPPED (needs root to create a network namespace)");
        return;
    }
    if run("bridge", &["-V"]).status.code() != Some(0) {
        eprintln!("bridge_vlan_end_to_end: SKIPPED (no iproute2 `bridge` to check against)");
        return;
    }
    let ns = match Netns::new() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("bridge_vlan_end_to_end: SKIPPED (ip netns add failed: {e})");
            return;
        }
    };
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    ns.ip(&["link", "set", "veth0", "master", "br0"]);
    for dev in ["br0", "veth0", "veth1"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    // Fails on kernels built without CONFIG_BRIDGE_VLAN_FILTERING; then the kernel refuses
    // VLAN requests, which is checked below.
    let filtering = run(
        "ip",
        &[
            "-n",
            &ns.0,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ],
    )
    .status
    .success();

    let (links, added) = ns.enter(|| {
        let mut sock = Socket::open().expect("open a socket in the namespace");
        let links = sock.links().expect("dump links");
        let veth0 = links.iter().find(|l| l.name == "veth0").expect("veth0");
        let added = sock.bridge_vlan(
            true,
            veth0.index,
            101,
            BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED,
        );
        (links, added)
    });
    let by_name = |n: &str| links.iter().find(|l| l.name == n).unwrap().clone();
    let (br0, veth0, veth1) = (by_name("br0"), by_name("veth0"), by_name("veth1"));
    assert_eq!(veth0.master, Some(br0.index));
    assert_eq!(
        (veth0.link, veth1.link),
        (Some(veth1.index), Some(veth0.index))
    );
    let port = veth0.index;

    if let Err(e) = added {
        // The kernel refused: `bridge` must be refused the same way.
        let out = ns.bridge(&[
            "vlan", "add", "dev", "veth0", "vid", "101", "pvid", "untagged",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&strerror(e)),
            "we got {}, bridge got {stderr:?}",
            errno_text(e)
        );
        assert!(
            !filtering,
            "VLAN filtering is on, yet adding a VLAN failed: {}",
            errno_text(e)
        );
        eprintln!(
            "bridge_vlan_end_to_end: this kernel has no bridge VLAN filtering; checked only that \
             the kernel refuses our request as it refuses `bridge` ({}); the VLAN state checks \
             were SKIPPED",
            errno_text(e)
        );
        return;
    }
    let vlans = ns.vlans("veth0");
    let flags = vlans
        .get(&101)
        .unwrap_or_else(|| panic!("VLAN 101 missing: {vlans:?}"));
    assert!(
        flags.iter().any(|f| f == "PVID") && flags.iter().any(|f| f == "Egress Untagged"),
        "VLAN 101 flags: {flags:?}"
    );

    let deleted = ns.enter(move || {
        Socket::open()
            .unwrap()
            .bridge_vlan(false, port, 101, BridgeVlanInfoFlags::empty())
    });
    assert_eq!(deleted, Ok(()));
    let vlans = ns.vlans("veth0");
    assert!(!vlans.contains_key(&101), "VLAN 101 still there: {vlans:?}");

    // Deleting it again: whatever the kernel answers `bridge` (ENOENT on kernels that report
    // it), it answers us.
    let again = ns.enter(move || {
        Socket::open()
            .unwrap()
            .bridge_vlan(false, port, 101, BridgeVlanInfoFlags::empty())
    });
    let out = ns.bridge(&["vlan", "del", "dev", "veth0", "vid", "101"]);
    match again {
        Ok(()) => assert!(out.status.success(), "bridge: {out:?}"),
        Err(e) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains(&strerror(e)),
                "we got {}, bridge got {stderr:?}",
                errno_text(e)
            );
        }
    }
    eprintln!("bridge_vlan_end_to_end: deleting an absent VLAN gives {again:?}");
}
