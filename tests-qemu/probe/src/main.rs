//! `probe`: the guest test program of Shoji's end-to-end tests.
//!
//! Runs inside the Linux guest (static musl binary in the initramfs) and prints one line per
//! finding, each starting with `probe <subcommand>:`, which the harness on the host matches in
//! the serial console log. Instructions that may fault (`VMXON`, `VMREAD`, `VMCALL`) run in a
//! child process (the probe re-executes itself), so the parent can report how the child died
//! without installing signal handlers.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus};

use clap::{Parser, Subcommand, ValueEnum};
use shoji_shared::vmcall::{Function, Status, CPUID_LEAF_SIGNATURE, SIGNATURE};

mod ecam;
mod frames;
mod msr;
mod raw;

/// The ASCII prefix of the canary that Shoji keeps in its reserved memory.
const CANARY_PREFIX: &[u8] = b"SHOJI-CANARY-";
/// Reserved ranges larger than this are not scanned (they are MMIO windows, not Shoji's memory).
const MAX_RANGE: u64 = 64 << 20;
/// Read size for `/dev/mem`.
const CHUNK: usize = 64 << 10;
/// Signal number of SIGILL on x86-64 Linux.
const SIGILL: i32 = 4;

/// Command line of the probe.
#[derive(Parser, Debug)]
#[command(name = "probe", about = "Shoji end-to-end guest probe")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The probe's subcommands.
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the CPUID hypervisor bit, the leaf 0x40000000 signature and the VMX bit.
    Cpuid,
    /// Execute VMXON and VMREAD from ring 3 in child processes and report how they died.
    Vmx,
    /// Scan the Reserved ranges of /proc/iomem through /dev/mem for Shoji's canary.
    Canary,
    /// Try to move CPU 0's local APIC to NEW_BASE through the msr driver (/dev/cpu/0/msr):
    /// report whether the write was accepted and where the base is after it; a base that moved
    /// is put back at once.
    ApicBaseMove {
        /// The new base (a 4 KiB-aligned physical address), e.g. 0xfed00000.
        #[arg(value_parser = parse_u64)]
        new_base: u64,
    },
    /// Write a value the hardware refuses to CPU 0's x2APIC ICR (MSR 0x830) through the msr
    /// driver: in xAPIC mode any write (the MSR is not accessible), in x2APIC mode one with
    /// reserved bits set. The answer must be #GP (EIO), as on bare metal.
    X2apicIcrBad,
    /// Read an MSR of CPU 0 through the msr driver, write a value derived from it (exactly one
    /// of --set, --xor, --add), read it back, and with --restore write the old value back.
    MsrRw {
        /// The MSR index, e.g. 0x2ff.
        #[arg(value_parser = parse_u64)]
        msr: u64,
        /// Write this value.
        #[arg(long, value_parser = parse_u64, conflicts_with_all = ["xor", "add"])]
        set: Option<u64>,
        /// Write the old value XOR this mask.
        #[arg(long, value_parser = parse_u64, conflicts_with = "add")]
        xor: Option<u64>,
        /// Write the old value plus this amount.
        #[arg(long, value_parser = parse_u64)]
        add: Option<u64>,
        /// Write the old value back afterwards (if the write was accepted).
        #[arg(long)]
        restore: bool,
    },
    /// Move memory BAR BAR of the PCI function BDF to a free address in a PCI window by writing
    /// the BAR through ECAM (MMCONFIG, a plain MMIO write through /dev/mem) instead of ports
    /// 0xCF8/0xCFC, read REG at the new address, and put the BAR back: reports whether the
    /// device decoded at the new address.
    EcamBarMove {
        /// The function, e.g. 0000:00:02.0.
        bdf: String,
        /// The BAR, 0 to 5 (a 32-bit memory BAR).
        bar: u8,
        /// Offset of the register read at the new address (0x8: the e1000's STATUS).
        #[arg(long, value_parser = parse_u64, default_value = "0x8")]
        reg: u64,
    },
    /// Ask Shoji to log its exit counters (VMCALL LogCounters).
    LogCounters,
    /// Send BYTES over TCP to ADDR:PORT, close the sending side and print the peer's answer.
    TcpSend {
        /// Peer address.
        addr: String,
        /// Peer port.
        port: u16,
        /// Bytes to send.
        bytes: u64,
    },
    /// Send UDP datagrams to ADDR:PORT as fast as possible for SECONDS, then print the count.
    Flood {
        /// Peer address.
        addr: String,
        /// Peer port.
        port: u16,
        /// Duration in seconds.
        seconds: u64,
        /// Payload bytes per datagram.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// UDP GSO: each send carries up to `--segments` datagrams of this many payload bytes
        /// (setsockopt UDP_SEGMENT; the kernel segments in software for a NIC without UDP
        /// segmentation offload and hands the driver the segments as one batch).
        #[arg(long)]
        gso: Option<u16>,
        /// Datagrams per send with `--gso` (at most 64, and 65,507 payload bytes in all).
        #[arg(long, default_value_t = 45)]
        segments: usize,
        /// Stop after this many datagrams (0: only the time bounds the flood).
        #[arg(long, alias = "count", default_value_t = 0)]
        frames: u64,
        /// Stop as soon as this file exists (checked every 64 datagrams); the time still bounds
        /// the flood. Without `--gso` only.
        #[arg(long)]
        stop_file: Option<std::path::PathBuf>,
    },
    /// Send COUNT forged ARP replies "SENDER_IP is at SENDER_MAC" to TARGET (AF_PACKET, 200 ms
    /// apart): the classic ARP spoof.
    ArpReply {
        /// Interface to send on.
        iface: String,
        /// The IPv4 address claimed.
        sender_ip: std::net::Ipv4Addr,
        /// The MAC address it is claimed to be at (also the frame's source).
        sender_mac: String,
        /// The victim's IPv4 address.
        target_ip: std::net::Ipv4Addr,
        /// The victim's MAC address (the frame's destination).
        target_mac: String,
        /// Number of replies.
        count: u64,
    },
    /// Send raw Ethernet/IPv4/UDP frames with the given source MAC and IP (AF_PACKET): COUNT
    /// frames 100 ms apart, or with SECONDS as fast as possible for SECONDS (COUNT 0 = no limit).
    RawUdp {
        /// Interface to send on.
        iface: String,
        /// Source MAC address.
        src_mac: String,
        /// Source IPv4 address.
        src_ip: std::net::Ipv4Addr,
        /// Destination MAC address.
        dst_mac: String,
        /// Destination IPv4 address.
        dst_ip: std::net::Ipv4Addr,
        /// Destination UDP port.
        port: u16,
        /// Number of frames (0: no limit, with SECONDS).
        count: u64,
        /// Flood for this many seconds.
        seconds: Option<u64>,
        /// Payload text (each frame carries "TEXT seq=N").
        #[arg(long, default_value = "probe-raw-udp")]
        payload: String,
        /// UDP source port.
        #[arg(long, default_value_t = 40000)]
        src_port: u16,
    },
    /// Send COUNT UDP datagrams in two IPv4 fragments each (AF_PACKET), the first fragment to
    /// FIRST_MAC and the last to LATER_MAC, identifications from --first-id: a later fragment
    /// sent where its first fragment did not go.
    RawFrag {
        /// Interface to send on.
        iface: String,
        /// Source MAC address.
        src_mac: String,
        /// Source IPv4 address.
        src_ip: std::net::Ipv4Addr,
        /// Destination MAC of the first fragments.
        first_mac: String,
        /// Destination MAC of the later fragments.
        later_mac: String,
        /// Destination IPv4 address (of the datagrams).
        dst_ip: std::net::Ipv4Addr,
        /// Destination UDP port.
        port: u16,
        /// Number of datagrams.
        count: u64,
        /// IPv4 identification of the first datagram.
        #[arg(long, default_value_t = 0xd000)]
        first_id: u16,
        /// UDP source port.
        #[arg(long, default_value_t = 40000)]
        src_port: u16,
    },
    /// Send COUNT UDP datagrams "TEXT seq=N" to ADDR:PORT through an ordinary socket, 100 ms apart.
    UdpSend {
        /// Destination address.
        addr: std::net::Ipv4Addr,
        /// Destination port.
        port: u16,
        /// Number of datagrams.
        count: u64,
        /// Payload text.
        #[arg(long, default_value = "probe-udp-send")]
        payload: String,
    },
    /// Receive UDP datagrams on PORT for SECONDS and print how many arrived and from where.
    UdpListen {
        /// Port to listen on.
        port: u16,
        /// How long to listen.
        seconds: u64,
    },
    /// Run a command and print how long it took (the guest's monotonic clock) and its exit code.
    Timed {
        /// Label printed with the result.
        label: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Count UDP datagrams arriving on PORT for SECONDS after the first one (waiting up to
    /// WAIT seconds for it), then print the count.
    UdpSink {
        /// Local port.
        port: u16,
        /// Counting time in seconds, from the first datagram.
        seconds: u64,
        /// Longest wait for the first datagram, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// Internal: execute one instruction (run in a child process by `vmx` and `log-counters`).
    #[command(hide = true)]
    ExecInsn {
        /// The instruction to execute.
        insn: Insn,
    },
}

/// Instructions that a child process executes.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Insn {
    /// `VMXON` with a pointer to a zero physical address.
    Vmxon,
    /// `VMREAD` of the guest RIP field.
    Vmread,
    /// `VMCALL` LogCounters; prints the returned status.
    Vmcall,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Cpuid => {
            cpuid();
            Ok(())
        }
        Cmd::Vmx => vmx(),
        Cmd::Canary => canary(),
        Cmd::ApicBaseMove { new_base } => msr::apic_base_move(new_base),
        Cmd::X2apicIcrBad => msr::x2apic_icr_bad(),
        Cmd::MsrRw {
            msr: index,
            set,
            xor,
            add,
            restore,
        } => match (u32::try_from(index), set, xor, add) {
            (Ok(m), Some(v), None, None) => msr::msr_rw(m, msr::Change::Set(v), restore),
            (Ok(m), None, Some(x), None) => msr::msr_rw(m, msr::Change::Xor(x), restore),
            (Ok(m), None, None, Some(n)) => msr::msr_rw(m, msr::Change::Add(n), restore),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "msr-rw: a 32-bit MSR index and exactly one of --set, --xor, --add",
            )),
        },
        Cmd::EcamBarMove { bdf, bar, reg } => {
            // This attack's errors carry its own prefix, which the harness matches.
            if let Err(e) = ecam::bar_move(&bdf, bar, reg) {
                println!("probe ecam-bar-move: error: {e}");
                return ExitCode::FAILURE;
            }
            Ok(())
        }
        Cmd::LogCounters => log_counters(),
        Cmd::TcpSend { addr, port, bytes } => tcp_send(&addr, port, bytes),
        Cmd::Flood {
            addr,
            port,
            seconds,
            size,
            gso,
            segments,
            frames,
            stop_file,
        } => match gso {
            Some(g) => flood_gso(&addr, port, seconds, g, segments, frames),
            None => flood(&addr, port, seconds, size, frames, stop_file.as_deref()),
        },
        Cmd::ArpReply {
            iface,
            sender_ip,
            sender_mac,
            target_ip,
            target_mac,
            count,
        } => raw::arp_reply(
            &iface,
            sender_ip,
            &sender_mac,
            target_ip,
            &target_mac,
            count,
        ),
        Cmd::RawUdp {
            iface,
            src_mac,
            src_ip,
            dst_mac,
            dst_ip,
            port,
            count,
            seconds,
            payload,
            src_port,
        } => raw::raw_udp(
            &iface,
            raw::RawUdpArgs {
                src_mac: &src_mac,
                src_ip,
                dst_mac: &dst_mac,
                dst_ip,
                src_port,
                port,
                count,
                seconds,
                payload: &payload,
            },
        ),
        Cmd::RawFrag {
            iface,
            src_mac,
            src_ip,
            first_mac,
            later_mac,
            dst_ip,
            port,
            count,
            first_id,
            src_port,
        } => raw::raw_frag(
            &iface,
            raw::RawUdpArgs {
                src_mac: &src_mac,
                src_ip,
                dst_mac: &first_mac,
                dst_ip,
                src_port,
                port,
                count,
                seconds: None,
                payload: "",
            },
            &later_mac,
            first_id,
        ),
        Cmd::UdpSend {
            addr,
            port,
            count,
            payload,
        } => raw::udp_send(addr, port, count, &payload),
        Cmd::UdpListen { port, seconds } => raw::udp_listen(port, seconds),
        Cmd::Timed { label, cmd } => timed(&label, &cmd),
        Cmd::UdpSink {
            port,
            seconds,
            wait,
        } => udp_sink(port, seconds, wait),
        Cmd::ExecInsn { insn } => {
            exec_insn(insn);
            Ok(())
        }
    };
    let _ = io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("probe: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Execute CPUID.
fn cpuid_regs(leaf: u32) -> (u32, u32, u32, u32) {
    let r = std::arch::x86_64::__cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// `probe cpuid`.
fn cpuid() {
    let (_, _, ecx1, _) = cpuid_regs(1);
    let hv_bit = (ecx1 >> 31) & 1;
    let vmx = (ecx1 >> 5) & 1;
    let (max, b, c, d) = cpuid_regs(CPUID_LEAF_SIGNATURE);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..].copy_from_slice(&d.to_le_bytes());
    let shown: String = if sig.iter().all(|&x| x == 0) {
        "none".into()
    } else {
        sig.iter()
            .map(|&x| if x.is_ascii_graphic() { x as char } else { '.' })
            .collect()
    };
    println!(
        "probe cpuid: hypervisor_bit={hv_bit} signature={shown} vmx={vmx} max_hv_leaf={max:#x} shoji={}",
        u8::from(sig == SIGNATURE)
    );
}

/// Name of a signal number, for the few that matter here.
fn signal_name(sig: i32) -> String {
    match sig {
        4 => "SIGILL".into(),
        5 => "SIGTRAP".into(),
        7 => "SIGBUS".into(),
        8 => "SIGFPE".into(),
        9 => "SIGKILL".into(),
        11 => "SIGSEGV".into(),
        n => format!("SIG{n}"),
    }
}

/// Run `probe exec-insn INSN` in a child process.
fn run_child(insn: Insn) -> io::Result<(ExitStatus, String)> {
    let name = insn
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    let out = Command::new("/proc/self/exe")
        .args(["exec-insn", &name])
        .output()?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// How a child ended, in a word.
fn describe_status(status: ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(sig), _) => signal_name(sig),
        (None, Some(code)) => format!("returned(exit={code})"),
        (None, None) => "unknown".into(),
    }
}

