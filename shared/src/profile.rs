//! The kernel-profile format: how to find the current task and read its identity fields in a
//! particular guest kernel, derived by the agent from the kernel's own BTF and pushed to Shoji.
//!
//! A profile names no C type: every identity field is a small *program* of steps starting at the
//! `task_struct` address (follow a pointer, add an offset, read an index and scale by it, read the
//! value). The hypervisor runs these programs through `shoji-introspect`, checking every pointer
//! and every value it reads; a failed step yields "unknown", never a fault.
//!
//! # Binary encoding (version 2, all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | [`PROFILE_MAGIC`] |
//! | 8 | 4 | format version ([`PROFILE_VERSION`]) |
//! | 12 | 4 | total length in bytes (must equal [`ENCODED_LEN`]) |
//! | 16 | 32 | fingerprint: SHA-256 of the kernel's BTF blob (`/sys/kernel/btf/vmlinux`) |
//! | 48 | 64 | kernel release (`uname -r`), NUL padded |
//! | 112 | 8 | kernel virtual address of the BTF blob (`__start_BTF`, 0 = unknown) |
//! | 120 | 4 | length of the BTF blob |
//! | 124 | 4 | current-task method: 1 = per-CPU pointer, 2 = stack/`thread_info` |
//! | 128 | 4 | per-CPU offset of the current-task pointer (method 1) / THREAD_SIZE (method 2) |
//! | 132 | 4 | unused (method 1) / offset of `task` in `thread_info` (method 2) |
//! | 136 | 4 | per-CPU offset of the preempt count ([`NONE32`] = unknown) |
//! | 140 | 4 | offset of `flags` in `task_struct` |
//! | 144 | 8 | kernel virtual address of `page_offset_base` (0 = not randomized / unknown) |
//! | 152 | 8 | default direct-map base (used when the variable is unknown) |
//! | 160 | 4 | inode number of the initial user namespace (`PROC_USER_INIT_INO`) |
//! | 164 | 40 | [`UidMapLayout`], ten `u32` in declaration order |
//! | 204 | 24 | cache-key offsets in `task_struct`, [`KEY_COUNT`] `u32`, each an 8-byte field ([`NONE32`] = unused) |
//! | 228 | 15 × 68 | one [`Program`] per [`FieldId`], in `FieldId` order |
//! | 1248 | 92 | [`TaskWalk`]: `present: u32` (0 or 1; all zero when 0), `init_task_va: u64`, then its twenty `u32` in declaration order ([`NONE32`] for an absent optional) |
//!
//! A program is encoded as `len: u8`, 3 zero bytes, then [`MAX_STEPS`] steps of 8 bytes each
//! (`op: u8, width: u8, aux: u16, off: u32`); steps past `len` must be zero.
#![allow(clippy::manual_range_contains)]

/// Magic at the start of a serialized profile ("SHJPROF\0").
pub const PROFILE_MAGIC: [u8; 8] = *b"SHJPROF\0";
/// Current profile format version.
pub const PROFILE_VERSION: u32 = 2;
/// "No value" marker for optional `u32` fields of the encoding.
pub const NONE32: u32 = u32::MAX;
/// Most steps one field program may have.
pub const MAX_STEPS: usize = 8;
/// Number of identity field programs.
pub const FIELD_COUNT: usize = 15;
/// Number of cache-key slots.
pub const KEY_COUNT: usize = 6;
/// Largest structure offset a step may name (bytes).
pub const MAX_OFFSET: u32 = 1 << 16;
/// Largest array stride an indexed step may use (bytes).
pub const MAX_STRIDE: u32 = 4096;
/// Largest index bound an indexed step may declare.
pub const MAX_INDEX: u16 = 64;
/// Largest number of uid_map extents a layout may declare (the kernel's UID_GID_MAP_MAX_EXTENTS).
pub const MAX_UID_EXTENTS: u32 = 340;
/// Bytes of one encoded program.
pub const PROGRAM_LEN: usize = 4 + 8 * MAX_STEPS;
/// Bytes of the encoded [`TaskWalk`] block.
pub const TASK_WALK_LEN: usize = 4 + 8 + 20 * 4;
/// Bytes of an encoded profile.
pub const ENCODED_LEN: usize = 228 + FIELD_COUNT * PROGRAM_LEN + TASK_WALK_LEN;
/// `S_IFMT` and `S_IFSOCK` of an inode's mode: how the walk tells a socket's file.
pub const S_IFMT: u16 = 0o170000;
/// See [`S_IFMT`].
pub const S_IFSOCK: u16 = 0o140000;

