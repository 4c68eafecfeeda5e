//! `shoji.efi`: Shoji's UEFI boot application. See `efi.rs` for the boot sequence.
#![cfg_attr(target_os = "uefi", no_std)]
#![cfg_attr(target_os = "uefi", no_main)]

#[cfg(target_os = "uefi")]
mod efi;

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!("shoji.efi is a UEFI application: build it with `cargo build -p shoji-boot --target x86_64-unknown-uefi`");
    std::process::exit(2);
}
