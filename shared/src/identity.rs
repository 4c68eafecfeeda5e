//! Who sent a frame: containers and guest tasks.

/// A container's handle, assigned by the agent when it registers the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(pub u32);

/// Which registered container, if any, a guest task belongs to (by its cgroup, else its network
/// namespace). The agent check asks it: no task inside a registered container is the agent,
/// whatever its uid.
pub trait ContainerMembership {
    /// The container `task` belongs to, if it belongs to a registered one.
    fn container_of(&self, task: &TaskIdentity) -> Option<ContainerId>;

    /// Whether no container is registered (then no task can be in one).
    fn none_registered(&self) -> bool;
}

/// No container is registered (the policy engine does not exist yet).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoContainers;

impl ContainerMembership for NoContainers {
    fn container_of(&self, _task: &TaskIdentity) -> Option<ContainerId> {
        None
    }

    fn none_registered(&self) -> bool {
        true
    }
}

/// The context the guest CPU was in at the VM exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecContext {
    /// A task running in its own context (system call or user mode): it is the actor.
    Task,
    /// A kernel thread (no user address space, `PF_KTHREAD`): it acts for nobody in particular.
    KernelThread,
    /// Hard interrupt context.
    HardIrq,
    /// Soft interrupt context (includes NAPI and most qdisc / veth transmit paths).
    SoftIrq,
    /// Could not be determined (no profile, failed read).
    #[default]
    Unknown,
}

/// Length of a Linux `comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// Identity of the guest task running at a VM exit, as read through the kernel profile.
///
/// Every field is `Option`: a field the profile does not describe, or whose read failed a sanity
/// check, is `None` ("unknown"), never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskIdentity {
    /// Guest-virtual address of the `task_struct` (the cache key).
    pub task: u64,
    /// The context of the exit.
    pub context: ExecContext,
    /// Thread id in the initial pid namespace.
    pub pid: Option<u32>,
    /// Process id (thread-group id) in the initial pid namespace.
    pub tgid: Option<u32>,
    /// Thread id in the task's own pid namespace.
    pub pid_local: Option<u32>,
    /// Process id in the task's own pid namespace.
    pub tgid_local: Option<u32>,
    /// Process-group id (initial namespace).
    pub pgid: Option<u32>,
    /// Real uid in the initial user namespace (kernel's global kuid).
    pub uid: Option<u32>,
    /// Effective uid in the initial user namespace.
    pub euid: Option<u32>,
    /// Uid as seen inside the task's user namespace.
    pub uid_local: Option<u32>,
    /// Inode number of the task's user namespace.
    pub userns_id: Option<u32>,
    /// Inode number of the task's network namespace.
    pub netns_id: Option<u32>,
    /// Inode number of the task's pid namespace.
    pub pidns_id: Option<u32>,
    /// cgroup v2 id (kernfs node id) of the task's default-hierarchy cgroup.
    pub cgroup_id: Option<u64>,
    /// Task start time (boot-based ns), distinguishes reused pids.
    pub start_time: Option<u64>,
    /// Identifier of the executable (inode number of `mm->exe_file`).
    pub exe_inode: Option<u64>,
    /// `comm`, NUL-padded. Advisory only: a process can rename itself.
    pub comm: Option<[u8; COMM_LEN]>,
}

impl TaskIdentity {
    /// Whether the identity names a task acting in its own context.
    pub fn is_actor(&self) -> bool {
        self.context == ExecContext::Task
    }
}
