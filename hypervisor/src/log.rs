//! Shoji's own log: a UART of its own (COM2 by default), separate from the guest's console and
//! trapped so the guest can neither write into it nor reconfigure it.

use core::fmt::Write;
use spin::Mutex;
use uart_16550::SerialPort;

static PORT: Mutex<Option<SerialPort>> = Mutex::new(None);
static LOGGER: HvLogger = HvLogger;

/// The `log` facade implementation writing `shoji-hv: ...` lines.
struct HvLogger;

impl log::Log for HvLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            write_line(format_args!("{}", record.args()));
        }
    }
    fn flush(&self) {}
}

/// Start logging to the UART at `port` with `level` (0 error .. 4 trace). Port 0 disables output.
pub fn init(port: u16, level: u8) {
    if port != 0 {
        // SAFETY: the port belongs to Shoji (the boot configuration names it and the guest's
        // accesses to it are trapped); programming a 16550 has no other side effects.
        let mut p = unsafe { SerialPort::new(port) };
        p.init();
        *PORT.lock() = Some(p);
    }
    let filter = match level {
        0 => log::LevelFilter::Error,
        1 => log::LevelFilter::Warn,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    // A second call (another CPU) keeps the first logger: that is fine.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
}

/// Write one `shoji-hv: ` line, whatever the log level (used for the state dumps and counters).
pub fn write_line(args: core::fmt::Arguments<'_>) {
    if let Some(p) = PORT.lock().as_mut() {
        let _ = p.write_str("shoji-hv: ");
        let _ = p.write_fmt(args);
        let _ = p.write_str("\r\n");
    }
}

/// Write one line even if another CPU holds the log lock (for fatal paths; may interleave).
pub fn write_line_forced(args: core::fmt::Arguments<'_>) {
    // SAFETY: `force_unlock` is only used on the way to halting this CPU, where a held lock would
    // otherwise hide the reason for the halt.
    unsafe { PORT.force_unlock() };
    write_line(args);
}

/// `hv_line!(...)`: an unconditional line in Shoji's log.
#[macro_export]
macro_rules! hv_line {
    ($($arg:tt)*) => { $crate::log::write_line(format_args!($($arg)*)) };
}