/// Where the guest kernel keeps its task list and each task's sockets: what `/tasks` and the
/// `ListTasks` VMCALL walk. Every offset is a byte offset in the structure its comment names;
/// the agent derives them from the kernel's BTF and `init_task` from its symbol table.
///
/// The walk starts at `init_task`, follows `task_struct.tasks` (thread-group leaders), and for
/// each task reads `task->files->fdt->fd[0..max_fds]`; a file whose inode's mode is a socket
/// (`S_IFSOCK`) has its `struct socket` in `private_data`, and that socket's `sk` holds the
/// addresses (`struct sock_common`), the protocol and the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskWalk {
    /// Kernel virtual address of `init_task`.
    pub init_task_va: u64,
    /// `task_struct.tasks` (a `list_head`).
    pub tasks_off: u32,
    /// `task_struct.files` (pointer to `files_struct`).
    pub files_off: u32,
    /// `files_struct.fdt` (pointer to `fdtable`).
    pub fdt_off: u32,
    /// `fdtable.max_fds` (`u32`).
    pub max_fds_off: u32,
    /// `fdtable.fd` (pointer to the array of `struct file *`).
    pub fd_off: u32,
    /// `file.f_inode` (pointer to `inode`).
    pub f_inode_off: u32,
    /// `inode.i_mode` (`u16`).
    pub i_mode_off: u32,
    /// `file.private_data` (a socket file's `struct socket`).
    pub private_data_off: u32,
    /// `socket.sk` (pointer to `struct sock`).
    pub sk_off: u32,
    /// `sock.__sk_common.skc_family` (`u16`).
    pub family_off: u32,
    /// `skc_state` (`u8`, TCP state numbers).
    pub state_off: u32,
    /// `skc_daddr` (remote IPv4 address, network order).
    pub daddr_off: u32,
    /// `skc_rcv_saddr` (local IPv4 address, network order).
    pub rcv_saddr_off: u32,
    /// `skc_dport` (remote port, network order).
    pub dport_off: u32,
    /// `skc_num` (local port, host order).
    pub num_off: u32,
    /// `skc_v6_daddr` (16 bytes), when the kernel has IPv6.
    pub v6_daddr_off: Option<u32>,
    /// `skc_v6_rcv_saddr` (16 bytes), when the kernel has IPv6.
    pub v6_rcv_saddr_off: Option<u32>,
    /// `sock.sk_protocol`.
    pub protocol_off: u32,
    /// Width of `sk_protocol` in bytes (1 or 2).
    pub protocol_width: u32,
    /// `sock.sk_type` (`u16`).
    pub type_off: u32,
}

impl TaskWalk {
    /// Check every offset: inside [`MAX_OFFSET`], aligned to its field's size.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let aligned = |off: u32, align: u32| off < MAX_OFFSET && off.is_multiple_of(align);
        let ok = self.init_task_va >= KERNEL_HALF_5
            && self.init_task_va.is_multiple_of(8)
            && [
                self.tasks_off,
                self.files_off,
                self.fdt_off,
                self.fd_off,
                self.f_inode_off,
                self.private_data_off,
                self.sk_off,
            ]
            .iter()
            .all(|&o| aligned(o, 8))
            && [self.max_fds_off, self.daddr_off, self.rcv_saddr_off]
                .iter()
                .all(|&o| aligned(o, 4))
            && [
                self.i_mode_off,
                self.family_off,
                self.dport_off,
                self.num_off,
                self.type_off,
            ]
            .iter()
            .all(|&o| aligned(o, 2))
            && aligned(self.state_off, 1)
            && [self.v6_daddr_off, self.v6_rcv_saddr_off]
                .iter()
                .all(|o| o.is_none_or(|o| aligned(o, 4)))
            && matches!(self.protocol_width, 1 | 2)
            && aligned(self.protocol_off, self.protocol_width);
        if ok {
            Ok(())
        } else {
            Err(ProfileError::BadTaskWalk)
        }
    }

    fn words(&self) -> [u32; 20] {
        [
            self.tasks_off,
            self.files_off,
            self.fdt_off,
            self.max_fds_off,
            self.fd_off,
            self.f_inode_off,
            self.i_mode_off,
            self.private_data_off,
            self.sk_off,
            self.family_off,
            self.state_off,
            self.daddr_off,
            self.rcv_saddr_off,
            self.dport_off,
            self.num_off,
            opt32(self.v6_daddr_off),
            opt32(self.v6_rcv_saddr_off),
            self.protocol_off,
            self.protocol_width,
            self.type_off,
        ]
    }

    fn from_words(init_task_va: u64, w: [u32; 20]) -> TaskWalk {
        TaskWalk {
            init_task_va,
            tasks_off: w[0],
            files_off: w[1],
            fdt_off: w[2],
            max_fds_off: w[3],
            fd_off: w[4],
            f_inode_off: w[5],
            i_mode_off: w[6],
            private_data_off: w[7],
            sk_off: w[8],
            family_off: w[9],
            state_off: w[10],
            daddr_off: w[11],
            rcv_saddr_off: w[12],
            dport_off: w[13],
            num_off: w[14],
            v6_daddr_off: from_opt32(w[15]),
            v6_rcv_saddr_off: from_opt32(w[16]),
            protocol_off: w[17],
            protocol_width: w[18],
            type_off: w[19],
        }
    }
}

