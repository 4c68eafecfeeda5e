//! Attribution on synthetic guests laid out by the real Debian 12 (6.1) and Debian 13 (6.12)
//! profiles.

mod common;

use common::*;
use proptest::prelude::*;
use shoji_introspect::{CountingMemory, CpuState, Introspector, PagingMode};
use shoji_shared::profile::{CurrentTask, FieldId, KernelProfile, ENCODED_LEN, PF_KTHREAD};
use shoji_shared::{ExecContext, GuestMemory, TaskIdentity};

const PROFILES: [&str; 2] = ["debian12-6.1", "debian13-6.12"];

fn setup(name: &str, mode: PagingMode, spec: &Spec) -> (Guest, Introspector, u64) {
    let mut g = Guest::new(fixture(name), mode);
    let task = g.make_task(spec);
    g.set_current(task, 0x8000_0000 | 0x200); // NEED_RESCHED clear (inverted) + bh disabled
    let mut intro = Introspector::new(g.profile).unwrap();
    intro.learn_direct_map(&g.mem, &g.cpu(), RAM).unwrap();
    (g, intro, task)
}

fn check(id: &TaskIdentity, s: &Spec, task: u64) {
    assert_eq!(id.task, task);
    assert_eq!(id.pid, Some(s.pid));
    assert_eq!(id.tgid, Some(s.tgid));
    assert_eq!(id.pid_local, Some(s.pid_local));
    assert_eq!(id.tgid_local, Some(s.tgid_local));
    assert_eq!(id.pgid, Some(s.pgid));
    assert_eq!(id.uid, Some(s.uid));
    assert_eq!(id.euid, Some(s.euid));
    assert_eq!(id.userns_id, Some(s.userns));
    assert_eq!(id.netns_id, Some(s.netns));
    assert_eq!(id.pidns_id, Some(s.pidns));
    assert_eq!(id.cgroup_id, Some(s.cgroup));
    assert_eq!(id.start_time, Some(s.start));
    assert_eq!(id.exe_inode, Some(s.exe));
    assert_eq!(id.comm, Some(s.comm));
}

#[test]
fn fixtures_are_the_expected_layouts() {
    let p61 = fixture("debian12-6.1");
    let p612 = fixture("debian13-6.12");
    // 6.1: per-cpu current_task and __preempt_count; 6.12: pcpu_hot.{current_task,preempt_count}.
    assert_eq!(p61.current, CurrentTask::PerCpu { offset: 0x1fb80 });
    assert_eq!(p61.preempt_offset, Some(0x1fb40));
    assert_eq!(p612.current, CurrentTask::PerCpu { offset: 0x351c0 });
    assert_eq!(p612.preempt_offset, Some(0x351c8));
    assert_ne!(p61.fingerprint, p612.fingerprint);
    assert!(p61.release_str().starts_with("6.1."));
    assert!(p612.release_str().starts_with("6.12."));
}

#[test]
fn full_identity_both_kernels_both_paging_modes() {
    for name in PROFILES {
        for mode in [PagingMode::Level4, PagingMode::Level5] {
            let s = Spec::default();
            let (g, mut intro, task) = setup(name, mode, &s);
            let id = intro.attribute(&g.mem, &g.cpu());
            check(&id, &s, task);
            assert_eq!(id.uid_local, Some(0), "{name} {mode:?}");
            assert_eq!(id.context, ExecContext::Task);
            assert!(id.is_actor());
        }
    }
}

#[test]
fn cpl3_uses_kernel_gs_base() {
    for name in PROFILES {
        let s = Spec::default();
        let (g, mut intro, task) = setup(name, PagingMode::Level4, &s);
        let mut cpu = g.cpu();
        cpu.cpl = 3;
        cpu.kernel_gs_base = cpu.gs_base;
        cpu.gs_base = 0x7f00_1234_0000; // the user's FS/GS-style base
        let id = intro.attribute(&g.mem, &cpu);
        check(&id, &s, task);
    }
}

#[test]
fn contexts_from_preempt_count_and_flags() {
    for name in PROFILES {
        let s = Spec::default();
        let (mut g, mut intro, _) = setup(name, PagingMode::Level4, &s);
        for (pc, want) in [
            (0x8000_0000, ExecContext::Task),
            (0x0000_0000, ExecContext::Task), // NEED_RESCHED pending: bit 31 clear
            (0x8000_0200, ExecContext::Task), // bottom halves disabled in dev_queue_xmit
            (0x8000_0100, ExecContext::SoftIrq),
            (0x8000_0300, ExecContext::SoftIrq),
            (0x8001_0000, ExecContext::HardIrq),
            (0x8010_0000, ExecContext::HardIrq), // NMI
        ] {
            g.set_preempt(pc);
            assert_eq!(
                intro.attribute(&g.mem, &g.cpu()).context,
                want,
                "{name} {pc:#x}"
            );
        }
        // A kernel thread: PF_KTHREAD, no mm.
        let k = Spec {
            flags: PF_KTHREAD | 0x40,
            has_mm: false,
            ..Spec::default()
        };
        let kt = g.make_task(&k);
        g.set_current(kt, 0x8000_0000);
        let id = intro.attribute(&g.mem, &g.cpu());
        assert_eq!(id.context, ExecContext::KernelThread);
        assert_eq!(id.exe_inode, None);
        assert_eq!(id.pid, Some(k.pid));
    }
}

