//! The boot sequence, BitVisor-style:
//!
//! 1. Copy Shoji's own image into memory reserved as `EfiReservedMemoryType` (the firmware's
//!    LoaderCode copy is reclaimed by the OS later), before anything initializes global state,
//!    and apply the image's relocations for the move.
//! 2. Read `shoji.cfg` beside the application, check VMX.
//! 3. Build Shoji's page tables and the setup page, then take every CPU into VMX non-root mode:
//!    the bootstrap processor here, the application processors through UEFI MP services. The
//!    firmware keeps running, now as Shoji's guest.
//! 4. Check on every CPU, from guest code, that CPUID shows Shoji's signature.
//! 5. Start the configured image (a Linux kernel, GRUB or shim) with its command line.
//!
//! When Shoji cannot start, the configured fail mode decides: `open` boots the image unprotected
//! and says so, `closed` refuses to boot.

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::ptr::NonNull;
use shoji_boot::config::{self, Config, FailMode, NextImage};
use shoji_boot::pe;
use shoji_hypervisor::arena::Arena;
use shoji_hypervisor::setup::{layout, Setup, SETUP_MAGIC};
use shoji_hypervisor::vmx::launch::{self, LaunchArgs};
use uefi::boot::{self, AllocateType, LoadImageSource, MemoryType};
use uefi::prelude::*;
use uefi::proto::device_path::text::{AllowShortcuts, DisplayOnly};
use uefi::proto::device_path::{build, DevicePath};
use uefi::proto::loaded_image::LoadedImage;
use uefi::proto::pi::mp::MpServices;
use uefi::{println, CString16};

/// Size of Shoji's reserved memory.
const REGION_SIZE: u64 = 32 << 20;
/// Where the configuration is looked for when the application's own path is unknown.
const FALLBACK_CONFIG: &str = "\\EFI\\BOOT\\shoji.cfg";

/// Shoji's image, copied and relocated into reserved memory.
struct Placement {
    region: u64,
    original_base: u64,
    image_size: u64,
}

#[entry]
fn main() -> Status {
    // Step 1 first: the copy must be taken while the image's data is still as loaded.
    let placement = place_image();
    if uefi::helpers::init().is_err() {
        return Status::ABORTED;
    }
    println!("shoji: starting Shoji {}", env!("CARGO_PKG_VERSION"));
    let (mut cfg, own_dir, cfg_path, cfg_text) = match load_config() {
        Ok(c) => c,
        Err((reason, mode)) => {
            println!("shoji: configuration error: {reason}");
            return fail(mode, None, placement.ok());
        }
    };
    admin_key(&mut cfg, &cfg_path, &cfg_text);
    let placement = match placement {
        Ok(p) => p,
        Err(reason) => {
            println!("shoji: cannot place the hypervisor: {reason}");
            return fail(cfg.fail_mode, Some((&cfg, &own_dir)), None);
        }
    };
    if let Err(reason) = vmx_available() {
        println!("shoji: VMX unavailable: {reason}");
        return fail(cfg.fail_mode, Some((&cfg, &own_dir)), Some(placement));
    }
    match start_hypervisor(&cfg, &placement) {
        Ok(cpus) => println!("shoji: hypervisor running on {cpus} cpu(s)"),
        Err(HvError::NotStarted(reason)) => {
            println!("shoji: hypervisor failed to start: {reason}");
            return fail(cfg.fail_mode, Some((&cfg, &own_dir)), Some(placement));
        }
        Err(HvError::Partial(reason)) => {
            // The bootstrap processor is virtualized: the region can no longer be freed.
            println!("shoji: hypervisor only partly started: {reason}");
            return fail(cfg.fail_mode, Some((&cfg, &own_dir)), None);
        }
    }
    if cfg.mediate_nic && !nic_mediated() {
        // Shoji runs, but frames would bypass the policy (and the policy calls answer
        // Unsupported): that is no protection, so the fail mode decides.
        println!("shoji: no supported e1000 NIC is mediated (Shoji's log says why)");
        return fail(cfg.fail_mode, Some((&cfg, &own_dir)), None);
    }
    match &cfg.image {
        NextImage::None => {
            println!("shoji: image = none: no image to start");
            Status::SUCCESS
        }
        NextImage::Path(path) => match start_image(path, &cfg.cmdline) {
            Ok(()) => Status::SUCCESS,
            Err(reason) => {
                println!("shoji: cannot start {path}: {reason}");
                fail(cfg.fail_mode, None, None)
            }
        },
    }
}

