//! shojictl's library: everything the tool does that can be tested without Shoji.
//!
//! The BTF → kernel-profile builder lives here so the tool and the fixture generator share it.

pub mod btfprofile;
pub mod vmcall;
pub mod whoami;
