//! Shoji's VMX core: VMCS, EPT, exit dispatch, VMCALL dispatcher, counters and log.
#![no_std]