/// Act on the fail mode. With `Some(cfg)`, fail-open boots the configured image unprotected;
/// an unused reserved region is given back.
fn fail(mode: FailMode, boot: Option<(&Config, &str)>, unused: Option<Placement>) -> Status {
    if let Some(p) = unused {
        // SAFETY: the region was allocated by `place_image` and no CPU runs Shoji from it.
        let _ = unsafe { boot::free_pages(region_ptr(p.region), (REGION_SIZE / 4096) as usize) };
    }
    match mode {
        FailMode::Closed => {
            println!("shoji: fail-closed: refusing to boot");
            loop {
                boot::stall(1_000_000);
            }
        }
        FailMode::Open => {
            println!("shoji: fail-open: booting WITHOUT protection");
            match boot {
                Some((cfg, _)) => match &cfg.image {
                    NextImage::Path(path) => match start_image(path, &cfg.cmdline) {
                        Ok(()) => Status::SUCCESS,
                        Err(reason) => {
                            println!("shoji: cannot start {path}: {reason}");
                            Status::LOAD_ERROR
                        }
                    },
                    NextImage::None => Status::SUCCESS,
                },
                None => Status::ABORTED,
            }
        }
    }
}

fn region_ptr(addr: u64) -> NonNull<u8> {
    NonNull::new(addr as *mut u8).unwrap_or(NonNull::dangling())
}

/// Copy the running image into freshly reserved memory and relocate it there.
fn place_image() -> Result<Placement, &'static str> {
    let (base, size) = {
        let li = boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle())
            .map_err(|_| "LoadedImage protocol unavailable")?;
        let (b, s) = li.info();
        (b as u64, s)
    };
    // SAFETY: the firmware loaded this image at `base` with `size` bytes.
    let original = unsafe { core::slice::from_raw_parts(base as *const u8, size as usize) };
    let image_size = pe::size_of_image(original).map_err(|_| "own image is not PE32+")? as u64;
    if layout::IMAGE + image_size + (1 << 20) > REGION_SIZE {
        return Err("own image does not fit the reserved region");
    }
    let region = boot::allocate_pages(
        AllocateType::MaxAddress(0xffff_ffff),
        MemoryType::RESERVED,
        (REGION_SIZE / 4096) as usize,
    )
    .map_err(|_| "cannot allocate reserved memory")?
    .as_ptr() as u64;
    let copy_base = region + layout::IMAGE;
    // SAFETY: `region` is REGION_SIZE bytes of memory just allocated to Shoji; the image copy
    // fits (checked above) and does not overlap the original.
    let copy = unsafe {
        core::ptr::write_bytes(region as *mut u8, 0, layout::IMAGE as usize);
        core::ptr::copy_nonoverlapping(
            base as *const u8,
            copy_base as *mut u8,
            image_size as usize,
        );
        core::slice::from_raw_parts_mut(copy_base as *mut u8, image_size as usize)
    };
    if pe::relocate(copy, copy_base.wrapping_sub(base)).is_err() {
        // SAFETY: allocated just above, unused.
        let _ = unsafe { boot::free_pages(region_ptr(region), (REGION_SIZE / 4096) as usize) };
        return Err("cannot relocate own image");
    }
    Ok(Placement {
        region,
        original_base: base,
        image_size,
    })
}

/// Read and parse `shoji.cfg` from the application's directory. On error, the reason and the
/// fail mode to apply (the file's own, if readable, else closed).
fn load_config() -> Result<(Config, String, String, String), (String, FailMode)> {
    let own_path = {
        let li = boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle()).ok();
        li.and_then(|li| {
            li.file_path()
                .and_then(|p| p.to_string(DisplayOnly(false), AllowShortcuts(false)).ok())
                .map(|s| String::from(&s))
        })
    };
    let dir = own_path
        .as_deref()
        .map(config::directory_of)
        .unwrap_or("\\EFI\\BOOT")
        .into();
    let path = match own_path {
        Some(_) => alloc::format!("{dir}\\shoji.cfg"),
        None => FALLBACK_CONFIG.into(),
    };
    let text = read_file(&path)
        .map_err(|e| (alloc::format!("cannot read {path}: {e}"), FailMode::Closed))?;
    let text = String::from_utf8(text)
        .map_err(|_| (alloc::format!("{path} is not UTF-8 text"), FailMode::Closed))?;
    config::parse(&text)
        .map(|c| (c, dir, path.clone(), text.clone()))
        .map_err(|e| {
            (
                alloc::format!("{path}: {e}"),
                config::fail_mode_hint(&text).unwrap_or(FailMode::Closed),
            )
        })
}