#[test]
fn senders_are_read_in_full_only_in_their_own_context() {
    for name in PROFILES {
        let s = Spec::default();
        let (mut g, mut intro, _) = setup(name, PagingMode::Level4, &s);
        for pc in [0x8000_0000, 0x8000_0200] {
            g.set_preempt(pc);
            let cpu = g.cpu();
            assert_eq!(
                intro.attribute_sender(&g.mem, &cpu),
                intro.attribute(&g.mem, &cpu),
                "{name} {pc:#x}"
            );
        }
        for (pc, want) in [
            (0x8000_0100, ExecContext::SoftIrq),
            (0x8001_0000, ExecContext::HardIrq),
        ] {
            let (mut g, mut intro, _) = setup(name, PagingMode::Level4, &s);
            g.set_preempt(pc);
            let cpu = g.cpu();
            let cm = CountingMemory::new(g.mem);
            let id = intro.attribute_sender(&cm, &cpu);
            assert_eq!(id.context, want, "{name} {pc:#x}");
            assert!(!id.is_actor());
            assert_eq!(
                (id.pid, id.uid, id.cgroup_id, id.netns_id),
                (None, None, None, None)
            );
            assert_eq!(cm.reads(), 1, "{name}: only the per-CPU window is read");
        }
    }
}

#[test]
fn interrupt_context_is_told_from_one_read_of_the_preempt_count() {
    for name in PROFILES {
        let s = Spec::default();
        for (pc, want) in [
            (0x8000_0000, None),
            (0x8000_0200, None), // bottom halves disabled in the sender's own context
            (0x8000_0100, Some(ExecContext::SoftIrq)),
            (0x8001_0000, Some(ExecContext::HardIrq)),
            (0x8010_0000, Some(ExecContext::HardIrq)), // NMI
        ] {
            let (mut g, mut intro, _) = setup(name, PagingMode::Level4, &s);
            g.set_preempt(pc);
            let cpu = g.cpu();
            let base = cpu.percpu_base().unwrap();
            let cm = CountingMemory::new(g.mem);
            assert_eq!(intro.interrupt_context(&cm, base), want, "{name} {pc:#x}");
            assert_eq!(cm.reads(), 1, "{name}: one read");
            // It agrees with the full reading of the sender.
            let full = intro.attribute_sender(cm.inner(), &cpu);
            assert_eq!(want.is_some(), !full.is_actor(), "{name} {pc:#x}");
            if let Some(c) = want {
                assert_eq!(full.context, c);
            }
        }
        // Without the direct map, or a base outside it, it cannot tell: no read at all.
        let (mut g, _, _) = setup(name, PagingMode::Level4, &s);
        g.set_preempt(0x8000_0100);
        let cpu = g.cpu();
        let base = cpu.percpu_base().unwrap();
        let unlearnt = Introspector::new(g.profile).unwrap();
        let (_, learnt, _) = setup(name, PagingMode::Level4, &s);
        let cm = CountingMemory::new(g.mem);
        assert_eq!(unlearnt.interrupt_context(&cm, base), None);
        assert_eq!(learnt.interrupt_context(&cm, 0x0000_7fff_0000_0000), None);
        assert_eq!(learnt.interrupt_context(&cm, u64::MAX - 2), None);
        assert_eq!(cm.reads(), 0);
    }
}

#[test]
fn old_kernels_thread_info_at_stack_base() {
    let mut p = fixture("debian12-6.1");
    p.current = CurrentTask::StackThreadInfo {
        thread_size: 16384,
        task_offset: 0,
    };
    let mut g = Guest::new(p, PagingMode::Level4);
    let s = Spec::default();
    let task = g.make_task(&s);
    let stack = g.alloc(0x8000);
    let stack = (stack + 0x3fff) & !0x3fff; // THREAD_SIZE aligned
    g.w64(stack, task);
    g.set_preempt(0x8000_0000);
    let mut intro = Introspector::new(p).unwrap();
    let mut cpu = g.cpu();
    cpu.rsp = g.va(stack) + 0x3e58;
    let id = intro.attribute(&g.mem, &cpu); // no direct map yet: page walks
    check(&id, &s, task);
    assert_eq!(id.context, ExecContext::Task);
    cpu.cpl = 3;
    cpu.rsp = 0x7ffd_0000_1000;
    assert_eq!(intro.attribute(&g.mem, &cpu), TaskIdentity::default());
}

