//! Page walker and VMCALL buffer helpers.

mod common;

use common::*;
use shoji_introspect::{
    check_agent, copy_from_guest, copy_to_guest, translate, Caller, PageSize, PagingMode, WalkError,
};
use shoji_shared::profile::CurrentTask;
use shoji_shared::profile::KernelProfile;
use shoji_shared::vmcall::{Status, AGENT_KEY_LEN, MAX_BUFFER_LEN};
use shoji_shared::{ExecContext, GuestMemory, MemError, NoContainers, TaskIdentity};

fn guest(mode: PagingMode) -> Guest {
    Guest::new(
        KernelProfile::empty(CurrentTask::PerCpu { offset: 0x100 }),
        mode,
    )
}

#[test]
fn page_sizes_and_both_depths() {
    for mode in [PagingMode::Level4, PagingMode::Level5] {
        let mut g = guest(mode);
        let pa4k = g.alloc(4096);
        g.map(0x40_0000, pa4k, 4096, P | RW | US);
        let pa2m = 4 << 20;
        g.map(0x7f00_0020_0000, pa2m, 2 << 20, P | US);
        g.map(0x7f40_0000_0000, 0, 1 << 30, P | RW | US | NX);
        let pt = g.pt();
        let t = translate(&g.mem, &pt, 0x40_0123).unwrap();
        assert_eq!(
            (t.gpa, t.page_size, t.user, t.writable),
            (pa4k + 0x123, PageSize::Size4K, true, true)
        );
        let t = translate(&g.mem, &pt, 0x7f00_0021_2345).unwrap();
        assert_eq!(
            (t.gpa, t.page_size, t.user, t.writable),
            (pa2m + 0x1_2345, PageSize::Size2M, true, false)
        );
        let t = translate(&g.mem, &pt, 0x7f40_0123_4567).unwrap();
        assert_eq!(
            (t.gpa, t.page_size, t.executable),
            (0x123_4567, PageSize::Size1G, false)
        );
        // The direct map (2 MiB, supervisor).
        let t = translate(&g.mem, &pt, g.dmap_base + 0x1234_5678 % RAM).unwrap();
        assert_eq!(t.gpa, 0x1234_5678 % RAM);
        assert!(!t.user);
        assert_eq!(
            translate(&g.mem, &pt, 0x50_0000),
            Err(WalkError::NotPresent(1))
        );
    }
}

#[test]
fn five_level_reaches_beyond_48_bits() {
    let mut g = guest(PagingMode::Level5);
    let pa = g.alloc(4096);
    let va = 0x00ab_cdef_1234_5000; // needs LA57
    g.map(va, pa, 4096, P | US);
    assert_eq!(translate(&g.mem, &g.pt(), va + 8).unwrap().gpa, pa + 8);
    let g4 = guest(PagingMode::Level4);
    assert_eq!(
        translate(&g4.mem, &g4.pt(), va),
        Err(WalkError::NonCanonical)
    );
}

#[test]
fn permissions_are_the_and_of_all_levels() {
    let mut g = guest(PagingMode::Level4);
    let pa = g.alloc(4096);
    // Leaf says user+write, but the upper levels say supervisor, read-only.
    g.map_with(0x1234_5000_0000, pa, 4096, P | RW | US, P);
    let t = translate(&g.mem, &g.pt(), 0x1234_5000_0000).unwrap();
    assert!(!t.user && !t.writable);
}

