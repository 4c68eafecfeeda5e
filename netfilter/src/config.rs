//! Engine-wide settings and the host policy.

use core::net::Ipv4Addr;

use crate::parse::MacAddr;
use crate::rules::{Action, Rule, MAX_RULES};
use crate::scan::ScanConfig;

/// Most MAC or IPv4 addresses the host policy names.
pub const MAX_HOST_ADDRESSES: usize = 8;

/// Where broadcast and multicast frames go besides their obvious destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastScope {
    /// TX: to the wire only (ARP for a container's or the host's address still goes there).
    /// RX: to the host only (ARP for a container's address still goes to that container).
    Wire,
    /// Also a copy to every other container (tagged) and to the host (untagged), each subject to
    /// its ingress policy.
    Everyone,
}

/// Engine settings. Times are in the unit of the time fed to the engine (nanoseconds by
/// convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Where broadcasts and multicasts go.
    pub broadcast: BroadcastScope,
    /// The port-scan detector.
    pub scan: ScanConfig,
    /// How long a fragmented datagram's decision is remembered after its first fragment.
    pub fragment_timeout: u64,
    /// The stated default for a later fragment whose first fragment is unknown.
    pub orphan_fragments: Action,
    /// Whether IPv4 datagrams with a source-route option may pass (else `PolicyDenied`).
    pub allow_source_route: bool,
    /// Record one `DropSample` event every this many drops (0: never).
    pub drop_sample_every: u32,
    /// Whether repeated TX headers take the decision cached for the first one
    /// ([`crate::flow_cache`]); off only to compare against the full path.
    pub flow_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            broadcast: BroadcastScope::Wire,
            scan: ScanConfig::default(),
            fragment_timeout: 30_000_000_000,
            orphan_fragments: Action::Deny,
            allow_source_route: false,
            drop_sample_every: 64,
            flow_cache: true,
        }
    }
}

/// The policy for the host's own frames (untagged on TX; not for any container on RX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// The host's MACs. When non-empty, RX unicast to a MAC that is neither a container's nor
    /// the host's is `NoDestination`; when empty, such frames go to the host.
    pub macs: heapless::Vec<MacAddr, MAX_HOST_ADDRESSES>,
    /// The host's IPv4 addresses (ARP for them from containers is relayed to the host).
    pub ipv4: heapless::Vec<Ipv4Addr, MAX_HOST_ADDRESSES>,
    /// Default for host frames going out.
    pub default_egress: Action,
    /// Default for frames delivered to the host.
    pub default_ingress: Action,
    /// Ordered rules (IPv6 follows the defaults unless a rule says otherwise).
    pub rules: heapless::Vec<Rule, MAX_RULES>,
}

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy {
            macs: heapless::Vec::new(),
            ipv4: heapless::Vec::new(),
            default_egress: Action::Allow,
            default_ingress: Action::Allow,
            rules: heapless::Vec::new(),
        }
    }
}
