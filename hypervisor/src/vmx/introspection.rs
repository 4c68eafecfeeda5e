//! Introspection at VMCALL exits: who the caller is (CPL, per-CPU base, page tables from the
//! VMCS), the active kernel profile, and the two calls built on it: WhoAmI (anyone) and
//! PushProfile (the agent only).
//!
//! Everything here is bounded: the request buffers are fixed-size and copied in once through the
//! caller's own page tables, the profile is validated before use, and every refusal is a
//! [`Status`]. No heap: the active profile lives in a static with fixed-size storage.

use super::{guest_cpl, rdmsr, vmread, EFER_LMA};
use crate::guest::{address_space, AddressSpace, GuestRam};
use crate::setup::Setup;
use shoji_introspect::paging::{translate, PageTables};
use shoji_introspect::tasks::{WalkEnd, WalkLimits, WalkSummary};
use shoji_introspect::{
    check_agent, copy_from_guest, copy_to_guest, Caller, CpuState, Introspector,
};
use shoji_mgmt::http::SliceWriter;
use shoji_shared::profile::{KernelProfile, ENCODED_LEN};
use shoji_shared::vmcall::{
    whoami, ProfileState, Status, AGENT_KEY_LEN, MAX_BUFFER_LEN, PUSH_PROFILE_LEN, WHOAMI_LEN,
};
use shoji_shared::TaskIdentity;
use spin::Mutex;
use x86::vmx::vmcs::guest;

