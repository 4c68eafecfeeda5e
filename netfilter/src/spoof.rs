//! Spoof checks: does a frame's claimed identity belong to the party its port names?
//!
//! TX from a container: the source MAC, the IPv4 source, and an ARP packet's sender fields must
//! be the container's own; a trusted task identity (cgroup or network namespace) naming another
//! container is a spoof too. TX from the host: the frame must not claim a container's addresses.
//! RX: ARP claiming a registered container's address from a MAC that is not that container's.

use core::net::Ipv4Addr;

use shoji_shared::{DropReason, TaskIdentity};

use crate::parse::{MacAddr, Network, ParsedFrame, Transport};
use crate::registry::Registry;

/// A spoof that was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoofFinding {
    /// `SpoofedMac`, `SpoofedIp`, `SpoofedArp` or `IdentityMismatch`.
    pub reason: DropReason,
    /// Slot of the container the frame claimed to be, if it names a registered one.
    pub claimed: Option<u16>,
    /// The MAC claimed.
    pub mac: MacAddr,
    /// The IPv4 address claimed, if any.
    pub ipv4: Option<Ipv4Addr>,
}

/// The container a trusted task belongs to (by cgroup first, then network namespace).
pub fn task_container(registry: &Registry<'_>, task: &TaskIdentity) -> Option<u16> {
    if !task.is_actor() {
        return None;
    }
    task.cgroup_id
        .and_then(|cg| registry.by_cgroup(cg))
        .or_else(|| task.netns_id.and_then(|ns| registry.by_netns(ns)))
}

fn source_ipv4(frame: &ParsedFrame) -> Option<Ipv4Addr> {
    match frame.network {
        Network::Arp(arp) => Some(arp.sender_ip),
        Network::Ipv4(ip) => Some(ip.src),
        _ => None,
    }
}

/// Whether an unspecified IPv4 source is legitimate: DHCP client traffic (UDP 68 to 67).
fn is_dhcp_client(frame: &ParsedFrame) -> bool {
    matches!(
        frame.network,
        Network::Ipv4(ip) if ip.src.is_unspecified()
            && matches!(ip.transport, Transport::Udp { src_port: 68, dst_port: 67 })
    )
}

/// Check the identity signals of a TX frame: port (`sender`, `None` = host) against the trusted
/// task identity.
pub fn check_identity(
    registry: &Registry<'_>,
    sender: Option<u16>,
    frame: &ParsedFrame,
    task: Option<&TaskIdentity>,
) -> Result<(), SpoofFinding> {
    let Some(task) = task else { return Ok(()) };
    match task_container(registry, task) {
        Some(owner) if Some(owner) != sender => Err(SpoofFinding {
            reason: DropReason::IdentityMismatch,
            claimed: Some(owner),
            mac: frame.src_mac,
            ipv4: source_ipv4(frame),
        }),
        _ => Ok(()),
    }
}

/// Check a TX frame sent from container `slot`'s port.
pub fn check_container_tx(
    registry: &Registry<'_>,
    slot: u16,
    frame: &ParsedFrame,
) -> Result<(), SpoofFinding> {
    let Some(container) = registry.get(slot) else {
        return Ok(());
    };
    let finding = |reason, mac: MacAddr, ipv4: Option<Ipv4Addr>| {
        let claimed = ipv4
            .and_then(|ip| registry.by_ipv4(ip))
            .filter(|s| *s != slot)
            .or_else(|| registry.by_mac(&mac).filter(|s| *s != slot));
        SpoofFinding {
            reason,
            claimed,
            mac,
            ipv4,
        }
    };
    if !container.owns_mac(&frame.src_mac) {
        return Err(finding(
            DropReason::SpoofedMac,
            frame.src_mac,
            source_ipv4(frame),
        ));
    }
    match frame.network {
        Network::Arp(arp) => {
            let ip_ok = arp.sender_ip.is_unspecified() || container.owns_ipv4(arp.sender_ip);
            if arp.sender_mac != frame.src_mac || !ip_ok {
                return Err(finding(
                    DropReason::SpoofedArp,
                    arp.sender_mac,
                    Some(arp.sender_ip),
                ));
            }
        }
        Network::Ipv4(ip) if !container.owns_ipv4(ip.src) && !is_dhcp_client(frame) => {
            return Err(finding(DropReason::SpoofedIp, frame.src_mac, Some(ip.src)));
        }
        _ => {}
    }
    Ok(())
}

