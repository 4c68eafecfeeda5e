//! The host-mode heap: a bump allocator over pages of Shoji's reserved region.
//!
//! Host code runs after the firmware's boot services are gone, so the few heap allocations a
//! library makes there (iced-x86 builds its decoder tables on first use) must come from Shoji's
//! own memory. Nothing is freed: the allocations are one-time tables. The boot application's
//! global allocator sends allocations here once [`active`] says so (in Shoji's relocated copy).

use core::alloc::Layout;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);
static START: AtomicU64 = AtomicU64::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Hand `[base, base + size)` (identity-mapped memory Shoji owns) to the heap and activate it.
pub fn init(base: u64, size: u64) {
    START.store(base, Ordering::Release);
    NEXT.store(base, Ordering::Release);
    END.store(base.saturating_add(size), Ordering::Release);
    ACTIVE.store(true, Ordering::Release);
}

/// Whether allocations come from Shoji's heap.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Whether `p` lies in the heap.
pub fn owns(p: *mut u8) -> bool {
    let a = p as u64;
    a >= START.load(Ordering::Acquire) && a < END.load(Ordering::Acquire)
}

/// Bytes handed out so far.
pub fn used() -> u64 {
    NEXT.load(Ordering::Acquire) - START.load(Ordering::Acquire)
}

/// Allocate `layout` (null when the heap is exhausted).
pub fn alloc(layout: Layout) -> *mut u8 {
    let align = layout.align().max(16) as u64;
    let size = layout.size() as u64;
    let end = END.load(Ordering::Acquire);
    let mut cur = NEXT.load(Ordering::Acquire);
    loop {
        let Some(start) = cur.checked_add(align - 1).map(|v| v & !(align - 1)) else {
            return core::ptr::null_mut();
        };
        let Some(stop) = start.checked_add(size) else {
            return core::ptr::null_mut();
        };
        if stop > end {
            return core::ptr::null_mut();
        }
        match NEXT.compare_exchange(cur, stop, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return start as *mut u8,
            Err(now) => cur = now,
        }
    }
}
