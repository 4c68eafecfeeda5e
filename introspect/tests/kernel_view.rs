//! Address-space edges, the direct map's verification, kernel-virtual reads, the VMCALL buffer
//! copies at their limits, and the counting wrapper: each property stated at the edge where it
//! changes.

mod common;

use common::*;
use shoji_introspect::kmem::DirectMapError;
use shoji_introspect::paging::read_virt;
use shoji_introspect::{
    check_agent, copy_from_guest, copy_to_guest, translate, Access, Caller, CountingMemory,
    DirectMap, KernelView, PageSize, PagingMode, Translation, WalkError,
};
use shoji_shared::profile::{CurrentTask, KernelProfile, KERNEL_HALF_4, KERNEL_HALF_5};
use shoji_shared::vmcall::{Status, MAX_BUFFER_LEN};
use shoji_shared::{
    ContainerId, ContainerMembership, ExecContext, GuestMemory, MemError, NoContainers,
    TaskIdentity,
};

fn guest(mode: PagingMode) -> Guest {
    Guest::new(
        KernelProfile::empty(CurrentTask::PerCpu { offset: 0x100 }),
        mode,
    )
}

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;

#[test]
fn canonical_addresses_and_the_kernel_half_in_both_depths() {
    let l4 = PagingMode::Level4;
    let l5 = PagingMode::Level5;
    assert_eq!((l4.levels(), l4.va_bits()), (4, 48));
    assert_eq!((l5.levels(), l5.va_bits()), (5, 57));
    assert_eq!(l4.kernel_half(), KERNEL_HALF_4);
    assert_eq!(l5.kernel_half(), KERNEL_HALF_5);
    for (mode, va, canonical) in [
        (l4, 0, true),
        (l4, 0x0000_7fff_ffff_ffff, true),
        (l4, 0x0000_8000_0000_0000, false),
        (l4, 0x0100_0000_0000_0000, false),
        (l4, 0xffff_7fff_ffff_ffff, false),
        (l4, 0xffff_8000_0000_0000, true),
        (l4, u64::MAX, true),
        (l5, 0x0000_8000_0000_0000, true),
        (l5, 0x00ff_ffff_ffff_ffff, true),
        (l5, 0x0100_0000_0000_0000, false),
        (l5, 0xfeff_ffff_ffff_ffff, false),
        (l5, 0xff00_0000_0000_0000, true),
        (l5, u64::MAX, true),
    ] {
        assert_eq!(mode.is_canonical(va), canonical, "{mode:?} {va:#x}");
    }
}

#[test]
fn page_sizes_and_bytes_left_in_a_page() {
    assert_eq!(PageSize::Size4K.bytes(), 4096);
    assert_eq!(PageSize::Size2M.bytes(), 2 * 1024 * 1024);
    assert_eq!(PageSize::Size1G.bytes(), 1024 * 1024 * 1024);
    let t = |gpa: u64, page_size: PageSize| Translation {
        gpa,
        page_size,
        user: false,
        writable: false,
        executable: false,
    };
    assert_eq!(t(0x1234, PageSize::Size4K).bytes_left_in_page(), 0xdcc);
    assert_eq!(t(0x5000, PageSize::Size4K).bytes_left_in_page(), 4096);
    assert_eq!(t(0x5fff, PageSize::Size4K).bytes_left_in_page(), 1);
    assert_eq!(
        t(0x40_0010, PageSize::Size2M).bytes_left_in_page(),
        MIB2 - 0x10
    );
    assert_eq!(
        t(3 * GIB + 0x1000, PageSize::Size1G).bytes_left_in_page(),
        GIB - 0x1000
    );
}

#[test]
fn cr3_flag_and_pcid_bits_do_not_move_the_walk() {
    let mut g = guest(PagingMode::Level4);
    let pa = g.alloc(4096);
    g.map(0x40_0000, pa, 4096, P | RW | US);
    let plain = translate(&g.mem, &g.pt(), 0x40_0123).unwrap();
    let mut pt = g.pt();
    pt.cr3 |= 0xfff; // PCID (or PWT/PCD) in the low bits
    assert_eq!(translate(&g.mem, &pt, 0x40_0123), Ok(plain));
    assert_eq!(plain.gpa, pa + 0x123);
}

