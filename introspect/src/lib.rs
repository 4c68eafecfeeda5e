//! Guest introspection: page-table walks and Linux task identity through a pushed kernel profile.
//!
//! - [`paging`]: guest-virtual → guest-physical translation (4/5-level, huge pages, permissions).
//! - [`kmem`]: kernel virtual reads with a validated direct-map fast path.
//! - [`task`]: the current task at a VM exit, its context and its identity (cached).
//! - [`tasks`]: the guest's processes and their sockets (the task list walk, bounded).
//! - [`vmcall`]: VMCALL buffer copies through the caller's page tables, the agent check.
//! - [`counting`]: a counting [`GuestMemory`](shoji_shared::GuestMemory) wrapper.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::panic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing
    )
)]

pub mod counting;
pub mod kmem;
pub mod paging;
pub mod task;
pub mod tasks;
pub mod vmcall;

pub use counting::CountingMemory;
pub use kmem::{DirectMap, KernelView};
pub use paging::{translate, Access, PageSize, PageTables, PagingMode, Translation, WalkError};
pub use task::{CpuState, Introspector};
pub use vmcall::{check_agent, copy_from_guest, copy_to_guest, Caller};
