//! The VMCALL contract between guest software (the agent, `shojictl`) and Shoji.
//!
//! # Detection
//! `CPUID.1:ECX[31]` (hypervisor present) is set, and leaf [`CPUID_LEAF_SIGNATURE`] returns the
//! highest Shoji leaf in EAX and the 12-byte [`SIGNATURE`] in EBX, ECX, EDX (in that order).
//! Leaf [`CPUID_LEAF_VERSION`] returns [`ABI_VERSION`] in EAX and the state of Shoji's protection
//! in EBX ([`FEATURE_NIC_MEDIATED`]).
//!
//! # Calling convention
//! `VMCALL` with
//! - `RAX` = [`CALL_MAGIC`] `|` function number ([`Function`]),
//! - `RBX`, `RCX`, `RDX`, `RSI` = arguments (function specific; buffers are a guest-virtual
//!   address in `RBX` and a length in `RCX`, read through the caller's own page tables),
//!
//! returns `RAX` = [`Status`] (0 = success) and function-specific results in `RBX`, `RCX`, `RDX`.
//! Any CPL may call; privileged functions check the agent key and the caller's identity.
//! A `VMCALL` whose `RAX` lacks the magic is answered with `#UD`, as on hardware without Shoji.

/// CPUID leaf returning the signature.
pub const CPUID_LEAF_SIGNATURE: u32 = 0x4000_0000;
/// CPUID leaf returning the ABI version.
pub const CPUID_LEAF_VERSION: u32 = 0x4000_0001;
/// Highest Shoji CPUID leaf.
pub const CPUID_LEAF_MAX: u32 = CPUID_LEAF_VERSION;
/// The 12-byte signature in EBX, ECX, EDX of leaf 0x40000000.
pub const SIGNATURE: [u8; 12] = *b"ShojiShojiHV";
/// ABI version (major << 16 | minor).
pub const ABI_VERSION: u32 = 1 << 16;
/// Leaf [`CPUID_LEAF_VERSION`], EBX: the NIC is mediated, so frames pass the policy and the
/// policy calls work. Clear when no supported NIC was found or it could not be taken over (the
/// policy calls then answer [`Status::Unsupported`]) and with `mediate_nic = false`.
pub const FEATURE_NIC_MEDIATED: u32 = 1 << 0;

/// High 32 bits of `RAX` for every Shoji call ("SHOJ").
pub const CALL_MAGIC: u64 = 0x5348_4f4a_0000_0000;
/// Mask of the magic part of `RAX`.
pub const CALL_MAGIC_MASK: u64 = 0xffff_ffff_0000_0000;

/// Signature as the three CPUID registers (EBX, ECX, EDX).
pub fn signature_registers() -> (u32, u32, u32) {
    let w = |i: usize| {
        u32::from_le_bytes([
            SIGNATURE[i],
            SIGNATURE[i + 1],
            SIGNATURE[i + 2],
            SIGNATURE[i + 3],
        ])
    };
    (w(0), w(4), w(8))
}

