//! `shoji.efi`: Shoji's UEFI boot application. See `efi.rs` for the boot sequence.
#![cfg_attr(target_os = "uefi", no_std)]
#![cfg_attr(target_os = "uefi", no_main)]

#[cfg(target_os = "uefi")]
mod efi;

/// The global allocator: UEFI's pool while the firmware's boot services run, Shoji's own heap
/// (`shoji_hypervisor::heap`) in host mode, where boot services no longer exist.
#[cfg(target_os = "uefi")]
struct ShojiAlloc;

#[cfg(target_os = "uefi")]
// SAFETY: both allocators return suitably aligned, unaliased memory or null.
unsafe impl core::alloc::GlobalAlloc for ShojiAlloc {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        if shoji_hypervisor::heap::active() {
            shoji_hypervisor::heap::alloc(layout)
        } else {
            // SAFETY: forwarded unchanged to UEFI's pool allocator.
            unsafe { uefi::allocator::Allocator.alloc(layout) }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        // Shoji's heap never frees (one-time tables).
        if !shoji_hypervisor::heap::owns(ptr) {
            // SAFETY: `ptr` came from UEFI's pool allocator with this layout.
            unsafe { uefi::allocator::Allocator.dealloc(ptr, layout) }
        }
    }
}

#[cfg(target_os = "uefi")]
#[global_allocator]
static ALLOCATOR: ShojiAlloc = ShojiAlloc;

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
