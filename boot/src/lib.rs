//! The host-testable parts of Shoji's UEFI boot application: the configuration file and the PE
//! relocation used to place Shoji's own image in reserved memory.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod pe;