/// IA32_KERNEL_GS_BASE. VMX does not switch it, so in the host it still holds the guest's value.
const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Largest BTF blob Shoji hashes to verify a fingerprint (Debian's vmlinux BTF is ~5 MiB).
const MAX_BTF_LEN: u32 = 32 << 20;
/// PTI keeps the user half's page tables in the page after the kernel's (bit 12 of CR3).
const PTI_USER_PGD_BIT: u64 = 1 << 12;

/// The active kernel profile and what Shoji learnt about it.
struct Active {
    intro: Introspector,
    verified: bool,
}

static ACTIVE: Mutex<Option<Active>> = Mutex::new(None);

/// The caller of the current VMCALL as the VMCS describes it.
#[derive(Debug, Clone, Copy)]
pub struct CallerState {
    /// For buffer copies: the caller's own page tables and CPL.
    pub caller: Caller,
    /// For introspection: CPL, GS bases, RSP and the caller's page tables.
    pub cpu: CpuState,
}

/// Read the caller's state from the VMCS. `None` when the guest is not in IA-32e paging (the
/// caller is firmware or a 32-bit mode Shoji does not walk).
pub fn caller_state() -> Option<CallerState> {
    let space = address_space(
        vmread(guest::CR0),
        vmread(guest::CR3),
        vmread(guest::CR4),
        vmread(guest::IA32_EFER_FULL),
    );
    let AddressSpace::Paged(pt) = space else {
        return None;
    };
    let cpl = guest_cpl() as u8;
    let cpu = CpuState {
        cpl,
        gs_base: vmread(guest::GS_BASE),
        kernel_gs_base: rdmsr(IA32_KERNEL_GS_BASE),
        rsp: vmread(guest::RSP),
        pt,
    };
    Some(CallerState {
        caller: Caller { pt, cpl },
        cpu,
    })
}

/// The page tables that map the kernel for this caller: the caller's own, unless they do not map
/// the per-CPU base and the sibling page (PTI's kernel half, CR3 bit 12 clear) does.
pub fn kernel_view(mem: &GuestRam, cpu: &CpuState) -> CpuState {
    let Some(base) = cpu.percpu_base() else {
        return *cpu;
    };
    if translate(mem, &cpu.pt, base).is_ok() || cpu.pt.cr3 & PTI_USER_PGD_BIT == 0 {
        return *cpu;
    }
    let alt = PageTables {
        cr3: cpu.pt.cr3 & !PTI_USER_PGD_BIT,
        mode: cpu.pt.mode,
    };
    if translate(mem, &alt, base).is_ok() {
        CpuState { pt: alt, ..*cpu }
    } else {
        *cpu
    }
}

/// End of guest RAM (for the direct-map window).
fn ram_top(setup: &Setup) -> u64 {
    let n = (setup.ram_count as usize).min(setup.ram.len());
    setup.ram[..n].iter().map(|r| r[1]).max().unwrap_or(0)
}

/// Learn the direct map with `intro` if it is not known yet (`cpu` seen through the kernel's page
/// tables, `top` the end of guest RAM).
fn learn_direct_map_once(intro: &mut Introspector, mem: &GuestRam, cpu: &CpuState, top: u64) {
    if intro.direct_map().is_none() {
        let _ = intro.learn_direct_map(mem, cpu, top);
    }
}

/// Attribute the caller with `intro` (learning the direct map first if it is not known yet).
fn attribute(intro: &mut Introspector, mem: &GuestRam, cpu: &CpuState, top: u64) -> TaskIdentity {
    learn_direct_map_once(intro, mem, cpu, top);
    intro.attribute(mem, cpu)
}

/// A task as the active profile reads it.
struct Attributed {
    /// Its identity.
    id: TaskIdentity,
    /// The initial user namespace's inode, as the profile names it (for the agent check).
    init_userns_inum: u32,
    /// Whether the profile's fingerprint was verified.
    verified: bool,
}

/// Attribute the task running at this exit (`cpu`, seen through the kernel's page tables) with
/// the active profile; `NoProfile` when none is active.
fn attribute_active(setup: &Setup, mem: &GuestRam, cpu: &CpuState) -> Result<Attributed, Status> {
    let cpu = kernel_view(mem, cpu);
    let top = ram_top(setup);
    let mut active = ACTIVE.lock();
    let a = active.as_mut().ok_or(Status::NoProfile)?;
    Ok(Attributed {
        id: attribute(&mut a.intro, mem, &cpu, top),
        init_userns_inum: a.intro.profile().init_userns_inum,
        verified: a.verified,
    })
}

/// WhoAmI: `RBX` = buffer, `RCX` = its length (at least [`WHOAMI_LEN`]). Writes the caller's
/// identity; returns the number of bytes written and the [`ProfileState`].
pub fn whoami(setup: &Setup, va: u64, len: u64) -> Result<(u64, ProfileState), Status> {
    if len > MAX_BUFFER_LEN as u64 {
        return Err(Status::BadBuffer);
    }
    if len < WHOAMI_LEN as u64 {
        return Err(Status::InvalidArgument);
    }
    let st = caller_state().ok_or(Status::InvalidArgument)?;
    let mut mem = GuestRam::from_setup(setup);
    // The buffer is checked (and cleared) before anything else: a refused buffer is refused
    // whether or not a profile is active.
    copy_to_guest(&mut mem, &st.caller, va, &[0u8; WHOAMI_LEN])?;
    let caller = attribute_active(setup, &mem, &st.cpu)?;
    let state = if caller.verified {
        ProfileState::Verified
    } else {
        ProfileState::Unverified
    };
    copy_to_guest(&mut mem, &st.caller, va, &whoami::encode(&caller.id))?;
    Ok((WHOAMI_LEN as u64, state))
}

/// The state of the active profile (for WhoAmI callers and the log).
pub fn profile_state() -> ProfileState {
    match ACTIVE.lock().as_ref() {
        None => ProfileState::None,
        Some(a) if a.verified => ProfileState::Verified,
        Some(_) => ProfileState::Unverified,
    }
}

/// PushProfile: `RBX` = request, `RCX` = [`PUSH_PROFILE_LEN`]: the agent key followed by the
/// encoded profile. The agent check (key, and uid 0 in the initial user namespace as both the new
/// profile and the active one, if any, read it) comes before the fingerprint is verified against
/// the BTF in guest memory. On any refusal the active profile is unchanged.
pub fn push_profile(setup: &Setup, va: u64, len: u64) -> Result<ProfileState, Status> {
    if len > MAX_BUFFER_LEN as u64 {
        return Err(Status::BadBuffer);
    }
    if len != PUSH_PROFILE_LEN as u64 {
        return Err(Status::InvalidArgument);
    }
    let st = caller_state().ok_or(Status::InvalidArgument)?;
    let mem = GuestRam::from_setup(setup);
    let mut req = [0u8; PUSH_PROFILE_LEN];
    copy_from_guest(&mem, &st.caller, va, PUSH_PROFILE_LEN, &mut req)?;
    let (key_bytes, body) = req.split_at(AGENT_KEY_LEN);
    let mut key = [0u8; AGENT_KEY_LEN];
    key.copy_from_slice(key_bytes);
    if setup.agent_key_set == 0 {
        return Err(Status::NotAuthorized);
    }
    let profile = KernelProfile::decode(body).map_err(|_| Status::InvalidArgument)?;
    if body.len() != ENCODED_LEN {
        return Err(Status::InvalidArgument);
    }
    let mut intro = Introspector::new(profile).map_err(|_| Status::InvalidArgument)?;
    let cpu = kernel_view(&mem, &st.cpu);
    let top = ram_top(setup);
    // The caller as the new profile reads it...
    let id = attribute(&mut intro, &mem, &cpu, top);
    super::policy::with_containers(|c| {
        check_agent(&id, profile.init_userns_inum, &key, &setup.agent_key, c)
    })?;
    // ...and as the active one does, so a key holder outside the agent's identity cannot replace
    // a working profile with one that misreads it.
    // (The identity is read under the profile's lock, checked after it is released: the engine's
    // lock is never taken inside this one.)
    let by_active = ACTIVE.lock().as_mut().map(|a| {
        let init = a.intro.profile().init_userns_inum;
        (init, attribute(&mut a.intro, &mem, &cpu, top))
    });
    if let Some((init, id)) = by_active {
        super::policy::with_containers(|c| check_agent(&id, init, &key, &setup.agent_key, c))?;
    }
    // The fingerprint: the BTF the profile was built from must be the one in guest memory.
    let verified = if profile.btf_va != 0 {
        if profile.btf_len == 0 || profile.btf_len > MAX_BTF_LEN {
            return Err(Status::InvalidArgument);
        }
        match intro.verify_fingerprint(&mem, &cpu.pt) {
            Ok(true) => true,
            _ => return Err(Status::InvalidArgument),
        }
    } else {
        false
    };
    intro.flush();
    *ACTIVE.lock() = Some(Active { intro, verified });
    Ok(if verified {
        ProfileState::Verified
    } else {
        ProfileState::Unverified
    })
}

/// The agent check for the policy calls: the key, and the caller (attributed through the active
/// profile) is uid 0 in the initial user namespace acting in its own context, in no registered
/// container. `NoProfile` when
/// no profile is active (the agent pushes one first).
pub fn authenticate_agent(
    setup: &Setup,
    mem: &GuestRam,
    st: &CallerState,
    key: &[u8; AGENT_KEY_LEN],
) -> Result<(), Status> {
    if setup.agent_key_set == 0 {
        return Err(Status::NotAuthorized);
    }
    let caller = attribute_active(setup, mem, &st.cpu)?;
    super::policy::with_containers(|c| {
        check_agent(
            &caller.id,
            caller.init_userns_inum,
            key,
            &setup.agent_key,
            c,
        )
    })
}

/// Whether the caller at this exit is in a registered container (by its cgroup or network
/// namespace, read through the active profile). `None` when Shoji cannot tell: no profile, the
/// guest not in IA-32e paging, not a task in its own context, or its network namespace unknown.
pub fn caller_in_container(setup: &Setup) -> Option<bool> {
    let st = caller_state()?;
    let mem = GuestRam::from_setup(setup);
    let caller = attribute_active(setup, &mem, &st.cpu).ok()?;
    if !caller.id.is_actor() || caller.id.netns_id.is_none() {
        return None;
    }
    Some(super::policy::with_containers(|c| {
        c.container_of(&caller.id).is_some()
    }))
}

/// The kernel's per-CPU base at this exit, for the quick look at the preempt count: GS base at
/// CPL 0, IA32_KERNEL_GS_BASE at CPL 3; `None` outside IA-32e mode. Unchecked beyond that: the
/// reader accepts it only inside the learnt direct map ([`Introspector::interrupt_context`]).
fn percpu_base_quick() -> Option<u64> {
    if vmread(guest::IA32_EFER_FULL) & EFER_LMA == 0 {
        return None;
    }
    Some(if guest_cpl() == 0 {
        vmread(guest::GS_BASE)
    } else {
        rdmsr(IA32_KERNEL_GS_BASE)
    })
}

/// The sender of the frames a TDT write hands over, for the policy: the identity of the task
/// running on this vCPU at the exit when it acts in its own context. `None` while an interrupt is
/// served (what an interrupt sends is not the interrupted task's doing: those frames carry their
/// port identity only, and the policy attributes nothing to them), for kernel threads and unknown
/// contexts, when no profile is active, and when the guest is not in IA-32e paging.
///
/// Most frames leave from the network softirq: one read of the preempt count through the learnt
/// direct map tells that, before any other VMCS field or page table is looked at.
pub fn current_task(setup: &Setup) -> Option<TaskIdentity> {
    let mem = GuestRam::from_setup(setup);
    let mut active = ACTIVE.lock();
    let a = active.as_mut()?;
    if let Some(base) = percpu_base_quick() {
        if a.intro.interrupt_context(&mem, base).is_some() {
            return None;
        }
    }
    let st = caller_state()?;
    // With the direct map known and the per-CPU area inside it, the reads do not depend on
    // which half's page tables CR3 holds: no page walk to choose them.
    let in_direct_map = match (a.intro.direct_map(), st.cpu.percpu_base()) {
        (Some(d), Some(base)) => d.gpa(base, 1).is_some(),
        _ => false,
    };
    let cpu = if in_direct_map {
        st.cpu
    } else {
        let cpu = kernel_view(&mem, &st.cpu);
        learn_direct_map_once(&mut a.intro, &mem, &cpu, ram_top(setup));
        cpu
    };
    let id = a.intro.attribute_sender(&mem, &cpu);
    id.is_actor().then_some(id)
}

/// Why the guest's processes cannot be listed now, if they cannot: no profile, or one without
/// the task walk (`/tasks` answers 503 with this text).
pub fn tasks_ready() -> Result<(), &'static str> {
    match ACTIVE.lock().as_ref() {
        None => Err("no kernel profile has been pushed: the agent pushes one (shojictl profile --push)"),
        Some(a) if a.intro.profile().walk.is_none() => Err(
            "the kernel profile has no task walk (init_task or a socket member was not found when it was built)",
        ),
        Some(_) => Ok(()),
    }
}