/// Function numbers (low 32 bits of `RAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Function {
    /// Returns `RBX` = ABI version. Unprivileged.
    Version = 0,
    /// Log Shoji's exit counters to Shoji's own log. Unprivileged, rate-limited, returns nothing.
    LogCounters = 1,
    /// Who is calling: `RBX` = buffer, `RCX` = its length (at least [`WHOAMI_LEN`]); fills it
    /// with the caller's identity ([`whoami`] layout). Returns `RBX` = bytes written, `RCX` =
    /// [`ProfileState`]; [`Status::NoProfile`] before any profile was pushed. Unprivileged.
    WhoAmI = 2,
    /// Push a kernel profile: `RBX` = request, `RCX` = [`PUSH_PROFILE_LEN`] (the agent key, then
    /// the encoded profile). Returns `RCX` = [`ProfileState`]. Agent only; on any refusal the
    /// active profile is unchanged.
    PushProfile = 3,
    /// Register a container: `RBX` = request, `RCX` = its length (the agent key, then an "SHJC"
    /// registration, `netfilter::encoding`). Returns [`Status::Exists`] when the id, VLAN or an
    /// address is taken, [`Status::Full`] when the registry is full, [`Status::InvalidArgument`]
    /// for a malformed registration; on those three `RBX` = detail code (`1000 +` decode error
    /// index, `2000 +` registry error index). Agent only; on any refusal the policy is unchanged.
    RegisterContainer = 4,
    /// Replace a registered container (addresses, rules, defaults): the request is as for
    /// [`Function::RegisterContainer`], naming the same id. [`Status::NotFound`] when the id is
    /// not registered; otherwise the same results as register. Agent only.
    UpdateContainer = 5,
    /// Unregister a container: `RBX` = request, `RCX` = [`UNREGISTER_LEN`] (the agent key, then
    /// the id as u32 LE). [`Status::NotFound`] when the id is not registered. Agent only.
    UnregisterContainer = 6,
    /// Read the counters snapshot ("SHJS", `netfilter::report`): `RBX` = request, `RCX` =
    /// [`READ_COUNTERS_LEN`] (the agent key only), `RDX` = output, `RSI` = its length (at most
    /// [`MAX_BUFFER_LEN`]). Returns `RBX` = bytes written; [`Status::Full`] with `RBX` = bytes
    /// needed when the output is too small. Agent only (cross-tenant data).
    ReadCounters = 7,
    /// Read security events (`netfilter::report::EVENT_LEN` bytes each): `RBX` = request, `RCX`
    /// = [`READ_EVENTS_LEN`] (the agent key, then `from_seq` as u64 LE), `RDX` = output, `RSI` =
    /// its length (at most [`MAX_BUFFER_LEN`]). Returns `RBX` = bytes written, `RCX` = the
    /// sequence number to ask for next, `RDX` = events missed (overwritten before this read).
    /// Agent only (cross-tenant data).
    ReadEvents = 8,
    /// List the guest's processes, as the management plane's `/tasks` does: `RBX` = request,
    /// `RCX` = [`LIST_TASKS_LEN`] (the agent key, then flags as u32 LE: [`LIST_TASKS_SOCKETS`]
    /// for each process's IPv4/IPv6 sockets; other bits must be 0), `RDX` = output, `RSI` = its
    /// length ([`LIST_TASKS_MIN_OUT`] to [`MAX_BUFFER_LEN`]). Writes one JSON object per process
    /// and line, as many whole ones as fit, then a last `{"end":...}` line saying whether the
    /// list is complete; returns `RBX` = bytes written. [`Status::NoProfile`] when no profile
    /// with the task walk is active. Agent only (every tenant's processes).
    ListTasks = 9,
}

impl Function {
    /// Decode a function number.
    pub fn from_u32(n: u32) -> Option<Function> {
        Some(match n {
            0 => Function::Version,
            1 => Function::LogCounters,
            2 => Function::WhoAmI,
            3 => Function::PushProfile,
            4 => Function::RegisterContainer,
            5 => Function::UpdateContainer,
            6 => Function::UnregisterContainer,
            7 => Function::ReadCounters,
            8 => Function::ReadEvents,
            9 => Function::ListTasks,
            _ => return None,
        })
    }

    /// Decode `RAX`: `None` when the magic is missing (not a Shoji call).
    pub fn decode_rax(rax: u64) -> Option<Result<Function, Status>> {
        if rax & CALL_MAGIC_MASK != CALL_MAGIC {
            return None;
        }
        Some(Function::from_u32(rax as u32).ok_or(Status::UnknownFunction))
    }

    /// The `RAX` value that calls this function.
    pub fn rax(self) -> u64 {
        CALL_MAGIC | self as u64
    }
}