/// The administrator's key in the firmware: a non-volatile variable with boot-services access
/// only, so that no guest software (efivarfs, runtime services) can read it once the guest's
/// kernel has started.
const ADMIN_KEY_VAR: &str = "ShojiAdminKey";
/// The vendor GUID of Shoji's variables.
const SHOJI_VENDOR: uefi::Guid = uefi::guid!("5b1e5a3c-7f1d-4c8e-9a53-0d5e0a1b5c17");

/// Move `mgmt_key` from `shoji.cfg` into the firmware, or take it from there.
///
/// With the key in the file: store it in the variable (boot-services access only), check it
/// reads back so, then overwrite the key's line in the file in place with a note of the same
/// length. Without it: use the variable's key, unless the variable is runtime-accessible (then
/// anyone in a guest could have written it: it is deleted and refused). Each outcome is said on
/// the console; a firmware that cannot store variables leaves the key in the file, with a
/// warning.
fn admin_key(cfg: &mut Config, path: &str, text: &str) {
    use uefi::runtime::{self, VariableAttributes, VariableVendor};
    if cfg.mgmt.enabled == 0 {
        return;
    }
    let Ok(name) = CString16::try_from(ADMIN_KEY_VAR) else {
        return;
    };
    let vendor = VariableVendor(SHOJI_VENDOR);
    let boot_only = VariableAttributes::NON_VOLATILE | VariableAttributes::BOOTSERVICE_ACCESS;
    if cfg.mgmt.key_set != 0 {
        let key = cfg.mgmt.key;
        // A variable of the same name with other attributes (one a guest created) is replaced.
        let _ = runtime::delete_variable(&name, &vendor);
        let stored = runtime::set_variable(&name, &vendor, boot_only, &key).and_then(|_| {
            let mut buf = [0u8; 32];
            match runtime::get_variable(&name, &vendor, &mut buf) {
                Ok((data, attrs)) if data == key && attrs == boot_only => Ok(()),
                Ok(_) => Err(uefi::Status::VOLUME_CORRUPTED.into()),
                Err(e) => Err(e.status().into()),
            }
        });
        if let Err(e) = stored {
            println!(
                "shoji: WARNING: the firmware did not keep the admin key ({:?}): it stays in {path}, where root in the guest can read it",
                e.status()
            );
            return;
        }
        match config::redact_mgmt_key(text).map(|t| overwrite_in_place(path, t.as_bytes())) {
            Some(Ok(())) => println!(
                "shoji: admin key moved into the firmware (variable {ADMIN_KEY_VAR}, boot services only); {path} no longer holds it"
            ),
            Some(Err(e)) => println!(
                "shoji: WARNING: admin key stored in the firmware, but {path} could not be rewritten ({e}): remove its mgmt_key line"
            ),
            None => println!(
                "shoji: WARNING: admin key stored in the firmware, but its line in {path} is too short to overwrite: remove it"
            ),
        }
        return;
    }
    let mut buf = [0u8; 32];
    match runtime::get_variable(&name, &vendor, &mut buf) {
        Ok((data, attrs)) if data.len() == 32 && attrs == boot_only => {
            cfg.mgmt.key.copy_from_slice(data);
            cfg.mgmt.key_set = 1;
            println!("shoji: admin key from the firmware (variable {ADMIN_KEY_VAR})");
        }
        Ok((_, attrs)) => {
            let _ = runtime::delete_variable(&name, &vendor);
            println!(
                "shoji: REFUSED the firmware's admin key: variable {ADMIN_KEY_VAR} has attributes {attrs:?} (runtime access lets a guest write it); deleted; signed requests are refused until mgmt_key is set again"
            );
        }
        Err(e) if e.status() == uefi::Status::NOT_FOUND => {
            println!("shoji: no admin key (no mgmt_key, no {ADMIN_KEY_VAR} variable): signed requests are refused");
        }
        Err(e) => println!(
            "shoji: admin key not readable from the firmware ({:?}): signed requests are refused",
            e.status()
        ),
    }
}