/// The first-hop guards for a container's TX frame (always on): a container is never the
/// network's DHCP server or router. Refused: UDP from port 67 (a DHCP server's or relay's
/// answers) and DHCPv6 from port 547 (`RogueDhcp`); IPv6 router advertisements (ICMPv6 134),
/// redirects (ICMPv6 137) and ICMP redirects (type 5) (`RogueRouter`). A container's own DHCP
/// and DHCPv6 client traffic (from ports 68 and 546) and its neighbour discovery pass.
pub fn check_first_hop(frame: &ParsedFrame) -> Result<(), SpoofFinding> {
    let reason = match frame.network {
        Network::Ipv4(ip) => match ip.transport {
            Transport::Udp { src_port: 67, .. } => Some(DropReason::RogueDhcp),
            Transport::Icmp { icmp_type: 5, .. } => Some(DropReason::RogueRouter),
            _ => None,
        },
        Network::Ipv6(ip) => match (ip.icmp_type, ip.udp_src_port) {
            (Some(134 | 137), _) => Some(DropReason::RogueRouter),
            (_, Some(547)) => Some(DropReason::RogueDhcp),
            _ => None,
        },
        _ => None,
    };
    match reason {
        Some(reason) => Err(SpoofFinding {
            reason,
            claimed: None,
            mac: frame.src_mac,
            ipv4: source_ipv4(frame),
        }),
        None => Ok(()),
    }
}

/// Check a TX frame from the host: it must not claim a container's MAC or address.
pub fn check_host_tx(registry: &Registry<'_>, frame: &ParsedFrame) -> Result<(), SpoofFinding> {
    if registry.is_empty() {
        return Ok(());
    }
    if let Some(owner) = registry.by_mac(&frame.src_mac) {
        return Err(SpoofFinding {
            reason: DropReason::SpoofedMac,
            claimed: Some(owner),
            mac: frame.src_mac,
            ipv4: source_ipv4(frame),
        });
    }
    let (reason, mac, ip) = match frame.network {
        Network::Arp(arp) => (DropReason::SpoofedArp, arp.sender_mac, arp.sender_ip),
        Network::Ipv4(ip) => (DropReason::SpoofedIp, frame.src_mac, ip.src),
        _ => return Ok(()),
    };
    let arp_mac_owner = match frame.network {
        Network::Arp(arp) => registry.by_mac(&arp.sender_mac),
        _ => None,
    };
    if let Some(owner) = registry.by_ipv4(ip).or(arp_mac_owner) {
        return Err(SpoofFinding {
            reason,
            claimed: Some(owner),
            mac,
            ipv4: Some(ip),
        });
    }
    Ok(())
}

/// Check an RX frame (from the wire). A container lives inside the guest, so no frame from the
/// wire may claim to come from one: a source MAC or IPv4 source that is a registered container's
/// is a spoof (a sender on the LAN that would otherwise satisfy rules written for that
/// container), and so is ARP whose sender fields name a container's address or MAC.
pub fn check_rx(registry: &Registry<'_>, frame: &ParsedFrame) -> Result<(), SpoofFinding> {
    if let Some(owner) = registry.by_mac(&frame.src_mac) {
        return Err(SpoofFinding {
            reason: DropReason::SpoofedMac,
            claimed: Some(owner),
            mac: frame.src_mac,
            ipv4: source_ipv4(frame),
        });
    }
    let (reason, owner, mac, ipv4) = match frame.network {
        Network::Ipv4(ip) => (
            DropReason::SpoofedIp,
            registry.by_ipv4(ip.src),
            frame.src_mac,
            ip.src,
        ),
        Network::Arp(arp) => (
            DropReason::SpoofedArp,
            registry
                .by_ipv4(arp.sender_ip)
                .or_else(|| registry.by_mac(&arp.sender_mac)),
            arp.sender_mac,
            arp.sender_ip,
        ),
        _ => return Ok(()),
    };
    match owner {
        Some(owner) => Err(SpoofFinding {
            reason,
            claimed: Some(owner),
            mac,
            ipv4: Some(ipv4),
        }),
        None => Ok(()),
    }
}
