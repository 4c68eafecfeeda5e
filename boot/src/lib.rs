//! The host-testable parts of Shoji's UEFI boot application: the configuration file, the PE
//! relocation used to place Shoji's own image in reserved memory, and the ACPI tables read to
//! find the platform's PCI Express configuration space.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod config;
pub mod pe;