/// Status returned in `RAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The function number is unknown.
    UnknownFunction = 1,
    /// A buffer could not be read or written through the caller's page tables (not mapped, not
    /// user-accessible from user mode, not writable, too long).
    BadBuffer = 2,
    /// An argument is invalid (malformed request, bad length, bad value).
    InvalidArgument = 3,
    /// The caller is not the authenticated agent.
    NotAuthorized = 4,
    /// The function needs a kernel profile and none is active.
    NoProfile = 5,
    /// The request's version is not supported.
    BadVersion = 6,
    /// A capacity limit was reached.
    Full = 7,
    /// The named object does not exist.
    NotFound = 8,
    /// The object already exists.
    Exists = 9,
    /// Called too often; try later.
    RateLimited = 10,
    /// The function is known but not available in this build or configuration.
    Unsupported = 11,
}

impl Status {
    /// Decode a status value.
    pub fn from_u64(v: u64) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::UnknownFunction,
            2 => Status::BadBuffer,
            3 => Status::InvalidArgument,
            4 => Status::NotAuthorized,
            5 => Status::NoProfile,
            6 => Status::BadVersion,
            7 => Status::Full,
            8 => Status::NotFound,
            9 => Status::Exists,
            10 => Status::RateLimited,
            11 => Status::Unsupported,
            _ => return None,
        })
    }

    /// Human-readable meaning, for tools.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Ok => "success",
            Status::UnknownFunction => "unknown function",
            Status::BadBuffer => "buffer not accessible to the caller",
            Status::InvalidArgument => "invalid argument",
            Status::NotAuthorized => {
                "not authorized (agent key, uid 0 in the initial user namespace and no registered container required)"
            }
            Status::NoProfile => "no kernel profile is active",
            Status::BadVersion => "unsupported request version",
            Status::Full => "capacity exhausted",
            Status::NotFound => "not found",
            Status::Exists => "already exists",
            Status::RateLimited => "rate limited",
            Status::Unsupported => "not supported",
        }
    }
}

/// Length of the agent key (bytes).
pub const AGENT_KEY_LEN: usize = 32;

/// Largest guest buffer a single call may name (bytes); longer requests get [`Status::BadBuffer`].
pub const MAX_BUFFER_LEN: usize = 64 * 1024;

/// Length of the [`Function::UnregisterContainer`] request: the agent key, then the id (u32 LE).
pub const UNREGISTER_LEN: usize = AGENT_KEY_LEN + 4;

/// Length of the [`Function::ReadCounters`] request: the agent key only.
pub const READ_COUNTERS_LEN: usize = AGENT_KEY_LEN;

/// Length of the [`Function::ReadEvents`] request: the agent key, then `from_seq` (u64 LE).
pub const READ_EVENTS_LEN: usize = AGENT_KEY_LEN + 8;

/// Length of the [`Function::ListTasks`] request: the agent key, then flags (u32 LE).
pub const LIST_TASKS_LEN: usize = AGENT_KEY_LEN + 4;
/// [`Function::ListTasks`] flag: list each process's sockets.
pub const LIST_TASKS_SOCKETS: u32 = 1;
/// Smallest [`Function::ListTasks`] output buffer (room for the last line).
pub const LIST_TASKS_MIN_OUT: usize = 256;

/// Base of the detail codes (`RBX` of a refused register or update) for a malformed
/// registration: `DECODE_DETAIL_BASE +` the decode error's index.
pub const DECODE_DETAIL_BASE: u64 = 1000;

/// Base of the detail codes for a registry refusal: `REGISTRY_DETAIL_BASE +` the registry
/// error's index.
pub const REGISTRY_DETAIL_BASE: u64 = 2000;

/// Length of the [`Function::PushProfile`] request: the agent key, then the encoded profile.
pub const PUSH_PROFILE_LEN: usize = AGENT_KEY_LEN + crate::profile::ENCODED_LEN;

/// The state of Shoji's kernel profile, returned in `RCX` by [`Function::WhoAmI`] and
/// [`Function::PushProfile`] on success. (Without a profile, WhoAmI returns
/// [`Status::NoProfile`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum ProfileState {
    /// No profile has been pushed.
    None = 0,
    /// A profile is active and its BTF fingerprint matched the guest's BTF in memory.
    Verified = 1,
    /// A profile is active but named no BTF address, so its fingerprint was not checked.
    Unverified = 2,
}