/// Linux preempt-count masks (x86, `include/linux/preempt.h`).
pub mod preempt {
    /// Bit set while a task serves soft interrupts (`SOFTIRQ_OFFSET`).
    pub const SOFTIRQ_OFFSET: u32 = 0x100;
    /// Softirq count including bottom-half-disabled sections.
    pub const SOFTIRQ_MASK: u32 = 0xff00;
    /// Hard-interrupt nesting.
    pub const HARDIRQ_MASK: u32 = 0xf_0000;
    /// NMI nesting.
    pub const NMI_MASK: u32 = 0xf0_0000;
    /// x86 keeps PREEMPT_NEED_RESCHED inverted in bit 31.
    pub const NEED_RESCHED: u32 = 0x8000_0000;
}

/// `PF_KTHREAD` in `task_struct::flags`.
pub const PF_KTHREAD: u32 = 0x0020_0000;
/// Linux's highest possible pid (`PID_MAX_LIMIT` on 64-bit).
pub const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;
/// Lowest inode number proc gives a namespace (the fixed initial ones start just below
/// `PROC_DYNAMIC_FIRST` = 0xF0000000).
pub const NS_INUM_MIN: u32 = 0xEFFF_FFF0;

/// An identity field a program reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FieldId {
    /// Thread id, initial pid namespace (`u32`).
    Pid = 0,
    /// Thread-group id, initial pid namespace (`u32`).
    Tgid,
    /// Thread id in the task's pid namespace (`u32`).
    PidLocal,
    /// Thread-group id in the task's pid namespace (`u32`).
    TgidLocal,
    /// Process-group id, initial namespace (`u32`).
    Pgid,
    /// Real uid as a global kuid (`u32`).
    Uid,
    /// Effective uid as a global kuid (`u32`).
    Euid,
    /// Inode number of the task's user namespace (`u32`).
    UserNsId,
    /// Inode number of the network namespace (`u32`).
    NetNsId,
    /// Inode number of the pid namespace (`u32`).
    PidNsId,
    /// cgroup v2 id (`u64`).
    CgroupId,
    /// Start time, ns since boot (`u64`).
    StartTime,
    /// Inode number of the executable (`u64`).
    ExeInode,
    /// `comm` (16 bytes).
    Comm,
    /// Address of the task's `user_namespace` (a program ending in a pointer step).
    UserNsPtr,
}

impl FieldId {
    /// Every field, in encoding order.
    pub const ALL: [FieldId; FIELD_COUNT] = [
        FieldId::Pid,
        FieldId::Tgid,
        FieldId::PidLocal,
        FieldId::TgidLocal,
        FieldId::Pgid,
        FieldId::Uid,
        FieldId::Euid,
        FieldId::UserNsId,
        FieldId::NetNsId,
        FieldId::PidNsId,
        FieldId::CgroupId,
        FieldId::StartTime,
        FieldId::ExeInode,
        FieldId::Comm,
        FieldId::UserNsPtr,
    ];

    /// Short name for listings.
    pub fn name(self) -> &'static str {
        match self {
            FieldId::Pid => "pid",
            FieldId::Tgid => "tgid",
            FieldId::PidLocal => "pid_local",
            FieldId::TgidLocal => "tgid_local",
            FieldId::Pgid => "pgid",
            FieldId::Uid => "uid",
            FieldId::Euid => "euid",
            FieldId::UserNsId => "userns_id",
            FieldId::NetNsId => "netns_id",
            FieldId::PidNsId => "pidns_id",
            FieldId::CgroupId => "cgroup_id",
            FieldId::StartTime => "start_time",
            FieldId::ExeInode => "exe_inode",
            FieldId::Comm => "comm",
            FieldId::UserNsPtr => "userns_ptr",
        }
    }

    /// Width in bytes of the value the program must end with (0: ends in an address).
    pub fn value_width(self) -> u8 {
        match self {
            FieldId::CgroupId | FieldId::StartTime | FieldId::ExeInode => 8,
            FieldId::Comm => 16,
            FieldId::UserNsPtr => 0,
            _ => 4,
        }
    }
}

