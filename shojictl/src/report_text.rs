//! The text lines of `shojictl stats` and `shojictl events`.

use std::fmt::Write;

use shoji_netfilter::events::{Event, EventKind};
use shoji_netfilter::report::CountersView;
use shoji_netfilter::Counters;
use shoji_shared::{Direction, DropReason};

use crate::policy_file::format_mac;

fn counters_fields(c: &Counters) -> String {
    let mut s = format!(
        "tx={} tx_bytes={} rx={} rx_bytes={} relayed={} dropped={}",
        c.tx_passed,
        c.tx_bytes,
        c.rx_passed,
        c.rx_bytes,
        c.relayed,
        c.total_drops()
    );
    for r in DropReason::ALL {
        let n = c.dropped(r);
        if n != 0 {
            let _ = write!(s, " {}={n}", r.name());
        }
    }
    s
}

/// The `stats` lines of a snapshot: host, total, unattributed, then one per container.
pub fn stats_lines(view: &CountersView<'_>) -> Vec<String> {
    let mut lines = vec![
        format!("stats host {}", counters_fields(&view.host())),
        format!("stats total {}", counters_fields(&view.total())),
        format!(
            "stats unattributed {}",
            counters_fields(&view.unattributed())
        ),
    ];
    for c in view.containers() {
        lines.push(format!(
            "stats container id={} vlan={} {}",
            c.id.0,
            c.vlan,
            counters_fields(&c.counters)
        ));
    }
    lines
}

/// One `event ...` line.
pub fn event_line(e: &Event) -> String {
    let mut s = format!("event seq={} time={}", e.seq, e.time);
    match e.kind {
        EventKind::Spoof {
            reason,
            direction,
            sender,
            claimed,
            mac,
            ipv4,
        } => {
            let _ = write!(
                s,
                " spoof reason={} dir={}",
                reason.name(),
                direction.name()
            );
            match (sender, direction) {
                (Some(id), _) => {
                    let _ = write!(s, " sender={}", id.0);
                }
                // Untagged TX is the host's; RX without a sender came from the wire.
                (None, Direction::Tx) => s.push_str(" sender=host"),
                (None, Direction::Rx) => {}
            }
            if let Some(id) = claimed {
                let _ = write!(s, " claimed={}", id.0);
            }
            let _ = write!(s, " mac={}", format_mac(&mac));
            if let Some(ip) = ipv4 {
                let _ = write!(s, " ip={ip}");
            }
        }
        EventKind::OutboundScan {
            container,
            distinct_ports,
            distinct_hosts,
            blocked_until,
        } => {
            let _ = write!(
                s,
                " outbound-scan container={} ports={distinct_ports} hosts={distinct_hosts} blocked_until={blocked_until}",
                container.0
            );
        }
        EventKind::InboundScan {
            source,
            distinct_ports,
            distinct_hosts,
            blocked_until,
        } => {
            let _ = write!(
                s,
                " inbound-scan source={source} ports={distinct_ports} hosts={distinct_hosts}"
            );
            if let Some(t) = blocked_until {
                let _ = write!(s, " blocked_until={t}");
            }
        }
        EventKind::Policy { container, change } => {
            let _ = write!(s, " policy change={}", change.name());
            if let Some(id) = container {
                let _ = write!(s, " container={}", id.0);
            }
        }
        EventKind::DropSample {
            container,
            direction,
            reason,
        } => {
            let _ = write!(s, " drop reason={} dir={}", reason.name(), direction.name());
            if let Some(id) = container {
                let _ = write!(s, " container={}", id.0);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoji_netfilter::events::PolicyChange;
    use shoji_netfilter::report::{counters_len, encode_counters};
    use shoji_netfilter::EngineCounters;
    use shoji_shared::ContainerId;
    use std::net::Ipv4Addr;

    #[test]
    fn stats_lines_name_nonzero_reasons() {
        let mut host = Counters::ZERO;
        host.count_tx(60);
        host.count_drop(DropReason::Truncated);
        let engine = EngineCounters {
            host,
            unattributed: Counters::ZERO,
            total: host,
        };
        let mut c = Counters::ZERO;
        c.count_drop(DropReason::SpoofedArp);
        c.count_drop(DropReason::SpoofedArp);
        c.count_rx(100);
        let mut out = vec![0u8; counters_len(1)];
        encode_counters(&engine, [(ContainerId(1), 101, &c)].into_iter(), &mut out).unwrap();
        let view = CountersView::parse(&out).unwrap();
        let lines = stats_lines(&view);
        assert_eq!(
            lines,
            [
                "stats host tx=1 tx_bytes=60 rx=0 rx_bytes=0 relayed=0 dropped=1 truncated=1",
                "stats total tx=1 tx_bytes=60 rx=0 rx_bytes=0 relayed=0 dropped=1 truncated=1",
                "stats unattributed tx=0 tx_bytes=0 rx=0 rx_bytes=0 relayed=0 dropped=0",
                "stats container id=1 vlan=101 tx=0 tx_bytes=0 rx=1 rx_bytes=100 relayed=0 dropped=2 spoofed_arp=2",
            ]
        );
    }

    #[test]
    fn event_lines() {
        let ev = |kind| Event {
            seq: 3,
            time: 42,
            kind,
        };
        assert_eq!(
            event_line(&ev(EventKind::Spoof {
                reason: DropReason::SpoofedArp,
                direction: Direction::Tx,
                sender: Some(ContainerId(1)),
                claimed: Some(ContainerId(2)),
                mac: [2, 0, 0, 0, 1, 0x0a],
                ipv4: Some(Ipv4Addr::new(10, 0, 2, 22)),
            })),
            "event seq=3 time=42 spoof reason=spoofed_arp dir=tx sender=1 claimed=2 mac=02:00:00:00:01:0a ip=10.0.2.22"
        );
        assert_eq!(
            event_line(&ev(EventKind::Spoof {
                reason: DropReason::SpoofedMac,
                direction: Direction::Tx,
                sender: None,
                claimed: None,
                mac: [2, 0, 0, 0, 1, 0x0a],
                ipv4: None,
            })),
            "event seq=3 time=42 spoof reason=spoofed_mac dir=tx sender=host mac=02:00:00:00:01:0a"
        );
        assert_eq!(
            event_line(&ev(EventKind::Policy {
                container: Some(ContainerId(7)),
                change: PolicyChange::Registered
            })),
            "event seq=3 time=42 policy change=registered container=7"
        );
        assert_eq!(
            event_line(&ev(EventKind::DropSample {
                container: Some(ContainerId(7)),
                direction: Direction::Rx,
                reason: DropReason::PolicyDenied
            })),
            "event seq=3 time=42 drop reason=policy_denied dir=rx container=7"
        );
        assert_eq!(
            event_line(&ev(EventKind::OutboundScan {
                container: ContainerId(7),
                distinct_ports: 30,
                distinct_hosts: 1,
                blocked_until: 99
            })),
            "event seq=3 time=42 outbound-scan container=7 ports=30 hosts=1 blocked_until=99"
        );
        assert_eq!(
            event_line(&ev(EventKind::InboundScan {
                source: Ipv4Addr::new(192, 0, 2, 1),
                distinct_ports: 30,
                distinct_hosts: 2,
                blocked_until: None
            })),
            "event seq=3 time=42 inbound-scan source=192.0.2.1 ports=30 hosts=2"
        );
    }
}