impl ProfileState {
    /// Decode a state value.
    pub fn from_u64(v: u64) -> Option<ProfileState> {
        Some(match v {
            0 => ProfileState::None,
            1 => ProfileState::Verified,
            2 => ProfileState::Unverified,
            _ => return None,
        })
    }
}

/// Length of the [`Function::WhoAmI`] reply.
pub const WHOAMI_LEN: usize = 104;
/// Version of the WhoAmI reply layout.
pub const WHOAMI_VERSION: u16 = 1;

/// The WhoAmI reply: a fixed little-endian encoding of [`TaskIdentity`](crate::TaskIdentity).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 2 | layout version ([`WHOAMI_VERSION`]) |
/// | 2 | 1 | context: 0 task, 1 kernel thread, 2 hard irq, 3 soft irq, 255 unknown |
/// | 3 | 1 | zero |
/// | 4 | 4 | validity bitmap: bit `i` set when field `i` below is known |
/// | 8 | 8 | task_struct address |
/// | 16 | 44 | `u32` fields 0..=10: pid, tgid, pid_local, tgid_local, pgid, uid, euid, uid_local, userns_id, netns_id, pidns_id |
/// | 60 | 4 | zero |
/// | 64 | 24 | `u64` fields 11..=13: cgroup_id, start_time, exe_inode |
/// | 88 | 16 | field 14: comm, NUL padded |
///
/// Unknown fields are zero and their bit is clear.
pub mod whoami {
    use super::{WHOAMI_LEN, WHOAMI_VERSION};
    use crate::identity::{ExecContext, TaskIdentity, COMM_LEN};

    fn ctx_code(c: ExecContext) -> u8 {
        match c {
            ExecContext::Task => 0,
            ExecContext::KernelThread => 1,
            ExecContext::HardIrq => 2,
            ExecContext::SoftIrq => 3,
            ExecContext::Unknown => 255,
        }
    }

    fn ctx_from(b: u8) -> Option<ExecContext> {
        Some(match b {
            0 => ExecContext::Task,
            1 => ExecContext::KernelThread,
            2 => ExecContext::HardIrq,
            3 => ExecContext::SoftIrq,
            255 => ExecContext::Unknown,
            _ => return None,
        })
    }

    fn u32s(id: &TaskIdentity) -> [Option<u32>; 11] {
        [
            id.pid,
            id.tgid,
            id.pid_local,
            id.tgid_local,
            id.pgid,
            id.uid,
            id.euid,
            id.uid_local,
            id.userns_id,
            id.netns_id,
            id.pidns_id,
        ]
    }

    /// Encode an identity for its caller. Bytes 8..16 (once the `task_struct` address) stay 0:
    /// a kernel address would tell every caller, a container's process too, where the kernel's
    /// heap lies (a KASLR leak); the caller gets only what it may know about itself.
    pub fn encode(id: &TaskIdentity) -> [u8; WHOAMI_LEN] {
        let mut out = [0u8; WHOAMI_LEN];
        out[0..2].copy_from_slice(&WHOAMI_VERSION.to_le_bytes());
        out[2] = ctx_code(id.context);
        let mut valid = 0u32;
        for (i, v) in u32s(id).iter().enumerate() {
            if let Some(v) = v {
                valid |= 1 << i;
                out[16 + 4 * i..20 + 4 * i].copy_from_slice(&v.to_le_bytes());
            }
        }
        for (i, v) in [id.cgroup_id, id.start_time, id.exe_inode]
            .iter()
            .enumerate()
        {
            if let Some(v) = v {
                valid |= 1 << (11 + i);
                out[64 + 8 * i..72 + 8 * i].copy_from_slice(&v.to_le_bytes());
            }
        }
        if let Some(c) = id.comm {
            valid |= 1 << 14;
            out[88..88 + COMM_LEN].copy_from_slice(&c);
        }
        out[4..8].copy_from_slice(&valid.to_le_bytes());
        out
    }

