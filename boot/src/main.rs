//! shoji.efi
fn main() {}
