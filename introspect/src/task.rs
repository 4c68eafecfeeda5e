//! Which guest task is running at a VM exit, in which context, and who it is.

use shoji_shared::profile::{
    preempt, CurrentTask, Digest, FieldId, FingerprintHasher, KernelProfile, Op, ProfileError,
    Program, KEY_COUNT, MAX_OFFSET, NS_INUM_MIN, PF_KTHREAD, PID_MAX_LIMIT,
};
use shoji_shared::{ExecContext, GuestMemory, TaskIdentity};

use crate::kmem::{DirectMap, DirectMapError, KernelView};
use crate::paging::{translate, PageTables, WalkError};

/// The guest vCPU state introspection needs, taken from the VMCS and MSRs at the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuState {
    /// Current privilege level (SS.DPL).
    pub cpl: u8,
    /// GS base from the VMCS.
    pub gs_base: u64,
    /// IA32_KERNEL_GS_BASE (holds the kernel's GS base while the guest runs at CPL 3).
    pub kernel_gs_base: u64,
    /// Guest RSP.
    pub rsp: u64,
    /// The guest's page tables (CR3 and paging mode).
    pub pt: PageTables,
}

impl CpuState {
    /// The kernel's per-CPU base: GS base at CPL 0, IA32_KERNEL_GS_BASE at CPL 3. If the chosen
    /// one is not a kernel address (an exit between `swapgs` and the entry code), the other is
    /// used when it is.
    pub fn percpu_base(&self) -> Option<u64> {
        let (first, second) = if self.cpl == 0 {
            (self.gs_base, self.kernel_gs_base)
        } else {
            (self.kernel_gs_base, self.gs_base)
        };
        let ok = |v: u64| v >= self.pt.mode.kernel_half() && self.pt.mode.is_canonical(v);
        if ok(first) {
            Some(first)
        } else if ok(second) {
            Some(second)
        } else {
            None
        }
    }
}

/// Why the current task could not be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurrentError {
    /// Neither GS base is a kernel address.
    NoPerCpuBase,
    /// The pointer read is not a plausible `task_struct` address.
    BadTaskPointer(u64),
    /// Reading guest memory failed.
    Read(WalkError),
}

/// The current task and the raw preempt count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    /// `task_struct` address.
    pub task: u64,
    /// Preempt count (with the inverted NEED_RESCHED bit masked out), if known.
    pub preempt_count: Option<u32>,
}

/// Classify a preempt count (hard / soft interrupt, or neither).
pub fn irq_context(pc: u32) -> Option<ExecContext> {
    let pc = pc & !preempt::NEED_RESCHED;
    if pc & (preempt::HARDIRQ_MASK | preempt::NMI_MASK) != 0 {
        Some(ExecContext::HardIrq)
    } else if pc & preempt::SOFTIRQ_OFFSET != 0 {
        // Only *serving* softirqs counts: dev_queue_xmit() disables bottom halves
        // (SOFTIRQ_DISABLE_OFFSET) in the sender's own context.
        Some(ExecContext::SoftIrq)
    } else {
        None
    }
}

fn kptr(mode_half: u64, v: u64) -> bool {
    v >= mode_half && v & 7 == 0
}

const MAX_SPANS: usize = 4;
const WINDOW_BYTES: usize = 2048;
const SPAN_MAX: u32 = 1024;
const SPAN_GAP: u32 = 64;
/// Number of cached identities.
pub const CACHE_ENTRIES: usize = 32;
/// At most this many guest reads fetch the cache key (the cached path).
const KEY_READS: usize = 3;
/// Longest single key read (bytes).
const KEY_READ_MAX: u32 = 320;
/// Key buffer: every key read fits even when no two keys could be merged.
const KEY_BUF: usize = KEY_COUNT * KEY_READ_MAX as usize;
/// Size of an object block read once per attribution (aligned, so never crosses a page).
const BLOCK: usize = 32;
/// Blocks kept per attribution.
const BLOCKS: usize = 16;

/// How the cache key is fetched: the key fields of `task_struct` grouped into at most
/// [`KEY_READS`] small reads (merged across the smallest gaps), computed once per profile.
#[derive(Debug, Clone, Copy, Default)]
struct KeyPlan {
    /// (task offset, length, offset in the key buffer) of each read.
    reads: [(u32, u32, u32); KEY_COUNT],
    n: usize,
    /// Offset in the key buffer of each key slot (`None`: unused slot).
    at: [Option<u32>; KEY_COUNT],
}

impl KeyPlan {
    fn compute(p: &KernelProfile) -> KeyPlan {
        // (start, end) groups, one per key to begin with, sorted by offset.
        let mut g = [(0u32, 0u32); KEY_COUNT];
        let mut n = 0usize;
        for off in p.key_offsets.iter().flatten() {
            if let Some(slot) = g.get_mut(n) {
                *slot = (*off, off.saturating_add(8));
                n += 1;
            }
        }
        let groups = g.get_mut(..n).unwrap_or(&mut []);
        groups.sort_unstable();
        let mut n = groups.len();
        // Merge the pair with the smallest gap while there are too many reads (and overlaps
        // always).
        loop {
            let mut best: Option<(usize, u32)> = None;
            for i in 0..n.saturating_sub(1) {
                let (Some(a), Some(b)) = (g.get(i), g.get(i + 1)) else {
                    break;
                };
                let gap = b.0.saturating_sub(a.1);
                let merged = b.1.max(a.1).saturating_sub(a.0);
                let overlap = b.0 < a.1;
                if (overlap || (n > KEY_READS && merged <= KEY_READ_MAX))
                    && best.is_none_or(|(_, bg)| gap < bg)
                {
                    best = Some((i, if overlap { 0 } else { gap }));
                }
            }
            let Some((i, _)) = best else { break };
            if let (Some(&a), Some(&b)) = (g.get(i), g.get(i + 1)) {
                if let Some(s) = g.get_mut(i) {
                    *s = (a.0, a.1.max(b.1));
                }
                for j in i + 1..n.saturating_sub(1) {
                    if let Some(&next) = g.get(j + 1) {
                        if let Some(s) = g.get_mut(j) {
                            *s = next;
                        }
                    }
                }
            }
            n -= 1;
        }
        let mut plan = KeyPlan::default();
        let mut at = 0u32;
        for (slot, &(start, end)) in plan.reads.iter_mut().zip(g.iter().take(n)) {
            let len = end.saturating_sub(start).min(KEY_READ_MAX);
            *slot = (start, len, at);
            at = at.saturating_add(len);
        }
        plan.n = n;
        for (k, off) in plan.at.iter_mut().zip(p.key_offsets.iter()) {
            *k = off.and_then(|off| {
                plan.reads.iter().take(n).find_map(|&(start, len, at)| {
                    (off >= start && off.saturating_add(8) <= start.saturating_add(len))
                        .then(|| at.saturating_add(off - start))
                })
            });
        }
        plan
    }