/// `probe vmx`.
fn vmx() -> io::Result<()> {
    let mut results = Vec::new();
    for (label, insn) in [("vmxon", Insn::Vmxon), ("vmread", Insn::Vmread)] {
        let (status, out) = run_child(insn)?;
        let how = describe_status(status);
        println!("probe vmx: child executing {label} ended with {how}");
        if !out.trim().is_empty() {
            println!("probe vmx: child {label} said: {}", out.trim());
        }
        results.push(format!("{label}={how}"));
    }
    println!("probe vmx: {} guest-alive", results.join(" "));
    Ok(())
}

/// `probe exec-insn` (child side).
fn exec_insn(insn: Insn) {
    match insn {
        Insn::Vmxon => {
            let region: u64 = 0;
            // SAFETY: VMXON only reads the 8-byte physical-address operand, which is a valid
            // local. From ring 3 the CPU (or Shoji) raises #UD or #GP; this child process exists
            // to die of that signal. Should it ever succeed, nothing in this process depends on
            // the VMX state.
            unsafe {
                core::arch::asm!("vmxon qword ptr [{0}]", in(reg) &region, options(nostack));
            }
            println!("vmxon returned");
        }
        Insn::Vmread => {
            let field: u64 = 0x681e; // guest RIP
            let value: u64;
            // SAFETY: VMREAD with register operands touches no memory. From ring 3 it raises #UD
            // (or #GP), which kills this child process on purpose.
            unsafe {
                core::arch::asm!("vmread {0}, {1}", out(reg) value, in(reg) field, options(nostack));
            }
            println!("vmread returned {value:#x}");
        }
        Insn::Vmcall => {
            let mut rax = Function::LogCounters.rax();
            // SAFETY: VMCALL touches no memory of this process. Shoji returns a status in RAX and
            // may write RBX, RCX, RDX (declared clobbered); without Shoji the CPU raises #UD,
            // which kills this child process on purpose.
            unsafe {
                core::arch::asm!(
                    "push rbx",
                    "xor ebx, ebx",
                    "vmcall",
                    "pop rbx",
                    inout("rax") rax,
                    out("rcx") _,
                    out("rdx") _,
                    out("rsi") _,
                );
            }
            let desc = Status::from_u64(rax).map_or("unknown status", Status::describe);
            println!("status={rax} ({desc})");
        }
    }
}

