//! The kernel-profile format: how to find the current task and read its identity fields in a
//! particular guest kernel, derived by the agent from the kernel's own BTF and pushed to Shoji.
//!
//! The format is completed by the introspection work (issue 4); this module is its single home.

/// Magic at the start of a serialized profile ("SHJPROF\0").
pub const PROFILE_MAGIC: [u8; 8] = *b"SHJPROF\0";
/// Current profile format version.
pub const PROFILE_VERSION: u32 = 1;
