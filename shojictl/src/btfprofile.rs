//! Build a [`KernelProfile`] from a kernel's BTF and its symbol table (`/proc/kallsyms` or a
//! `System.map`, same text format).
//!
//! Every offset comes from the BTF of the kernel the profile is for; nothing is compiled in except
//! the ABI constants Linux never changed (the preempt-count masks, `PF_KTHREAD`).

use std::collections::HashMap;
use std::fmt::Write as _;

use shoji_shared::btf::{Btf, Kind, Type};
use shoji_shared::profile::{
    fingerprint, CurrentTask, FieldId, KernelProfile, Program, Step, TaskWalk, UidMapLayout,
    KEY_COUNT,
};

/// Kernel symbols: name → address.
#[derive(Debug, Default, Clone)]
pub struct Symbols {
    map: HashMap<String, u64>,
}

impl Symbols {
    /// Parse kallsyms / System.map text (`ADDR TYPE NAME [\[module\]]`). Module symbols are skipped.
    pub fn parse(text: &str) -> Symbols {
        let mut map = HashMap::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(a), Some(_t), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if it.next().is_some() {
                continue;
            }
            if let Ok(addr) = u64::from_str_radix(a, 16) {
                map.entry(name.to_string()).or_insert(addr);
            }
        }
        Symbols { map }
    }

    /// Address of a symbol.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.map.get(name).copied()
    }

    /// Whether addresses are hidden (kptr_restrict: every address reads as 0).
    pub fn addresses_hidden(&self) -> bool {
        !self.map.is_empty() && self.map.values().all(|&a| a == 0)
    }
}

/// Options for building a profile.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Kernel release string (`uname -r`).
    pub release: String,
    /// THREAD_SIZE, for kernels that need the stack/`thread_info` method.
    pub thread_size: u32,
}

/// A profile and notes on how it was derived.
#[derive(Debug, Clone)]
pub struct Built {
    /// The profile.
    pub profile: KernelProfile,
    /// Human-readable notes (which layout was found, fallbacks taken).
    pub notes: Vec<String>,
}

/// The guest kernel's BTF with the two indexes the builder needs: types by id and ids by name.
struct Ctx<'a> {
    btf: Btf<'a>,
    /// `types[id - 1]` is type `id`.
    types: Vec<Type<'a>>,
    /// Named types' ids, in id order.
    by_name: HashMap<&'a str, Vec<u32>>,
}

/// A structure member: byte offset, type id and bitfield width (0: not a bitfield).
#[derive(Debug, Clone, Copy)]
struct Mem {
    off: u32,
    ty: u32,
    bits: u8,
}

/// How error messages name a kind.
fn kind_name(k: Kind) -> String {
    format!("{k:?}").to_lowercase()
}

impl<'a> Ctx<'a> {
    fn new(btf: Btf<'a>) -> Result<Ctx<'a>, String> {
        let mut types = Vec::with_capacity(btf.count() as usize);
        let mut by_name: HashMap<&'a str, Vec<u32>> = HashMap::new();
        for (id, t) in btf.types() {
            let name = btf.name(t.name_off).map_err(s)?;
            if !name.is_empty() {
                by_name.entry(name).or_default().push(id);
            }
            types.push(t);
        }
        Ok(Ctx {
            btf,
            types,
            by_name,
        })
    }

    fn ty(&self, id: u32) -> Result<Type<'a>, String> {
        let i = (id as usize).wrapping_sub(1);
        self.types
            .get(i)
            .copied()
            .ok_or_else(|| format!("BTF type {id}: no such type"))
    }

    fn named(&self, name: &str) -> impl Iterator<Item = (u32, Type<'a>)> + '_ {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|&id| Some((id, self.ty(id).ok()?)))
    }