#[test]
fn namespace_local_uid_mapping() {
    for name in PROFILES {
        // Inline extents (≤ 5).
        let s = Spec {
            uid: 201_000,
            euid: 201_000,
            extents: vec![(0, 100_000, 1000), (1000, 201_000, 10), (2000, 300_000, 5)],
            ..Spec::default()
        };
        let (g, mut intro, _) = setup(name, PagingMode::Level4, &s);
        assert_eq!(intro.attribute(&g.mem, &g.cpu()).uid_local, Some(1000));
        // Forward array (> 5 extents).
        let s = Spec {
            uid: 500_007,
            extents: (0..40).map(|i| (i * 10, 500_000 + i * 10, 10)).collect(),
            ..Spec::default()
        };
        let (g, mut intro, _) = setup(name, PagingMode::Level4, &s);
        assert_eq!(intro.attribute(&g.mem, &g.cpu()).uid_local, Some(7));
        // Unmapped kuid: unknown, not overflowuid.
        let s = Spec {
            uid: 42,
            ..Spec::default()
        };
        let (g, mut intro, _) = setup(name, PagingMode::Level4, &s);
        assert_eq!(intro.attribute(&g.mem, &g.cpu()).uid_local, None);
        // Initial user namespace: identity, no map read.
        let s = Spec {
            uid: 0,
            euid: 0,
            userns: 0xEFFF_FFFD,
            extents: vec![],
            ..Spec::default()
        };
        let (g, mut intro, _) = setup(name, PagingMode::Level4, &s);
        assert_eq!(intro.attribute(&g.mem, &g.cpu()).uid_local, Some(0));
    }
}

#[test]
fn cached_attribution_costs_at_most_four_reads() {
    for name in PROFILES {
        let s = Spec::default();
        let (g, mut intro, task) = setup(name, PagingMode::Level4, &s);
        let cpu = g.cpu();
        let cm = CountingMemory::new(g.mem);
        let first = intro.attribute(&cm, &cpu);
        let uncached = cm.reads();
        cm.reset();
        let again = intro.attribute(&cm, &cpu);
        let cached = cm.reads();
        let cached_bytes = cm.bytes_read();
        assert_eq!(first, again);
        check(&again, &s, task);
        eprintln!(
            "{name}: uncached {uncached} reads, cached {cached} reads ({cached_bytes} bytes)"
        );
        // The current-task pointer, then the key fields in at most three small reads.
        assert!(cached <= 4, "{name}: {cached} reads");
        assert!(cached_bytes <= 700, "{name}: {cached_bytes} bytes");
        assert!(uncached <= 30, "{name}: {uncached} reads");
        assert_eq!(intro.stats().hits, 1);
        // flush() starts a new cache generation: the next attribution reads afresh.
        intro.flush();
        cm.reset();
        assert_eq!(intro.attribute(&cm, &cpu), first);
        assert_eq!(intro.stats().misses, 2);
        assert!(cm.reads() > 4);
    }
}

#[test]
fn cache_invalidated_by_key_changes() {
    for name in PROFILES {
        let s = Spec::default();
        let (mut g, mut intro, task) = setup(name, PagingMode::Level4, &s);
        let p = g.profile;
        let cpu = g.cpu();
        assert_eq!(intro.attribute(&g.mem, &cpu).uid, Some(s.uid));
        // commit_creds(): a new cred with uid 0.
        let cred_off = p.field(FieldId::Uid).steps()[0].off;
        let uid_off = p.field(FieldId::Uid).steps()[1].off as u64;
        let old = g.r64(g.task_slot(task, cred_off));
        let new = g.alloc(0x2000);
        let mut buf = vec![0u8; 0x2000];
        g.mem.read(g.pa(old), &mut buf).unwrap();
        g.mem.write(new, &buf).unwrap();
        g.w32(new + uid_off, 0);
        let slot = g.task_slot(task, cred_off);
        let nva = g.va(new);
        g.w64(slot, nva);
        assert_eq!(intro.attribute(&g.mem, &cpu).uid, Some(0));
        // Same task address reused by a new task: start_time differs.
        let st = p.field(FieldId::StartTime).steps()[0].off;
        let slot = g.task_slot(task, st);
        g.w64(slot, 5);
        assert_eq!(intro.attribute(&g.mem, &cpu).start_time, Some(5));
        assert_eq!(intro.stats().hits, 0);
        assert_eq!(intro.stats().misses, 3);
    }
}

#[test]
fn direct_map_is_verified_not_trusted() {
    let s = Spec::default();
    let (mut g, _, _) = setup("debian13-6.12", PagingMode::Level4, &s);
    // A lying page_offset_base: the walk of the per-cpu base disagrees.
    let va = g.profile.page_offset_base_va;
    let mut intro = Introspector::new(g.profile).unwrap();
    let t = shoji_introspect::translate(&g.mem, &g.pt(), va).unwrap();
    g.w64(t.gpa, g.dmap_base + (1 << 30));
    assert!(intro.learn_direct_map(&g.mem, &g.cpu(), RAM).is_err());
    assert_eq!(intro.direct_map(), None);
    // Without the fast path attribution still works, through page walks.
    let id = intro.attribute(&g.mem, &g.cpu());
    assert_eq!(id.pid, Some(s.pid));
}

