//! Shoji boot library: config parsing and image handling, host-testable.
#![no_std]