/// Overwrite the start of an existing file with `bytes` (its length, not less), in place: the
/// file is not deleted and re-created, so its old clusters are written over.
fn overwrite_in_place(path: &str, bytes: &[u8]) -> Result<(), String> {
    use uefi::proto::media::file::{File, FileAttribute, FileMode};
    let mut fs = boot::get_image_file_system(boot::image_handle())
        .map_err(|e| alloc::format!("{:?}", e.status()))?;
    let mut root = fs
        .open_volume()
        .map_err(|e| alloc::format!("open volume: {:?}", e.status()))?;
    let cpath = CString16::try_from(path).map_err(|_| String::from("path is not UCS-2"))?;
    let handle = root
        .open(&cpath, FileMode::ReadWrite, FileAttribute::empty())
        .map_err(|e| alloc::format!("open: {:?}", e.status()))?;
    let mut file = handle
        .into_regular_file()
        .ok_or_else(|| String::from("not a regular file"))?;
    file.set_position(0)
        .map_err(|e| alloc::format!("seek: {:?}", e.status()))?;
    file.write(bytes)
        .map_err(|e| alloc::format!("write: {:?}", e.status()))?;
    file.flush()
        .map_err(|e| alloc::format!("flush: {:?}", e.status()))?;
    file.close();
    Ok(())
}

fn read_file(path: &str) -> Result<Vec<u8>, String> {
    let fs = boot::get_image_file_system(boot::image_handle())
        .map_err(|e| alloc::format!("{:?}", e.status()))?;
    let mut fs = uefi::fs::FileSystem::new(fs);
    let cpath = CString16::try_from(path).map_err(|_| String::from("path is not UCS-2"))?;
    fs.read(uefi::fs::Path::new(&cpath))
        .map_err(|e| alloc::format!("{e}"))
}

fn vmx_available() -> Result<(), String> {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 5) == 0 {
        return Err("the CPU does not report VMX (CPUID.1:ECX.VMX = 0)".into());
    }
    let fc = shoji_hypervisor::vmx::rdmsr(shoji_hypervisor::msr::IA32_FEATURE_CONTROL);
    let locked = fc & shoji_hypervisor::msr::FEATURE_CONTROL_LOCK != 0;
    if locked && fc & shoji_hypervisor::msr::FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0 {
        return Err(alloc::format!(
            "VMX is disabled and locked by the firmware (IA32_FEATURE_CONTROL = {fc:#x}); enable it in the firmware setup"
        ));
    }
    Ok(())
}

enum HvError {
    /// Nothing runs under Shoji: the region can be given back.
    NotStarted(String),
    /// Some CPUs run under Shoji.
    Partial(String),
}

/// Argument block for the AP procedures.
#[repr(C)]
struct ApCall {
    entry: u64,
    host_cr3: u64,
    args: LaunchArgs,
    result: u64,
    signature: [u32; 4],
}

extern "efiapi" fn ap_virtualize(arg: *mut c_void) {
    // SAFETY: `arg` is the `ApCall` the BSP passed to `startup_this_ap` and waits on.
    let call = unsafe { &mut *(arg as *mut ApCall) };
    // SAFETY: entry, setup and CR3 were prepared by `start_hypervisor`.
    call.result = unsafe { launch::virtualize_this_cpu(call.entry, &mut call.args, call.host_cr3) };
}

extern "efiapi" fn ap_read_signature(arg: *mut c_void) {
    // SAFETY: as above.
    let call = unsafe { &mut *(arg as *mut ApCall) };
    let r = core::arch::x86_64::__cpuid(shoji_shared::vmcall::CPUID_LEAF_SIGNATURE);
    call.signature = [r.eax, r.ebx, r.ecx, r.edx];
}

fn signature_text(sig: [u32; 4]) -> ([u8; 12], bool) {
    let mut s = [0u8; 12];
    s[..4].copy_from_slice(&sig[1].to_le_bytes());
    s[4..8].copy_from_slice(&sig[2].to_le_bytes());
    s[8..].copy_from_slice(&sig[3].to_le_bytes());
    (s, s == shoji_shared::vmcall::SIGNATURE)
}