#[test]
fn hostile_pointers_end_in_unknown() {
    for name in PROFILES {
        let s = Spec::default();
        let (mut g, mut intro, task) = setup(name, PagingMode::Level4, &s);
        let p = g.profile;
        let cpu = g.cpu();
        // cred pointer into Shoji's memory, nsproxy outside RAM, cgroups into user space,
        // thread_pid pointing at itself (a loop), signal misaligned.
        let set = |g: &mut Guest, f: FieldId, v: u64| {
            let off = p.field(f).steps()[0].off;
            let slot = g.task_slot(task, off);
            g.w64(slot, v);
        };
        let dm = g.dmap_base;
        set(&mut g, FieldId::Uid, dm + HV_START + 0x100);
        set(&mut g, FieldId::NetNsId, dm + (1 << 40));
        set(&mut g, FieldId::CgroupId, 0x0000_7fff_0000_1000);
        set(
            &mut g,
            FieldId::PidLocal,
            task + p.field(FieldId::PidLocal).steps()[0].off as u64,
        );
        set(&mut g, FieldId::TgidLocal, task + 3);
        let id = intro.attribute(&g.mem, &cpu);
        assert_eq!(id.uid, None);
        assert_eq!(id.euid, None);
        assert_eq!(id.userns_id, None);
        assert_eq!(id.uid_local, None);
        assert_eq!(id.netns_id, None);
        assert_eq!(id.cgroup_id, None);
        assert_eq!(id.tgid_local, None);
        assert_eq!(id.pgid, None);
        assert_eq!(id.pid, Some(s.pid));
        assert_eq!(id.comm, Some(s.comm));
        // Current task pointer into Shoji's memory / outside RAM / null.
        for bad in [
            g.dmap_base + HV_START,
            g.dmap_base + RAM + 0x1000,
            0,
            0x1000,
        ] {
            g.set_current(bad, 0x8000_0000);
            let id = intro.attribute(&g.mem, &cpu);
            assert_eq!(id.pid, None);
            assert_eq!(id.context, ExecContext::Unknown);
        }
        // Garbage values: a comm without NUL, ns ids below proc's range, pids over PID_MAX.
        g.set_current(task, 0x8000_0000);
        let comm_off = p.field(FieldId::Comm).steps()[0].off;
        let slot = g.task_slot(task, comm_off);
        g.mem.write(slot, &[b'A'; 16]).unwrap();
        let pid_off = p.field(FieldId::Pid).steps()[0].off;
        let slot = g.task_slot(task, pid_off);
        g.w32(slot, 0x7fff_ffff);
        intro.flush();
        let id = intro.attribute(&g.mem, &cpu);
        assert_eq!(id.comm, None);
        assert_eq!(id.pid, None);
    }
}

#[test]
fn lying_profiles_never_fault() {
    // The 6.12 profile on a 6.1 guest (and vice versa): wrong offsets everywhere.
    for (lay, run) in [
        ("debian12-6.1", "debian13-6.12"),
        ("debian13-6.12", "debian12-6.1"),
    ] {
        let s = Spec::default();
        let (g, _, _) = setup(lay, PagingMode::Level4, &s);
        let mut intro = Introspector::new(fixture(run)).unwrap();
        let _ = intro.learn_direct_map(&g.mem, &g.cpu(), RAM);
        let id = intro.attribute(&g.mem, &g.cpu());
        assert_ne!(id.pid, Some(s.pid));
    }
}

#[test]
fn truncated_or_corrupt_profiles_are_refused() {
    let path = format!(
        "{}/fixtures/debian12-6.1.profile",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len(), ENCODED_LEN);
    for n in [0, 8, 16, 100, ENCODED_LEN - 1] {
        assert!(KernelProfile::decode(&bytes[..n]).is_err());
    }
    let mut b = bytes.clone();
    for version in [1u8, 3] {
        b[8] = version; // the format before the task walk, and one that does not exist yet
        assert!(KernelProfile::decode(&b).is_err());
    }
    let mut b = bytes.clone();
    b.push(0);
    assert!(KernelProfile::decode(&b).is_err());
}