#[test]
fn the_pat_bit_of_a_large_page_is_not_an_address_bit() {
    let mut g = guest(PagingMode::Level4);
    const PAT_LARGE: u64 = 1 << 12;
    // 2 MiB page at 4 MiB and 1 GiB page at 0, both with PAT set.
    g.map(0x7f00_0000_0000, (4 << 20) | PAT_LARGE, MIB2, P | RW | US);
    g.map(0x7f40_0000_0000, PAT_LARGE, GIB, P | RW | US);
    let t = translate(&g.mem, &g.pt(), 0x7f00_0001_2345).unwrap();
    assert_eq!(
        (t.gpa, t.page_size),
        ((4 << 20) + 0x1_2345, PageSize::Size2M)
    );
    let t = translate(&g.mem, &g.pt(), 0x7f40_0123_4567).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x123_4567, PageSize::Size1G));
    // Any other bit below the page size is reserved, in a 1 GiB page too.
    g.map(0x7f80_0000_0000, 1 << 21, GIB, P | RW | US);
    assert_eq!(
        translate(&g.mem, &g.pt(), 0x7f80_0000_0000),
        Err(WalkError::Reserved(3))
    );
}

#[test]
fn execute_permission_is_the_and_of_every_level() {
    let mut g = guest(PagingMode::Level4);
    let pa = g.alloc(4096);
    g.map(0x40_0000, pa, 4096, P | RW | US);
    let t = translate(&g.mem, &g.pt(), 0x40_0000).unwrap();
    assert!(t.executable && t.user && t.writable);
    let pa2 = g.alloc(4096);
    g.map_with(0x5000_0000_0000, pa2, 4096, P | RW | US, P | RW | US | NX);
    let t = translate(&g.mem, &g.pt(), 0x5000_0000_0000).unwrap();
    assert!(!t.executable && t.user && t.writable);
}

#[test]
fn access_rights_user_and_write() {
    let t = |user, writable| Translation {
        gpa: 0,
        page_size: PageSize::Size4K,
        user,
        writable,
        executable: true,
    };
    let a = |user, write| Access { user, write };
    for (access, page, ok) in [
        (a(false, false), t(false, false), true),
        (a(true, false), t(false, false), false),
        (a(true, false), t(true, false), true),
        (a(false, true), t(false, false), false),
        (a(false, true), t(false, true), true),
        (a(true, true), t(true, false), false),
        (a(true, true), t(false, true), false),
        (a(true, true), t(true, true), true),
    ] {
        assert_eq!(access.allowed_by(&page), ok, "{access:?} {page:?}");
    }
}

/// Two virtual pages backed by physical pages that are not adjacent (the second one lower).
fn scattered(g: &mut Guest, va: u64, flags: u64) -> (u64, u64) {
    let hi = g.alloc(4096);
    let _gap = g.alloc(4096);
    let lo = g.alloc(4096);
    g.map(va, hi, 4096, flags);
    g.map(va + 4096, lo, 4096, flags);
    for i in 0..4096u64 {
        g.mem.bytes[(hi + i) as usize] = (i % 251) as u8;
        g.mem.bytes[(lo + i) as usize] = 0x80 | (i % 101) as u8;
    }
    (hi, lo)
}