/// `probe timed`: the command's output goes straight through; the exit code is passed on.
fn timed(label: &str, cmd: &[String]) -> io::Result<()> {
    let (prog, args) = cmd
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command"))?;
    let start = std::time::Instant::now();
    let status = Command::new(prog).args(args).status();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let rc = match &status {
        Ok(st) => st
            .code()
            .map_or_else(|| describe_status(*st), |c| c.to_string()),
        Err(e) => format!("not-started({e})"),
    };
    println!("probe timed: {label} ms={ms:.1} rc={rc}");
    let _ = io::stdout().flush();
    match status {
        Ok(st) if st.success() => Ok(()),
        Ok(_) => std::process::exit(1),
        Err(e) => Err(e),
    }
}

/// `probe log-counters`.
fn log_counters() -> io::Result<()> {
    let (status, out) = run_child(Insn::Vmcall)?;
    match status.signal() {
        Some(SIGILL) => {
            println!("probe log-counters: VMCALL raised #UD (SIGILL): Shoji is absent");
        }
        Some(sig) => println!(
            "probe log-counters: VMCALL child died of {}",
            signal_name(sig)
        ),
        None => println!("probe log-counters: {}", out.trim()),
    }
    Ok(())
}

/// `probe tcp-send`: bulk data in large writes (so the kernel builds TSO packets).
fn tcp_send(addr: &str, port: u16, bytes: u64) -> io::Result<()> {
    use std::io::Read;
    let start = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect((addr, port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    let chunk = vec![0x5au8; 256 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "probe tcp-send: sent={bytes} seconds={secs:.3} kbit_per_s={:.0} peer={}",
        bytes as f64 * 8.0 / 1000.0 / secs.max(1e-9),
        answer.trim()
    );
    Ok(())
}

/// `probe flood`: send errors (the interface may go away during a driver reload) are counted
/// and the flood goes on.
fn flood(
    addr: &str,
    port: u16,
    seconds: u64,
    size: usize,
    frames: u64,
    stop_file: Option<&std::path::Path>,
) -> io::Result<()> {
    use std::net::ToSocketAddrs;
    let dst = (addr, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("no address"))?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let payload = vec![0xa5u8; size.clamp(1, 1472)];
    let start = std::time::Instant::now();
    let limit = std::time::Duration::from_secs(seconds);
    let (mut sent, mut errors) = (0u64, 0u64);
    while start.elapsed() < limit
        && (frames == 0 || sent < frames)
        && !stop_file.is_some_and(std::path::Path::exists)
    {
        for _ in 0..64 {
            if frames != 0 && sent >= frames {
                break;
            }
            match sock.send_to(&payload, dst) {
                Ok(_) => sent += 1,
                Err(_) => {
                    errors += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "probe flood: sent={sent} errors={errors} seconds={secs:.3} pps={:.0}",
        sent as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Largest UDP payload of one IPv4 send.
const UDP_MAX_PAYLOAD: usize = 65_507;
/// Most segments the kernel accepts in one UDP GSO send (UDP_MAX_SEGMENTS of Linux 6.1).
const UDP_MAX_SEGMENTS: usize = 64;

/// `probe flood --gso SIZE`: UDP GSO sends of `segments` datagrams of SIZE payload bytes each.
/// Prints `probe flood gso: sent=N sends=M gso=SIZE errors=E seconds=S pps=P` (N datagrams on
/// the wire). Send errors are counted and the flood goes on, as for the plain flood, except when
/// the very first send fails (the kernel refuses GSO on this path: that is reported).
fn flood_gso(
    addr: &str,
    port: u16,
    seconds: u64,
    gso: u16,
    segments: usize,
    frames: u64,
) -> io::Result<()> {
    use std::net::ToSocketAddrs;
    use std::os::fd::AsRawFd;
    /// SOL_UDP.
    const SOL_UDP: libc::c_int = 17;
    /// UDP_SEGMENT (the GSO size of the socket's sends).
    const UDP_SEGMENT: libc::c_int = 103;
    let dst = (addr, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("no address"))?;
    let gso_size = usize::from(gso.max(1));
    let segments = segments
        .clamp(1, UDP_MAX_SEGMENTS)
        .min(UDP_MAX_PAYLOAD / gso_size);
    if segments == 0 {
        return Err(io::Error::other(format!(
            "gso size {gso_size} is larger than one UDP datagram"
        )));
    }
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(dst)?;
    let val: libc::c_int = gso_size as libc::c_int;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&val`, a live local.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            SOL_UDP,
            UDP_SEGMENT,
            (&val as *const libc::c_int).cast(),
            core::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::other(format!(
            "setsockopt(SOL_UDP, UDP_SEGMENT, {gso_size}): {e}"
        )));
    }
    let payload = vec![0xa5u8; gso_size * segments];
    let start = std::time::Instant::now();
    let limit = std::time::Duration::from_secs(seconds);
    let (mut sent, mut sends, mut errors) = (0u64, 0u64, 0u64);
    while start.elapsed() < limit && (frames == 0 || sent < frames) {
        match sock.send(&payload) {
            Ok(n) => {
                sends += 1;
                sent += n.div_ceil(gso_size) as u64;
            }
            Err(e) if sends == 0 && errors == 0 => {
                return Err(io::Error::other(format!(
                    "first UDP GSO send of {} bytes (gso {gso_size}): {e}",
                    payload.len()
                )));
            }
            Err(_) => {
                errors += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "probe flood gso: sent={sent} sends={sends} gso={gso_size} errors={errors} seconds={secs:.3} pps={:.0}",
        sent as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// `probe udp-sink`: prints `probe udp-sink: received=N bytes=B seconds=S pps=P`.
fn udp_sink(port: u16, seconds: u64, wait: u64) -> io::Result<()> {
    use std::time::{Duration, Instant};
    let sock = std::net::UdpSocket::bind(("0.0.0.0", port))?;
    let mut buf = vec![0u8; 65536];
    sock.set_read_timeout(Some(Duration::from_secs(wait.max(1))))?;
    let (mut received, mut bytes) = match sock.recv(&mut buf) {
        Ok(n) => (1u64, n as u64),
        Err(e) => {
            println!(
                "probe udp-sink: received=0 bytes=0 seconds=0 pps=0 (nothing within {wait} s: {e})"
            );
            return Ok(());
        }
    };
    let start = Instant::now();
    let limit = Duration::from_secs(seconds);
    while let Some(left) = limit.checked_sub(start.elapsed()).filter(|d| !d.is_zero()) {
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                received += 1;
                bytes += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "probe udp-sink: received={received} bytes={bytes} seconds={secs:.3} pps={:.0}",
        received as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// One line of `/proc/iomem`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IomemRange {
    start: u64,
    end: u64,
    name: String,
    depth: usize,
}

/// Parse `/proc/iomem` text.
fn parse_iomem(text: &str) -> Vec<IomemRange> {
    text.lines()
        .filter_map(|line| {
            let depth = line.len() - line.trim_start().len();
            let (range, name) = line.trim().split_once(" : ")?;
            let (s, e) = range.split_once('-')?;
            Some(IomemRange {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                name: name.to_owned(),
                depth: depth / 2,
            })
        })
        .collect()
}

/// Find `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `probe canary`.
fn canary() -> io::Result<()> {
    let text = std::fs::read_to_string("/proc/iomem")?;
    let ranges: Vec<IomemRange> = parse_iomem(&text)
        .into_iter()
        .filter(|r| r.name == "Reserved")
        .collect();
    for r in &ranges {
        println!(
            "probe canary: reserved {:#x}-{:#x} ({} KiB, depth {})",
            r.start,
            r.end,
            (r.end - r.start + 1) / 1024,
            r.depth
        );
    }
    if ranges.iter().all(|r| r.start == 0 && r.end == 0) {
        println!("probe canary: /proc/iomem shows no addresses (not root?)");
    }
    let mem = File::open("/dev/mem")?;
    let (mut scanned_ranges, mut scanned_bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; CHUNK + CANARY_PREFIX.len()];
    for r in &ranges {
        let len = r.end.saturating_sub(r.start) + 1;
        if len > MAX_RANGE || r.end <= r.start {
            continue;
        }
        scanned_ranges += 1;
        let (mut range_bytes, mut range_errors) = (0u64, 0u64);
        let mut carry = 0usize; // bytes kept from the previous chunk
        let mut off = r.start;
        while off <= r.end {
            let want = CHUNK.min((r.end - off + 1) as usize);
            match mem.read_at(&mut buf[carry..carry + want], off) {
                Ok(n) if n > 0 => {
                    scanned_bytes += n as u64;
                    range_bytes += n as u64;
                    let window = &buf[..carry + n];
                    if let Some(pos) = find(window, CANARY_PREFIX) {
                        let addr = off - carry as u64 + pos as u64;
                        let tail: String = window[pos..]
                            .iter()
                            .take(40)
                            .take_while(|b| b.is_ascii_graphic())
                            .map(|&b| b as char)
                            .collect();
                        println!("probe canary: found at {addr:#x}: {tail}");
                        return Ok(());
                    }
                    let wlen = window.len();
                    let keep = (CANARY_PREFIX.len() - 1).min(wlen);
                    buf.copy_within(wlen - keep..wlen, 0);
                    carry = keep;
                    off += n as u64;
                }
                _ => {
                    errors += 1;
                    range_errors += 1;
                    carry = 0;
                    off += want as u64;
                }
            }
        }
        // What was read of this range: a "not found" means something only for bytes read.
        println!(
            "probe canary: scanned {:#x}-{:#x} bytes={range_bytes} of {len} unreadable_chunks={range_errors}",
            r.start, r.end
        );
    }
    println!(
        "probe canary: not found (scanned {scanned_ranges} ranges, {scanned_bytes} bytes, {errors} unreadable chunks)"
    );
    Ok(())
}

/// A number in decimal or with a 0x prefix.
fn parse_u64(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iomem() {
        let text = "00000000-00000fff : Reserved\n00001000-0009ffff : System RAM\n  01000000-01ffffff : Kernel code\n";
        let r = parse_iomem(text);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].name, "Reserved");
        assert_eq!((r[1].start, r[1].end), (0x1000, 0x9ffff));
        assert_eq!(r[2].depth, 1);
    }

    #[test]
    fn finds_needle() {
        assert_eq!(find(b"xxSHOJI-CANARY-1", CANARY_PREFIX), Some(2));
        assert_eq!(find(b"SHOJI-CANARY", CANARY_PREFIX), None);
    }
}