    /// Whether `[off, off + len)` of `task_struct` is covered by a key read.
    fn covers(&self, off: u32, len: u32) -> bool {
        self.reads
            .iter()
            .take(self.n)
            .any(|&(s, l, _)| off >= s && off.saturating_add(len) <= s.saturating_add(l))
    }
}

/// The key reads of the current attribution (persistent storage, so nothing is zeroed per exit).
struct KeyWindow {
    task: u64,
    loaded: bool,
    buf: [u8; KEY_BUF],
}

impl KeyWindow {
    fn load<M: GuestMemory + ?Sized>(
        &mut self,
        v: &KernelView<M>,
        plan: &KeyPlan,
        task: u64,
    ) -> Option<[u64; KEY_COUNT]> {
        self.task = task;
        self.loaded = false;
        for &(off, len, at) in plan.reads.iter().take(plan.n) {
            let dst = self
                .buf
                .get_mut(at as usize..(at as usize).checked_add(len as usize)?)?;
            v.read(task.checked_add(off as u64)?, dst).ok()?;
        }
        self.loaded = true;
        let mut k = [0u64; KEY_COUNT];
        for (slot, at) in k.iter_mut().zip(plan.at.iter()) {
            if let Some(at) = at {
                let b = self.buf.get(*at as usize..*at as usize + 8)?;
                *slot = u64::from_le_bytes(b.try_into().ok()?);
            }
        }
        Some(k)
    }

    /// Bytes at `task + off` if a key read holds them.
    fn get(&self, plan: &KeyPlan, off: u64, len: usize) -> Option<&[u8]> {
        if !self.loaded {
            return None;
        }
        for &(s, l, at) in plan.reads.iter().take(plan.n) {
            let rel = off.checked_sub(s as u64)?;
            if rel.checked_add(len as u64)? <= l as u64 {
                let at = (at as usize).checked_add(rel as usize)?;
                return self.buf.get(at..at.checked_add(len)?);
            }
        }
        None
    }
}

/// Aligned blocks of guest objects read during one attribution: fields of the same object
/// (`cred`, `struct pid`, `signal_struct`...) cost one guest read together.
struct Blocks {
    tag: [u64; BLOCKS],
    n: usize,
    next: usize,
    buf: [[u8; BLOCK]; BLOCKS],
}

impl Blocks {
    fn new() -> Self {
        Blocks {
            tag: [0; BLOCKS],
            n: 0,
            next: 0,
            buf: [[0; BLOCK]; BLOCKS],
        }
    }