/// One step of a field program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Unused slot.
    End = 0,
    /// `addr = *(u64 *)(addr + off)`; the result must be a plausible kernel pointer.
    Ptr = 1,
    /// `addr = addr + off`.
    Add = 2,
    /// `idx = *(u{width*8} *)(addr + off)`; fails when `idx > aux`.
    Index = 3,
    /// `addr = addr + idx * off` (off is the array stride; needs a preceding `Index`).
    AddIndex = 4,
    /// Result = the `width` bytes at `addr + off`; must be the last step.
    Value = 5,
}

impl Op {
    /// Decode an op byte.
    pub fn from_u8(b: u8) -> Option<Op> {
        Some(match b {
            0 => Op::End,
            1 => Op::Ptr,
            2 => Op::Add,
            3 => Op::Index,
            4 => Op::AddIndex,
            5 => Op::Value,
            _ => return None,
        })
    }
}

/// One step: operation, width, auxiliary value and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The operation.
    pub op: Op,
    /// Width in bytes (`Index`, `Value`).
    pub width: u8,
    /// Auxiliary value (`Index`: the largest accepted index).
    pub aux: u16,
    /// Offset (or stride for `AddIndex`).
    pub off: u32,
}

impl Step {
    /// The empty step.
    pub const END: Step = Step {
        op: Op::End,
        width: 0,
        aux: 0,
        off: 0,
    };
    /// Follow the pointer at `off`.
    pub const fn ptr(off: u32) -> Step {
        Step {
            op: Op::Ptr,
            width: 8,
            aux: 0,
            off,
        }
    }
    /// Add `off`.
    pub const fn add(off: u32) -> Step {
        Step {
            op: Op::Add,
            width: 0,
            aux: 0,
            off,
        }
    }
    /// Read an index of `width` bytes at `off`, at most `max`.
    pub const fn index(off: u32, width: u8, max: u16) -> Step {
        Step {
            op: Op::Index,
            width,
            aux: max,
            off,
        }
    }
    /// Advance by index × `stride`.
    pub const fn add_index(stride: u32) -> Step {
        Step {
            op: Op::AddIndex,
            width: 0,
            aux: 0,
            off: stride,
        }
    }
    /// Read `width` bytes at `off` as the result.
    pub const fn value(off: u32, width: u8) -> Step {
        Step {
            op: Op::Value,
            width,
            aux: 0,
            off,
        }
    }
}

/// A field program: up to [`MAX_STEPS`] steps from the `task_struct` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    /// Number of steps in use (0 = the field is not described: always unknown).
    pub len: u8,
    /// The steps.
    pub steps: [Step; MAX_STEPS],
}

impl Default for Program {
    fn default() -> Self {
        Program::EMPTY
    }
}

impl Program {
    /// The empty program (field unknown).
    pub const EMPTY: Program = Program {
        len: 0,
        steps: [Step::END; MAX_STEPS],
    };

    /// Build from a slice of steps (`None` if too long).
    pub fn from_steps(steps: &[Step]) -> Option<Program> {
        if steps.len() > MAX_STEPS {
            return None;
        }
        let mut p = Program::EMPTY;
        p.steps[..steps.len()].copy_from_slice(steps);
        p.len = steps.len() as u8;
        Some(p)
    }

    /// The steps in use.
    pub fn steps(&self) -> &[Step] {
        &self.steps[..(self.len as usize).min(MAX_STEPS)]
    }

    fn validate(&self, field: FieldId) -> Result<(), ProfileError> {
        let bad = Err(ProfileError::BadProgram(field));
        if self.len as usize > MAX_STEPS {
            return bad;
        }
        for s in &self.steps[self.len as usize..] {
            if *s != Step::END {
                return bad;
            }
        }
        if self.len == 0 {
            return Ok(());
        }
        let mut have_index = false;
        let n = self.len as usize;
        for (i, s) in self.steps().iter().enumerate() {
            let last = i + 1 == n;
            match s.op {
                Op::End => return bad,
                Op::Ptr | Op::Add => {
                    if s.off >= MAX_OFFSET {
                        return bad;
                    }
                }
                Op::Index => {
                    if s.off >= MAX_OFFSET
                        || !matches!(s.width, 1 | 2 | 4)
                        || s.aux > MAX_INDEX
                        || last
                    {
                        return bad;
                    }
                    have_index = true;
                }
                Op::AddIndex => {
                    if !have_index || s.off == 0 || s.off > MAX_STRIDE {
                        return bad;
                    }
                    have_index = false;
                }
                Op::Value => {
                    if !last || s.off >= MAX_OFFSET || s.width != field.value_width() {
                        return bad;
                    }
                }
            }
        }
        let ends_in_value = self.steps()[n - 1].op == Op::Value;
        let want_value = field.value_width() != 0;
        if ends_in_value != want_value {
            return bad;
        }
        if !want_value && self.steps()[n - 1].op != Op::Ptr {
            return bad;
        }
        Ok(())
    }
}

