//! Synthetic guest: RAM with a Shoji-owned hole, page tables, and kernel objects laid out by a
//! real kernel profile (the same field programs Shoji runs, replayed as writers).
#![allow(dead_code)]

use shoji_introspect::{CpuState, PageTables, PagingMode};
use shoji_shared::profile::{CurrentTask, FieldId, KernelProfile, Op, Program};
use shoji_shared::{GuestMemory, MemError};

pub const RAM: u64 = 32 << 20;
/// Shoji's own memory inside the physical range: never readable by introspection.
pub const HV_START: u64 = 28 << 20;
pub const HV_END: u64 = 30 << 20;

pub const P: u64 = 1;
pub const RW: u64 = 2;
pub const US: u64 = 4;
pub const PS: u64 = 0x80;
pub const NX: u64 = 1 << 63;

pub fn fixture(name: &str) -> KernelProfile {
    let path = format!("{}/fixtures/{name}.profile", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).expect("fixture");
    KernelProfile::decode(&bytes).expect("fixture decodes")
}

pub struct Ram {
    pub bytes: Vec<u8>,
}

impl GuestMemory for Ram {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let end = gpa
            .checked_add(buf.len() as u64)
            .ok_or(MemError::BadRange)?;
        if end > RAM {
            return Err(MemError::NotRam);
        }
        if gpa < HV_END && end > HV_START {
            return Err(MemError::Hypervisor);
        }
        buf.copy_from_slice(&self.bytes[gpa as usize..end as usize]);
        Ok(())
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        let end = gpa
            .checked_add(buf.len() as u64)
            .ok_or(MemError::BadRange)?;
        if end > RAM {
            return Err(MemError::NotRam);
        }
        if gpa < HV_END && end > HV_START {
            return Err(MemError::Hypervisor);
        }
        self.bytes[gpa as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
}

/// What the materialized task should show.
#[derive(Clone, Debug)]
pub struct Spec {
    pub pid: u32,
    pub tgid: u32,
    pub level: u32,
    pub pid_local: u32,
    pub tgid_local: u32,
    pub pgid: u32,
    pub uid: u32,
    pub euid: u32,
    pub userns: u32,
    pub netns: u32,
    pub pidns: u32,
    pub cgroup: u64,
    pub start: u64,
    pub exe: u64,
    pub comm: [u8; 16],
    pub flags: u32,
    /// uid_map extents (first, lower_first, count); more than 5 go to `forward`.
    pub extents: Vec<(u32, u32, u32)>,
    pub has_mm: bool,
}

impl Default for Spec {
    fn default() -> Self {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Spec {
            pid: 4242,
            tgid: 4240,
            level: 1,
            pid_local: 12,
            tgid_local: 10,
            pgid: 4200,
            uid: 100_000,
            euid: 100_000,
            userns: 0xF000_0123,
            netns: 0xF000_0456,
            pidns: 0xF000_0789,
            cgroup: 0x1234,
            start: 987_654_321,
            exe: 131_077,
            comm,
            flags: 0x0040_0100,
            extents: vec![(0, 100_000, 65536)],
            has_mm: true,
        }
    }
}

pub struct Guest {
    pub mem: Ram,
    pub mode: PagingMode,
    pub cr3: u64,
    next: u64,
    pub dmap_base: u64,
    pub percpu: u64,
    pub profile: KernelProfile,
}

impl Guest {
    pub fn new(profile: KernelProfile, mode: PagingMode) -> Guest {
        let mut g = Guest {
            mem: Ram {
                bytes: vec![0; RAM as usize],
            },
            mode,
            cr3: 0,
            next: 0x10_0000,
            dmap_base: match mode {
                PagingMode::Level4 => 0xffff_9d40_0000_0000,
                PagingMode::Level5 => 0xff3b_0000_0000_0000,
            },
            percpu: 0,
            profile,
        };
        g.cr3 = g.alloc(4096);
        // Direct map of all RAM with 2 MiB pages (the first GiB) — supervisor, writable, NX.
        let mut pa = 0;
        while pa < RAM {
            g.map(g.dmap_base + pa, pa, 2 << 20, P | RW | NX);
            pa += 2 << 20;
        }
        // page_offset_base lives in the kernel image mapping (4 KiB page).
        if g.profile.page_offset_base_va != 0 {
            let va = g.profile.page_offset_base_va;
            let page = g.alloc(4096);
            g.map(va & !0xfff, page, 4096, P | RW);
            let base = g.dmap_base;
            g.w64(page + (va & 0xfff), base);
        }
        g.percpu = g.alloc(0x40000);
        g
    }