    fn clear(&mut self) {
        self.n = 0;
        self.next = 0;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Span {
    off: u32,
    len: u32,
    /// Offset of this span in the window buffer.
    at: u32,
    has_key: bool,
}

/// Spans of `task_struct` read in one go, computed once per profile.
#[derive(Debug, Clone, Copy, Default)]
struct Spans {
    spans: [Span; MAX_SPANS],
    n: usize,
}

impl Spans {
    fn compute(p: &KernelProfile, keys: &KeyPlan) -> Spans {
        // Candidates: cache keys and the first step of every field program.
        let mut cand = [(0u32, 0u32, false); KEY_COUNT + shoji_shared::profile::FIELD_COUNT];
        let mut n = 0usize;
        for k in p.key_offsets.iter().flatten() {
            if let Some(c) = cand.get_mut(n) {
                *c = (*k, 8, true);
                n += 1;
            }
        }
        for prog in &p.fields {
            if let Some(s) = prog.steps().first() {
                let w = match s.op {
                    Op::Ptr => 8,
                    Op::Value | Op::Index => s.width as u32,
                    _ => 0,
                };
                if w > 0 {
                    if let Some(c) = cand.get_mut(n) {
                        *c = (s.off, w, false);
                        n += 1;
                    }
                }
            }
        }
        // What the key reads already hold is not read again.
        let mut kept = 0usize;
        for i in 0..n {
            if let Some(c) = cand.get(i).copied() {
                if !keys.covers(c.0, c.1) {
                    if let Some(slot) = cand.get_mut(kept) {
                        *slot = (c.0, c.1, false);
                    }
                    kept += 1;
                }
            }
        }
        let cand = cand.get_mut(..kept).unwrap_or(&mut []);
        cand.sort_unstable_by_key(|c| c.0);
        let mut out = Spans::default();
        let mut used = 0u32;
        let mut cur: Option<Span> = None;
        let push = |out: &mut Spans, s: Span, used: &mut u32| {
            if out.n < MAX_SPANS && used.saturating_add(s.len) as usize <= WINDOW_BYTES {
                if let Some(slot) = out.spans.get_mut(out.n) {
                    *slot = Span { at: *used, ..s };
                    out.n += 1;
                    *used = used.saturating_add(s.len);
                }
            }
        };
        for &(off, len, key) in cand.iter() {
            let end = off.saturating_add(len);
            match cur.as_mut() {
                Some(c)
                    if off <= c.off.saturating_add(c.len).saturating_add(SPAN_GAP)
                        && end.saturating_sub(c.off) <= SPAN_MAX =>
                {
                    c.len = c.len.max(end.saturating_sub(c.off));
                    c.has_key |= key;
                }
                _ => {
                    if let Some(c) = cur.take() {
                        push(&mut out, c, &mut used);
                    }
                    cur = Some(Span {
                        off,
                        len,
                        at: 0,
                        has_key: key,
                    });
                }
            }
        }
        if let Some(c) = cur {
            push(&mut out, c, &mut used);
        }
        out
    }
}

/// The parts of one `task_struct` read so far.
struct Window {
    task: u64,
    buf: [u8; WINDOW_BYTES],
    loaded: [bool; MAX_SPANS],
}

impl Window {
    fn new() -> Self {
        Window {
            task: 0,
            buf: [0; WINDOW_BYTES],
            loaded: [false; MAX_SPANS],
        }
    }

    /// Point the window at another task; stale bytes stay but are marked not loaded.
    fn reset(&mut self, task: u64) {
        self.task = task;
        self.loaded = [false; MAX_SPANS];
    }

    fn load<M: GuestMemory + ?Sized>(
        &mut self,
        v: &KernelView<M>,
        spans: &Spans,
        only_keys: bool,
    ) -> Result<(), WalkError> {
        for (i, s) in spans.spans.iter().take(spans.n).enumerate() {
            if (only_keys && !s.has_key) || self.loaded.get(i).copied().unwrap_or(true) {
                continue;
            }
            let va = self
                .task
                .checked_add(s.off as u64)
                .ok_or(WalkError::Memory(shoji_shared::MemError::BadRange))?;
            let at = s.at as usize;
            let dst = self
                .buf
                .get_mut(at..at.saturating_add(s.len as usize))
                .ok_or(WalkError::Memory(shoji_shared::MemError::BadRange))?;
            v.read(va, dst)?;
            if let Some(l) = self.loaded.get_mut(i) {
                *l = true;
            }
        }
        Ok(())
    }

    /// Bytes at `task + off` if a loaded span holds them.
    fn get(&self, spans: &Spans, off: u64, len: usize) -> Option<&[u8]> {
        for (i, s) in spans.spans.iter().take(spans.n).enumerate() {
            if !self.loaded.get(i).copied().unwrap_or(false) {
                continue;
            }
            let rel = off.checked_sub(s.off as u64)?;
            if rel.checked_add(len as u64)? <= s.len as u64 {
                let at = (s.at as usize).checked_add(rel as usize)?;
                return self.buf.get(at..at.checked_add(len)?);
            }
        }
        None
    }
}

/// Reader for one attribution: the task windows (key reads, spans), then object blocks, then
/// guest memory.
struct Reader<'a, 'v, M: GuestMemory + ?Sized> {
    view: &'a KernelView<'v, M>,
    spans: &'a Spans,
    win: &'a Window,
    plan: &'a KeyPlan,
    keys: &'a KeyWindow,
    blocks: &'a mut Blocks,
}

impl<M: GuestMemory + ?Sized> Reader<'_, '_, M> {
    fn task_bytes(&self, va: u64, len: usize) -> Option<&[u8]> {
        let off = va.checked_sub(self.win.task)?;
        // Most reads are of other objects: leave at once.
        if off >= MAX_OFFSET as u64 {
            return None;
        }
        if self.keys.task == self.win.task {
            if let Some(b) = self.keys.get(self.plan, off, len) {
                return Some(b);
            }
        }
        self.win.get(self.spans, off, len)
    }

    fn bytes(&mut self, va: u64, out: &mut [u8]) -> Option<()> {
        if let Some(b) = self.task_bytes(va, out.len()) {
            out.copy_from_slice(b);
            return Some(());
        }
        self.view.read(va, out).ok()
    }

    /// The block holding `[va, va + len)`, read once per attribution.
    fn block(&mut self, va: u64, len: usize) -> Option<&[u8]> {
        let base = va & !(BLOCK as u64 - 1);
        let rel = (va - base) as usize;
        if rel.checked_add(len)? > BLOCK {
            return None;
        }
        let b = &mut *self.blocks;
        let hit = b.tag.iter().take(b.n).position(|&t| t == base);
        let i = match hit {
            Some(i) => i,
            None => {
                let i = if b.n < BLOCKS {
                    b.n += 1;
                    b.n - 1
                } else {
                    let i = b.next % BLOCKS;
                    b.next = i + 1;
                    i
                };
                let dst = b.buf.get_mut(i)?;
                if self.view.read(base, dst).is_err() {
                    // Leave the slot unusable; the caller reads the field alone.
                    if let Some(t) = b.tag.get_mut(i) {
                        *t = u64::MAX;
                    }
                    return None;
                }
                if let Some(t) = b.tag.get_mut(i) {
                    *t = base;
                }
                i
            }
        };
        b.buf.get(i)?.get(rel..rel + len)
    }

    fn scalar(&mut self, va: u64, width: u8) -> Option<u64> {
        let n = (width as usize).min(8);
        let mut b = [0u8; 8];
        if let Some(src) = self.task_bytes(va, n) {
            b.get_mut(..n)?.copy_from_slice(src);
        } else if let Some(src) = self.block(va, n) {
            b.get_mut(..n)?.copy_from_slice(src);
        } else {
            self.view.read(va, b.get_mut(..n)?).ok()?;
        }
        Some(u64::from_le_bytes(b))
    }
}

/// What a program produced.
enum Out {
    Value([u8; 16]),
    Addr(u64),
}

/// Run a field program from `task`. Every failure is `None`.
fn run<M: GuestMemory + ?Sized>(
    r: &mut Reader<'_, '_, M>,
    half: u64,
    task: u64,
    prog: &Program,
) -> Option<Out> {
    if prog.len == 0 {
        return None;
    }
    let mut addr = task;
    let mut idx: u64 = 0;
    for s in prog.steps() {
        match s.op {
            Op::End => return None,
            Op::Ptr => {
                let p = r.scalar(addr.checked_add(s.off as u64)?, 8)?;
                if !kptr(half, p) {
                    return None;
                }
                addr = p;
            }
            Op::Add => addr = addr.checked_add(s.off as u64)?,
            Op::Index => {
                idx = r.scalar(addr.checked_add(s.off as u64)?, s.width)?;
                if idx > s.aux as u64 {
                    return None;
                }
            }
            Op::AddIndex => addr = addr.checked_add(idx.checked_mul(s.off as u64)?)?,
            Op::Value => {
                let mut v = [0u8; 16];
                let w = (s.width as usize).min(16);
                let va = addr.checked_add(s.off as u64)?;
                if w <= 8 {
                    let x = r.scalar(va, s.width)?;
                    v.get_mut(..8)?.copy_from_slice(&x.to_le_bytes());
                } else {
                    r.bytes(va, v.get_mut(..w)?)?;
                }
                return Some(Out::Value(v));
            }
        }
    }
    if addr >= half {
        Some(Out::Addr(addr))
    } else {
        None
    }
}

fn as_u64(o: Option<Out>) -> Option<u64> {
    match o? {
        Out::Value(v) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(v.get(..8)?);
            Some(u64::from_le_bytes(b))
        }
        Out::Addr(_) => None,
    }
}

fn as_u32(o: Option<Out>) -> Option<u32> {
    as_u64(o).and_then(|v| u32::try_from(v).ok())
}

fn pid_ok(v: Option<u32>) -> Option<u32> {
    v.filter(|&p| p <= PID_MAX_LIMIT)
}

fn ns_ok(v: Option<u32>) -> Option<u32> {
    v.filter(|&i| i >= NS_INUM_MIN)
}

fn comm_ok(o: Option<Out>) -> Option<[u8; 16]> {
    let Out::Value(v) = o? else {
        return None;
    };
    // A NUL within TASK_COMM_LEN, nothing but NULs after it, printable-ish before it.
    let nul = v.iter().position(|&b| b == 0)?;
    let (name, rest) = v.split_at(nul);
    if rest.iter().any(|&b| b != 0) || name.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return None;
    }
    Some(v)
}

