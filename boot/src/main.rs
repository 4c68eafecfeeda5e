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

/// Shoji's panic handler: the message goes to Shoji's log (once the hypervisor runs) and straight
/// to COM1, then the CPU halts. (UEFI's own handler would call the firmware's ResetSystem, which
/// is unreachable from host mode once the OS has remapped the runtime services.)
#[cfg(target_os = "uefi")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    struct Com1;
    impl Write for Com1 {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for b in s.bytes() {
                // SAFETY: polling and writing the COM1 UART on the way to halting.
                unsafe {
                    for _ in 0..100_000 {
                        let lsr: u8;
                        core::arch::asm!("in al, dx", in("dx") 0x3fdu16, out("al") lsr, options(nomem, nostack));
                        if lsr & 0x20 != 0 {
                            break;
                        }
                    }
                    core::arch::asm!("out dx, al", in("dx") 0x3f8u16, in("al") b, options(nomem, nostack));
                }
            }
            Ok(())
        }
    }
    shoji_hypervisor::log::write_line_forced(format_args!("panic: {info}"));
    let _ = writeln!(Com1, "\r\nshoji: panic: {info}\r");
    loop {
        // SAFETY: halting with interrupts disabled only stops this CPU.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