    pub fn alloc(&mut self, size: u64) -> u64 {
        let align = 4096;
        let pa = (self.next + align - 1) & !(align - 1);
        self.next = pa + size;
        assert!(self.next < HV_START, "synthetic RAM exhausted");
        pa
    }

    pub fn va(&self, pa: u64) -> u64 {
        self.dmap_base + pa
    }

    pub fn pa(&self, va: u64) -> u64 {
        va - self.dmap_base
    }

    pub fn w64(&mut self, pa: u64, v: u64) {
        self.mem.write(pa, &v.to_le_bytes()).unwrap();
    }
    pub fn w32(&mut self, pa: u64, v: u32) {
        self.mem.write(pa, &v.to_le_bytes()).unwrap();
    }
    pub fn r64(&self, pa: u64) -> u64 {
        self.mem.read_u64(pa).unwrap()
    }

    /// Map one page of `size` (4K, 2M, 1G) with leaf flags; intermediate tables get P|RW|US.
    pub fn map(&mut self, va: u64, pa: u64, size: u64, flags: u64) {
        self.map_with(va, pa, size, flags, P | RW | US)
    }

    pub fn map_with(&mut self, va: u64, pa: u64, size: u64, flags: u64, inter: u64) {
        let levels = match self.mode {
            PagingMode::Level4 => 4,
            PagingMode::Level5 => 5,
        };
        let leaf_level = match size {
            0x1000 => 1,
            0x20_0000 => 2,
            0x4000_0000 => 3,
            _ => panic!("bad size"),
        };
        let mut table = self.cr3;
        let mut level = levels;
        while level > leaf_level {
            let idx = (va >> (12 + 9 * (level - 1))) & 0x1ff;
            let ea = table + idx * 8;
            let e = self.r64(ea);
            table = if e & P == 0 {
                let t = self.alloc(4096);
                self.w64(ea, t | inter);
                t
            } else {
                e & 0x000f_ffff_ffff_f000
            };
            level -= 1;
        }
        let idx = (va >> (12 + 9 * (leaf_level - 1))) & 0x1ff;
        let ps = if leaf_level > 1 { PS } else { 0 };
        self.w64(table + idx * 8, pa | flags | ps);
    }

    pub fn pt(&self) -> PageTables {
        PageTables {
            cr3: self.cr3,
            mode: self.mode,
        }
    }

    pub fn cpu(&self) -> CpuState {
        CpuState {
            cpl: 0,
            gs_base: self.va(self.percpu),
            kernel_gs_base: 0,
            rsp: 0xffff_c900_0000_3f00,
            pt: self.pt(),
        }
    }

    /// Set the per-CPU current task and preempt count.
    pub fn set_current(&mut self, task_va: u64, preempt: u32) {
        let cur = match self.profile.current {
            CurrentTask::PerCpu { offset } => offset as u64,
            CurrentTask::StackThreadInfo { .. } => panic!("per-cpu only"),
        };
        let pc = self.percpu;
        self.w64(pc + cur, task_va);
        if let Some(p) = self.profile.preempt_offset {
            self.w32(pc + p as u64, preempt);
        }
    }

    pub fn set_preempt(&mut self, preempt: u32) {
        if let Some(p) = self.profile.preempt_offset {
            let pc = self.percpu;
            self.w32(pc + p as u64, preempt);
        }
    }