#[derive(Clone, Copy)]
struct Entry {
    task: u64,
    /// The cache generation the entry belongs to ([`Introspector::flush`] starts a new one).
    gen: u32,
    key: [u64; KEY_COUNT],
    kthread: Option<bool>,
    id: TaskIdentity,
}

/// Hit/miss counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Attributions answered from the cache.
    pub hits: u64,
    /// Attributions that read the identity afresh.
    pub misses: u64,
}

/// Attributes VM exits to guest tasks through one validated kernel profile.
///
/// Keep one per vCPU (it holds a cache and is not synchronized).
pub struct Introspector {
    profile: KernelProfile,
    spans: Spans,
    dmap: Option<DirectMap>,
    cache: [Option<Entry>; CACHE_ENTRIES],
    gen: u32,
    next: usize,
    stats: CacheStats,
    win: Window,
    plan: KeyPlan,
    keys: KeyWindow,
    blocks: Blocks,
}

impl Introspector {
    /// Start using a profile (validated again here).
    pub fn new(profile: KernelProfile) -> Result<Introspector, ProfileError> {
        profile.validate()?;
        let plan = KeyPlan::compute(&profile);
        Ok(Introspector {
            spans: Spans::compute(&profile, &plan),
            plan,
            keys: KeyWindow {
                task: 0,
                loaded: false,
                buf: [0; KEY_BUF],
            },
            blocks: Blocks::new(),
            profile,
            dmap: None,
            cache: [None; CACHE_ENTRIES],
            gen: 0,
            next: 0,
            stats: CacheStats::default(),
            win: Window::new(),
        })
    }

    /// The active profile.
    pub fn profile(&self) -> &KernelProfile {
        &self.profile
    }