    /// Decode a reply (`None` if too short, wrong version or malformed).
    pub fn decode(b: &[u8]) -> Option<TaskIdentity> {
        let b: &[u8; WHOAMI_LEN] = b.get(..WHOAMI_LEN)?.try_into().ok()?;
        if u16::from_le_bytes([b[0], b[1]]) != WHOAMI_VERSION || b[3] != 0 {
            return None;
        }
        let valid = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if valid >> 15 != 0 {
            return None;
        }
        let u32_at = |i: usize| {
            let o = 16 + 4 * i;
            (valid & (1 << i) != 0)
                .then(|| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
        };
        let u64_at = |i: usize| {
            let o = 64 + 8 * i;
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            (valid & (1 << (11 + i)) != 0).then(|| u64::from_le_bytes(a))
        };
        let mut task = [0u8; 8];
        task.copy_from_slice(&b[8..16]);
        let mut comm = [0u8; COMM_LEN];
        comm.copy_from_slice(&b[88..88 + COMM_LEN]);
        Some(TaskIdentity {
            task: u64::from_le_bytes(task),
            context: ctx_from(b[2])?,
            pid: u32_at(0),
            tgid: u32_at(1),
            pid_local: u32_at(2),
            tgid_local: u32_at(3),
            pgid: u32_at(4),
            uid: u32_at(5),
            euid: u32_at(6),
            uid_local: u32_at(7),
            userns_id: u32_at(8),
            netns_id: u32_at(9),
            pidns_id: u32_at(10),
            cgroup_id: u64_at(0),
            start_time: u64_at(1),
            exe_inode: u64_at(2),
            comm: (valid & (1 << 14) != 0).then_some(comm),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_registers_spell_the_signature() {
        let (b, c, d) = signature_registers();
        let mut s = [0u8; 12];
        s[..4].copy_from_slice(&b.to_le_bytes());
        s[4..8].copy_from_slice(&c.to_le_bytes());
        s[8..].copy_from_slice(&d.to_le_bytes());
        assert_eq!(&s, &SIGNATURE);
    }

    #[test]
    fn whoami_round_trip() {
        use crate::identity::{ExecContext, TaskIdentity};
        let mut id = TaskIdentity {
            task: 0xffff_8880_1234_5678,
            context: ExecContext::Task,
            pid: Some(42),
            uid_local: Some(0),
            cgroup_id: Some(7),
            comm: Some(*b"curl\0\0\0\0\0\0\0\0\0\0\0\0"),
            ..Default::default()
        };
        let enc = whoami::encode(&id);
        // Everything but the task_struct address, which the reply never carries.
        let without_address = TaskIdentity { task: 0, ..id };
        assert_eq!(whoami::decode(&enc), Some(without_address));
        id.context = ExecContext::Unknown;
        id.comm = None;
        assert_eq!(
            whoami::decode(&whoami::encode(&id)),
            Some(TaskIdentity { task: 0, ..id })
        );
        assert_eq!(whoami::decode(&enc[..50]), None);
    }

    #[test]
    fn policy_request_lengths() {
        assert_eq!(UNREGISTER_LEN, 36);
        assert_eq!(READ_COUNTERS_LEN, 32);
        assert_eq!(READ_EVENTS_LEN, 40);
    }

    #[test]
    fn rax_decoding() {
        assert_eq!(Function::decode_rax(0), None);
        assert_eq!(Function::decode_rax(0x1234), None);
        assert_eq!(
            Function::decode_rax(Function::WhoAmI.rax()),
            Some(Ok(Function::WhoAmI))
        );
        assert_eq!(
            Function::decode_rax(CALL_MAGIC | 0xffff),
            Some(Err(Status::UnknownFunction))
        );
        for n in 0..=9 {
            assert_eq!(Function::from_u32(n).unwrap() as u32, n);
        }
        for v in 0..=11 {
            assert_eq!(Status::from_u64(v).unwrap() as u64, v);
        }
    }
}
