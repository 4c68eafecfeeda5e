//! Shoji's shared vocabulary.
//!
//! One definition, used by every other crate: the guest-physical memory trait, task identity,
//! container ids, frame direction, verdicts and drop reasons, the frame-filter hook, the VMCALL
//! contract and the kernel-profile format.
#![no_std]
#![forbid(unsafe_code)]

pub mod btf;
pub mod frame;
pub mod identity;
pub mod memory;
pub mod profile;
pub mod vmcall;

pub use frame::{Direction, DropReason, FrameFilter, FrameMeta, FrameSink, PassAll, Verdict};
pub use identity::{ContainerId, ContainerMembership, ExecContext, NoContainers, TaskIdentity};
pub use memory::{GuestMemory, MemError};