    /// Cache counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Drop every cached identity.
    pub fn flush(&mut self) {
        // O(1): a new generation; entries of older ones never match.
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.cache = [None; CACHE_ENTRIES];
        }
    }

    /// The direct map in use, if established.
    pub fn direct_map(&self) -> Option<DirectMap> {
        self.dmap
    }

    /// Establish the direct-map fast path at an exit at CPL 0 (kernel page tables): read
    /// `page_offset_base` (or take the profile's default), then verify it against a page walk of
    /// the per-CPU base. `ram_top` is the end of guest RAM.
    pub fn learn_direct_map<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        cpu: &CpuState,
        ram_top: u64,
    ) -> Result<DirectMap, DirectMapError> {
        let view = KernelView {
            mem,
            pt: cpu.pt,
            dmap: None,
        };
        let base = if self.profile.page_offset_base_va != 0 {
            view.u64(self.profile.page_offset_base_va)
                .map_err(DirectMapError::Walk)?
        } else {
            self.profile.direct_map_default
        };
        let mut probes = [0u64; 2];
        probes[0] = cpu.percpu_base().unwrap_or(0);
        // A second probe: the current task (a slab object, in the direct map).
        if let CurrentTask::PerCpu { offset } = self.profile.current {
            if let Some(pc) = cpu.percpu_base().and_then(|b| b.checked_add(offset as u64)) {
                probes[1] = view.u64(pc).unwrap_or(0);
            }
        }
        let d = DirectMap::verify(mem, &cpu.pt, base, ram_top, &probes)?;
        self.dmap = Some(d);
        Ok(d)
    }

    /// Use a direct map established elsewhere (e.g. by another vCPU's introspector).
    pub fn set_direct_map(&mut self, d: Option<DirectMap>) {
        self.dmap = d;
    }

    /// Check the profile's fingerprint against the BTF in guest memory (after a kexec the
    /// profile no longer matches). Reads `btf_len` bytes: call it rarely.
    pub fn verify_fingerprint<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        pt: &PageTables,
    ) -> Result<bool, WalkError> {
        let p = &self.profile;
        if p.btf_va == 0 || p.btf_len == 0 {
            return Ok(false);
        }
        let view = KernelView {
            mem,
            pt: *pt,
            dmap: self.dmap,
        };
        let mut h = FingerprintHasher::new();
        let mut buf = [0u8; 4096];
        let mut done = 0u64;
        let total = p.btf_len as u64;
        while done < total {
            let n = (total - done).min(4096) as usize;
            let chunk = buf.get_mut(..n).unwrap_or(&mut []);
            view.read(p.btf_va.saturating_add(done), chunk)?;
            h.update(chunk);
            done += n as u64;
        }
        Ok(<[u8; 32]>::from(h.finalize()) == p.fingerprint)
    }

    pub(crate) fn view<'m, M: GuestMemory + ?Sized>(
        &self,
        mem: &'m M,
        cpu: &CpuState,
    ) -> KernelView<'m, M> {
        KernelView {
            mem,
            pt: cpu.pt,
            dmap: self.dmap,
        }
    }

    /// Find the current task (and preempt count) at an exit.
    pub fn current<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        cpu: &CpuState,
    ) -> Result<Current, CurrentError> {
        let view = self.view(mem, cpu);
        let half = cpu.pt.mode.kernel_half();
        let base = cpu.percpu_base();
        let pre_off = self.profile.preempt_offset;
        let (task, pc) = match self.profile.current {
            CurrentTask::PerCpu { offset } => {
                let base = base.ok_or(CurrentError::NoPerCpuBase)?;
                let cur = offset as u64;
                match pre_off.map(|p| p as u64) {
                    // One read when both live in the same small window (pcpu_hot; or
                    // current_task and __preempt_count side by side, as in 6.1).
                    Some(p) if cur.abs_diff(p) < 120 => {
                        let lo = cur.min(p);
                        let len = (cur.max(p) - lo + 8) as usize;
                        let mut b = [0u8; 128];
                        let va = base.checked_add(lo).ok_or(CurrentError::NoPerCpuBase)?;
                        let dst = b.get_mut(..len).ok_or(CurrentError::NoPerCpuBase)?;
                        view.read(va, dst).map_err(CurrentError::Read)?;
                        let at = |o: u64, n: usize| b.get((o - lo) as usize..(o - lo) as usize + n);
                        let t = at(cur, 8)
                            .and_then(|s| s.try_into().ok())
                            .map(u64::from_le_bytes)
                            .ok_or(CurrentError::NoPerCpuBase)?;
                        let pc = at(p, 4)
                            .and_then(|s| s.try_into().ok())
                            .map(u32::from_le_bytes);
                        (t, pc)
                    }
                    other => {
                        let t = view
                            .u64(base.checked_add(cur).ok_or(CurrentError::NoPerCpuBase)?)
                            .map_err(CurrentError::Read)?;
                        let pc = other
                            .and_then(|p| base.checked_add(p))
                            .and_then(|va| view.u32(va).ok());
                        (t, pc)
                    }
                }
            }
            CurrentTask::StackThreadInfo {
                thread_size,
                task_offset,
            } => {
                let rsp = cpu.rsp;
                if cpu.cpl != 0 || rsp < half {
                    // At CPL 3 the RSP is the user stack: the thread_info is out of reach.
                    return Err(CurrentError::NoPerCpuBase);
                }
                let ti = rsp & !((thread_size as u64).wrapping_sub(1));
                let t = view
                    .u64(
                        ti.checked_add(task_offset as u64)
                            .ok_or(CurrentError::NoPerCpuBase)?,
                    )
                    .map_err(CurrentError::Read)?;
                let pc = match (base, pre_off) {
                    (Some(b), Some(p)) => b.checked_add(p as u64).and_then(|va| view.u32(va).ok()),
                    _ => None,
                };
                (t, pc)
            }
        };
        if !kptr(half, task) || !cpu.pt.mode.is_canonical(task) {
            return Err(CurrentError::BadTaskPointer(task));
        }
        Ok(Current {
            task,
            preempt_count: pc.map(|v| v & !preempt::NEED_RESCHED),
        })
    }

    /// Attribute an exit: the current task's identity and the context it runs in. Never fails:
    /// whatever cannot be read is unknown.
    pub fn attribute<M: GuestMemory + ?Sized>(&mut self, mem: &M, cpu: &CpuState) -> TaskIdentity {
        match self.current(mem, cpu) {
            Ok(cur) => self.identify(mem, cpu, cur),
            Err(_) => TaskIdentity::default(),
        }
    }

    /// The sender of the frames handed over at this exit, for the policy: as [`Self::attribute`]
    /// in the sender's own context; while an interrupt is served only the context and the
    /// interrupted task's address, because what an interrupt sends is not that task's doing and
    /// the policy attributes nothing to it. Saves the identity reads on the transmit path, where
    /// most frames leave from the network softirq.
    pub fn attribute_sender<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        cpu: &CpuState,
    ) -> TaskIdentity {
        let cur = match self.current(mem, cpu) {
            Ok(c) => c,
            Err(_) => return TaskIdentity::default(),
        };
        if let Some(Some(context)) = cur.preempt_count.map(irq_context) {
            return TaskIdentity {
                task: cur.task,
                context,
                ..TaskIdentity::default()
            };
        }
        self.identify(mem, cpu, cur)
    }

    /// The interrupt the exit came in, told from the per-CPU preempt count alone at
    /// `percpu_base`, read through the learnt direct map (one 4-byte read, no page walk, no other
    /// vCPU state). `Some` while a hard or soft interrupt is served; `None` when the sender runs
    /// in its own context or this cannot be told so cheaply (no direct map yet, the window outside
    /// it, a profile without a per-CPU preempt count): then [`Self::attribute_sender`] decides.
    /// What it reads only ever concludes "interrupt", which makes the policy attribute nothing.
    pub fn interrupt_context<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        percpu_base: u64,
    ) -> Option<ExecContext> {
        let CurrentTask::PerCpu { .. } = self.profile.current else {
            return None;
        };
        let va = percpu_base.checked_add(u64::from(self.profile.preempt_offset?))?;
        let gpa = self.dmap?.gpa(va, 4)?;
        let mut pc = [0u8; 4];
        mem.read(gpa, &mut pc).ok()?;
        irq_context(u32::from_le_bytes(pc))
    }

    /// The identity of the task `cur` names, with its execution context.
    fn identify<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        cpu: &CpuState,
        cur: Current,
    ) -> TaskIdentity {
        let irq = cur.preempt_count.map(irq_context);
        let (mut id, kthread) = self.identity(mem, cpu, cur.task);
        id.context = match (irq, kthread) {
            (Some(Some(c)), _) => c,
            (Some(None), Some(true)) => ExecContext::KernelThread,
            (Some(None), Some(false)) => ExecContext::Task,
            _ => ExecContext::Unknown,
        };
        id
    }

    /// The identity of the task at `task` (cached), and whether it is a kernel thread.
    pub fn identity<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        cpu: &CpuState,
        task: u64,
    ) -> (TaskIdentity, Option<bool>) {
        self.identity_with(mem, cpu, task, true)
    }

    /// The identity of the task at `task` read afresh, leaving the cache as it was: for walks
    /// over every task, which would otherwise evict the entries of the tasks that send.
    pub fn identity_uncached<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        cpu: &CpuState,
        task: u64,
    ) -> (TaskIdentity, Option<bool>) {
        self.identity_with(mem, cpu, task, false)
    }

    fn identity_with<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        cpu: &CpuState,
        task: u64,
        cached: bool,
    ) -> (TaskIdentity, Option<bool>) {
        let view = self.view(mem, cpu);
        // The cached path: the key fields only, in at most KEY_READS small reads.
        let key = self.keys.load(&view, &self.plan, task).filter(|_| cached);
        if let Some(k) = key {
            let gen = self.gen;
            for e in self.cache.iter().flatten() {
                // Word-wise comparison (no memcmp call on the hot path).
                if e.task == task
                    && e.gen == gen
                    && e.key.iter().zip(k.iter()).fold(0, |d, (a, b)| d | (a ^ b)) == 0
                {
                    self.stats.hits = self.stats.hits.wrapping_add(1);
                    return (e.id, e.kthread);
                }
            }
        }
        if cached {
            self.stats.misses = self.stats.misses.wrapping_add(1);
        }
        self.win.reset(task);
        let _ = self.win.load(&view, &self.spans, false);
        let half = cpu.pt.mode.kernel_half();
        self.blocks.clear();
        let mut r = Reader {
            view: &view,
            spans: &self.spans,
            win: &self.win,
            plan: &self.plan,
            keys: &self.keys,
            blocks: &mut self.blocks,
        };
        let (id, kthread) = read_identity(&self.profile, &mut r, half, task);
        if let Some(k) = key {
            let slot = self.next % CACHE_ENTRIES;
            if let Some(s) = self.cache.get_mut(slot) {
                *s = Some(Entry {
                    task,
                    gen: self.gen,
                    key: k,
                    kthread,
                    id,
                });
            }
            self.next = slot.wrapping_add(1);
        }
        (id, kthread)
    }
}