#[test]
fn hostile_page_tables() {
    let mut g = guest(PagingMode::Level4);
    let pt = g.pt();
    // Self-referencing PML4 entry (a "loop"): the walk is bounded by the depth and ends in the
    // PML4 page itself, like a recursive mapping.
    let cr3 = g.cr3;
    g.w64(cr3 + 8 * 0x100, cr3 | P | RW);
    let va = 0xffff_8000_0000_0000 | (0x100 << 39) | (0x100 << 30) | (0x100 << 21) | (0x100 << 12);
    let t = translate(&g.mem, &pt, va).unwrap();
    assert_eq!(t.gpa, cr3);
    // PS in a PML4E is reserved.
    g.w64(cr3 + 8 * 0x101, P | PS);
    assert_eq!(
        translate(&g.mem, &pt, 0xffff_8000_0000_0000 | (0x101 << 39)),
        Err(WalkError::Reserved(4))
    );
    // Table pointers into Shoji's memory and beyond RAM.
    g.w64(cr3 + 8 * 0x102, HV_START | P | RW);
    assert_eq!(
        translate(&g.mem, &pt, 0xffff_8000_0000_0000 | (0x102 << 39)),
        Err(WalkError::Memory(MemError::Hypervisor))
    );
    g.w64(cr3 + 8 * 0x103, (1 << 40) | P | RW);
    assert_eq!(
        translate(&g.mem, &pt, 0xffff_8000_0000_0000 | (0x103 << 39)),
        Err(WalkError::Memory(MemError::NotRam))
    );
    // A 2 MiB page with reserved low address bits.
    let pd = g.alloc(4096);
    let pdpt = g.alloc(4096);
    g.w64(cr3 + 8 * 0x104, pdpt | P | RW);
    g.w64(pdpt, pd | P | RW);
    g.w64(pd, (1 << 21) | (1 << 13) | P | PS);
    assert_eq!(
        translate(&g.mem, &pt, 0xffff_8000_0000_0000 | (0x104 << 39)),
        Err(WalkError::Reserved(2))
    );
    // Garbage CR3.
    let mut bad = pt;
    bad.cr3 = u64::MAX;
    assert!(translate(&g.mem, &bad, 0x1000).is_err());
}

struct Buffers {
    g: Guest,
    user_rw: u64,
    user_ro: u64,
    kernel_rw: u64,
}

const URW: u64 = 0x40_0000;
const URO: u64 = 0x40_1000;
const KRW: u64 = 0xffff_c000_0000_0000;

fn buffers() -> Buffers {
    let mut g = guest(PagingMode::Level4);
    let user_rw = g.alloc(4096);
    let user_ro = g.alloc(4096);
    let kernel_rw = g.alloc(4096);
    g.map(URW, user_rw, 4096, P | RW | US);
    g.map(URO, user_ro, 4096, P | US); // e.g. a copy-on-write page
    g.map(KRW, kernel_rw, 4096, P | RW);
    g.mem.write(user_rw, b"hello from user").unwrap();
    g.mem.write(kernel_rw, b"kernel secret").unwrap();
    Buffers {
        g,
        user_rw,
        user_ro,
        kernel_rw,
    }
}

#[test]
fn copy_in_honours_user_supervisor() {
    let b = buffers();
    let user = Caller {
        pt: b.g.pt(),
        cpl: 3,
    };
    let kernel = Caller {
        pt: b.g.pt(),
        cpl: 0,
    };
    let mut out = [0u8; 64];
    assert_eq!(copy_from_guest(&b.g.mem, &user, URW, 15, &mut out), Ok(15));
    assert_eq!(&out[..15], b"hello from user");
    assert_eq!(
        copy_from_guest(&b.g.mem, &user, KRW, 6, &mut out),
        Err(Status::BadBuffer)
    );
    assert_eq!(copy_from_guest(&b.g.mem, &kernel, KRW, 6, &mut out), Ok(6));
    // Spanning two user pages (rw then ro): fine for reading.
    assert_eq!(
        copy_from_guest(&b.g.mem, &user, URW + 4090, 12, &mut out),
        Ok(12)
    );
    // Into an unmapped page, too long, wrapping, bigger than the destination.
    assert_eq!(
        copy_from_guest(&b.g.mem, &user, URO + 4090, 12, &mut out),
        Err(Status::BadBuffer)
    );
    let mut big = vec![0u8; MAX_BUFFER_LEN + 1];
    assert_eq!(
        copy_from_guest(&b.g.mem, &user, URW, MAX_BUFFER_LEN + 1, &mut big),
        Err(Status::BadBuffer)
    );
    assert_eq!(
        copy_from_guest(&b.g.mem, &user, u64::MAX - 2, 8, &mut out),
        Err(Status::BadBuffer)
    );
    assert_eq!(
        copy_from_guest(&b.g.mem, &user, URW, 65, &mut out),
        Err(Status::InvalidArgument)
    );
    assert_eq!(
        copy_from_guest(&b.g.mem, &user, 0x8000_0000_0000, 4, &mut out),
        Err(Status::BadBuffer)
    );
}