#[test]
fn fingerprint_check_reads_guest_btf() {
    let s = Spec::default();
    let (mut g, intro, _) = setup("debian12-6.1", PagingMode::Level4, &s);
    // No BTF mapped at __start_BTF: the check fails cleanly.
    assert!(intro.verify_fingerprint(&g.mem, &g.pt()).is_err());
    // Map a fake BTF there: fingerprint mismatch is reported as false.
    let p = g.profile;
    let pages = (p.btf_len as u64 + (p.btf_va & 0xfff)).div_ceil(4096);
    let pa = g.alloc(pages * 4096);
    for i in 0..pages {
        g.map((p.btf_va & !0xfff) + i * 4096, pa + i * 4096, 4096, P);
    }
    assert_eq!(intro.verify_fingerprint(&g.mem, &g.pt()), Ok(false));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random bytes over the task and every object it points to: never a panic.
    #[test]
    fn random_guest_memory_never_panics(seed in any::<u64>(), which in 0usize..2, flips in proptest::collection::vec((0usize..0x20000, any::<u8>()), 1..400)) {
        let s = Spec::default();
        let (mut g, mut intro, task) = setup(PROFILES[which], PagingMode::Level4, &s);
        let base = g.pa(task) as usize;
        for (i, (off, v)) in flips.iter().enumerate() {
            let at = base + (off.wrapping_add(seed as usize).wrapping_mul(i + 1) % 0x20000);
            g.mem.bytes[at] = *v;
        }
        let _ = intro.attribute(&g.mem, &g.cpu());
        let _ = intro.attribute(&g.mem, &g.cpu());
    }

    /// Random profile bytes: refused, or valid and harmless.
    #[test]
    fn random_profiles_never_panic(flips in proptest::collection::vec((0usize..ENCODED_LEN, any::<u8>()), 1..8)) {
        let path = format!("{}/fixtures/debian13-6.12.profile", env!("CARGO_MANIFEST_DIR"));
        let mut b = std::fs::read(path).unwrap();
        for (i, v) in flips { b[i] = v; }
        if let Ok(p) = KernelProfile::decode(&b) {
            let s = Spec::default();
            let (g, _, _) = setup("debian13-6.12", PagingMode::Level4, &s);
            let mut intro = Introspector::new(p).unwrap();
            let _ = intro.learn_direct_map(&g.mem, &g.cpu(), RAM);
            let _ = intro.attribute(&g.mem, &g.cpu());
        }
    }
}

#[test]
fn per_cpu_base_is_chosen_by_privilege_level_and_must_be_a_kernel_address() {
    let g = Guest::new(fixture("debian12-6.1"), PagingMode::Level4);
    let a = 0xffff_8880_0010_0000;
    let b = 0xffff_8880_0020_0000;
    let user = 0x0000_7f00_1234_0000;
    let cpu = |cpl, gs_base, kernel_gs_base| CpuState {
        cpl,
        gs_base,
        kernel_gs_base,
        ..g.cpu()
    };
    // Both plausible: GS base at CPL 0, the swapped-out kernel GS base at CPL 3.
    assert_eq!(cpu(0, a, b).percpu_base(), Some(a));
    assert_eq!(cpu(3, a, b).percpu_base(), Some(b));
    // The chosen one is a user value (an exit between swapgs and the entry code): the other.
    assert_eq!(cpu(0, user, b).percpu_base(), Some(b));
    assert_eq!(cpu(3, a, user).percpu_base(), Some(a));
    assert_eq!(cpu(0, user, 0).percpu_base(), None);
    assert_eq!(cpu(3, 0, user).percpu_base(), None);
}

#[test]
fn a_current_task_pointer_must_be_an_aligned_kernel_address() {
    use shoji_introspect::task::CurrentError;
    for name in PROFILES {
        let s = Spec::default();
        let (mut g, mut intro, task) = setup(name, PagingMode::Level4, &s);
        let cpu = g.cpu();
        assert_eq!(intro.current(&g.mem, &cpu).map(|c| c.task), Ok(task));
        for bad in [task + 4, task + 1, 0x1000, 0x0000_7fff_0000_1000] {
            g.set_current(bad, 0x8000_0000);
            assert_eq!(
                intro.current(&g.mem, &cpu),
                Err(CurrentError::BadTaskPointer(bad)),
                "{name} {bad:#x}"
            );
            // Attribution then knows nothing, not even the address.
            assert_eq!(intro.attribute(&g.mem, &cpu), TaskIdentity::default());
            assert_eq!(
                intro.attribute_sender(&g.mem, &cpu),
                TaskIdentity::default()
            );
        }
    }
}

#[test]
fn changing_any_cache_key_field_reads_the_identity_afresh() {
    for name in PROFILES {
        let s = Spec::default();
        let (mut g, mut intro, task) = setup(name, PagingMode::Level4, &s);
        let cpu = g.cpu();
        let first = intro.attribute(&g.mem, &cpu);
        let keys: Vec<u32> = g.profile.key_offsets.iter().flatten().copied().collect();
        assert_eq!(keys.len(), 6);
        let mut misses = intro.stats().misses;
        for off in keys {
            let slot = g.task_slot(task, off);
            let old = g.r64(slot);
            g.w64(slot, old ^ 0x40);
            intro.attribute(&g.mem, &cpu);
            assert_eq!(intro.stats().misses, misses + 1, "{name}: key {off:#x}");
            g.w64(slot, old);
            assert_eq!(intro.attribute(&g.mem, &cpu), first, "{name}: key {off:#x}");
            misses = intro.stats().misses;
        }
        // Unchanged keys: a hit.
        let hits = intro.stats().hits;
        assert_eq!(intro.attribute(&g.mem, &cpu), first);
        assert_eq!(intro.stats().hits, hits + 1);
    }
}