#[test]
fn reads_cross_pages_page_by_page() {
    let mut g = guest(PagingMode::Level4);
    let va = 0xffff_c000_0001_0000;
    let (hi, lo) = scattered(&mut g, va, P | RW);
    let mut want = Vec::new();
    want.extend_from_slice(&g.mem.bytes[(hi + 4090) as usize..(hi + 4096) as usize]);
    want.extend_from_slice(&g.mem.bytes[lo as usize..(lo + 10) as usize]);
    let mut buf = [0u8; 16];
    read_virt(&g.mem, &g.pt(), va + 4090, &mut buf, Access::default()).unwrap();
    assert_eq!(&buf[..], &want[..]);
    // A whole page plus a byte, from the first page's start.
    let mut big = vec![0u8; 4097];
    read_virt(&g.mem, &g.pt(), va, &mut big, Access::default()).unwrap();
    assert_eq!(
        &big[..4096],
        &g.mem.bytes[hi as usize..(hi + 4096) as usize]
    );
    assert_eq!(big[4096], g.mem.bytes[lo as usize]);
    // Supervisor pages: a read on behalf of user mode is refused.
    let mut one = [0u8; 1];
    let user = Access {
        user: true,
        write: false,
    };
    assert_eq!(
        read_virt(&g.mem, &g.pt(), va, &mut one, user),
        Err(WalkError::Denied)
    );
    // Nothing to read: no walk at all.
    let pt = g.pt();
    let cm = CountingMemory::new(g.mem);
    assert_eq!(read_virt(&cm, &pt, 0, &mut [], user), Ok(()));
    assert_eq!(cm.reads(), 0);
}

/// A guest with a 2 MiB direct-map page at `base` mapping guest-physical 0.
fn direct_map_at(g: &mut Guest, base: u64, flags: u64) {
    g.map(base, 0, MIB2, flags);
}

#[test]
fn direct_map_base_must_be_a_gib_aligned_kernel_address_with_ram() {
    let mut g = guest(PagingMode::Level4);
    let pt = g.pt();
    let dm = g.dmap_base;
    let probe = [dm + 0x1000];
    let verify = |g: &Guest, base: u64, top: u64, probes: &[u64]| {
        DirectMap::verify(&g.mem, &pt, base, top, probes)
    };
    let d = verify(&g, dm, RAM, &probe).unwrap();
    assert_eq!(d.base(), dm);
    // The lowest kernel address is a possible base; a bit-30 base is GiB aligned.
    direct_map_at(&mut g, KERNEL_HALF_4, P | RW);
    let d = verify(&g, KERNEL_HALF_4, MIB2, &[KERNEL_HALF_4 + 0x1000]).unwrap();
    assert_eq!(d.base(), KERNEL_HALF_4);
    let odd_gib = 0xffff_c000_4000_0000;
    direct_map_at(&mut g, odd_gib, P | RW);
    assert!(verify(&g, odd_gib, MIB2, &[odd_gib + 0x1000]).is_ok());
    for (base, top) in [
        (KERNEL_HALF_4 - GIB, RAM),   // user half
        (0x0000_7fc0_0000_0000, RAM), // user half
        (dm + MIB2, RAM),             // 2 MiB aligned only
        (dm + 0x1000, RAM),
        (dm, 0),                          // no RAM
        (0xffff_ffff_c000_0000, 2 * GIB), // wraps
    ] {
        assert_eq!(
            verify(&g, base, top, &[base.wrapping_add(0x1000)]),
            Err(DirectMapError::BadBase),
            "{base:#x} {top:#x}"
        );
    }
}

#[test]
fn direct_map_probes_must_translate_to_their_offset_in_supervisor_pages() {
    let mut g = guest(PagingMode::Level4);
    let pt = g.pt();
    let dm = g.dmap_base;
    // Probes outside [base, base + ram_top) are not evidence either way.
    for probes in [&[][..], &[dm - 0x1000], &[dm + RAM], &[0x1000, u64::MAX]] {
        assert_eq!(
            DirectMap::verify(&g.mem, &pt, dm, RAM, probes),
            Err(DirectMapError::NoProbe),
            "{probes:x?}"
        );
    }
    // Last byte inside the window is a probe.
    assert!(DirectMap::verify(&g.mem, &pt, dm, RAM, &[dm + RAM - 1]).is_ok());
    // A probe that lands elsewhere: the candidate base is wrong.
    let wrong = 0xffff_c000_0000_0000;
    g.map(wrong, 6 << 20, MIB2, P | RW);
    assert_eq!(
        DirectMap::verify(&g.mem, &pt, wrong, RAM, &[wrong + 0x1000]),
        Err(DirectMapError::Mismatch)
    );
    // A user-accessible mapping at the right place is not the kernel's direct map.
    let user_dm = 0xffff_c040_0000_0000;
    direct_map_at(&mut g, user_dm, P | RW | US);
    assert_eq!(
        DirectMap::verify(&g.mem, &pt, user_dm, MIB2, &[user_dm + 0x1000]),
        Err(DirectMapError::Mismatch)
    );
    // An unmapped probe is a walk failure.
    let hole = 0xffff_c080_0000_0000;
    assert!(matches!(
        DirectMap::verify(&g.mem, &pt, hole, RAM, &[hole + 0x1000]),
        Err(DirectMapError::Walk(WalkError::NotPresent(_)))
    ));
}