/// How the current task is found at a VM exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurrentTask {
    /// `*(u64 *)(per_cpu_base + offset)`: `current_task` (≤ 6.1) or `pcpu_hot.current_task`
    /// (≥ 6.2); the per-CPU base is the kernel's GS base.
    PerCpu {
        /// Offset of the pointer in the per-CPU area.
        offset: u32,
    },
    /// Kernels without THREAD_INFO_IN_TASK: `thread_info` sits at the base of the kernel stack
    /// (`rsp & !(thread_size - 1)`) and holds the task pointer.
    StackThreadInfo {
        /// THREAD_SIZE (a power of two).
        thread_size: u32,
        /// Offset of `task` in `struct thread_info`.
        task_offset: u32,
    },
}

/// Where a user namespace keeps its uid map (`struct uid_gid_map`) and how extents look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UidMapLayout {
    /// Offset of `uid_map` in `struct user_namespace`.
    pub map_off: u32,
    /// Offset of `nr_extents` in `struct uid_gid_map`.
    pub nr_extents_off: u32,
    /// Offset of the inline `extent[]` array in `struct uid_gid_map`.
    pub extents_off: u32,
    /// Offset of the `forward` pointer used when there are more than `base_extents` extents.
    pub forward_off: u32,
    /// Size of `struct uid_gid_extent`.
    pub extent_size: u32,
    /// Offset of `first` (id inside the namespace) in an extent.
    pub first_off: u32,
    /// Offset of `lower_first` (global kuid) in an extent.
    pub lower_first_off: u32,
    /// Offset of `count` in an extent.
    pub count_off: u32,
    /// Number of inline extents (UID_GID_MAP_MAX_BASE_EXTENTS).
    pub base_extents: u32,
    /// Upper bound on extents (UID_GID_MAP_MAX_EXTENTS).
    pub max_extents: u32,
}

impl UidMapLayout {
    fn words(&self) -> [u32; 10] {
        [
            self.map_off,
            self.nr_extents_off,
            self.extents_off,
            self.forward_off,
            self.extent_size,
            self.first_off,
            self.lower_first_off,
            self.count_off,
            self.base_extents,
            self.max_extents,
        ]
    }
    fn from_words(w: [u32; 10]) -> Self {
        UidMapLayout {
            map_off: w[0],
            nr_extents_off: w[1],
            extents_off: w[2],
            forward_off: w[3],
            extent_size: w[4],
            first_off: w[5],
            lower_first_off: w[6],
            count_off: w[7],
            base_extents: w[8],
            max_extents: w[9],
        }
    }
    /// Whether the layout is described (a zero extent size means "no uid mapping").
    pub fn is_present(&self) -> bool {
        self.extent_size != 0
    }
    fn validate(&self) -> Result<(), ProfileError> {
        if !self.is_present() {
            return Ok(());
        }
        let ok = self.map_off < MAX_OFFSET
            && self.nr_extents_off < 256
            && self.extents_off < 256
            && self.forward_off < 256
            && self.extent_size >= 12
            && self.extent_size <= 64
            && self.first_off.saturating_add(4) <= self.extent_size
            && self.lower_first_off.saturating_add(4) <= self.extent_size
            && self.count_off.saturating_add(4) <= self.extent_size
            && self.base_extents >= 1
            && self.base_extents <= 16
            && self.max_extents >= self.base_extents
            && self.max_extents <= MAX_UID_EXTENTS;
        if ok {
            Ok(())
        } else {
            Err(ProfileError::BadUidMap)
        }
    }
}

