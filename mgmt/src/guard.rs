//! Which frames belong to Shoji's management address, in each direction.
//!
//! Receive: a frame for Shoji's MAC, or an ARP packet asking for (or announcing) Shoji's IPv4
//! address, is Shoji's and never reaches the guest. Transmit: the guest may not speak as Shoji:
//! a frame with Shoji's MAC as source, an ARP packet with Shoji's IPv4 address as sender, or IPv4
//! from Shoji's address is refused (the guest's own spoof of Shoji, counted by reason).

use shoji_shared::DropReason as Reason;

const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;

/// Where a received frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxClass {
    /// Not Shoji's: the guest's path as before.
    Guest,
    /// Shoji's: the management interface takes it; the guest never sees it.
    Shoji,
}

/// Shoji's management addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Shoji's MAC.
    pub mac: [u8; 6],
    /// Shoji's IPv4 address.
    pub ip: [u8; 4],
}

/// The ethertype and the offset of the payload after any one 802.1Q tag.
fn ethertype(frame: &[u8]) -> Option<(u16, usize)> {
    let be16 = |at: usize| Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    match be16(12)? {
        ETHERTYPE_VLAN => Some((be16(16)?, 18)),
        t => Some((t, 14)),
    }
}

impl Guard {
    /// Classify a frame from the wire.
    pub fn rx(&self, frame: &[u8]) -> RxClass {
        if frame.get(0..6) == Some(&self.mac[..]) {
            return RxClass::Shoji;
        }
        match ethertype(frame) {
            // ARP: target protocol address at payload offset 24 (Ethernet/IPv4 ARP).
            Some((ETHERTYPE_ARP, at)) if frame.get(at + 24..at + 28) == Some(&self.ip[..]) => {
                RxClass::Shoji
            }
            _ => RxClass::Guest,
        }
    }

    /// Check a frame the guest transmits: `Some(reason)` when it claims Shoji's addresses.
    pub fn tx(&self, frame: &[u8]) -> Option<Reason> {
        if frame.get(6..12) == Some(&self.mac[..]) {
            return Some(Reason::SpoofedMac);
        }
        match ethertype(frame)? {
            // ARP sender protocol address at payload offset 14.
            (ETHERTYPE_ARP, at) if frame.get(at + 14..at + 18) == Some(&self.ip[..]) => {
                Some(Reason::SpoofedArp)
            }
            // IPv4 source address at payload offset 12.
            (ETHERTYPE_IPV4, at) if frame.get(at + 12..at + 16) == Some(&self.ip[..]) => {
                Some(Reason::SpoofedIp)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    const G: Guard = Guard {
        mac: [0x02, 0, 0, 0, 0, 9],
        ip: [10, 0, 2, 9],
    };
    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

    fn eth(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        if let Some(v) = vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&ty.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn arp(sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
        let mut p = Vec::from([0, 1, 8, 0, 6, 4, 0, 1]);
        p.extend_from_slice(&GUEST_MAC);
        p.extend_from_slice(&sender_ip);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&target_ip);
        p
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = Vec::from([0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p
    }

    #[test]
    fn rx_takes_what_is_shojis() {
        let bcast = [0xff; 6];
        assert_eq!(
            G.rx(&eth(
                G.mac,
                GUEST_MAC,
                None,
                0x0800,
                &ipv4([10, 0, 2, 2], G.ip)
            )),
            RxClass::Shoji
        );
        assert_eq!(
            G.rx(&eth(
                bcast,
                GUEST_MAC,
                None,
                0x0806,
                &arp([10, 0, 2, 2], G.ip)
            )),
            RxClass::Shoji
        );
        assert_eq!(
            G.rx(&eth(
                bcast,
                GUEST_MAC,
                Some(5),
                0x0806,
                &arp([10, 0, 2, 2], G.ip)
            )),
            RxClass::Shoji
        );
        // ARP for the guest, IPv4 to the guest's MAC, broadcast IPv4: the guest's.
        assert_eq!(
            G.rx(&eth(
                bcast,
                GUEST_MAC,
                None,
                0x0806,
                &arp([10, 0, 2, 2], [10, 0, 2, 15])
            )),
            RxClass::Guest
        );
        assert_eq!(
            G.rx(&eth(
                GUEST_MAC,
                G.mac,
                None,
                0x0800,
                &ipv4(G.ip, [10, 0, 2, 15])
            )),
            RxClass::Guest
        );
        assert_eq!(
            G.rx(&eth(
                bcast,
                GUEST_MAC,
                None,
                0x0800,
                &ipv4([10, 0, 2, 2], G.ip)
            )),
            RxClass::Guest
        );
        // Short and odd frames never panic.
        for n in 0..40 {
            let f = eth(bcast, GUEST_MAC, None, 0x0806, &arp([1; 4], G.ip));
            let _ = G.rx(&f[..n.min(f.len())]);
            let _ = G.tx(&f[..n.min(f.len())]);
        }
        assert_eq!(G.rx(&G.mac[..5]), RxClass::Guest);
    }

    #[test]
    fn tx_refuses_speaking_as_shoji() {
        let peer = [0x52, 0x54, 0, 0, 0, 2];
        assert_eq!(
            G.tx(&eth(
                peer,
                G.mac,
                None,
                0x0800,
                &ipv4([10, 0, 2, 15], [10, 0, 2, 2])
            )),
            Some(Reason::SpoofedMac)
        );
        assert_eq!(
            G.tx(&eth(
                [0xff; 6],
                GUEST_MAC,
                None,
                0x0806,
                &arp(G.ip, [10, 0, 2, 2])
            )),
            Some(Reason::SpoofedArp)
        );
        assert_eq!(
            G.tx(&eth(
                peer,
                GUEST_MAC,
                None,
                0x0800,
                &ipv4(G.ip, [10, 0, 2, 2])
            )),
            Some(Reason::SpoofedIp)
        );
        assert_eq!(
            G.tx(&eth(
                peer,
                GUEST_MAC,
                Some(101),
                0x0800,
                &ipv4(G.ip, [10, 0, 2, 2])
            )),
            Some(Reason::SpoofedIp)
        );
        // The guest's own traffic, also to Shoji's address, is not a spoof.
        assert_eq!(
            G.tx(&eth(
                G.mac,
                GUEST_MAC,
                None,
                0x0800,
                &ipv4([10, 0, 2, 15], G.ip)
            )),
            None
        );
        assert_eq!(
            G.tx(&eth(
                [0xff; 6],
                GUEST_MAC,
                None,
                0x0806,
                &arp([10, 0, 2, 15], G.ip)
            )),
            None
        );
        // An IPv6 frame carrying Shoji's IPv4 bytes at the IPv4 source offset is not IPv4.
        assert_eq!(
            G.tx(&eth(peer, GUEST_MAC, None, 0x86dd, &ipv4(G.ip, G.ip))),
            None
        );
    }
}