/// Room for one task's line (its sockets included) before it joins the answer.
const TASK_LINE: usize = 4096;
/// Room kept for the last (`{"end":...}`) line.
const END_LINE: usize = 256;

/// The guest's processes (with their sockets when `sockets`) as JSON lines and a last
/// `{"end":...}` line, in at most `budget` bytes: read at this exit through the guest's kernel
/// page tables, bounded by [`WalkLimits::DEFAULT`]. A task whose line would pass the budget ends
/// the list ("output full"). Lock order: the policy engine (for the container of each task),
/// then the active profile; the profile's lock is never held while the engine's is taken.
pub fn tasks_json(
    setup: &Setup,
    sockets: bool,
    budget: usize,
    out: &mut dyn core::fmt::Write,
) -> core::fmt::Result {
    let mem = GuestRam::from_setup(setup);
    let top = ram_top(setup);
    let Some(st) = caller_state() else {
        return WalkSummary::not_started(WalkEnd::NotPaged).write_json(out);
    };
    let cpu = kernel_view(&mem, &st.cpu);
    let room = budget.saturating_sub(END_LINE);
    let mut used = 0usize;
    let mut failed = Ok(());
    let summary = super::policy::with_containers(|containers| {
        let mut active = ACTIVE.lock();
        let a = active.as_mut()?;
        learn_direct_map_once(&mut a.intro, &mem, &cpu, top);
        Some(
            a.intro
                .walk_tasks(&mem, &cpu, sockets, WalkLimits::DEFAULT, &mut |entry| {
                    let mut buf = [0u8; TASK_LINE];
                    let mut line = SliceWriter::new(&mut buf);
                    let container = containers.container_of(&entry.id).map(|c| c.0);
                    if entry.write_json(container, sockets, &mut line).is_err()
                        || used.saturating_add(line.len()) > room
                    {
                        return false;
                    }
                    used += line.len();
                    match core::str::from_utf8(line.written()) {
                        Ok(text) => {
                            failed = out.write_str(text);
                            failed.is_ok()
                        }
                        Err(_) => false,
                    }
                }),
        )
    });
    failed?;
    summary
        .unwrap_or(WalkSummary::not_started(WalkEnd::NoProfile))
        .write_json(out)
}