#[test]
fn a_fresh_read_sees_objects_changed_in_place() {
    for name in PROFILES {
        let s = Spec::default();
        let (mut g, mut intro, task) = setup(name, PagingMode::Level4, &s);
        let p = g.profile;
        let cpu = g.cpu();
        let id = intro.attribute(&g.mem, &cpu);
        assert_eq!(id.netns_id, Some(s.netns));
        // The network namespace's inode changes in place (same nsproxy, same net): only a new
        // start time (a cache key) tells the cache, and the identity read afresh must not reuse
        // anything read for the previous attribution.
        let net_prog = p.field(FieldId::NetNsId).steps();
        let nsproxy = g.r64(g.task_slot(task, net_prog[0].off));
        let net = g.r64(g.pa(nsproxy) + net_prog[1].off as u64);
        g.w32(g.pa(net) + net_prog[2].off as u64, 0xF000_0999);
        let st = p.field(FieldId::StartTime).steps()[0].off;
        let slot = g.task_slot(task, st);
        g.w64(slot, 77);
        let id = intro.attribute(&g.mem, &cpu);
        assert_eq!(id.netns_id, Some(0xF000_0999), "{name}");
        assert_eq!(id.start_time, Some(77), "{name}");
    }
}

#[test]
fn pid_namespace_level_is_bounded_by_the_profiles_index_limit() {
    for name in PROFILES {
        let limit = fixture(name).field(FieldId::PidLocal).steps()[1].aux as u32;
        let at = |level: u32| {
            let s = Spec {
                level,
                ..Spec::default()
            };
            let (g, mut intro, _) = setup(name, PagingMode::Level4, &s);
            intro.attribute(&g.mem, &g.cpu())
        };
        let id = at(limit);
        assert_eq!(id.pid_local, Some(Spec::default().pid_local), "{name}");
        assert_eq!(id.pidns_id, Some(Spec::default().pidns), "{name}");
        let id = at(limit + 1);
        assert_eq!((id.pid_local, id.pidns_id), (None, None), "{name}");
        assert_eq!(id.pid, Some(Spec::default().pid));
    }
}

#[test]
fn comm_must_be_printable_and_nul_padded() {
    let comm = |c: &[u8]| {
        let mut b = [0u8; 16];
        b[..c.len()].copy_from_slice(c);
        b
    };
    for (bytes, ok) in [
        (comm(b"curl"), true),
        (comm(b"a b~"), true),            // space and tilde are printable
        (comm(b"fifteen-chars-x"), true), // 15 characters and the NUL
        (comm(b"bad\x1f"), false),        // control character
        (comm(b"bad\x7f"), false),        // DEL
        (comm(b"\x01"), false),
        (comm(b"ok\0junk"), false),    // bytes after the NUL
        (*b"sixteen-chars-xy", false), // no NUL at all
    ] {
        let s = Spec {
            comm: bytes,
            ..Spec::default()
        };
        let (g, mut intro, _) = setup("debian12-6.1", PagingMode::Level4, &s);
        let id = intro.attribute(&g.mem, &g.cpu());
        assert_eq!(id.comm, ok.then_some(bytes), "{bytes:?}");
    }
}

#[test]
fn a_learnt_direct_map_can_be_shared_and_withdrawn() {
    let s = Spec::default();
    let (mut g, learnt, _) = setup("debian13-6.12", PagingMode::Level4, &s);
    let d = learnt.direct_map().expect("learnt");
    assert_eq!(d.base(), g.dmap_base);
    g.set_preempt(0x8000_0100);
    let base = g.cpu().percpu_base().unwrap();
    // Another vCPU's introspector takes it over and can tell the interrupt context at once.
    let mut other = Introspector::new(g.profile).unwrap();
    assert_eq!(other.direct_map(), None);
    other.set_direct_map(Some(d));
    assert_eq!(other.direct_map(), Some(d));
    assert_eq!(
        other.interrupt_context(&g.mem, base),
        Some(ExecContext::SoftIrq)
    );
    other.set_direct_map(None);
    assert_eq!(other.interrupt_context(&g.mem, base), None);
}

#[test]
fn fingerprint_matches_the_btf_it_was_taken_from() {
    let s = Spec::default();
    let (mut g, _, _) = setup("debian12-6.1", PagingMode::Level4, &s);
    let mut p = g.profile;
    p.btf_len = 10_000;
    let pages = (p.btf_len as u64 + (p.btf_va & 0xfff)).div_ceil(4096);
    let pa = g.alloc(pages * 4096);
    for i in 0..pages {
        g.map((p.btf_va & !0xfff) + i * 4096, pa + i * 4096, 4096, P);
    }
    let btf: Vec<u8> = (0..p.btf_len).map(|i| (i % 241) as u8).collect();
    g.mem.write(pa + (p.btf_va & 0xfff), &btf).unwrap();
    p.fingerprint = shoji_shared::profile::fingerprint(&btf);
    let intro = Introspector::new(p).unwrap();
    assert_eq!(intro.verify_fingerprint(&g.mem, &g.pt()), Ok(true));
    // Without an address or a length there is nothing to check: false, nothing read.
    let pt = g.pt();
    let cm = CountingMemory::new(g.mem);
    for (va, len) in [(0, p.btf_len), (p.btf_va, 0)] {
        let q = KernelProfile {
            btf_va: va,
            btf_len: len,
            ..p
        };
        let intro = Introspector::new(q).unwrap();
        assert_eq!(intro.verify_fingerprint(&cm, &pt), Ok(false));
    }
    assert_eq!(cm.reads(), 0);
}