    /// Run `prog` from `task` as a writer: allocate objects for unset pointers, write the
    /// index `level` where an index is read, and finally the value bytes.
    fn write_prog(&mut self, task_pa: u64, prog: &Program, level: u32, value: &[u8]) -> u64 {
        let mut pa = task_pa;
        let mut idx = 0u64;
        for s in prog.steps() {
            match s.op {
                Op::Ptr => {
                    let at = pa + s.off as u64;
                    let p = self.r64(at);
                    pa = if p == 0 {
                        let o = self.alloc(0x2000);
                        let va = self.va(o);
                        self.w64(at, va);
                        o
                    } else {
                        self.pa(p)
                    };
                }
                Op::Add => pa += s.off as u64,
                Op::Index => {
                    let at = pa + s.off as u64;
                    self.mem
                        .write(at, &level.to_le_bytes()[..s.width as usize])
                        .unwrap();
                    idx = level as u64;
                }
                Op::AddIndex => pa += idx * s.off as u64,
                Op::Value => {
                    self.mem
                        .write(pa + s.off as u64, &value[..s.width as usize])
                        .unwrap();
                }
                Op::End => {}
            }
        }
        pa
    }

    /// Lay out a task per `spec`; returns the task's virtual address.
    pub fn make_task(&mut self, spec: &Spec) -> u64 {
        let task = self.alloc(0x4000);
        let p = self.profile;
        let f = |id: FieldId| *p.field(id);
        self.w32(task + p.task_flags_off as u64, spec.flags);
        let u32v = |v: u32| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.to_le_bytes());
            b
        };
        let u64v = |v: u64| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&v.to_le_bytes());
            b
        };
        let l = spec.level;
        // Global numbers first (level 0), then local ones at `level`.
        for (id, v) in [
            (FieldId::Pid, spec.pid),
            (FieldId::Tgid, spec.tgid),
            (FieldId::Pgid, spec.pgid),
            (FieldId::Uid, spec.uid),
            (FieldId::Euid, spec.euid),
            (FieldId::UserNsId, spec.userns),
            (FieldId::NetNsId, spec.netns),
        ] {
            self.write_prog(task, &f(id), 0, &u32v(v));
        }
        self.write_prog(task, &f(FieldId::PidLocal), l, &u32v(spec.pid_local));
        self.write_prog(task, &f(FieldId::TgidLocal), l, &u32v(spec.tgid_local));
        self.write_prog(task, &f(FieldId::PidNsId), l, &u32v(spec.pidns));
        self.write_prog(task, &f(FieldId::CgroupId), 0, &u64v(spec.cgroup));
        self.write_prog(task, &f(FieldId::StartTime), 0, &u64v(spec.start));
        if spec.has_mm {
            self.write_prog(task, &f(FieldId::ExeInode), 0, &u64v(spec.exe));
        }
        self.write_prog(task, &f(FieldId::Comm), 0, &spec.comm);
        let ns = self.write_prog(task, &f(FieldId::UserNsPtr), 0, &[]);
        let m = p.uid_map;
        let map = ns + m.map_off as u64;
        self.w32(map + m.nr_extents_off as u64, spec.extents.len() as u32);
        let array = if spec.extents.len() as u32 <= m.base_extents {
            map + m.extents_off as u64
        } else {
            let a = self.alloc(4096);
            let va = self.va(a);
            self.w64(map + m.forward_off as u64, va);
            a
        };
        for (i, &(first, lower, count)) in spec.extents.iter().enumerate() {
            let e = array + i as u64 * m.extent_size as u64;
            self.w32(e + m.first_off as u64, first);
            self.w32(e + m.lower_first_off as u64, lower);
            self.w32(e + m.count_off as u64, count);
        }
        self.va(task)
    }

    /// Physical address of a task field's pointer slot (`task + off`).
    pub fn task_slot(&self, task_va: u64, off: u32) -> u64 {
        self.pa(task_va) + off as u64
    }
}