fn read_identity<M: GuestMemory + ?Sized>(
    p: &KernelProfile,
    r: &mut Reader<'_, '_, M>,
    half: u64,
    task: u64,
) -> (TaskIdentity, Option<bool>) {
    let kthread = task
        .checked_add(p.task_flags_off as u64)
        .and_then(|va| r.scalar(va, 4))
        .map(|f| f as u32 & PF_KTHREAD != 0);
    let mut f = |id: FieldId| run(r, half, task, p.field(id));
    let pid = pid_ok(as_u32(f(FieldId::Pid)));
    let tgid = pid_ok(as_u32(f(FieldId::Tgid)));
    let pid_local = pid_ok(as_u32(f(FieldId::PidLocal)));
    let tgid_local = pid_ok(as_u32(f(FieldId::TgidLocal)));
    let pgid = pid_ok(as_u32(f(FieldId::Pgid)));
    let uid = as_u32(f(FieldId::Uid)).filter(|&u| u != u32::MAX);
    let euid = as_u32(f(FieldId::Euid)).filter(|&u| u != u32::MAX);
    let userns_id = ns_ok(as_u32(f(FieldId::UserNsId)));
    let netns_id = ns_ok(as_u32(f(FieldId::NetNsId)));
    let pidns_id = ns_ok(as_u32(f(FieldId::PidNsId)));
    let cgroup_id = as_u64(f(FieldId::CgroupId)).filter(|&c| c != 0);
    let start_time = as_u64(f(FieldId::StartTime));
    let exe_inode = as_u64(f(FieldId::ExeInode)).filter(|&i| i != 0);
    let comm = comm_ok(f(FieldId::Comm));
    let userns_ptr = match f(FieldId::UserNsPtr) {
        Some(Out::Addr(a)) => Some(a),
        _ => None,
    };
    let uid_local = match (uid, userns_id, userns_ptr) {
        (Some(u), Some(ns), _) if ns == p.init_userns_inum => Some(u),
        (Some(u), Some(_), Some(ns)) => map_uid(r, half, p, ns, u),
        _ => None,
    };
    (
        TaskIdentity {
            task,
            context: ExecContext::Unknown,
            pid,
            tgid,
            pid_local,
            tgid_local,
            pgid,
            uid,
            euid,
            uid_local,
            userns_id,
            netns_id,
            pidns_id,
            cgroup_id,
            start_time,
            exe_inode,
            comm,
        },
        kthread,
    )
}

/// Map a global kuid to the id seen in the user namespace at `ns` (the kernel's `map_id_up`):
/// the extent with `lower_first <= kuid < lower_first + count` gives `first + kuid - lower_first`.
fn map_uid<M: GuestMemory + ?Sized>(
    r: &mut Reader<'_, '_, M>,
    half: u64,
    p: &KernelProfile,
    ns: u64,
    kuid: u32,
) -> Option<u32> {
    let l = &p.uid_map;
    if !l.is_present() {
        return None;
    }
    let map = ns.checked_add(l.map_off as u64)?;
    let nr = r.scalar(map.checked_add(l.nr_extents_off as u64)?, 4)? as u32;
    if nr == 0 || nr > l.max_extents {
        return None;
    }
    let array = if nr <= l.base_extents {
        map.checked_add(l.extents_off as u64)?
    } else {
        let f = r.scalar(map.checked_add(l.forward_off as u64)?, 8)?;
        if !kptr(half, f) {
            return None;
        }
        f
    };
    // Read extents in batches of up to 16 (one guest read each).
    let es = l.extent_size as usize;
    let mut buf = [0u8; 192];
    let per_batch = (buf.len() / es.max(1)).max(1) as u32;
    let mut i = 0u32;
    while i < nr {
        let batch = (nr - i).min(per_batch);
        let bytes = (batch as usize).checked_mul(es)?;
        let va = array.checked_add((i as u64).checked_mul(es as u64)?)?;
        let chunk = buf.get_mut(..bytes)?;
        r.view.read(va, chunk).ok()?;
        for e in chunk.chunks_exact(es) {
            let rd = |o: u32| -> Option<u64> {
                let o = o as usize;
                let b = e.get(o..o.checked_add(4)?)?;
                Some(u32::from_le_bytes(b.try_into().ok()?) as u64)
            };
            let (first, lower, count) =
                (rd(l.first_off)?, rd(l.lower_first_off)?, rd(l.count_off)?);
            let k = kuid as u64;
            if k >= lower && k < lower.checked_add(count)? {
                return u32::try_from(first.checked_add(k - lower)?).ok();
            }
        }
        i += batch;
    }
    None
}