#[test]
fn copy_out_only_to_writable_pages_and_never_partially() {
    let mut b = buffers();
    let user = Caller {
        pt: b.g.pt(),
        cpl: 3,
    };
    let kernel = Caller {
        pt: b.g.pt(),
        cpl: 0,
    };
    assert_eq!(
        copy_to_guest(&mut b.g.mem, &user, URW + 100, b"reply"),
        Ok(())
    );
    let mut out = [0u8; 5];
    b.g.mem.read(b.user_rw + 100, &mut out).unwrap();
    assert_eq!(&out, b"reply");
    // Read-only (copy-on-write) page: refused, for user and kernel callers alike.
    assert_eq!(
        copy_to_guest(&mut b.g.mem, &user, URO, b"x"),
        Err(Status::BadBuffer)
    );
    assert_eq!(
        copy_to_guest(&mut b.g.mem, &kernel, URO, b"x"),
        Err(Status::BadBuffer)
    );
    // A kernel page for a user caller: refused, nothing changes.
    assert_eq!(
        copy_to_guest(&mut b.g.mem, &user, KRW, b"pwned"),
        Err(Status::BadBuffer)
    );
    let mut k = [0u8; 13];
    b.g.mem.read(b.kernel_rw, &mut k).unwrap();
    assert_eq!(&k, b"kernel secret");
    // Straddling rw → ro: refused before the first byte is written.
    let before = b.g.mem.bytes[(b.user_rw + 4094) as usize..(b.user_rw + 4096) as usize].to_vec();
    assert_eq!(
        copy_to_guest(&mut b.g.mem, &user, URW + 4094, b"abcd"),
        Err(Status::BadBuffer)
    );
    assert_eq!(
        &b.g.mem.bytes[(b.user_rw + 4094) as usize..(b.user_rw + 4096) as usize],
        &before[..]
    );
    let _ = b.user_ro;
}

#[test]
fn agent_check() {
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
    let mut wrong = key;
    wrong[31] ^= 1;
    assert_eq!(
        check_agent(&root, init, &wrong, &key, &NoContainers),
        Err(Status::NotAuthorized)
    );
    // Root in a container's user namespace.
    let ns_root = TaskIdentity {
        userns_id: Some(0xF000_0001),
        ..root
    };
    assert_eq!(
        check_agent(&ns_root, init, &key, &key, &NoContainers),
        Err(Status::NotAuthorized)
    );
    let user = TaskIdentity {
        uid: Some(1000),
        ..root
    };
    assert_eq!(
        check_agent(&user, init, &key, &key, &NoContainers),
        Err(Status::NotAuthorized)
    );
    let unknown = TaskIdentity { uid: None, ..root };
    assert_eq!(
        check_agent(&unknown, init, &key, &key, &NoContainers),
        Err(Status::NotAuthorized)
    );
    let irq = TaskIdentity {
        context: ExecContext::SoftIrq,
        ..root
    };
    assert_eq!(
        check_agent(&irq, init, &key, &key, &NoContainers),
        Err(Status::NotAuthorized)
    );
    // A key that differs in any one byte, first or last, is refused for the right caller.
    for at in [0, AGENT_KEY_LEN / 2, AGENT_KEY_LEN - 1] {
        let mut wrong = key;
        wrong[at] ^= 1;
        assert_eq!(
            check_agent(&root, init, &wrong, &key, &NoContainers),
            Err(Status::NotAuthorized),
            "key differing at byte {at}"
        );
    }
}