fn report_signature(cpu: usize, sig: [u32; 4]) -> bool {
    let (text, ok) = signature_text(sig);
    if ok {
        println!(
            "shoji: cpu {cpu} sees signature {}",
            core::str::from_utf8(&text).unwrap_or("?")
        );
    } else {
        println!(
            "shoji: cpu {cpu} does NOT see Shoji's signature (got {:02x?})",
            text
        );
    }
    ok
}

/// Build the setup page and page tables, then virtualize every CPU. Returns the CPU count.
fn start_hypervisor(cfg: &Config, p: &Placement) -> Result<usize, HvError> {
    let region = p.region;
    let setup_ptr = (region + layout::SETUP) as *mut Setup;
    // SAFETY: the setup page is inside the reserved region and not used by anything else.
    let setup = unsafe { &mut *setup_ptr };
    let phys_bits = core::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff;
    let gb_pages = core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 26) != 0;
    let image_end = (region + layout::IMAGE + p.image_size + 0xfff) & !0xfff;
    *setup = Setup {
        magic: SETUP_MAGIC,
        region_base: region,
        region_size: REGION_SIZE,
        image_base: region + layout::IMAGE,
        image_size: p.image_size,
        arena_next: image_end,
        arena_end: region + REGION_SIZE,
        host_cr3: 0,
        phys_top: 1u64 << phys_bits.clamp(32, 39),
        log_port: cfg.log_port,
        log_level: cfg.log_level,
        expose_memory: cfg.expose_hypervisor_memory as u8,
        agent_key_set: cfg.agent_key.is_some() as u8,
        agent_key: cfg.agent_key.unwrap_or([0; 32]),
        cpu_count: 1,
        ram_count: 0,
        ram: [[0; 2]; shoji_hypervisor::setup::MAX_RAM_RANGES],
        mediate_nic: cfg.mediate_nic as u8,
        tsc_hz: calibrate_tsc(),
        mgmt: cfg.mgmt_settings(boot_id()),
        ecam_base: 0,
        ecam_bus_start: 0,
        ecam_bus_end: 0,
    };
    match find_ecam() {
        Ok(Some(r)) => {
            println!(
                "shoji: PCI Express configuration space (MCFG) at {:#x}, buses {}-{}",
                r.base, r.bus_start, r.bus_end
            );
            setup.ecam_base = r.base;
            setup.ecam_bus_start = r.bus_start;
            setup.ecam_bus_end = r.bus_end;
        }
        Ok(None) => {
            println!("shoji: no MCFG table: PCI configuration through ports 0xcf8/0xcfc only")
        }
        Err(why) => println!(
            "shoji: ACPI tables unusable ({why}): PCI configuration through ports 0xcf8/0xcfc only"
        ),
    }
    // Shoji does not program an IOMMU: say plainly what that leaves open.
    if let Ok(Some(_)) = find_table(b"DMAR") {
        println!(
            "shoji: the platform has an IOMMU (ACPI DMAR), which Shoji does not use: {DMA_OPEN}"
        );
    } else {
        println!("shoji: no IOMMU (no ACPI DMAR table): {DMA_OPEN}");
    }
    record_guest_ram(setup).map_err(HvError::NotStarted)?;
    write_canary(region);
    let host_cr3 = {
        let end = setup.arena_end;
        let mut arena = Arena::new(&mut setup.arena_next, end);
        shoji_hypervisor::paging::build_identity_map(&mut arena, setup.phys_top, gb_pages)
            .ok_or_else(|| HvError::NotStarted("no memory for page tables".into()))?
    };
    setup.host_cr3 = host_cr3;

    let mp = boot::get_handle_for_protocol::<MpServices>()
        .ok()
        .and_then(|h| boot::open_protocol_exclusive::<MpServices>(h).ok());
    let (cpus, bsp) = match &mp {
        Some(mp) => {
            let n = mp
                .get_number_of_processors()
                .map(|c| c.enabled)
                .unwrap_or(1);
            (n.max(1), mp.who_am_i().unwrap_or(0))
        }
        None => (1, 0),
    };
    setup.cpu_count = cpus as u32;

    let entry = launch::launch_entry as *const () as u64 - p.original_base + region + layout::IMAGE;
    let mut args = LaunchArgs {
        setup: setup_ptr as u64,
        cpu_index: 0,
        ..Default::default()
    };
    // SAFETY: the relocated image, setup page and page tables are ready.
    let rc = unsafe { launch::virtualize_this_cpu(entry, &mut args, host_cr3) };
    if rc != 0 {
        return Err(HvError::NotStarted(alloc::format!(
            "bootstrap processor: {} (details in Shoji's log)",
            launch::error::describe(rc)
        )));
    }
    let mut all_ok = report_signature(0, {
        let r = core::arch::x86_64::__cpuid(shoji_shared::vmcall::CPUID_LEAF_SIGNATURE);
        [r.eax, r.ebx, r.ecx, r.edx]
    });
    if let Some(mp) = &mp {
        for (index, proc_no) in (1u64..).zip((0..cpus).filter(|n| *n != bsp)) {
            let mut call = ApCall {
                entry,
                host_cr3,
                args: LaunchArgs {
                    setup: setup_ptr as u64,
                    cpu_index: index,
                    ..Default::default()
                },
                result: u64::MAX,
                signature: [0; 4],
            };
            let arg = &mut call as *mut ApCall as *mut c_void;
            println!("shoji: starting processor {proc_no} under Shoji as cpu {index}");
            let started = mp.startup_this_ap(
                proc_no,
                ap_virtualize,
                arg,
                None,
                Some(core::time::Duration::from_secs(10)),
            );
            if started.is_err() || call.result != 0 {
                return Err(HvError::Partial(alloc::format!(
                    "processor {proc_no}: {}",
                    if started.is_err() {
                        "did not run the launch procedure"
                    } else {
                        launch::error::describe(call.result)
                    }
                )));
            }
            let checked = mp.startup_this_ap(
                proc_no,
                ap_read_signature,
                arg,
                None,
                Some(core::time::Duration::from_secs(10)),
            );
            if checked.is_err() {
                println!("shoji: cpu {index} did not run the signature check");
                all_ok = false;
            } else {
                all_ok &= report_signature(index as usize, call.signature);
            }
        }
    }
    if !all_ok {
        return Err(HvError::Partial("not every CPU runs under Shoji".into()));
    }
    Ok(cpus)
}