#[test]
fn preempt_count_far_from_the_current_task_pointer_is_read_on_its_own() {
    for (preempt, reads) in [(0x1fb40, 1), (0x1000, 2), (0x1fb80 + 0x400, 2)] {
        let mut p = fixture("debian12-6.1");
        p.preempt_offset = Some(preempt);
        let mut g = Guest::new(p, PagingMode::Level4);
        let s = Spec::default();
        let task = g.make_task(&s);
        let mut intro = Introspector::new(p).unwrap();
        intro.learn_direct_map(&g.mem, &g.cpu(), RAM).unwrap();
        for (pc, context) in [
            (0x8000_0000, ExecContext::Task),
            (0x8000_0100, ExecContext::SoftIrq),
            (0x8001_0000, ExecContext::HardIrq),
        ] {
            g.set_current(task, pc);
            let cpu = g.cpu();
            let cm = CountingMemory::new(Ram {
                bytes: g.mem.bytes.clone(),
            });
            let cur = intro.current(&cm, &cpu).unwrap();
            assert_eq!(cur.task, task, "{preempt:#x}");
            assert_eq!(cur.preempt_count, Some(pc & 0x7fff_ffff), "{preempt:#x}");
            assert_eq!(cm.reads(), reads, "{preempt:#x}");
            assert_eq!(
                intro.attribute(&g.mem, &cpu).context,
                context,
                "{preempt:#x}"
            );
        }
    }
}

#[test]
fn uid_maps_up_to_the_kernels_extent_limit_are_read() {
    for name in PROFILES {
        let max = fixture(name).uid_map.max_extents;
        for (n, mapped) in [(max, true), (max + 1, false)] {
            // The task's kuid sits in the last extent.
            let s = Spec {
                uid: 500_000 + (n - 1) * 10 + 3,
                extents: (0..n).map(|i| (i * 10, 500_000 + i * 10, 10)).collect(),
                ..Spec::default()
            };
            let (g, mut intro, _) = setup(name, PagingMode::Level4, &s);
            let want = mapped.then_some((n - 1) * 10 + 3);
            assert_eq!(
                intro.attribute(&g.mem, &g.cpu()).uid_local,
                want,
                "{name}: {n} extents"
            );
        }
    }
}

#[test]
fn an_interrupt_still_names_the_task_it_interrupted() {
    let s = Spec::default();
    let (mut g, mut intro, task) = setup("debian13-6.12", PagingMode::Level4, &s);
    g.set_preempt(0x8001_0000);
    let id = intro.attribute_sender(&g.mem, &g.cpu());
    assert_eq!((id.task, id.context), (task, ExecContext::HardIrq));
}

#[test]
fn two_keys_changed_by_the_same_bits_still_miss_the_cache() {
    for name in PROFILES {
        let s = Spec::default();
        let (mut g, mut intro, task) = setup(name, PagingMode::Level4, &s);
        let cpu = g.cpu();
        intro.attribute(&g.mem, &cpu);
        let keys: Vec<u32> = g.profile.key_offsets.iter().flatten().copied().collect();
        for off in &keys[..2] {
            let slot = g.task_slot(task, *off);
            let v = g.r64(slot);
            g.w64(slot, v ^ 0x1000);
        }
        let misses = intro.stats().misses;
        intro.attribute(&g.mem, &cpu);
        assert_eq!(intro.stats().misses, misses + 1, "{name}");
    }
}

#[test]
fn the_cache_holds_several_tasks_at_once() {
    for name in PROFILES {
        let s = Spec::default();
        let (mut g, mut intro, a) = setup(name, PagingMode::Level4, &s);
        let b = g.make_task(&Spec {
            pid: 77,
            ..Spec::default()
        });
        for _ in 0..2 {
            for t in [a, b] {
                g.set_current(t, 0x8000_0000);
                intro.attribute(&g.mem, &g.cpu());
            }
        }
        assert_eq!(
            intro.stats(),
            shoji_introspect::task::CacheStats { hits: 2, misses: 2 }
        );
    }
}