/// A kernel profile, decoded and validated (or being built by the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelProfile {
    /// SHA-256 of the kernel's BTF blob.
    pub fingerprint: [u8; 32],
    /// Kernel release string, NUL padded.
    pub release: [u8; 64],
    /// Kernel virtual address of the BTF blob (`__start_BTF`), 0 if unknown.
    pub btf_va: u64,
    /// Length of the BTF blob.
    pub btf_len: u32,
    /// How to find the current task.
    pub current: CurrentTask,
    /// Per-CPU offset of the preempt count, if known.
    pub preempt_offset: Option<u32>,
    /// Offset of `flags` in `task_struct`.
    pub task_flags_off: u32,
    /// Kernel virtual address of `page_offset_base` (0 = unknown).
    pub page_offset_base_va: u64,
    /// Default direct-map base.
    pub direct_map_default: u64,
    /// Inode number of the initial user namespace.
    pub init_userns_inum: u32,
    /// uid_map layout, for namespace-local uids.
    pub uid_map: UidMapLayout,
    /// Offsets in `task_struct` of the 8-byte fields whose change invalidates a cached identity.
    pub key_offsets: [Option<u32>; KEY_COUNT],
    /// One program per [`FieldId`].
    pub fields: [Program; FIELD_COUNT],
    /// How to walk the task list and the tasks' sockets (`None`: `/tasks` is unavailable).
    pub walk: Option<TaskWalk>,
}