/// Copy the firmware's RAM ranges into the setup page: the only memory Shoji will ever read or
/// write on the guest's behalf (never device memory).
fn record_guest_ram(setup: &mut Setup) -> Result<(), String> {
    use uefi::mem::memory_map::MemoryMap;
    let map = boot::memory_map(MemoryType::LOADER_DATA)
        .map_err(|e| alloc::format!("no memory map ({:?})", e.status()))?;
    for d in map.entries() {
        let ram = matches!(
            d.ty,
            MemoryType::CONVENTIONAL
                | MemoryType::LOADER_CODE
                | MemoryType::LOADER_DATA
                | MemoryType::BOOT_SERVICES_CODE
                | MemoryType::BOOT_SERVICES_DATA
                | MemoryType::RUNTIME_SERVICES_CODE
                | MemoryType::RUNTIME_SERVICES_DATA
                | MemoryType::ACPI_RECLAIM
                | MemoryType::ACPI_NON_VOLATILE
                | MemoryType::PERSISTENT_MEMORY
        );
        if ram {
            let end = d
                .phys_start
                .saturating_add(d.page_count.saturating_mul(4096));
            if !shoji_hypervisor::setup::add_ram_range(
                &mut setup.ram,
                &mut setup.ram_count,
                d.phys_start,
                end,
            ) {
                return Err("the firmware's memory map has too many RAM ranges".into());
            }
        }
    }
    Ok(())
}

