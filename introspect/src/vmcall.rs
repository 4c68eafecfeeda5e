//! VMCALL channel helpers: guest buffers copied through the caller's own page tables, and the
//! agent check.
//!
//! Pure functions over [`GuestMemory`]: the hypervisor only wires registers to them.

use shoji_shared::vmcall::{Status, AGENT_KEY_LEN, MAX_BUFFER_LEN};
use shoji_shared::{ContainerMembership, GuestMemory, TaskIdentity};
use subtle::ConstantTimeEq;

use crate::paging::{translate, Access, PageTables, Translation};

/// The caller of a VMCALL: its address space and privilege level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The caller's page tables (the CR3 at the exit).
    pub pt: PageTables,
    /// The caller's CPL.
    pub cpl: u8,
}

impl Caller {
    fn access(&self, write: bool) -> Access {
        Access {
            user: self.cpl == 3,
            write,
        }
    }
}

/// Most pages a buffer of [`MAX_BUFFER_LEN`] bytes can touch.
const MAX_PAGES: usize = MAX_BUFFER_LEN / 4096 + 1;

/// Resolve `[va, va + len)` page by page; every page must allow `access`.
fn resolve<M: GuestMemory + ?Sized>(
    mem: &M,
    caller: &Caller,
    va: u64,
    len: usize,
    access: Access,
    out: &mut [(u64, usize); MAX_PAGES],
) -> Result<usize, Status> {
    if len > MAX_BUFFER_LEN {
        return Err(Status::BadBuffer);
    }
    let end = va.checked_add(len as u64).ok_or(Status::BadBuffer)?;
    if len > 0 && !caller.pt.mode.is_canonical(end - 1) {
        return Err(Status::BadBuffer);
    }
    let mut n = 0usize;
    let mut cur = va;
    while cur < end {
        let t: Translation = translate(mem, &caller.pt, cur).map_err(|_| Status::BadBuffer)?;
        if !access.allowed_by(&t) {
            return Err(Status::BadBuffer);
        }
        let in_page = 4096 - (cur & 0xfff);
        let chunk = in_page.min(end - cur);
        let slot = out.get_mut(n).ok_or(Status::BadBuffer)?;
        *slot = (t.gpa, chunk as usize);
        n += 1;
        cur += chunk;
    }
    Ok(n)
}

/// Copy `len` bytes of the caller's buffer at `va` into `out`, once, honouring the caller's
/// user/supervisor permission. Returns the number of bytes copied (= `len`).
pub fn copy_from_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    caller: &Caller,
    va: u64,
    len: usize,
    out: &mut [u8],
) -> Result<usize, Status> {
    if len > out.len() {
        return Err(Status::InvalidArgument);
    }
    let mut pages = [(0u64, 0usize); MAX_PAGES];
    let n = resolve(mem, caller, va, len, caller.access(false), &mut pages)?;
    let mut done = 0usize;
    for &(gpa, chunk) in pages.iter().take(n) {
        let dst = out.get_mut(done..done + chunk).ok_or(Status::BadBuffer)?;
        mem.read(gpa, dst).map_err(|_| Status::BadBuffer)?;
        done += chunk;
    }
    Ok(done)
}

/// Write `data` to the caller's buffer at `va`. Every page is checked first (user page for a
/// CPL-3 caller, writable for everyone), so a refused write changes nothing.
pub fn copy_to_guest<M: GuestMemory + ?Sized>(
    mem: &mut M,
    caller: &Caller,
    va: u64,
    data: &[u8],
) -> Result<(), Status> {
    let mut pages = [(0u64, 0usize); MAX_PAGES];
    let n = resolve(mem, caller, va, data.len(), caller.access(true), &mut pages)?;
    let mut done = 0usize;
    for &(gpa, chunk) in pages.iter().take(n) {
        let src = data.get(done..done + chunk).ok_or(Status::BadBuffer)?;
        mem.write(gpa, src).map_err(|_| Status::BadBuffer)?;
        done += chunk;
    }
    Ok(())
}

/// The agent check: the key matches the provisioned one (constant time) and the caller is uid 0
/// in the initial user namespace, acting in its own context, and in no registered container
/// (`containers`: by cgroup or network namespace), whatever its uid: root in a rootful container
/// (no user namespace) that can read the key file is still not the agent. Unknown identity
/// fields fail; so does a caller whose cgroup and network namespace are both unknown while
/// containers are registered (its membership cannot be told).
pub fn check_agent(
    caller: &TaskIdentity,
    init_userns_inum: u32,
    key: &[u8; AGENT_KEY_LEN],
    provisioned: &[u8; AGENT_KEY_LEN],
    containers: &dyn ContainerMembership,
) -> Result<(), Status> {
    // `subtle`: the comparison takes the same time wherever the keys differ.
    let key_ok = bool::from(key.ct_eq(provisioned));
    let who_ok = caller.is_actor()
        && caller.uid == Some(0)
        && caller.euid.is_none_or(|e| e == 0)
        && caller.userns_id == Some(init_userns_inum)
        && containers.container_of(caller).is_none()
        && (containers.none_registered()
            || caller.netns_id.is_some()
            || caller.cgroup_id.is_some());
    if key_ok && who_ok {
        Ok(())
    } else {
        Err(Status::NotAuthorized)
    }
}
