//! The end-to-end harness.
fn main() {}
