//! The management endpoint's settings as the boot application hands them to the hypervisor: plain
//! data in Shoji's setup page (`shoji.cfg` keys `mgmt_*`, parsed by the boot application).

/// Most `mgmt_allow` entries.
pub const MAX_ALLOW: usize = 8;

/// An IPv4 network: address and prefix length.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cidr {
    /// The address (network order bytes).
    pub addr: [u8; 4],
    /// The prefix length, 0..=32.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: [u8; 4]) -> bool {
        let mask = match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        };
        u32::from_be_bytes(ip) & mask == u32::from_be_bytes(self.addr) & mask
    }

    /// Parse `a.b.c.d/len` (or a bare address, /32).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (a, p) = match text.split_once('/') {
            Some((a, p)) => (a, p),
            None => (text, "32"),
        };
        // Digits only (`u8::from_str` would take a `+`); the empty string fails to parse.
        if p.len() > 2 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = p.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        Some(Cidr {
            addr: parse_ipv4(a)?,
            prefix,
        })
    }
}

/// Parse a dotted-quad IPv4 address (four decimal parts, no leading `+`, each 0..=255).
pub fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        if p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Settings of the management endpoint.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// 1 when `mgmt_ip` is set (the endpoint runs), else 0.
    pub enabled: u8,
    /// 1 when `/metrics` needs a signature too (`mgmt_metrics_auth = true`).
    pub metrics_auth: u8,
    /// 1 when `key` holds the admin key.
    pub key_set: u8,
    /// 1 when `gateway` is set.
    pub gateway_set: u8,
    /// Valid entries in `allow` (0: every source may connect).
    pub allow_count: u8,
    /// Shoji's address and prefix length on the shared segment.
    pub ip: Cidr,
    /// The default gateway for answers to sources outside `ip`'s network.
    pub gateway: [u8; 4],
    /// Shoji's MAC address (unicast).
    pub mac: [u8; 6],
    /// The TCP port of the HTTP server.
    pub port: u16,
    /// The networks allowed to connect.
    pub allow: [Cidr; MAX_ALLOW],
    /// The admin key (meaningful when `key_set`).
    pub key: [u8; 32],
    /// This boot's id (random, drawn by the boot application).
    pub boot_id: [u8; 16],
}

impl core::fmt::Debug for Settings {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the key.
        f.debug_struct("Settings")
            .field("enabled", &self.enabled)
            .field("ip", &self.ip)
            .field("mac", &self.mac)
            .field("port", &self.port)
            .field("key_set", &self.key_set)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Whether `source` may connect.
    pub fn allowed(&self, source: [u8; 4]) -> bool {
        let n = usize::from(self.allow_count).min(MAX_ALLOW);
        n == 0 || self.allow[..n].iter().any(|c| c.contains(source))
    }

    /// The admin key, if set.
    pub fn key(&self) -> Option<[u8; 32]> {
        (self.key_set != 0).then_some(self.key)
    }

    /// A locally administered unicast MAC derived from the NIC's own `nic`: the NIC's address
    /// with the locally-administered bit set and the last byte's high bit flipped, so it differs
    /// from the NIC's address and from the guest's (which uses the NIC's).
    pub fn derived_mac(nic: [u8; 6]) -> [u8; 6] {
        let mut m = nic;
        m[0] = (m[0] | 0x02) & !0x01;
        m[5] ^= 0x80;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.2.0/24").unwrap();
        assert!(c.contains([10, 0, 2, 99]));
        assert!(!c.contains([10, 0, 3, 1]));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains([1, 2, 3, 4]));
        assert_eq!(
            Cidr::parse("192.168.100.200/16"),
            Some(Cidr {
                addr: [192, 168, 100, 200],
                prefix: 16
            })
        );
        let host = Cidr::parse("10.0.2.2").unwrap();
        assert_eq!(host.prefix, 32);
        assert!(host.contains([10, 0, 2, 2]) && !host.contains([10, 0, 2, 3]));
        for bad in [
            "10.0.2.0/33",
            "10.0.2/24",
            "10.0.2.256/24",
            "10.0.2.0/",
            "10.0.2.0/+4",
            "a.b.c.d",
            "10.0.2.1.5",
            "10.0.2.0001/24",
            "10.0.2.0/001",
            "",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn allow_list() {
        let mut s = Settings::default();
        assert!(s.allowed([192, 168, 1, 1]), "empty list: everyone");
        s.allow[0] = Cidr::parse("10.0.2.2/32").unwrap();
        s.allow_count = 1;
        assert!(s.allowed([10, 0, 2, 2]));
        assert!(!s.allowed([10, 0, 2, 3]));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = Settings {
            key: [0xab; 32],
            key_set: 1,
            ..Settings::default()
        };
        let d = std::format!("{s:?}");
        assert!(d.contains("key_set: 1") && !d.contains("171"), "{d}");
    }

    extern crate std;

    #[test]
    fn derived_mac_is_local_unicast_and_differs() {
        let nic = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let m = Settings::derived_mac(nic);
        assert_eq!(m[0] & 0x03, 0x02);
        assert_ne!(m, nic);
        assert_eq!(
            Settings::derived_mac([0x01, 0, 0, 0, 0, 0x80])[..],
            [0x02, 0, 0, 0, 0, 0]
        );
    }
}
