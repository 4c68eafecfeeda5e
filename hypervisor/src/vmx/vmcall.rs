//! The VMCALL dispatcher: decodes the Shoji call in the guest's registers and answers it.
//! A VMCALL without Shoji's magic is answered with #UD, as on a CPU without Shoji.

use super::exit::{advance_rip, inject, log_counters, GuestRegs};
use super::introspection;
use super::launch::{Vcpu, VCPUS};
use super::policy;
use crate::counters::TokenBucket;
use crate::setup::Setup;
use core::sync::atomic::{AtomicU64, Ordering};
use shoji_shared::vmcall::{Function, Status, ABI_VERSION};

const SECOND: u64 = 1_000_000_000;

/// LogCounters per caller class: the host's callers, callers in a registered container, and
/// callers Shoji cannot place (no kernel profile yet, or their network namespace unreadable).
/// A container that loops on LogCounters spends its own class's budget only.
static LOG_COUNTERS_HOST: TokenBucket = TokenBucket::new(64, SECOND);
static LOG_COUNTERS_CONTAINER: TokenBucket = TokenBucket::new(8, 5 * SECOND);
static LOG_COUNTERS_UNKNOWN: TokenBucket = TokenBucket::new(64, SECOND);

/// Log lines of accepted profile pushes and policy changes (the audit trail): a budget of their
/// own, which no refused call spends.
static AUDIT_LOG: TokenBucket = TokenBucket::new(256, SECOND / 10);
/// Log lines of refused profile and policy calls, per caller class, and how many were left out.
static REFUSED_LOG_HOST: RefusedLog = RefusedLog::new(32, SECOND);
static REFUSED_LOG_CONTAINER: RefusedLog = RefusedLog::new(16, 5 * SECOND);
static REFUSED_LOG_UNKNOWN: RefusedLog = RefusedLog::new(32, SECOND);

/// Who is calling, for the rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerClass {
    Host,
    Container,
    Unknown,
}

impl CallerClass {
    fn of(setup: Option<&Setup>) -> CallerClass {
        match setup.and_then(introspection::caller_in_container) {
            Some(false) => CallerClass::Host,
            Some(true) => CallerClass::Container,
            None => CallerClass::Unknown,
        }
    }

    fn log_counters(self) -> &'static TokenBucket {
        match self {
            CallerClass::Host => &LOG_COUNTERS_HOST,
            CallerClass::Container => &LOG_COUNTERS_CONTAINER,
            CallerClass::Unknown => &LOG_COUNTERS_UNKNOWN,
        }
    }

    fn refused_log(self) -> &'static RefusedLog {
        match self {
            CallerClass::Host => &REFUSED_LOG_HOST,
            CallerClass::Container => &REFUSED_LOG_CONTAINER,
            CallerClass::Unknown => &REFUSED_LOG_UNKNOWN,
        }
    }
}

/// A budget for refusal lines that counts the lines it left out.
struct RefusedLog {
    bucket: TokenBucket,
    left_out: AtomicU64,
}