#[test]
fn direct_map_covers_exactly_its_window() {
    let g = guest(PagingMode::Level4);
    let dm = g.dmap_base;
    let d = DirectMap::verify(&g.mem, &g.pt(), dm, RAM, &[dm + 0x1000]).unwrap();
    assert_eq!(d.gpa(dm, 8), Some(0));
    assert_eq!(d.gpa(dm + 0x1234, 4), Some(0x1234));
    assert_eq!(d.gpa(dm + RAM - 8, 8), Some(RAM - 8));
    assert_eq!(d.gpa(dm + RAM - 8, 9), None);
    assert_eq!(d.gpa(dm + RAM, 0), Some(RAM));
    assert_eq!(d.gpa(dm - 1, 2), None);
    assert_eq!(d.gpa(u64::MAX, 2), None);
}

#[test]
fn kernel_view_reads_kernel_addresses_only() {
    let mut g = guest(PagingMode::Level4);
    // The lowest kernel address, mapped: readable by a page walk.
    let page = g.alloc(4096);
    g.map(KERNEL_HALF_4, page, 4096, P | RW);
    g.w64(page, 0x1122_3344_5566_7788);
    // A user page holding a value: never read through the kernel view.
    let upage = g.alloc(4096);
    g.map(0x40_0000, upage, 4096, P | RW | US);
    g.w64(upage, 0xdead_beef_dead_beef);
    let view = KernelView {
        mem: &g.mem,
        pt: g.pt(),
        dmap: None,
    };
    assert_eq!(view.u64(KERNEL_HALF_4), Ok(0x1122_3344_5566_7788));
    assert_eq!(view.u32(KERNEL_HALF_4), Ok(0x5566_7788));
    assert_eq!(view.u32(KERNEL_HALF_4 + 4), Ok(0x1122_3344));
    assert_eq!(
        view.u64(0x40_0000),
        Err(WalkError::Memory(MemError::BadRange))
    );
    assert_eq!(
        view.u32(KERNEL_HALF_4 - 8),
        Err(WalkError::Memory(MemError::BadRange))
    );
    assert_eq!(
        view.u32(KERNEL_HALF_4 + 0x1000),
        Err(WalkError::NotPresent(1))
    );
}

#[test]
fn kernel_view_takes_the_direct_map_without_a_walk() {
    let g = guest(PagingMode::Level4);
    let dm = g.dmap_base;
    let d = DirectMap::verify(&g.mem, &g.pt(), dm, RAM, &[dm + 0x1000]).unwrap();
    let mut g = g;
    g.w64(0x20_0000, 0x0102_0304_0506_0708);
    let pt = g.pt();
    let cm = CountingMemory::new(g.mem);
    let view = KernelView {
        mem: &cm,
        pt,
        dmap: Some(d),
    };
    assert_eq!(view.u64(dm + 0x20_0000), Ok(0x0102_0304_0506_0708));
    assert_eq!((cm.reads(), cm.bytes_read()), (1, 8));
    // Shoji's memory stays refused on the fast path.
    assert_eq!(
        view.u32(dm + HV_START),
        Err(WalkError::Memory(MemError::Hypervisor))
    );
    // Past the window: the page walk decides (here: beyond RAM).
    cm.reset();
    assert!(view.u32(dm + RAM).is_err());
    assert!(cm.reads() > 1);
}

