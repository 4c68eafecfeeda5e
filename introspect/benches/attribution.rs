//! Cost of one attribution on a synthetic guest laid out by the real 6.1 / 6.12 profiles.
//!
//! `cargo bench -p shoji-introspect --bench attribution -- --warm-up-time 1 --measurement-time 3`
//! (see docs/kernel-profile.md, "Cost of an attribution")

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shoji_introspect::{CountingMemory, Introspector, PagingMode};

fn bench(c: &mut Criterion) {
    for (name, label) in [("debian12-6.1", "6.1"), ("debian13-6.12", "6.12")] {
        let mut g = Guest::new(fixture(name), PagingMode::Level4);
        let task = g.make_task(&Spec::default());
        g.set_current(task, 0x8000_0200);
        let cpu = g.cpu();
        let mut intro = Introspector::new(g.profile).unwrap();
        intro.learn_direct_map(&g.mem, &cpu, RAM).unwrap();

        // Reads per attribution, counted once.
        let cm = CountingMemory::new(g.mem);
        intro.flush();
        let _ = intro.attribute(&cm, &cpu);
        let (ur, ub) = (cm.reads(), cm.bytes_read());
        cm.reset();
        let _ = intro.attribute(&cm, &cpu);
        let (cr, cb) = (cm.reads(), cm.bytes_read());
        println!(
            "{label}: guest memory reads per attribution: uncached {ur} ({ub} bytes), cached {cr} ({cb} bytes)"
        );
        let mem = cm.inner();

        // `SHOJI_ATTR_LOOP=N`: run N cached then N uncached attributions per profile and exit,
        // for CPU-time measurement with `perf stat -e task-clock` on a loaded machine (wall-clock
        // medians there include time the benchmark spends preempted).
        if let Some(n) = std::env::var("SHOJI_ATTR_LOOP")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            // SHOJI_ATTR_PROFILE=6.1|6.12 picks the profile, SHOJI_ATTR_MODE=cached|uncached.
            if std::env::var("SHOJI_ATTR_PROFILE").is_ok_and(|p| p != label) {
                continue;
            }
            let mode = std::env::var("SHOJI_ATTR_MODE").unwrap_or_default();
            for _ in 0..n {
                if mode == "uncached" {
                    intro.flush();
                }
                black_box(intro.attribute(black_box(mem), black_box(&cpu)));
            }
            std::process::exit(0);
        }

        c.bench_function(&format!("attribute/{label}/cached"), |b| {
            b.iter(|| black_box(intro.attribute(black_box(mem), black_box(&cpu))))
        });
        c.bench_function(&format!("attribute/{label}/uncached"), |b| {
            b.iter(|| {
                intro.flush();
                black_box(intro.attribute(black_box(mem), black_box(&cpu)))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