/// Why a profile was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileError {
    /// Shorter than its header or than its declared length.
    Truncated,
    /// Wrong magic.
    BadMagic,
    /// Unsupported format version.
    BadVersion(u32),
    /// Declared length does not match the version's length.
    BadLength,
    /// Unknown current-task method or implausible parameters.
    BadCurrentTask,
    /// A field program is malformed.
    BadProgram(FieldId),
    /// The uid-map layout is implausible.
    BadUidMap,
    /// The task-walk block is malformed or implausible.
    BadTaskWalk,
    /// Some other header value is implausible.
    BadHeader,
    /// Output buffer too small (encoding).
    BufferTooSmall,
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        // Callers check the buffer length first; out-of-range writes are dropped, never panic.
        if let Some(dst) = self.buf.get_mut(self.pos..self.pos + b.len()) {
            dst.copy_from_slice(b);
        }
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ProfileError> {
        let end = self.pos.checked_add(N).ok_or(ProfileError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(ProfileError::Truncated)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        self.pos = end;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProfileError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ProfileError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, ProfileError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, ProfileError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

fn opt32(v: Option<u32>) -> u32 {
    v.unwrap_or(NONE32)
}

fn from_opt32(v: u32) -> Option<u32> {
    if v == NONE32 {
        None
    } else {
        Some(v)
    }
}

/// Lowest canonical kernel-half address with 4-level paging.
pub const KERNEL_HALF_4: u64 = 0xffff_8000_0000_0000;
/// Lowest canonical kernel-half address with 5-level paging.
pub const KERNEL_HALF_5: u64 = 0xff00_0000_0000_0000;

impl KernelProfile {
    /// An empty profile (all fields unknown) with the given current-task method.
    pub fn empty(current: CurrentTask) -> Self {
        KernelProfile {
            fingerprint: [0; 32],
            release: [0; 64],
            btf_va: 0,
            btf_len: 0,
            current,
            preempt_offset: None,
            task_flags_off: 0,
            page_offset_base_va: 0,
            direct_map_default: 0xffff_8880_0000_0000,
            init_userns_inum: 0xEFFF_FFFD,
            uid_map: UidMapLayout::default(),
            key_offsets: [None; KEY_COUNT],
            fields: [Program::EMPTY; FIELD_COUNT],
            walk: None,
        }
    }

    /// The program of one field.
    pub fn field(&self, f: FieldId) -> &Program {
        &self.fields[f as usize]
    }

    /// The release string without padding (lossy: bytes up to the first NUL).
    pub fn release_str(&self) -> &str {
        let n = self.release.iter().position(|&b| b == 0).unwrap_or(64);
        core::str::from_utf8(&self.release[..n]).unwrap_or("?")
    }

    /// Check every value for plausibility.
    pub fn validate(&self) -> Result<(), ProfileError> {
        match self.current {
            CurrentTask::PerCpu { offset } => {
                if offset >= (1 << 24) || offset & 7 != 0 {
                    return Err(ProfileError::BadCurrentTask);
                }
            }
            CurrentTask::StackThreadInfo {
                thread_size,
                task_offset,
            } => {
                if !thread_size.is_power_of_two()
                    || !(4096..=1 << 20).contains(&thread_size)
                    || task_offset >= 4096
                    || task_offset & 7 != 0
                {
                    return Err(ProfileError::BadCurrentTask);
                }
            }
        }
        if let Some(p) = self.preempt_offset {
            if p >= (1 << 24) || p & 3 != 0 {
                return Err(ProfileError::BadHeader);
            }
        }
        if self.task_flags_off >= MAX_OFFSET || self.task_flags_off & 3 != 0 {
            return Err(ProfileError::BadHeader);
        }
        let kernel = |v: u64| v == 0 || v >= KERNEL_HALF_5;
        if !kernel(self.page_offset_base_va)
            || !kernel(self.btf_va)
            || self.direct_map_default < KERNEL_HALF_5
            || self.direct_map_default & ((1 << 30) - 1) != 0
            || self.init_userns_inum < NS_INUM_MIN
        {
            return Err(ProfileError::BadHeader);
        }
        for k in self.key_offsets.iter().flatten() {
            if *k >= MAX_OFFSET || k & 7 != 0 {
                return Err(ProfileError::BadHeader);
            }
        }
        self.uid_map.validate()?;
        for f in FieldId::ALL {
            self.field(f).validate(f)?;
        }
        if let Some(w) = &self.walk {
            w.validate()?;
        }
        Ok(())
    }

    /// Encode into `out` (at least [`ENCODED_LEN`] bytes); returns the length written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProfileError> {
        if out.len() < ENCODED_LEN {
            return Err(ProfileError::BufferTooSmall);
        }
        let mut w = Writer { buf: out, pos: 0 };
        w.put(&PROFILE_MAGIC);
        w.u32(PROFILE_VERSION);
        w.u32(ENCODED_LEN as u32);
        w.put(&self.fingerprint);
        w.put(&self.release);
        w.u64(self.btf_va);
        w.u32(self.btf_len);
        match self.current {
            CurrentTask::PerCpu { offset } => {
                w.u32(1);
                w.u32(offset);
                w.u32(0);
            }
            CurrentTask::StackThreadInfo {
                thread_size,
                task_offset,
            } => {
                w.u32(2);
                w.u32(thread_size);
                w.u32(task_offset);
            }
        }
        w.u32(opt32(self.preempt_offset));
        w.u32(self.task_flags_off);
        w.u64(self.page_offset_base_va);
        w.u64(self.direct_map_default);
        w.u32(self.init_userns_inum);
        for v in self.uid_map.words() {
            w.u32(v);
        }
        for k in self.key_offsets {
            w.u32(opt32(k));
        }
        for p in &self.fields {
            w.u8(p.len);
            w.put(&[0, 0, 0]);
            for s in &p.steps {
                w.u8(s.op as u8);
                w.u8(s.width);
                w.u16(s.aux);
                w.u32(s.off);
            }
        }
        match &self.walk {
            Some(walk) => {
                w.u32(1);
                w.u64(walk.init_task_va);
                for v in walk.words() {
                    w.u32(v);
                }
            }
            None => w.put(&[0; TASK_WALK_LEN]),
        }
        Ok(w.pos)
    }

    /// Decode and validate an encoded profile.
    pub fn decode(bytes: &[u8]) -> Result<KernelProfile, ProfileError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        if r.take::<8>()? != PROFILE_MAGIC {
            return Err(ProfileError::BadMagic);
        }
        let version = r.u32()?;
        if version != PROFILE_VERSION {
            return Err(ProfileError::BadVersion(version));
        }
        let total = r.u32()? as usize;
        if total != ENCODED_LEN {
            return Err(ProfileError::BadLength);
        }
        if bytes.len() < total {
            return Err(ProfileError::Truncated);
        }
        if bytes.len() > total {
            return Err(ProfileError::BadLength);
        }
        let fingerprint = r.take::<32>()?;
        let release = r.take::<64>()?;
        let btf_va = r.u64()?;
        let btf_len = r.u32()?;
        let method = r.u32()?;
        let a = r.u32()?;
        let b = r.u32()?;
        let current = match method {
            1 if b == 0 => CurrentTask::PerCpu { offset: a },
            2 => CurrentTask::StackThreadInfo {
                thread_size: a,
                task_offset: b,
            },
            _ => return Err(ProfileError::BadCurrentTask),
        };
        let preempt_offset = from_opt32(r.u32()?);
        let task_flags_off = r.u32()?;
        let page_offset_base_va = r.u64()?;
        let direct_map_default = r.u64()?;
        let init_userns_inum = r.u32()?;
        let mut words = [0u32; 10];
        for w in words.iter_mut() {
            *w = r.u32()?;
        }
        let mut key_offsets = [None; KEY_COUNT];
        for k in key_offsets.iter_mut() {
            *k = from_opt32(r.u32()?);
        }
        let mut fields = [Program::EMPTY; FIELD_COUNT];
        for (i, p) in fields.iter_mut().enumerate() {
            p.len = r.u8()?;
            if r.take::<3>()? != [0, 0, 0] {
                return Err(ProfileError::BadProgram(FieldId::ALL[i]));
            }
            for s in p.steps.iter_mut() {
                let op = Op::from_u8(r.u8()?).ok_or(ProfileError::BadProgram(FieldId::ALL[i]))?;
                s.op = op;
                s.width = r.u8()?;
                s.aux = r.u16()?;
                s.off = r.u32()?;
            }
        }
        let present = r.u32()?;
        let init_task_va = r.u64()?;
        let mut walk_words = [0u32; 20];
        for w in walk_words.iter_mut() {
            *w = r.u32()?;
        }
        let walk = match present {
            1 => Some(TaskWalk::from_words(init_task_va, walk_words)),
            0 if init_task_va == 0 && walk_words.iter().all(|&w| w == 0) => None,
            _ => return Err(ProfileError::BadTaskWalk),
        };
        let p = KernelProfile {
            fingerprint,
            release,
            btf_va,
            btf_len,
            current,
            preempt_offset,
            task_flags_off,
            page_offset_base_va,
            direct_map_default,
            init_userns_inum,
            uid_map: UidMapLayout::from_words(words),
            key_offsets,
            fields,
            walk,
        };
        p.validate()?;
        Ok(p)
    }
}