#[test]
fn counting_memory_counts_what_reaches_the_inner_memory() {
    let g = guest(PagingMode::Level4);
    let mut cm = CountingMemory::new(g.mem);
    let mut b = [0u8; 12];
    cm.read(0x1000, &mut b).unwrap();
    cm.read(0x2000, &mut b[..3]).unwrap();
    assert_eq!(
        cm.read(HV_START, &mut b),
        Err(MemError::Hypervisor),
        "errors pass through"
    );
    assert_eq!((cm.reads(), cm.bytes_read(), cm.writes()), (3, 27, 0));
    cm.write(0x3000, b"abc").unwrap();
    assert_eq!(cm.write(RAM, b"x"), Err(MemError::NotRam));
    assert_eq!(cm.writes(), 2);
    assert_eq!(&cm.inner().bytes[0x3000..0x3003], b"abc");
    cm.inner_mut().bytes[0x4000] = 9;
    let mut one = [0u8; 1];
    cm.read(0x4000, &mut one).unwrap();
    assert_eq!(one, [9]);
    cm.reset();
    assert_eq!((cm.reads(), cm.bytes_read(), cm.writes()), (0, 0, 0));
}

/// 17 user pages at `va`, each backed by a physical page in reverse order.
fn user_pages(g: &mut Guest, va: u64, n: u64) -> Vec<u64> {
    let pas: Vec<u64> = (0..n).map(|_| g.alloc(4096)).rev().collect();
    for (i, &pa) in pas.iter().enumerate() {
        g.map(va + i as u64 * 4096, pa, 4096, P | RW | US);
    }
    pas
}

#[test]
fn the_largest_buffer_may_straddle_seventeen_pages() {
    let mut g = guest(PagingMode::Level4);
    let va = 0x60_0000;
    let pas = user_pages(&mut g, va, 17);
    let user = Caller { pt: g.pt(), cpl: 3 };
    let data: Vec<u8> = (0..MAX_BUFFER_LEN)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let start = va + 100; // unaligned: 17 pages
    assert_eq!(copy_to_guest(&mut g.mem, &user, start, &data), Ok(()));
    assert_eq!(g.mem.bytes[(pas[0] + 100) as usize], data[0]);
    assert_eq!(g.mem.bytes[pas[1] as usize], data[4096 - 100]);
    assert_eq!(
        g.mem.bytes[(pas[16] + 99) as usize],
        data[MAX_BUFFER_LEN - 1]
    );
    let mut back = vec![0u8; MAX_BUFFER_LEN];
    assert_eq!(
        copy_from_guest(&g.mem, &user, start, MAX_BUFFER_LEN, &mut back),
        Ok(MAX_BUFFER_LEN)
    );
    assert_eq!(back, data);
    // Page aligned: exactly 16 pages.
    assert_eq!(
        copy_from_guest(&g.mem, &user, va, MAX_BUFFER_LEN, &mut back),
        Ok(MAX_BUFFER_LEN)
    );
    assert_eq!(
        &back[..4096],
        &g.mem.bytes[pas[0] as usize..(pas[0] + 4096) as usize]
    );
}

#[test]
fn copies_fill_exactly_the_destination_they_are_given() {
    let mut g = guest(PagingMode::Level4);
    let va = 0x60_0000;
    let pas = user_pages(&mut g, va, 2);
    g.mem.write(pas[0] + 4090, b"012345").unwrap();
    g.mem.write(pas[1], b"6789ab").unwrap();
    let user = Caller { pt: g.pt(), cpl: 3 };
    let mut out = [0u8; 12];
    assert_eq!(
        copy_from_guest(&g.mem, &user, va + 4090, 12, &mut out),
        Ok(12)
    );
    assert_eq!(&out, b"0123456789ab");
    assert_eq!(
        copy_from_guest(&g.mem, &user, va + 4090, 13, &mut out),
        Err(Status::InvalidArgument)
    );
    // Nothing to copy: fine anywhere, nothing read.
    let cm = CountingMemory::new(g.mem);
    assert_eq!(copy_from_guest(&cm, &user, 0, 0, &mut out), Ok(0));
    assert_eq!(
        copy_from_guest(&cm, &user, 0x0000_8000_0000_0000, 0, &mut out),
        Ok(0)
    );
    assert_eq!(cm.reads(), 0);
}