/// This boot's id for the management endpoint's signatures: 16 bytes of SHA-256 over what
/// differs between boots: RDRAND output (when the CPU has it), the firmware's RNG protocol (when
/// it has one), the firmware's wall-clock time and TSC readings around both. A signed request
/// names the boot it was made for, so it cannot be replayed after a restart.
fn boot_id() -> [u8; 16] {
    use core::arch::x86_64::{__cpuid, _rdtsc};
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // SAFETY: RDTSC has no side effects.
    h.update(unsafe { _rdtsc() }.to_le_bytes());
    if __cpuid(1).ecx & (1 << 30) != 0 {
        for _ in 0..4 {
            h.update(rdrand().to_le_bytes());
        }
    }
    if let Ok(handle) = boot::get_handle_for_protocol::<uefi::proto::rng::Rng>() {
        if let Ok(mut rng) = boot::open_protocol_exclusive::<uefi::proto::rng::Rng>(handle) {
            let mut buf = [0u8; 32];
            if rng.get_rng(None, &mut buf).is_ok() {
                h.update(buf);
            }
        }
    }
    if let Ok(t) = uefi::runtime::get_time() {
        h.update([
            t.year() as u8,
            (t.year() >> 8) as u8,
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
        ]);
        h.update(t.nanosecond().to_le_bytes());
    }
    // SAFETY: as above.
    h.update(unsafe { _rdtsc() }.to_le_bytes());
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// One RDRAND value (0 when the CPU has none to give after a few tries).
fn rdrand() -> u64 {
    #[target_feature(enable = "rdrand")]
    fn step(out: &mut u64) -> i32 {
        core::arch::x86_64::_rdrand64_step(out)
    }
    let mut v = 0u64;
    for _ in 0..10 {
        // SAFETY: only called after CPUID said RDRAND exists.
        if unsafe { step(&mut v) } == 1 {
            return v;
        }
    }
    0
}

/// Stall used to measure the TSC frequency: 20 ms of the firmware's timer.
const CALIBRATION_STALL_US: u64 = 20_000;

/// Whether the hypervisor now running under this CPU mediates the NIC (CPUID leaf 0x40000001,
/// EBX).
fn nic_mediated() -> bool {
    let leaf = core::arch::x86_64::__cpuid(shoji_shared::vmcall::CPUID_LEAF_VERSION);
    leaf.ebx & shoji_shared::vmcall::FEATURE_NIC_MEDIATED != 0
}

/// What Shoji's boot line says about DMA (the harness matches it).
const DMA_OPEN: &str =
    "devices other than the NIC can DMA into Shoji's memory (it is hidden from software only)";

/// Read `len` bytes of firmware memory at physical address `addr` (identity mapped while boot
/// services run).
fn firmware_bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: ACPI tables lie in firmware-reserved memory that stays mapped and unchanged while
    // boot services run; callers bound `len` by a header they read first (and at most 1 MiB).
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Segment 0's ECAM window, from the firmware's MCFG table. `Ok(None)` when the platform has
/// no MCFG (i440fx: ports 0xCF8/0xCFC only).
fn find_ecam() -> Result<Option<shoji_boot::acpi::EcamRegion>, shoji_boot::acpi::AcpiError> {
    Ok(find_table(b"MCFG")?
        .and_then(|t| shoji_boot::acpi::mcfg_regions(t).find(|r| r.segment == 0)))
}

/// The firmware's validated ACPI table with `signature` (through the RSDP, then the XSDT or
/// RSDT), `Ok(None)` when there is none.
fn find_table(signature: &[u8; 4]) -> Result<Option<&'static [u8]>, shoji_boot::acpi::AcpiError> {
    use shoji_boot::acpi;
    const MAX_TABLE: usize = 1 << 20;
    let rsdp = uefi::system::with_config_table(|t| {
        t.iter()
            .find(|e| e.guid == uefi::table::cfg::ACPI2_GUID)
            .or_else(|| t.iter().find(|e| e.guid == uefi::table::cfg::ACPI_GUID))
            .map(|e| e.address as u64)
    });
    let Some(rsdp) = rsdp.filter(|&a| a != 0) else {
        return Ok(None);
    };
    let root = acpi::root_table(firmware_bytes(rsdp, acpi::RSDP_READ_LEN))?;
    let table = |addr: u64| -> Result<&'static [u8], acpi::AcpiError> {
        if addr == 0 {
            return Err(acpi::AcpiError::Truncated);
        }
        let (_, len) = acpi::header(firmware_bytes(addr, 36))?;
        if len > MAX_TABLE {
            return Err(acpi::AcpiError::Truncated);
        }
        Ok(firmware_bytes(addr, len))
    };
    let root_bytes = table(root.address)?;
    let root_sig = if root.entry_size == 8 {
        b"XSDT"
    } else {
        b"RSDT"
    };
    acpi::validate(root_bytes, root_sig)?;
    for addr in acpi::root_entries(root_bytes, root.entry_size) {
        let Ok(t) = table(addr) else { continue };
        if acpi::header(t).map(|(sig, _)| &sig == signature) != Ok(true) {
            continue;
        }
        acpi::validate(t, signature)?;
        return Ok(Some(t));
    }
    Ok(None)
}