impl RefusedLog {
    const fn new(burst: u64, every_ns: u64) -> RefusedLog {
        RefusedLog {
            bucket: TokenBucket::new(burst, every_ns),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out before this one)` when this refusal may be logged.
    fn allow(&self) -> Option<u64> {
        if self.bucket.take(super::clock_ns()) {
            Some(self.left_out.swap(0, Ordering::Relaxed))
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Log the outcome of a profile or policy call: accepted ones on the audit budget, refused ones
/// on the caller class's budget.
fn log_outcome(setup: &Setup, accepted: bool, line: impl FnOnce(u64)) {
    if accepted {
        if AUDIT_LOG.take(super::clock_ns()) {
            line(0);
        }
    } else if let Some(left_out) = CallerClass::of(Some(setup)).refused_log().allow() {
        line(left_out);
    }
}

/// Handle a VMCALL exit.
pub fn handle(vcpu: &mut Vcpu, regs: &mut GuestRegs) {
    let Some(decoded) = Function::decode_rax(regs.rax) else {
        inject(6, 3, None);
        return;
    };
    let status = match decoded {
        Err(status) => status,
        Ok(Function::Version) => {
            regs.rbx = ABI_VERSION as u64;
            Status::Ok
        }
        Ok(Function::LogCounters) => {
            let class = CallerClass::of(super::launch::setup());
            if class.log_counters().take(super::clock_ns()) {
                log_all_counters(vcpu);
                Status::Ok
            } else {
                Status::RateLimited
            }
        }
        // Every other call reads or writes guest memory: it needs Shoji's setup.
        Ok(f) => match super::launch::setup() {
            None => Status::Unsupported,
            Some(setup) => memory_call(setup, f, regs),
        },
    };
    regs.rax = status as u64;
    advance_rip();
}

/// The calls that copy from or to the caller's memory (everything but Version and LogCounters).
fn memory_call(setup: &Setup, f: Function, regs: &mut GuestRegs) -> Status {
    match f {
        Function::WhoAmI => match introspection::whoami(setup, regs.rbx, regs.rcx) {
            Ok((n, state)) => {
                regs.rbx = n;
                regs.rcx = state as u64;
                Status::Ok
            }
            Err(s) => s,
        },
        Function::PushProfile => {
            let r = introspection::push_profile(setup, regs.rbx, regs.rcx);
            log_outcome(setup, r.is_ok(), |left_out| match r {
                Ok(state) => crate::hv_line!("kernel profile accepted ({state:?})"),
                Err(s) => crate::hv_line!(
                    "kernel profile push refused: {}{}",
                    s.describe(),
                    LeftOut(left_out)
                ),
            });
            match r {
                Ok(state) => {
                    regs.rcx = state as u64;
                    Status::Ok
                }
                Err(s) => s,
            }
        }
        Function::RegisterContainer | Function::UpdateContainer => {
            let update = f == Function::UpdateContainer;
            let r = policy::register(setup, regs.rbx, regs.rcx, update);
            log_outcome(setup, r.is_ok(), |left_out| match r {
                Ok(id) => crate::hv_line!(
                    "policy: container {} {}",
                    id.0,
                    if update { "updated" } else { "registered" }
                ),
                Err((s, d)) => crate::hv_line!(
                    "policy: {:?} refused: {} (detail {}){}",
                    f,
                    s.describe(),
                    d,
                    LeftOut(left_out)
                ),
            });
            policy_status(r.map(|_| ()), regs)
        }
        Function::UnregisterContainer => {
            let r = policy::unregister(setup, regs.rbx, regs.rcx);
            log_outcome(setup, r.is_ok(), |left_out| match r {
                Ok(id) => crate::hv_line!("policy: container {} unregistered", id.0),
                Err((s, _)) => crate::hv_line!(
                    "policy: unregister refused: {}{}",
                    s.describe(),
                    LeftOut(left_out)
                ),
            });
            policy_status(r.map(|_| ()), regs)
        }
        Function::ReadCounters => {
            match policy::read_counters(setup, regs.rbx, regs.rcx, regs.rdx, regs.rsi) {
                Ok(n) => {
                    regs.rbx = n;
                    Status::Ok
                }
                Err(e) => policy_status(Err(e), regs),
            }
        }
        Function::ReadEvents => {
            match policy::read_events(setup, regs.rbx, regs.rcx, regs.rdx, regs.rsi) {
                Ok(r) => {
                    regs.rbx = r.written;
                    regs.rcx = r.next_seq;
                    regs.rdx = r.missed;
                    Status::Ok
                }
                Err(e) => policy_status(Err(e), regs),
            }
        }
        Function::ListTasks => {
            match policy::list_tasks(setup, regs.rbx, regs.rcx, regs.rdx, regs.rsi) {
                Ok(n) => {
                    regs.rbx = n;
                    Status::Ok
                }
                Err(e) => policy_status(Err(e), regs),
            }
        }
        // Version and LogCounters are answered in `handle`.
        Function::Version | Function::LogCounters => Status::Unsupported,
    }
}

/// The status of a policy call; a refusal's detail code goes to `RBX`.
fn policy_status(r: Result<(), policy::Refusal>, regs: &mut GuestRegs) -> Status {
    match r {
        Ok(()) => Status::Ok,
        Err((status, detail)) => {
            regs.rbx = detail;
            status
        }
    }
}

fn log_all_counters(current: &Vcpu) {
    log_counters(current);
    for (i, slot) in VCPUS.iter().enumerate() {
        if i as u32 == current.index {
            continue;
        }
        if let Some(addr) = *slot.lock() {
            // SAFETY: VCPUS holds addresses of live `Vcpu`s; counters are atomics.
            log_counters(unsafe { &*(addr as *const Vcpu) });
        }
    }
    super::nic::log_counters();
    super::policy::log_stats();
}

/// " (N earlier refusals not logged)" when N > 0.
struct LeftOut(u64);

impl core::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} earlier refusals not logged)"),
        }
    }
}
