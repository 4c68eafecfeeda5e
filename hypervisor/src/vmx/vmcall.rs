//! The VMCALL dispatcher: decodes the Shoji call in the guest's registers and answers it.
//! A VMCALL without Shoji's magic is answered with #UD, as on a CPU without Shoji.

use super::exit::{advance_rip, inject, log_counters, GuestRegs};
use super::introspection;
use super::launch::{Vcpu, VCPUS};
use crate::counters::RateLimiter;
use shoji_shared::vmcall::{Function, Status, ABI_VERSION};

static LOG_COUNTERS_LIMIT: RateLimiter = RateLimiter::new(64);
static PROFILE_LOG: RateLimiter = RateLimiter::new(32);

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
        Ok(Function::WhoAmI) => match super::launch::setup() {
            None => Status::Unsupported,
            Some(setup) => match introspection::whoami(setup, regs.rbx, regs.rcx) {
                Ok((n, state)) => {
                    regs.rbx = n;
                    regs.rcx = state as u64;
                    Status::Ok
                }
                Err(s) => s,
            },
        },
        Ok(Function::PushProfile) => match super::launch::setup() {
            None => Status::Unsupported,
            Some(setup) => {
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
        },
        Ok(_) => Status::Unsupported,
    };
    regs.rax = status as u64;
    advance_rip();
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
}
