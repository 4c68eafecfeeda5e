//! shojictl's library: everything the tool does that can be tested without Shoji.
//!
//! The BTF → kernel-profile builder lives here so the tool and the fixture generator share it;
//! so do the policy file, the agent's policy calls, the OCI hook, rtnetlink and the report text.

pub mod agent;
pub mod btfprofile;
pub mod netlink;
pub mod oci_hook;
pub mod policy_file;
pub mod report_text;
pub mod vmcall;
pub mod whoami;