#[test]
fn a_buffer_may_end_at_the_top_of_the_user_half_but_not_cross_it() {
    let mut g = guest(PagingMode::Level4);
    let top = 0x0000_8000_0000_0000u64;
    let pa = g.alloc(4096);
    g.map(top - 4096, pa, 4096, P | RW | US);
    let user = Caller { pt: g.pt(), cpl: 3 };
    let mut out = [0u8; 16];
    assert_eq!(
        copy_from_guest(&g.mem, &user, top - 16, 16, &mut out),
        Ok(16)
    );
    assert_eq!(copy_to_guest(&mut g.mem, &user, top - 16, b"end"), Ok(()));
    // One byte more crosses into non-canonical space: refused before any page is walked.
    let cm = CountingMemory::new(g.mem);
    let mut out17 = [0u8; 17];
    assert_eq!(
        copy_from_guest(&cm, &user, top - 16, 17, &mut out17),
        Err(Status::BadBuffer)
    );
    assert_eq!(cm.reads(), 0);
}

#[test]
fn agent_needs_root_effective_uid_too() {
    let key = [7u8; 32];
    let init = 0xEFFF_FFFD;
    let root = TaskIdentity {
        context: ExecContext::Task,
        uid: Some(0),
        euid: Some(0),
        userns_id: Some(init),
        netns_id: Some(0xF000_0000),
        ..Default::default()
    };
    assert_eq!(check_agent(&root, init, &key, &key, &NoContainers), Ok(()));
    let setuid_dropped = TaskIdentity {
        euid: Some(1000),
        ..root
    };
    assert_eq!(
        check_agent(&setuid_dropped, init, &key, &key, &NoContainers),
        Err(Status::NotAuthorized)
    );
    let no_userns = TaskIdentity {
        userns_id: None,
        ..root
    };
    assert_eq!(
        check_agent(&no_userns, init, &key, &key, &NoContainers),
        Err(Status::NotAuthorized)
    );
    let kthread = TaskIdentity {
        context: ExecContext::KernelThread,
        ..root
    };
    assert_eq!(
        check_agent(&kthread, init, &key, &key, &NoContainers),
        Err(Status::NotAuthorized)
    );
    // Root in the initial user namespace, but in a registered container's network namespace or
    // cgroup (a rootful container that can read the key file): not the agent.
    struct Registered;
    impl ContainerMembership for Registered {
        fn container_of(&self, t: &TaskIdentity) -> Option<ContainerId> {
            (t.netns_id == Some(0xF000_0101) || t.cgroup_id == Some(4242)).then_some(ContainerId(7))
        }
        fn none_registered(&self) -> bool {
            false
        }
    }
    assert_eq!(check_agent(&root, init, &key, &key, &Registered), Ok(()));
    for in_container in [
        TaskIdentity {
            netns_id: Some(0xF000_0101),
            ..root
        },
        TaskIdentity {
            cgroup_id: Some(4242),
            ..root
        },
    ] {
        assert_eq!(
            check_agent(&in_container, init, &key, &key, &Registered),
            Err(Status::NotAuthorized),
            "{in_container:?}"
        );
    }
    // With neither its network namespace nor its cgroup known, membership cannot be told:
    // refused while containers are registered, accepted while none is.
    let unplaced = TaskIdentity {
        netns_id: None,
        cgroup_id: None,
        ..root
    };
    assert_eq!(
        check_agent(&unplaced, init, &key, &key, &Registered),
        Err(Status::NotAuthorized)
    );
    assert_eq!(
        check_agent(&unplaced, init, &key, &key, &NoContainers),
        Ok(())
    );
    // One of the two is enough to tell.
    let cgroup_only = TaskIdentity {
        netns_id: None,
        cgroup_id: Some(99),
        ..root
    };
    assert_eq!(
        check_agent(&cgroup_only, init, &key, &key, &Registered),
        Ok(())
    );
    // Every byte of the key counts.
    for i in 0..32 {
        let mut k = key;
        k[i] = 0;
        assert_eq!(
            check_agent(&root, init, &k, &key, &NoContainers),
            Err(Status::NotAuthorized),
            "byte {i}"
        );
    }
}