/// The TSC frequency measured against the firmware's `Stall` (its platform timer, the ACPI PM
/// timer on OVMF), when CPUID leaves 0x15/0x16 do not give it (QEMU+KVM does not); 0 when CPUID
/// gives it or the measurement is implausible. Shoji's poll period and the guest's interrupt
/// throttling are clocked by it.
fn calibrate_tsc() -> u64 {
    use core::arch::x86_64::{__cpuid, __cpuid_count, _rdtsc};
    let regs = |leaf: u32| {
        let r = __cpuid_count(leaf, 0);
        shoji_hypervisor::cpuid::CpuidRegs {
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
        }
    };
    let max_leaf = __cpuid(0).eax;
    if shoji_hypervisor::cpuid::tsc_hz(max_leaf, regs(0x15), regs(0x16)).is_some() {
        return 0;
    }
    // SAFETY: RDTSC has no side effects.
    let t0 = unsafe { _rdtsc() };
    boot::stall(CALIBRATION_STALL_US as usize);
    // SAFETY: as above.
    let t1 = unsafe { _rdtsc() };
    match shoji_hypervisor::cpuid::calibrated_hz(t1.wrapping_sub(t0), CALIBRATION_STALL_US) {
        Some(hz) => {
            println!(
                "shoji: TSC {} kHz, measured against the firmware's timer (CPUID 0x15/0x16 do not say)",
                hz / 1000
            );
            hz
        }
        None => {
            println!(
                "shoji: TSC frequency unknown: CPUID 0x15/0x16 do not say and {} ticks in a {} us stall is implausible",
                t1.wrapping_sub(t0),
                CALIBRATION_STALL_US
            );
            0
        }
    }
}

fn write_canary(region: u64) {
    // SAFETY: RDTSC has no side effects.
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    let text = alloc::format!(
        "{}{:016x}\n",
        core::str::from_utf8(layout::CANARY_PREFIX).unwrap_or(""),
        tsc
    );
    // SAFETY: the canary page is the first page of Shoji's reserved region.
    unsafe {
        core::ptr::copy_nonoverlapping(
            text.as_ptr(),
            (region + layout::CANARY) as *mut u8,
            text.len(),
        )
    };
}

/// Load `path` from the volume Shoji was started from and start it with `cmdline`.
fn start_image(path: &str, cmdline: &str) -> Result<(), String> {
    let device = {
        let li = boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle())
            .map_err(|e| alloc::format!("{:?}", e.status()))?;
        li.device()
            .ok_or_else(|| String::from("Shoji's own volume is unknown"))?
    };
    let device_path = boot::open_protocol_exclusive::<DevicePath>(device)
        .map_err(|e| alloc::format!("no device path for Shoji's volume ({:?})", e.status()))?;
    let file = CString16::try_from(path).map_err(|_| String::from("path is not UCS-2"))?;
    let mut buf = [core::mem::MaybeUninit::<u8>::uninit(); 1024];
    let mut builder = build::DevicePathBuilder::with_buf(&mut buf);
    for node in device_path.node_iter() {
        builder = builder
            .push(&node)
            .map_err(|_| String::from("device path too long"))?;
    }
    let full = builder
        .push(&build::media::FilePath { path_name: &file })
        .and_then(|b| b.finalize())
        .map_err(|_| String::from("device path too long"))?;
    let child = boot::load_image(
        boot::image_handle(),
        LoadImageSource::FromDevicePath {
            device_path: full,
            boot_policy: uefi::proto::BootPolicy::ExactMatch,
        },
    )
    .map_err(|e| alloc::format!("load failed ({:?})", e.status()))?;
    if !cmdline.is_empty() {
        let options =
            CString16::try_from(cmdline).map_err(|_| String::from("cmdline is not UCS-2"))?;
        let bytes = options.num_bytes();
        let leaked: &'static CString16 = alloc::boxed::Box::leak(alloc::boxed::Box::new(options));
        let mut li = boot::open_protocol_exclusive::<LoadedImage>(child)
            .map_err(|e| alloc::format!("{:?}", e.status()))?;
        // SAFETY: the options buffer is leaked, so it outlives the child image.
        unsafe { li.set_load_options(leaked.as_ptr() as *const u8, bytes as u32) };
    }
    println!("shoji: starting {path}");
    boot::start_image(child).map_err(|e| alloc::format!("image returned {:?}", e.status()))
}