/// Translate a per-CPU base to a guest-physical address (diagnostics).
pub fn percpu_gpa<M: GuestMemory + ?Sized>(mem: &M, cpu: &CpuState) -> Option<u64> {
    translate(mem, &cpu.pt, cpu.percpu_base()?)
        .ok()
        .map(|t| t.gpa)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn profile_with_keys(keys: &[u32]) -> KernelProfile {
        let mut p = KernelProfile::empty(CurrentTask::PerCpu { offset: 0x100 });
        for (slot, &k) in p.key_offsets.iter_mut().zip(keys) {
            *slot = Some(k);
        }
        p
    }

    /// The planned key reads as (task offset, length).
    fn reads(keys: &[u32]) -> Vec<(u32, u32)> {
        let plan = KeyPlan::compute(&profile_with_keys(keys));
        // Every key slot points at its own 8 bytes in the key buffer.
        for (i, &k) in keys.iter().enumerate() {
            let at = plan.at[i].unwrap_or_else(|| panic!("key {k:#x} not read"));
            let (s, _, base) = plan.reads[..plan.n]
                .iter()
                .copied()
                .find(|&(s, l, _)| k >= s && k + 8 <= s + l)
                .unwrap();
            assert_eq!(at, base + (k - s), "key {k:#x}");
            assert!(plan.covers(k, 8));
        }
        // The reads sit back to back in the key buffer, and cover their own bytes only.
        let mut at = 0;
        for &(s, l, a) in &plan.reads[..plan.n] {
            assert_eq!(a, at);
            at += l;
            assert!(plan.covers(s, l) && plan.covers(s + l - 1, 1));
            let alone = |o: u32, n: u32| {
                plan.reads[..plan.n]
                    .iter()
                    .all(|&(s2, l2, _)| o + n <= s2 || o >= s2 + l2 || s2 == s)
            };
            if s >= 8 && alone(s - 8, 8) {
                assert!(!plan.covers(s - 8, 8), "{s:#x}-8");
                assert!(!plan.covers(s - 1, 2), "{s:#x}-1");
            }
            if alone(s + l, 8) {
                assert!(!plan.covers(s + l - 7, 8), "{s:#x}+{l:#x}");
            }
        }
        assert!(!plan.covers(0x8000, 8));
        plan.reads[..plan.n]
            .iter()
            .map(|&(s, l, _)| (s, l))
            .collect()
    }

    #[test]
    fn debian_keys_become_three_reads_merging_the_closest_first() {
        // Debian 12's 6.1 keys (introspect/fixtures/debian12-6.1.txt).
        assert_eq!(
            reads(&[0xad8, 0x8e0, 0x9d8, 0xb90, 0xbf8, 0xe10]),
            [(0x8e0, 0x100), (0xad8, 0x128), (0xe10, 8)]
        );
    }

    #[test]
    fn the_smallest_gap_is_merged_first() {
        // Four keys, one merge needed: 0x100+0x110 (gap 8), not 0x0+0x100 (gap 0xf8).
        assert_eq!(
            reads(&[0x0, 0x100, 0x110, 0x300]),
            [(0x0, 8), (0x100, 0x18), (0x300, 8)]
        );
        // After a merge in the middle, the groups after it move down intact; then no pair fits
        // one read and four reads stay.
        assert_eq!(
            reads(&[0x0, 0x200, 0x208, 0x400, 0x600]),
            [(0x0, 8), (0x200, 0x10), (0x400, 8), (0x600, 8)]
        );
    }

    #[test]
    fn keys_too_far_apart_stay_separate_reads() {
        // No two keys fit one read of KEY_READ_MAX bytes: every key keeps its own read, even
        // past KEY_READS, and none is truncated away.
        assert_eq!(
            reads(&[0x0, 0x400, 0x800, 0xc00]),
            [(0x0, 8), (0x400, 8), (0x800, 8), (0xc00, 8)]
        );
        // Just fits: 0x0..0x140 is KEY_READ_MAX bytes.
        assert_eq!(
            reads(&[0x0, 0x138, 0x800, 0xc00]),
            [(0x0, KEY_READ_MAX), (0x800, 8), (0xc00, 8)]
        );
        // One byte more does not.
        assert_eq!(
            reads(&[0x0, 0x140, 0x800, 0xc00]),
            [(0x0, 8), (0x140, 8), (0x800, 8), (0xc00, 8)]
        );
    }

    #[test]
    fn few_keys_are_read_as_they_are_and_duplicates_once() {
        assert_eq!(reads(&[0x100, 0x110]), [(0x100, 8), (0x110, 8)]);
        assert_eq!(reads(&[0x100, 0x100]), [(0x100, 8)]);
        assert_eq!(
            reads(&[0x100, 0x200, 0x100, 0x300]),
            [(0x100, 8), (0x200, 8), (0x300, 8)]
        );
        assert_eq!(reads(&[]), []);
    }

    use shoji_shared::profile::{FieldId, Step};
    use shoji_shared::MemError;

    fn with_fields(keys: &[u32], fields: &[(FieldId, &[Step])]) -> KernelProfile {
        let mut p = profile_with_keys(keys);
        for (f, steps) in fields {
            p.fields[*f as usize] = Program::from_steps(steps).unwrap();
        }
        p.validate().unwrap();
        p
    }

    /// The spans as (task offset, length, offset in the window).
    fn spans(keys: &[u32], fields: &[(FieldId, &[Step])]) -> Vec<(u32, u32, u32)> {
        let p = with_fields(keys, fields);
        let s = Spans::compute(&p, &KeyPlan::compute(&p));
        s.spans[..s.n]
            .iter()
            .map(|s| (s.off, s.len, s.at))
            .collect()
    }

    #[test]
    fn first_steps_within_sixty_four_bytes_share_a_span() {
        let v = |off| [Step::value(off, 4)];
        assert_eq!(
            spans(
                &[],
                &[(FieldId::Pid, &v(0x100)), (FieldId::Tgid, &v(0x144))]
            ),
            [(0x100, 0x48, 0)]
        );
        assert_eq!(
            spans(
                &[],
                &[(FieldId::Pid, &v(0x100)), (FieldId::Tgid, &v(0x145))]
            ),
            [(0x100, 4, 0), (0x145, 4, 4)]
        );
        assert_eq!(
            spans(
                &[],
                &[(FieldId::Pid, &v(0x100)), (FieldId::Tgid, &v(0x2000))]
            ),
            [(0x100, 4, 0), (0x2000, 4, 4)]
        );
    }

    #[test]
    fn a_span_reads_what_each_first_step_reads() {
        assert_eq!(
            spans(
                &[],
                &[
                    (FieldId::Uid, &[Step::ptr(0x200), Step::value(8, 4)]),
                    (FieldId::Comm, &[Step::value(0x300, 16)]),
                    (
                        FieldId::PidLocal,
                        &[
                            Step::index(0x400, 2, 32),
                            Step::add_index(16),
                            Step::value(0, 4)
                        ]
                    ),
                    // An offset step reads nothing.
                    (FieldId::Pgid, &[Step::add(0x600), Step::value(0, 4)]),
                ]
            ),
            [(0x200, 8, 0), (0x300, 16, 8), (0x400, 2, 24)]
        );
    }

    #[test]
    fn spans_skip_what_the_key_reads_hold_and_stop_at_four() {
        let v = |off| [Step::value(off, 4)];
        assert_eq!(
            spans(
                &[0x100],
                &[(FieldId::Pid, &v(0x100)), (FieldId::Tgid, &v(0x108))]
            ),
            [(0x108, 4, 0)]
        );
        assert_eq!(
            spans(
                &[],
                &[
                    (FieldId::Pid, &v(0x5000)),
                    (FieldId::Tgid, &v(0x1000)),
                    (FieldId::Pgid, &v(0x2000)),
                    (FieldId::Uid, &v(0x3000)),
                    (FieldId::Euid, &v(0x4000)),
                ]
            ),
            [
                (0x1000, 4, 0),
                (0x2000, 4, 4),
                (0x3000, 4, 8),
                (0x4000, 4, 12)
            ]
        );
    }

    /// Guest memory of 1 MiB, mapped by one 1 GiB page at the start of the kernel half; counts
    /// reads.
    struct Flat {
        bytes: Vec<u8>,
        reads: core::cell::Cell<u32>,
    }

    const KVA: u64 = 0xffff_8000_0000_0000;

    impl GuestMemory for Flat {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
            self.reads.set(self.reads.get() + 1);
            let s = gpa as usize;
            buf.copy_from_slice(self.bytes.get(s..s + buf.len()).ok_or(MemError::NotRam)?);
            Ok(())
        }
        fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
            let s = gpa as usize;
            self.bytes
                .get_mut(s..s + buf.len())
                .ok_or(MemError::NotRam)?
                .copy_from_slice(buf);
            Ok(())
        }
    }

    fn flat() -> (Flat, CpuState) {
        let mut m = Flat {
            bytes: std::vec![0u8; 1 << 20],
            reads: core::cell::Cell::new(0),
        };
        // PML4[256] -> PDPT at 0x1000; PDPT[0] = 1 GiB page at 0 (present, writable, PS).
        m.write_u64(256 * 8, 0x1000 | 3).unwrap();
        m.write_u64(0x1000, 0x83).unwrap();
        let cpu = CpuState {
            cpl: 0,
            gs_base: KVA + 0x8000,
            kernel_gs_base: 0,
            rsp: KVA + 0x9000,
            pt: PageTables {
                cr3: 0,
                mode: crate::paging::PagingMode::Level4,
            },
        };
        (m, cpu)
    }

    #[test]
    fn object_blocks_are_read_once_and_the_oldest_is_replaced_first() {
        let (mut m, cpu) = flat();
        let va = |i: u64| KVA + 0x2_0000 + 32 * i;
        for i in 0..20u64 {
            m.write_u64(0x2_0000 + 32 * i, (i + 1) * 0x1111).unwrap();
        }
        let view = KernelView {
            mem: &m,
            pt: cpu.pt,
            dmap: None,
        };
        let spans = Spans::default();
        let win = Window::new();
        let plan = KeyPlan::default();
        let keys = KeyWindow {
            task: 0,
            loaded: false,
            buf: [0; KEY_BUF],
        };
        let mut blocks = Blocks::new();
        let mut r = Reader {
            view: &view,
            spans: &spans,
            win: &win,
            plan: &plan,
            keys: &keys,
            blocks: &mut blocks,
        };
        let reads = || m.reads.get();
        let read = |r: &mut Reader<'_, '_, Flat>, i: u64| {
            let before = reads();
            assert_eq!(r.scalar(va(i), 8), Some((i + 1) * 0x1111), "block {i}");
            reads() != before
        };
        for i in 0..BLOCKS as u64 {
            assert!(read(&mut r, i), "first read of block {i}");
        }
        for i in 0..BLOCKS as u64 {
            assert!(!read(&mut r, i), "block {i} again");
        }
        // Two more: blocks 0 and 1, the oldest, make room.
        assert!(read(&mut r, 16));
        assert!(read(&mut r, 17));
        for i in 2..18 {
            assert!(!read(&mut r, i), "block {i} kept");
        }
        assert!(read(&mut r, 0), "block 0 was replaced");
        // A field across a block boundary is not served from a block.
        assert!(r.block(va(3) + 24, 8).is_some());
        assert!(r.block(va(3) + 25, 8).is_none());
        // Unreadable memory: no block, no value.
        assert_eq!(r.scalar(KVA + (2 << 20), 8), None);
        // A new attribution starts with no blocks.
        r.blocks.clear();
        assert!(read(&mut r, 5));
    }

    #[test]
    fn flush_forgets_even_when_the_generation_wraps() {
        let (m, cpu) = flat();
        let mut intro = Introspector::new(profile_with_keys(&[])).unwrap();
        let task = KVA + 0x4_0000;
        intro.identity(&m, &cpu, task);
        intro.identity(&m, &cpu, task);
        assert_eq!(intro.stats(), CacheStats { hits: 1, misses: 1 });
        intro.flush();
        intro.identity(&m, &cpu, task);
        assert_eq!(intro.stats().misses, 2);
        // 2^32 flushes after an entry was made, the generation is back at the entry's own: the
        // wrap clears the cache, so the entry cannot match again.
        let mut intro = Introspector::new(profile_with_keys(&[])).unwrap();
        intro.identity(&m, &cpu, task);
        intro.gen = u32::MAX;
        intro.flush();
        assert_eq!(intro.gen, 0);
        intro.identity(&m, &cpu, task);
        assert_eq!(intro.stats(), CacheStats { hits: 0, misses: 2 });
    }
}
