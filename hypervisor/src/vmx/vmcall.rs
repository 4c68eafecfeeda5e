//! The VMCALL dispatcher: decodes the Shoji call in the guest's registers and answers it.
//! A VMCALL without Shoji's magic is answered with #UD, as on a CPU without Shoji.

use super::exit::{advance_rip, inject, log_counters, GuestRegs};
use super::introspection;
use super::launch::{Vcpu, VCPUS};
use super::policy;
use crate::counters::RateLimiter;
use crate::setup::Setup;
use shoji_shared::vmcall::{Function, Status, ABI_VERSION};

static LOG_COUNTERS_LIMIT: RateLimiter = RateLimiter::new(64);
static PROFILE_LOG: RateLimiter = RateLimiter::new(32);
static POLICY_LOG: RateLimiter = RateLimiter::new(256);

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
            if LOG_COUNTERS_LIMIT.allow().is_some() {
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
            if PROFILE_LOG.allow().is_some() {
                match r {
                    Ok(state) => crate::hv_line!("kernel profile accepted ({state:?})"),
                    Err(s) => crate::hv_line!("kernel profile push refused: {}", s.describe()),
                }
            }
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
            if POLICY_LOG.allow().is_some() {
                match r {
                    Ok(id) => crate::hv_line!(
                        "policy: container {} {}",
                        id.0,
                        if update { "updated" } else { "registered" }
                    ),
                    Err((s, d)) => {
                        crate::hv_line!("policy: {:?} refused: {} (detail {})", f, s.describe(), d)
                    }
                }
            }
            policy_status(r.map(|_| ()), regs)
        }
        Function::UnregisterContainer => {
            let r = policy::unregister(setup, regs.rbx, regs.rcx);
            if POLICY_LOG.allow().is_some() {
                match r {
                    Ok(id) => crate::hv_line!("policy: container {} unregistered", id.0),
                    Err((s, _)) => crate::hv_line!("policy: unregister refused: {}", s.describe()),
                }
            }
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
        // Version and LogCounters are answered in `handle`; ListTasks is reserved.
        Function::Version | Function::LogCounters | Function::ListTasks => Status::Unsupported,
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