    fn name(&self, off: u32) -> &'a str {
        self.btf.name(off).unwrap_or_default()
    }

    /// The id past typedefs, qualifiers and type tags.
    fn strip_id(&self, mut id: u32) -> Result<u32, String> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            if !t.kind.is_modifier() {
                return Ok(id);
            }
            id = t.size_or_type;
        }
        Err("BTF type chain too long".into())
    }

    /// The type past typedefs, qualifiers and type tags.
    fn strip(&self, id: u32) -> Result<Type<'a>, String> {
        self.ty(self.strip_id(id)?)
    }

    fn struct_id(&self, name: &str) -> Result<u32, String> {
        self.named(name)
            .find(|(_, t)| t.kind == Kind::Struct && t.vlen > 0)
            .map(|(id, _)| id)
            .ok_or_else(|| format!("struct {name} not in BTF"))
    }

    fn size_of(&self, id: u32) -> Result<u32, String> {
        let t = self.strip(id)?;
        Ok(match t.kind {
            Kind::Struct | Kind::Union | Kind::Int | Kind::Enum => t.size_or_type,
            Kind::Ptr => 8,
            Kind::Array => {
                let a = t.array().ok_or("BTF array without its record")?;
                a.len.saturating_mul(self.size_of(a.elem)?)
            }
            k => return Err(format!("no size for BTF {}", kind_name(k))),
        })
    }

    /// Find member `name` in the struct/union `id`, looking into anonymous members.
    fn member_in(&self, id: u32, name: &str, depth: u32) -> Result<Option<Mem>, String> {
        if depth > 8 {
            return Ok(None);
        }
        let st = self.strip(id)?;
        if !matches!(st.kind, Kind::Struct | Kind::Union) {
            return Ok(None);
        }
        for m in st.members() {
            let mname = self.name(m.name_off);
            let off = m.bit_offset;
            if mname == name {
                if off % 8 != 0 {
                    return Err(format!("member {name} is a bitfield"));
                }
                return Ok(Some(Mem {
                    off: off / 8,
                    ty: m.ty,
                    bits: m.bitfield_size,
                }));
            }
            if mname.is_empty() {
                if let Some(inner) = self.member_in(m.ty, name, depth + 1)? {
                    return Ok(Some(Mem {
                        off: off / 8 + inner.off,
                        ty: inner.ty,
                        bits: inner.bits,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Resolve a dotted path (`"a.b.c"`) from struct `sname`: byte offset and final type id.
    fn path(&self, sname: &str, path: &str) -> Result<Mem, String> {
        let mut id = self.struct_id(sname)?;
        let mut off = 0u32;
        let mut ty = id;
        let mut bits = 0;
        for part in path.split('.') {
            let m = self
                .member_in(id, part, 0)?
                .ok_or_else(|| format!("{sname}.{path}: no member {part}"))?;
            off += m.off;
            ty = m.ty;
            id = m.ty;
            bits = m.bits;
        }
        Ok(Mem { off, ty, bits })
    }

    /// Offset of a pointer member, checking that it is a pointer.
    fn ptr(&self, sname: &str, path: &str) -> Result<u32, String> {
        let m = self.path(sname, path)?;
        match self.strip(m.ty)?.kind {
            Kind::Ptr => Ok(m.off),
            k => Err(format!(
                "{sname}.{path} is a {}, not a pointer",
                kind_name(k)
            )),
        }
    }

    /// Offset of an integer member of `width` bytes (not a bitfield).
    fn int(&self, sname: &str, path: &str, width: u32) -> Result<u32, String> {
        let m = self.path(sname, path)?;
        if m.bits != 0 {
            return Err(format!("{sname}.{path} is a {}-bit bitfield", m.bits));
        }
        let sz = self.size_of(m.ty)?;
        if sz != width {
            return Err(format!("{sname}.{path} is {sz} bytes, expected {width}"));
        }
        Ok(m.off)
    }

    /// The value of enumerator `member` of a 32-bit enum: of the enum named `ename`, or of the
    /// first enum (in id order) that has it when `ename` is `None` (for anonymous enums).
    fn enumerator(&self, ename: Option<&str>, member: &str) -> Option<u32> {
        let value_in = |t: &Type<'a>| {
            t.enumerators()
                .find(|e| self.name(e.name_off) == member)
                .map(|e| e.value as u32)
        };
        match ename {
            Some(n) => self
                .named(n)
                .filter(|(_, t)| t.kind == Kind::Enum)
                .find_map(|(_, t)| value_in(&t)),
            None => self
                .types
                .iter()
                .filter(|t| t.kind == Kind::Enum)
                .find_map(value_in),
        }
    }

    fn enum_value(&self, ename: &str, member: &str) -> Result<u32, String> {
        if !self.by_name.contains_key(ename) {
            return Err(format!("enum {ename} not in BTF"));
        }
        self.enumerator(Some(ename), member)
            .ok_or_else(|| format!("enum {ename} has no {member}"))
    }

    /// Array length of a member.
    fn array_len(&self, ty: u32) -> Result<(u32, u32), String> {
        let t = self.strip(ty)?;
        match t.array() {
            Some(a) => Ok((a.len, a.elem)),
            None => Err(format!("expected an array, found {}", kind_name(t.kind))),
        }
    }

    /// Per-CPU variable offsets from the BTF `.data..percpu` DATASEC.
    fn percpu_vars(&self) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        for (_, ds) in self.named(".data..percpu") {
            for v in ds.section_vars() {
                if let Ok(var) = self.ty(v.ty) {
                    if var.kind == Kind::Var {
                        out.insert(self.name(var.name_off).to_owned(), v.offset);
                    }
                }
            }
        }
        out
    }
}

fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn prog(steps: &[Step]) -> Result<Program, String> {
    Program::from_steps(steps).ok_or_else(|| "program too long".to_string())
}

/// The task-list and socket walk: `init_task` from the symbols, every offset from the BTF.
fn task_walk(c: &Ctx<'_>, symbols: &Symbols) -> Result<TaskWalk, String> {
    if symbols.addresses_hidden() {
        return Err("init_task unknown: symbol addresses are hidden".into());
    }
    let init_task_va = symbols
        .get("init_task")
        .ok_or("init_task unknown: not in the symbols")?;
    let t = "task_struct";
    let tasks = c.path(t, "tasks")?;
    let lh = c.strip(tasks.ty)?;
    if lh.kind != Kind::Struct || c.name(lh.name_off) != "list_head" {
        return Err("task_struct.tasks is not a struct list_head".into());
    }
    // sock_common is struct sock's first member; its offsets are offsets in struct sock.
    let skc = |name: &str, width: u32| c.int("sock", &format!("__sk_common.{name}"), width);
    let v6 = |name: &str| -> Result<Option<u32>, String> {
        let Ok(m) = c.path("sock", &format!("__sk_common.{name}")) else {
            return Ok(None); // no IPv6 in this kernel
        };
        match c.size_of(m.ty)? {
            16 => Ok(Some(m.off)),
            n => Err(format!("sock.{name} is {n} bytes, expected 16")),
        }
    };
    let proto = c.path("sock", "sk_protocol")?;
    if proto.bits != 0 {
        return Err(format!("sock.sk_protocol is a {}-bit bitfield", proto.bits));
    }
    let protocol_width = c.size_of(proto.ty)?;
    if !matches!(protocol_width, 1 | 2) {
        return Err(format!(
            "sock.sk_protocol is {protocol_width} bytes, expected 1 or 2"
        ));
    }
    let w = TaskWalk {
        init_task_va,
        tasks_off: tasks.off,
        files_off: c.ptr(t, "files")?,
        fdt_off: c.ptr("files_struct", "fdt")?,
        max_fds_off: c.int("fdtable", "max_fds", 4)?,
        fd_off: c.ptr("fdtable", "fd")?,
        f_inode_off: c.ptr("file", "f_inode")?,
        i_mode_off: c.int("inode", "i_mode", 2)?,
        private_data_off: c.ptr("file", "private_data")?,
        sk_off: c.ptr("socket", "sk")?,
        family_off: skc("skc_family", 2)?,
        state_off: skc("skc_state", 1)?,
        daddr_off: skc("skc_daddr", 4)?,
        rcv_saddr_off: skc("skc_rcv_saddr", 4)?,
        dport_off: skc("skc_dport", 2)?,
        num_off: skc("skc_num", 2)?,
        v6_daddr_off: v6("skc_v6_daddr")?,
        v6_rcv_saddr_off: v6("skc_v6_rcv_saddr")?,
        protocol_off: proto.off,
        protocol_width,
        type_off: c.int("sock", "sk_type", 2)?,
    };
    w.validate()
        .map_err(|e| format!("derived offsets do not validate: {e:?}"))?;
    Ok(w)
}

/// Build a profile from BTF bytes and symbol text.
pub fn build(btf_bytes: &[u8], symbols: &Symbols, opts: &BuildOptions) -> Result<Built, String> {
    let btf = Btf::parse(btf_bytes).map_err(|e| format!("cannot parse BTF: {e}"))?;
    let c = Ctx::new(btf)?;
    let mut notes = Vec::new();
    let percpu = c.percpu_vars();
    let sym_pc = |name: &str| -> Option<u32> {
        let v = symbols
            .get(name)
            .filter(|_| !symbols.addresses_hidden())
            .or_else(|| percpu.get(name).map(|&o| o as u64))?;
        u32::try_from(v).ok()
    };

    // Current task and preempt count.
    let (current, preempt) = if c.struct_id("pcpu_hot").is_ok() && sym_pc("pcpu_hot").is_some() {
        let base = sym_pc("pcpu_hot").unwrap_or(0);
        let cur = c.ptr("pcpu_hot", "current_task")?;
        let pc = c.int("pcpu_hot", "preempt_count", 4)?;
        notes.push(format!(
            "current task: pcpu_hot (per-cpu {base:#x}) .current_task +{cur:#x}, .preempt_count +{pc:#x}"
        ));
        (CurrentTask::PerCpu { offset: base + cur }, Some(base + pc))
    } else if let Some(ct) = sym_pc("current_task") {
        let pc = sym_pc("__preempt_count");
        notes.push(format!(
            "current task: per-cpu current_task at {ct:#x}, __preempt_count at {}",
            pc.map(|p| format!("{p:#x}")).unwrap_or_else(|| "?".into())
        ));
        (CurrentTask::PerCpu { offset: ct }, pc)
    } else if let Ok(ti) = c.ptr("thread_info", "task") {
        notes.push(format!(
            "current task: thread_info at the stack base (THREAD_SIZE {:#x}), .task +{ti:#x}",
            opts.thread_size
        ));
        (
            CurrentTask::StackThreadInfo {
                thread_size: opts.thread_size,
                task_offset: ti,
            },
            sym_pc("__preempt_count"),
        )
    } else {
        return Err(
            "cannot locate the current task: no pcpu_hot, current_task nor thread_info.task".into(),
        );
    };
    if let (CurrentTask::PerCpu { offset }, Some(v)) = (current, percpu.get("current_task")) {
        if *v != offset {
            notes.push(format!(
                "warning: BTF puts current_task at {v:#x}, symbols at {offset:#x}"
            ));
        }
    }

    let mut p = KernelProfile::empty(current);
    p.preempt_offset = preempt;
    p.fingerprint = fingerprint(btf_bytes);
    let rel = opts.release.as_bytes();
    let n = rel.len().min(63);
    p.release[..n].copy_from_slice(&rel[..n]);
    p.task_flags_off = c.int("task_struct", "flags", 4)?;
    if !symbols.addresses_hidden() {
        if let (Some(a), Some(b)) = (symbols.get("__start_BTF"), symbols.get("__stop_BTF")) {
            if b > a && b - a == btf_bytes.len() as u64 {
                p.btf_va = a;
                p.btf_len = (b - a) as u32;
            } else {
                notes.push("warning: __start_BTF..__stop_BTF does not match the BTF size".into());
            }
        }
        p.page_offset_base_va = symbols.get("page_offset_base").unwrap_or(0);
    }
    if p.page_offset_base_va == 0 {
        notes.push("page_offset_base unknown: direct map base must be learned otherwise".into());
    }
    // PROC_USER_INIT_INO from the kernel's anonymous proc enum, if we can find it.
    p.init_userns_inum = c
        .enumerator(None, "PROC_USER_INIT_INO")
        .unwrap_or(0xEFFF_FFFD);

    // task_struct members.
    let t = "task_struct";
    let thread_pid = c.ptr(t, "thread_pid")?;
    let signal = c.ptr(t, "signal")?;
    let cred = c.ptr(t, "cred")?;
    let nsproxy = c.ptr(t, "nsproxy")?;
    let cgroups = c.ptr(t, "cgroups")?;
    let mm = c.ptr(t, "mm")?;
    let start_time = c.int(t, "start_time", 8)?;
    let comm = c.path(t, "comm")?;
    if c.size_of(comm.ty)? != 16 {
        return Err("task_struct.comm is not 16 bytes".into());
    }

    // struct pid / upid.
    let level = c.int("pid", "level", 4)?;
    let numbers = c.path("pid", "numbers")?;
    let (_, upid_ty) = c.array_len(numbers.ty)?;
    let upid_size = c.size_of(upid_ty)?;
    let upid_nr = c.int("upid", "nr", 4)?;
    let upid_ns = c.ptr("upid", "ns")?;
    let pidns_inum = c.int("pid_namespace", "ns.inum", 4)?;
    let nr = numbers.off + upid_nr;
    const MAX_LEVEL: u16 = 32; // MAX_PID_NS_LEVEL

    let f = |p: &mut KernelProfile, id: FieldId, steps: &[Step]| -> Result<(), String> {
        p.fields[id as usize] = prog(steps)?;
        Ok(())
    };
    f(&mut p, FieldId::Pid, &[Step::value(c.int(t, "pid", 4)?, 4)])?;
    f(
        &mut p,
        FieldId::Tgid,
        &[Step::value(c.int(t, "tgid", 4)?, 4)],
    )?;
    let local = |first: &[Step]| -> Vec<Step> {
        let mut v = first.to_vec();
        v.extend([
            Step::index(level, 4, MAX_LEVEL),
            Step::add_index(upid_size),
            Step::value(nr, 4),
        ]);
        v
    };
    f(&mut p, FieldId::PidLocal, &local(&[Step::ptr(thread_pid)]))?;
    // signal->pids[] (≥ 4.19 has PIDTYPE_TGID there); otherwise group_leader->thread_pid.
    let sig_pids = c.path("signal_struct", "pids").ok();
    let tgid_type = c.enum_value("pid_type", "PIDTYPE_TGID").ok();
    match (sig_pids, tgid_type) {
        (Some(sp), Some(tg)) => {
            f(
                &mut p,
                FieldId::TgidLocal,
                &local(&[Step::ptr(signal), Step::ptr(sp.off + 8 * tg)]),
            )?;
        }
        _ => {
            let gl = c.ptr(t, "group_leader")?;
            notes.push("tgid_local via group_leader->thread_pid".into());
            f(
                &mut p,
                FieldId::TgidLocal,
                &local(&[Step::ptr(gl), Step::ptr(thread_pid)]),
            )?;
        }
    }
    if let (Some(sp), Ok(pg)) = (sig_pids, c.enum_value("pid_type", "PIDTYPE_PGID")) {
        f(
            &mut p,
            FieldId::Pgid,
            &[
                Step::ptr(signal),
                Step::ptr(sp.off + 8 * pg),
                Step::value(nr, 4),
            ],
        )?;
    } else {
        notes.push("pgid unknown: signal_struct.pids[PIDTYPE_PGID] not found".into());
    }
    let uid = c.int("cred", "uid.val", 4)?;
    let euid = c.int("cred", "euid.val", 4)?;
    let user_ns = c.ptr("cred", "user_ns")?;
    let userns_inum = c.int("user_namespace", "ns.inum", 4)?;
    f(
        &mut p,
        FieldId::Uid,
        &[Step::ptr(cred), Step::value(uid, 4)],
    )?;
    f(
        &mut p,
        FieldId::Euid,
        &[Step::ptr(cred), Step::value(euid, 4)],
    )?;
    f(
        &mut p,
        FieldId::UserNsId,
        &[
            Step::ptr(cred),
            Step::ptr(user_ns),
            Step::value(userns_inum, 4),
        ],
    )?;
    f(
        &mut p,
        FieldId::UserNsPtr,
        &[Step::ptr(cred), Step::ptr(user_ns)],
    )?;
    let net_ns = c.ptr("nsproxy", "net_ns")?;
    let net_inum = c.int("net", "ns.inum", 4)?;
    f(
        &mut p,
        FieldId::NetNsId,
        &[
            Step::ptr(nsproxy),
            Step::ptr(net_ns),
            Step::value(net_inum, 4),
        ],
    )?;
    f(
        &mut p,
        FieldId::PidNsId,
        &[
            Step::ptr(thread_pid),
            Step::index(level, 4, MAX_LEVEL),
            Step::add_index(upid_size),
            Step::ptr(numbers.off + upid_ns),
            Step::value(pidns_inum, 4),
        ],
    )?;
    match (
        c.ptr("css_set", "dfl_cgrp"),
        c.ptr("cgroup", "kn"),
        c.int("kernfs_node", "id", 8),
    ) {
        (Ok(dfl), Ok(kn), Ok(id)) => f(
            &mut p,
            FieldId::CgroupId,
            &[
                Step::ptr(cgroups),
                Step::ptr(dfl),
                Step::ptr(kn),
                Step::value(id, 8),
            ],
        )?,
        (a, b, d) => notes.push(format!(
            "cgroup id unknown: {}",
            [a.err(), b.err(), d.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
    f(&mut p, FieldId::StartTime, &[Step::value(start_time, 8)])?;
    f(
        &mut p,
        FieldId::ExeInode,
        &[
            Step::ptr(mm),
            Step::ptr(c.ptr("mm_struct", "exe_file")?),
            Step::ptr(c.ptr("file", "f_inode")?),
            Step::value(c.int("inode", "i_ino", 8)?, 8),
        ],
    )?;
    f(&mut p, FieldId::Comm, &[Step::value(comm.off, 16)])?;

    // uid_map layout.
    let map = c.path("user_namespace", "uid_map")?;
    let map_ty = c.strip_id(map.ty)?;
    let ext = c
        .member_in(map_ty, "extent", 0)?
        .ok_or("uid_gid_map has no extent[]")?;
    let (base_extents, ext_ty) = c.array_len(ext.ty)?;
    p.uid_map = UidMapLayout {
        map_off: map.off,
        nr_extents_off: c
            .member_in(map_ty, "nr_extents", 0)?
            .ok_or("uid_gid_map has no nr_extents")?
            .off,
        extents_off: ext.off,
        forward_off: c
            .member_in(map_ty, "forward", 0)?
            .ok_or("uid_gid_map has no forward")?
            .off,
        extent_size: c.size_of(ext_ty)?,
        first_off: c.int("uid_gid_extent", "first", 4)?,
        lower_first_off: c.int("uid_gid_extent", "lower_first", 4)?,
        count_off: c.int("uid_gid_extent", "count", 4)?,
        base_extents,
        max_extents: 340,
    };

    // Cache key: what changes a running task's identity without changing its address.
    let keys = [start_time, mm, thread_pid, cred, nsproxy, cgroups];
    debug_assert_eq!(keys.len(), KEY_COUNT);
    for (k, v) in p.key_offsets.iter_mut().zip(keys) {
        *k = Some(v);
    }

    // Task walk (optional: without it the rest of the profile still works).
    match task_walk(&c, symbols) {
        Ok(w) => p.walk = Some(w),
        Err(e) => notes.push(format!("task walk unavailable: {e}")),
    }
    p.validate()
        .map_err(|e| format!("built profile does not validate: {e:?}"))?;
    Ok(Built { profile: p, notes })
}

fn fmt_steps(p: &Program) -> String {
    if p.len == 0 {
        return "(unknown)".into();
    }
    let mut out = String::from("task");
    for st in p.steps() {
        use shoji_shared::profile::Op;
        let _ = match st.op {
            Op::Ptr => write!(out, " ->[{:#x}]", st.off),
            Op::Add => write!(out, " +{:#x}", st.off),
            Op::Index => write!(out, " idx=u{}@{:#x}(<={})", st.width * 8, st.off, st.aux),
            Op::AddIndex => write!(out, " +idx*{:#x}", st.off),
            Op::Value => write!(out, " value u{}@{:#x}", st.width as u32 * 8, st.off),
            Op::End => Ok(()),
        };
    }
    out
}

/// Human-readable rendering of a profile (also the text fixture format).
pub fn describe(p: &KernelProfile) -> String {
    let mut o = String::new();
    let hex: String = p.fingerprint.iter().map(|b| format!("{b:02x}")).collect();
    let _ = writeln!(
        o,
        "kernel profile v{}",
        shoji_shared::profile::PROFILE_VERSION
    );
    let _ = writeln!(o, "release            {}", p.release_str());
    let _ = writeln!(o, "fingerprint        sha256(btf) {hex}");
    let _ = writeln!(o, "btf                va {:#x} len {}", p.btf_va, p.btf_len);
    match p.current {
        CurrentTask::PerCpu { offset } => {
            let _ = writeln!(o, "current task       per-cpu [gs_base + {offset:#x}]");
        }
        CurrentTask::StackThreadInfo {
            thread_size,
            task_offset,
        } => {
            let _ = writeln!(
                o,
                "current task       thread_info at rsp & ~{:#x}, task at +{task_offset:#x}",
                thread_size - 1
            );
        }
    }
    let _ = writeln!(
        o,
        "preempt count      {}",
        p.preempt_offset
            .map(|v| format!("per-cpu [gs_base + {v:#x}]"))
            .unwrap_or_else(|| "unknown".into())
    );
    let _ = writeln!(o, "task flags         +{:#x}", p.task_flags_off);
    let _ = writeln!(
        o,
        "page_offset_base   va {:#x} (default direct map {:#x})",
        p.page_offset_base_va, p.direct_map_default
    );
    let _ = writeln!(o, "init user ns inum  {:#x}", p.init_userns_inum);
    let u = &p.uid_map;
    let _ = writeln!(
        o,
        "uid_map            user_ns+{:#x}: nr_extents +{:#x}, extent[{}] +{:#x}, forward +{:#x}; extent size {} (first +{}, lower_first +{}, count +{}), max {}",
        u.map_off, u.nr_extents_off, u.base_extents, u.extents_off, u.forward_off, u.extent_size,
        u.first_off, u.lower_first_off, u.count_off, u.max_extents
    );
    let keys: Vec<String> = p
        .key_offsets
        .iter()
        .flatten()
        .map(|k| format!("{k:#x}"))
        .collect();
    let _ = writeln!(o, "cache key          task+{{{}}}", keys.join(", "));
    for f in FieldId::ALL {
        let _ = writeln!(o, "field {:<12} {}", f.name(), fmt_steps(p.field(f)));
    }
    describe_walk(&mut o, p.walk.as_ref());
    o
}

fn describe_walk(o: &mut String, w: Option<&TaskWalk>) {
    let Some(w) = w else {
        let _ = writeln!(o, "task walk          none");
        return;
    };
    let v6 = |v: Option<u32>| {
        v.map(|v| format!("+{v:#x}"))
            .unwrap_or_else(|| "none".into())
    };
    let _ = writeln!(
        o,
        "task walk          init_task va {:#x}; task tasks +{:#x}, files +{:#x}; files fdt +{:#x}; fdtable max_fds +{:#x}, fd +{:#x}",
        w.init_task_va, w.tasks_off, w.files_off, w.fdt_off, w.max_fds_off, w.fd_off
    );
    let _ = writeln!(
        o,
        "socket walk        file f_inode +{:#x}, private_data +{:#x}; inode i_mode +{:#x}; socket sk +{:#x}",
        w.f_inode_off, w.private_data_off, w.i_mode_off, w.sk_off
    );
    let _ = writeln!(
        o,
        "sock               family +{:#x}, state +{:#x}, daddr +{:#x}, rcv_saddr +{:#x}, dport +{:#x}, num +{:#x}, v6_daddr {}, v6_rcv_saddr {}, protocol u{}@{:#x}, type +{:#x}",
        w.family_off, w.state_off, w.daddr_off, w.rcv_saddr_off, w.dport_off, w.num_off,
        v6(w.v6_daddr_off), v6(w.v6_rcv_saddr_off), w.protocol_width * 8, w.protocol_off, w.type_off
    );
}
