//! Shoji's VMX core: VMCS set-up, EPT, exit dispatch, VMCALL dispatcher, counters and log.
//!
//! The policy-free logic (MTRR types, EPT construction, CPUID and MSR answers, counters) is plain
//! code tested on the host; the VMX instructions and the exit entry point live in [`vmx`] and run
//! only on the real (or emulated) CPU.
#![no_std]

pub mod arena;
pub mod counters;
pub mod cpuid;
pub mod cr;
pub mod ept;
pub mod guest;
pub mod heap;
pub mod log;
pub mod msr;
pub mod mtrr;
pub mod pacing;
pub mod paging;
pub mod setup;
#[cfg(target_arch = "x86_64")]
pub mod vmx;