/// The hasher that names a kernel: SHA-256 (the `sha2` crate, portable code only: see the
/// workspace manifest) over the kernel's BTF. Feed it with [`Digest::update`], end with
/// [`Digest::finalize`].
pub type FingerprintHasher = sha2::Sha256;

pub use sha2::Digest;

/// The fingerprint of a kernel: SHA-256 of its BTF (`/sys/kernel/btf/vmlinux`), as the profile's
/// `fingerprint` field carries it.
pub fn fingerprint(btf: &[u8]) -> [u8; 32] {
    FingerprintHasher::digest(btf).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KernelProfile {
        let mut p = KernelProfile::empty(CurrentTask::PerCpu { offset: 0x1fb80 });
        p.preempt_offset = Some(0x1fb40);
        p.task_flags_off = 44;
        p.key_offsets[0] = Some(0x700);
        p.fields[FieldId::Pid as usize] =
            Program::from_steps(&[Step::ptr(0x500), Step::value(0x60, 4)]).unwrap();
        p.fields[FieldId::PidLocal as usize] = Program::from_steps(&[
            Step::ptr(0x500),
            Step::index(4, 4, 32),
            Step::add_index(16),
            Step::value(0x60, 4),
        ])
        .unwrap();
        p.fields[FieldId::UserNsPtr as usize] =
            Program::from_steps(&[Step::ptr(0x700), Step::ptr(0x88)]).unwrap();
        p
    }

    #[test]
    fn round_trip() {
        let p = sample();
        p.validate().unwrap();
        let mut buf = [0u8; ENCODED_LEN];
        assert_eq!(p.encode(&mut buf).unwrap(), ENCODED_LEN);
        assert_eq!(KernelProfile::decode(&buf).unwrap(), p);
    }

    #[test]
    fn every_truncation_and_byte_flip_is_handled() {
        let mut buf = [0u8; ENCODED_LEN];
        sample().encode(&mut buf).unwrap();
        for n in 0..ENCODED_LEN {
            assert!(KernelProfile::decode(&buf[..n]).is_err());
        }
        let mut accepted = 0;
        for i in 0..ENCODED_LEN {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = buf;
                b[i] = v;
                let decoded = KernelProfile::decode(&b);
                // Magic, version and length (the first 16 bytes) admit no other value.
                if i < 16 && v != buf[i] {
                    assert!(decoded.is_err(), "byte {i} set to {v:#x}");
                }
                // Accepted: then decode understood every byte. The profile encodes back to
                // exactly these bytes, so no byte was ignored or normalised away.
                if let Ok(p) = decoded {
                    let mut again = [0u8; ENCODED_LEN];
                    p.encode(&mut again).unwrap();
                    assert_eq!(again, b, "byte {i} set to {v:#x}");
                    accepted += 1;
                }
            }
        }
        // Most single-byte changes are data (fingerprint, release, offsets) and must load.
        assert!(accepted > ENCODED_LEN, "{accepted} accepted");
    }

    #[test]
    fn bad_programs_are_refused() {
        let mut p = sample();
        p.fields[FieldId::Pid as usize] = Program::from_steps(&[Step::value(0, 8)]).unwrap();
        assert_eq!(p.validate(), Err(ProfileError::BadProgram(FieldId::Pid)));
        let mut p = sample();
        p.fields[FieldId::Pid as usize] = Program::from_steps(&[Step::add_index(8)]).unwrap();
        assert!(p.validate().is_err());
        let mut p = sample();
        p.fields[FieldId::UserNsPtr as usize] = Program::from_steps(&[Step::value(0, 4)]).unwrap();
        assert!(p.validate().is_err());
    }
}
