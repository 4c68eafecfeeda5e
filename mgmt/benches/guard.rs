//! What the management guard costs every guest frame while the endpoint is configured and no
//! management traffic flows: one receive classification and one transmit check of an ordinary
//! UDP frame (neither is Shoji's), the two calls the NIC's paths make per frame.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shoji_mgmt::Guard;

/// A 64-byte UDP frame between two other hosts of the segment.
fn udp_frame() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x57]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 2, 15]);
    f[30..34].copy_from_slice(&[10, 0, 2, 2]);
    f
}

fn guard(c: &mut Criterion) {
    let g = Guard {
        mac: [0x02, 0x54, 0, 0x12, 0x34, 0xd6],
        ip: [10, 0, 2, 9],
    };
    let f = udp_frame();
    c.bench_function("guard_rx_guest_frame", |b| b.iter(|| g.rx(black_box(&f))));
    c.bench_function("guard_tx_guest_frame", |b| b.iter(|| g.tx(black_box(&f))));
}

criterion_group!(benches, guard);
criterion_main!(benches);
