//! The VMCALL contract between guest software (the agent, `shojictl`) and Shoji.
//!
//! # Detection
//! `CPUID.1:ECX[31]` (hypervisor present) is set, and leaf [`CPUID_LEAF_SIGNATURE`] returns the
//! highest Shoji leaf in EAX and the 12-byte [`SIGNATURE`] in EBX, ECX, EDX (in that order).
//! Leaf [`CPUID_LEAF_VERSION`] returns [`ABI_VERSION`] in EAX.
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
    /// Who is calling: fills the caller's buffer with its identity. Unprivileged.
    WhoAmI = 2,
    /// Push a kernel profile. Agent only.
    PushProfile = 3,
    /// Register a container. Agent only.
    RegisterContainer = 4,
    /// Update a container (addresses, rules, default action). Agent only.
    UpdateContainer = 5,
    /// Unregister a container. Agent only.
    UnregisterContainer = 6,
    /// Read counters. Agent only (cross-tenant data).
    ReadCounters = 7,
    /// Read events. Agent only (cross-tenant data).
    ReadEvents = 8,
    /// List guest tasks with their sockets. Agent only.
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
            Status::NotAuthorized => "not authorized (agent key and uid 0 in the initial user namespace required)",
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