#[test]
fn thread_info_is_only_looked_for_on_a_kernel_stack_at_cpl_0() {
    let mut p = fixture("debian12-6.1");
    p.current = CurrentTask::StackThreadInfo {
        thread_size: 16384,
        task_offset: 0,
    };
    let mut g = Guest::new(p, PagingMode::Level4);
    let s = Spec::default();
    let task = g.make_task(&s);
    g.set_preempt(0x8000_0000);
    // A kernel stack at the very start of the kernel half, its thread_info at its base.
    let stack = g.alloc(0x4000);
    for i in 0..4 {
        g.map(
            shoji_shared::profile::KERNEL_HALF_4 + i * 4096,
            stack + i * 4096,
            4096,
            P | RW,
        );
    }
    g.w64(stack, task);
    let intro = Introspector::new(p).unwrap();
    let mut cpu = g.cpu();
    for (cpl, rsp, found) in [
        (0, shoji_shared::profile::KERNEL_HALF_4, true),
        (0, shoji_shared::profile::KERNEL_HALF_4 + 0x3f00, true),
        (3, shoji_shared::profile::KERNEL_HALF_4 + 0x3f00, false),
        (0, 0x7ffd_0000_1000, false),
    ] {
        cpu.cpl = cpl;
        cpu.rsp = rsp;
        assert_eq!(
            intro.current(&g.mem, &cpu).map(|c| c.task).ok(),
            found.then_some(task),
            "cpl {cpl} rsp {rsp:#x}"
        );
    }
}

/// Reads and bytes of one uncached and one cached attribution.
fn cost(name: &str, s: &Spec) -> ((u64, u64), (u64, u64)) {
    let (g, mut intro, _) = setup(name, PagingMode::Level4, s);
    let cpu = g.cpu();
    let cm = CountingMemory::new(g.mem);
    intro.attribute(&cm, &cpu);
    let uncached = (cm.reads(), cm.bytes_read());
    cm.reset();
    intro.attribute(&cm, &cpu);
    (uncached, (cm.reads(), cm.bytes_read()))
}

#[test]
fn attribution_cost_does_not_grow() {
    // Measured on the synthetic Debian tasks with the direct map learnt; the plan of task_struct
    // reads (key reads, spans), the object blocks and the batched uid-map reads all show here.
    // A change that makes an attribution cheaper lowers these figures.
    for (name, uncached, cached) in [
        ("debian12-6.1", (26, 1292), (4, 632)),
        ("debian13-6.12", (26, 1220), (4, 560)),
    ] {
        let (u, c) = cost(name, &Spec::default());
        eprintln!("{name}: uncached {u:?}, cached {c:?}");
        assert!(
            u.0 <= uncached.0 && u.1 <= uncached.1,
            "{name}: uncached {u:?}"
        );
        assert!(c.0 <= cached.0 && c.1 <= cached.1, "{name}: cached {c:?}");
    }
}

#[test]
fn uid_map_extents_are_read_sixteen_at_a_time() {
    for name in PROFILES {
        let one = Spec::default();
        // 40 extents in the forward array, the task's kuid in the last one.
        let forty = Spec {
            uid: 500_393,
            extents: (0..40).map(|i| (i * 10, 500_000 + i * 10, 10)).collect(),
            ..Spec::default()
        };
        let (u1, _) = cost(name, &one);
        let (u40, _) = cost(name, &forty);
        eprintln!("{name}: {u1:?} {u40:?}");
        // The forward pointer, then three batches (16 + 16 + 8) instead of one.
        assert!(u40.0 <= u1.0 + 3, "{name}: {u1:?} -> {u40:?}");
    }
}

#[test]
fn a_uid_maps_to_an_extent_only_inside_it_and_only_among_the_declared_extents() {
    for name in PROFILES {
        // One past the end of an extent: not in it.
        let s = Spec {
            uid: 201_010,
            extents: vec![(0, 100_000, 1000), (1000, 201_000, 10)],
            ..Spec::default()
        };
        let (g, mut intro, _) = setup(name, PagingMode::Level4, &s);
        assert_eq!(intro.attribute(&g.mem, &g.cpu()).uid_local, None, "{name}");
        // 26 extents written, the kuid in the last one; the map declares only 20 of them.
        let s = Spec {
            uid: 500_253,
            extents: (0..26).map(|i| (i * 10, 500_000 + i * 10, 10)).collect(),
            ..Spec::default()
        };
        let (mut g, mut intro, task) = setup(name, PagingMode::Level4, &s);
        assert_eq!(
            intro.attribute(&g.mem, &g.cpu()).uid_local,
            Some(253),
            "{name}"
        );
        let p = g.profile;
        let ns_prog = p.field(FieldId::UserNsPtr).steps();
        let cred = g.r64(g.task_slot(task, ns_prog[0].off));
        let ns = g.r64(g.pa(cred) + ns_prog[1].off as u64);
        let nr = g.pa(ns) + p.uid_map.map_off as u64 + p.uid_map.nr_extents_off as u64;
        g.w32(nr, 20);
        intro.flush();
        assert_eq!(intro.attribute(&g.mem, &g.cpu()).uid_local, None, "{name}");
    }
}

#[test]
fn per_cpu_area_is_found_in_guest_physical_memory() {
    let g = Guest::new(fixture("debian12-6.1"), PagingMode::Level4);
    assert_eq!(
        shoji_introspect::task::percpu_gpa(&g.mem, &g.cpu()),
        Some(g.percpu)
    );
    let mut cpu = g.cpu();
    cpu.gs_base = 0;
    assert_eq!(shoji_introspect::task::percpu_gpa(&g.mem, &cpu), None);
}
