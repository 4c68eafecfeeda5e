//! shojictl: the guest-side tool for Shoji.
fn main() {}
