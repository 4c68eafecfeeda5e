//! The agent's policy calls (VMCALL functions 4..8) over a replaceable transport, with the
//! agent key, the one retry after pushing the kernel profile on `NoProfile`, and clear errors.

use std::fmt;
use std::path::Path;

use shoji_netfilter::encoding::{encode, MAX_ENCODED_LEN};
use shoji_netfilter::events::Event;
use shoji_netfilter::events::EVENT_CAPACITY;
use shoji_netfilter::registry::ContainerSpec;
use shoji_netfilter::report::{counters_len, decode_events, describe_detail_code, EVENT_LEN};
use shoji_shared::vmcall::{
    Function, Status, AGENT_KEY_LEN, LIST_TASKS_LEN, LIST_TASKS_SOCKETS, MAX_BUFFER_LEN,
    READ_COUNTERS_LEN, READ_EVENTS_LEN, UNREGISTER_LEN,
};

/// The registers after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reply {
    /// Status.
    pub rax: u64,
    /// First result.
    pub rbx: u64,
    /// Second result.
    pub rcx: u64,
    /// Third result.
    pub rdx: u64,
}

/// How calls reach Shoji (the real VMCALL, or a fake in tests).
pub trait Transport {
    /// Call `function` with the request `req` and the output buffer `out` (may be empty).
    fn call(&mut self, function: Function, req: &[u8], out: &mut [u8]) -> Reply;
}

/// The real VMCALL (only after `vmcall::detect` found Shoji).
#[cfg(target_arch = "x86_64")]
pub struct Vmcall;

#[cfg(target_arch = "x86_64")]
impl Transport for Vmcall {
    fn call(&mut self, function: Function, req: &[u8], out: &mut [u8]) -> Reply {
        // Shoji writes only pages that are present and writable in the caller's page tables:
        // a fresh zeroed allocation may not be backed yet (the allocator knows it is zero and
        // never touches it), so write to every page of the output first.
        for i in (0..out.len()).step_by(4096) {
            // SAFETY: `i` is in bounds of `out`; a volatile write keeps the store from being
            // optimised away (the value written is the one already there).
            unsafe { core::ptr::write_volatile(out.as_mut_ptr().add(i), out[i]) };
        }
        let (rax, rbx, rcx, rdx) = crate::vmcall::vmcall(
            function.rax(),
            req.as_ptr() as u64,
            req.len() as u64,
            out.as_mut_ptr() as u64,
            out.len() as u64,
        );
        Reply { rax, rbx, rcx, rdx }
    }
}

/// A refused or failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Shoji answered with this status (and, for register/update, maybe a detail code).
    Refused {
        /// What was asked (`register container 7`).
        what: String,
        /// The status.
        status: Option<Status>,
        /// The raw status value.
        raw: u64,
        /// The detail code (`RBX`) when the status carries one.
        detail: Option<u64>,
    },
    /// Something else went wrong (profile push, malformed reply, local encoding).
    Other(String),
}

impl CallError {
    /// The status, if Shoji answered with one.
    pub fn status(&self) -> Option<Status> {
        match self {
            CallError::Refused { status, .. } => *status,
            CallError::Other(_) => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Refused {
                what,
                status,
                raw,
                detail,
            } => {
                write!(f, "{what} refused by Shoji: ")?;
                match status {
                    Some(s) => write!(f, "{s:?} ({})", s.describe())?,
                    None => write!(f, "unknown status {raw:#x}")?,
                }
                if let Some(code) = detail {
                    match describe_detail_code(*code) {
                        Some(d) => write!(f, ": {d} (code {code})")?,
                        None => write!(f, " (detail code {code})")?,
                    }
                }
                if *status == Some(Status::NoProfile) {
                    write!(
                        f,
                        "; push the kernel profile first (shojictl profile --push)"
                    )?;
                }
                Ok(())
            }
            CallError::Other(m) => f.write_str(m),
        }
    }
}

/// Read the agent key file: 64 hex digits (whitespace around them ignored).
pub fn read_key(path: &Path) -> Result<[u8; AGENT_KEY_LEN], String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the agent key {}: {e}", path.display()))?;
    parse_key(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse the agent key text.
pub fn parse_key(text: &str) -> Result<[u8; AGENT_KEY_LEN], String> {
    let hex = text.trim();
    if hex.len() != 2 * AGENT_KEY_LEN || !hex.is_ascii() {
        return Err(format!(
            "the agent key must be {} hex digits",
            2 * AGENT_KEY_LEN
        ));
    }
    let mut key = [0u8; AGENT_KEY_LEN];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "the agent key is not hex".to_string())?;
    }
    Ok(key)
}

/// What `read_events` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBatch {
    /// The events, in sequence order.
    pub events: Vec<Event>,
    /// The sequence number to ask for next.
    pub next_seq: u64,
    /// Events overwritten before they could be read.
    pub missed: u64,
}

/// Whether `policy load` registered or updated a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// It was new.
    Registered,
    /// It replaced a registered one.
    Updated,
}

/// Pushes the kernel profile through the transport with the agent key (run on `NoProfile`).
pub type PushProfile<T> = Box<dyn FnMut(&mut T, &[u8; AGENT_KEY_LEN]) -> Result<(), String>>;

/// The agent: key, transport and how to push the kernel profile when Shoji has none.
pub struct Agent<T: Transport> {
    transport: T,
    key: [u8; AGENT_KEY_LEN],
    push_profile: PushProfile<T>,
}

impl<T: Transport> Agent<T> {
    /// An agent calling through `transport`; `push_profile` is run (once per call) when Shoji
    /// answers `NoProfile`, then the call is retried.
    pub fn new(transport: T, key: [u8; AGENT_KEY_LEN], push_profile: PushProfile<T>) -> Agent<T> {
        Agent {
            transport,
            key,
            push_profile,
        }
    }

    fn request(&self, len: usize, body: &[u8]) -> Vec<u8> {
        let mut req = vec![0u8; len.max(AGENT_KEY_LEN + body.len())];
        req[..AGENT_KEY_LEN].copy_from_slice(&self.key);
        req[AGENT_KEY_LEN..AGENT_KEY_LEN + body.len()].copy_from_slice(body);
        req
    }

    /// Call, pushing the profile and retrying once on `NoProfile`.
    fn call(&mut self, function: Function, req: &[u8], out: &mut [u8]) -> Result<Reply, String> {
        let reply = self.transport.call(function, req, out);
        if reply.rax != Status::NoProfile as u64 {
            return Ok(reply);
        }
        (self.push_profile)(&mut self.transport, &self.key)
            .map_err(|e| format!("Shoji has no kernel profile and pushing it failed: {e}"))?;
        Ok(self.transport.call(function, req, out))
    }

    fn check(
        what: impl FnOnce() -> String,
        reply: Reply,
        with_detail: bool,
    ) -> Result<Reply, CallError> {
        if reply.rax == Status::Ok as u64 {
            return Ok(reply);
        }
        let status = Status::from_u64(reply.rax);
        let detail = match status {
            Some(Status::InvalidArgument | Status::Exists | Status::Full) if with_detail => {
                Some(reply.rbx).filter(|c| *c != 0)
            }
            _ => None,
        };
        Err(CallError::Refused {
            what: what(),
            status,
            raw: reply.rax,
            detail,
        })
    }

    fn send_spec(&mut self, function: Function, spec: &ContainerSpec) -> Result<(), CallError> {
        let mut buf = vec![0u8; MAX_ENCODED_LEN];
        let n = encode(spec, &mut buf).map_err(|e| {
            CallError::Other(format!("cannot encode container {}: {e:?}", spec.id.0))
        })?;
        let req = self.request(0, &buf[..n]);
        let reply = self
            .call(function, &req, &mut [])
            .map_err(CallError::Other)?;
        let verb = if function == Function::UpdateContainer {
            "update"
        } else {
            "register"
        };
        Self::check(|| format!("{verb} container {}", spec.id.0), reply, true).map(|_| ())
    }

    /// Register a container.
    pub fn register(&mut self, spec: &ContainerSpec) -> Result<(), CallError> {
        self.send_spec(Function::RegisterContainer, spec)
    }

    /// Replace a registered container.
    pub fn update(&mut self, spec: &ContainerSpec) -> Result<(), CallError> {
        self.send_spec(Function::UpdateContainer, spec)
    }

    /// Update the container if it is registered, else register it.
    pub fn load(&mut self, spec: &ContainerSpec) -> Result<Loaded, CallError> {
        match self.update(spec) {
            Ok(()) => Ok(Loaded::Updated),
            Err(e) if e.status() == Some(Status::NotFound) => {
                self.register(spec).map(|_| Loaded::Registered)
            }
            Err(e) => Err(e),
        }
    }

    /// Unregister a container.
    pub fn unregister(&mut self, id: u32) -> Result<(), CallError> {
        let req = self.request(UNREGISTER_LEN, &id.to_le_bytes());
        let reply = self
            .call(Function::UnregisterContainer, &req, &mut [])
            .map_err(CallError::Other)?;
        Self::check(|| format!("unregister container {id}"), reply, false).map(|_| ())
    }

    /// Read the counters snapshot (growing the buffer once if Shoji says it needs more).
    pub fn read_counters(&mut self) -> Result<Vec<u8>, CallError> {
        let req = self.request(READ_COUNTERS_LEN, &[]);
        let mut size = counters_len(16);
        for _ in 0..3 {
            let mut out = vec![0u8; size];
            let reply = self
                .call(Function::ReadCounters, &req, &mut out)
                .map_err(CallError::Other)?;
            if reply.rax == Status::Full as u64 {
                let needed = usize::try_from(reply.rbx).unwrap_or(usize::MAX);
                if needed <= size || needed > MAX_BUFFER_LEN {
                    return Err(CallError::Other(format!(
                        "the counters snapshot needs {needed} bytes, more than a call may \
                         return ({MAX_BUFFER_LEN})"
                    )));
                }
                size = needed;
                continue;
            }
            let reply = Self::check(|| "read counters".to_string(), reply, false)?;
            let n = usize::try_from(reply.rbx).unwrap_or(usize::MAX);
            if n > out.len() {
                return Err(CallError::Other(format!(
                    "Shoji says it wrote {n} bytes of counters into a {}-byte buffer",
                    out.len()
                )));
            }
            out.truncate(n);
            return Ok(out);
        }
        Err(CallError::Other(
            "the counters snapshot kept growing while being read".into(),
        ))
    }

    /// Read events from sequence number `from_seq` on.
    pub fn read_events(&mut self, from_seq: u64) -> Result<EventBatch, CallError> {
        let req = self.request(READ_EVENTS_LEN, &from_seq.to_le_bytes());
        let mut out = vec![0u8; EVENT_CAPACITY * EVENT_LEN];
        let reply = self
            .call(Function::ReadEvents, &req, &mut out)
            .map_err(CallError::Other)?;
        let reply = Self::check(|| "read events".to_string(), reply, false)?;
        let n = usize::try_from(reply.rbx).unwrap_or(usize::MAX);
        if n > out.len() {
            return Err(CallError::Other(format!(
                "Shoji says it wrote {n} bytes of events into a {}-byte buffer",
                out.len()
            )));
        }
        let bad = |e: shoji_netfilter::report::ReportError| {
            CallError::Other(format!("malformed event from Shoji: {}", e.describe()))
        };
        let events = decode_events(&out[..n])
            .map_err(bad)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        Ok(EventBatch {
            events,
            next_seq: reply.rcx,
            missed: reply.rdx,
        })
    }
}

impl<T: Transport> Agent<T> {
    /// The guest's processes as Shoji reads them from kernel memory (with their sockets when
    /// `sockets`): JSON lines, the last one `{"end":...}`.
    pub fn list_tasks(&mut self, sockets: bool) -> Result<String, CallError> {
        let flags: u32 = if sockets { LIST_TASKS_SOCKETS } else { 0 };
        let req = self.request(LIST_TASKS_LEN, &flags.to_le_bytes());
        let mut out = vec![0u8; MAX_BUFFER_LEN];
        let reply = self
            .call(Function::ListTasks, &req, &mut out)
            .map_err(CallError::Other)?;
        let reply = Self::check(|| "list tasks".to_string(), reply, false)?;
        let n = usize::try_from(reply.rbx).unwrap_or(usize::MAX);
        let text = out.get(..n).ok_or_else(|| {
            CallError::Other(format!(
                "Shoji says it wrote {n} bytes of tasks into a {}-byte buffer",
                out.len()
            ))
        })?;
        String::from_utf8(text.to_vec())
            .map_err(|_| CallError::Other("Shoji's task list is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoji_netfilter::events::{EventKind, PolicyChange};
    use shoji_netfilter::report::{encode_counters, encode_events};
    use shoji_netfilter::{Counters, EngineCounters};
    use shoji_shared::ContainerId;
    use std::cell::RefCell;
    use std::net::Ipv4Addr;
    use std::rc::Rc;

    /// A fake Shoji: answers from a script, records the calls.
    #[derive(Default)]
    struct Fake {
        calls: Vec<(Function, Vec<u8>, usize)>,
        replies: Vec<(Reply, Vec<u8>)>,
    }

    impl Transport for Fake {
        fn call(&mut self, function: Function, req: &[u8], out: &mut [u8]) -> Reply {
            self.calls.push((function, req.to_vec(), out.len()));
            let (reply, data) = self.replies.remove(0);
            out[..data.len()].copy_from_slice(&data);
            reply
        }
    }

    fn ok(rbx: u64) -> (Reply, Vec<u8>) {
        (
            Reply {
                rax: 0,
                rbx,
                ..Reply::default()
            },
            vec![],
        )
    }

    fn status(s: Status, rbx: u64) -> (Reply, Vec<u8>) {
        (
            Reply {
                rax: s as u64,
                rbx,
                ..Reply::default()
            },
            vec![],
        )
    }

    const KEY: [u8; 32] = [7; 32];

    fn agent(replies: Vec<(Reply, Vec<u8>)>) -> (Agent<Fake>, Rc<RefCell<u32>>) {
        let pushes = Rc::new(RefCell::new(0));
        let p = pushes.clone();
        let fake = Fake {
            calls: vec![],
            replies,
        };
        (
            Agent::new(
                fake,
                KEY,
                Box::new(move |_, _| {
                    *p.borrow_mut() += 1;
                    Ok(())
                }),
            ),
            pushes,
        )
    }

    fn spec() -> ContainerSpec {
        ContainerSpec::new(7, 107, [2, 0, 0, 0, 0, 7], Ipv4Addr::new(10, 0, 0, 7))
    }

    #[test]
    fn parses_keys() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_key(&format!(" {hex}\n")).unwrap()[31], 0xff);
        assert!(parse_key("abc").is_err());
        assert!(parse_key(&"zz".repeat(32)).is_err());
        assert!(parse_key(&"é".repeat(32)).is_err());
    }

    #[test]
    fn list_tasks_request_layout_and_answer() {
        let text = b"{\"pid\":1}\n{\"end\":\"complete\"}\n".to_vec();
        let n = text.len() as u64;
        let (mut a, _) = agent(vec![
            (
                Reply {
                    rax: 0,
                    rbx: n,
                    ..Reply::default()
                },
                text,
            ),
            ok(0),
            status(Status::NotAuthorized, 0),
            ok(MAX_BUFFER_LEN as u64 + 1),
        ]);
        assert_eq!(
            a.list_tasks(true).unwrap(),
            "{\"pid\":1}\n{\"end\":\"complete\"}\n"
        );
        assert_eq!(a.list_tasks(false).unwrap(), "");
        let (f, req, out) = &a.transport.calls[0];
        assert_eq!(*f, Function::ListTasks);
        assert_eq!(req.len(), 36);
        assert_eq!(&req[..32], &KEY);
        assert_eq!(&req[32..], &[1, 0, 0, 0]);
        assert_eq!(*out, MAX_BUFFER_LEN);
        assert_eq!(&a.transport.calls[1].1[32..], &[0, 0, 0, 0]);
        let refused = a.list_tasks(true).unwrap_err().to_string();
        assert!(refused.contains("list tasks"), "{refused}");
        let lying = a.list_tasks(true).unwrap_err().to_string();
        assert!(lying.contains("wrote 65537 bytes"), "{lying}");
    }

    #[test]
    fn unregister_request_layout() {
        let (mut a, _) = agent(vec![ok(0)]);
        a.unregister(0x0102_0304).unwrap();
        let (f, req, out) = &a.transport.calls[0];
        assert_eq!(*f, Function::UnregisterContainer);
        assert_eq!(req.len(), 36);
        assert_eq!(&req[..32], &KEY);
        assert_eq!(&req[32..], &[4, 3, 2, 1]);
        assert_eq!(*out, 0);
    }

    #[test]
    fn no_profile_pushes_and_retries_once() {
        let (mut a, pushes) = agent(vec![status(Status::NoProfile, 0), ok(0)]);
        a.register(&spec()).unwrap();
        assert_eq!(*pushes.borrow(), 1);
        assert_eq!(a.transport.calls.len(), 2);
        let req = &a.transport.calls[1].1;
        assert_eq!(&req[32..36], b"SHJC");
        // Still NoProfile after the push: an error naming it.
        let (mut a, pushes) = agent(vec![
            status(Status::NoProfile, 0),
            status(Status::NoProfile, 0),
        ]);
        let e = a.unregister(1).unwrap_err();
        assert_eq!(*pushes.borrow(), 1);
        assert_eq!(e.status(), Some(Status::NoProfile));
    }

    #[test]
    fn refusals_carry_detail() {
        let code = shoji_netfilter::RegistryError::VlanInUse(107, ContainerId(1)).code();
        let (mut a, _) = agent(vec![status(Status::Exists, code)]);
        let e = a.register(&spec()).unwrap_err().to_string();
        assert!(e.contains("register container 7"), "{e}");
        assert!(e.contains("VLAN belongs to another container"), "{e}");
        let (mut a, _) = agent(vec![status(Status::NotFound, 0)]);
        let e = a.unregister(9).unwrap_err().to_string();
        assert!(
            e.starts_with("unregister container 9 refused by Shoji: NotFound"),
            "{e}"
        );
    }

    #[test]
    fn load_updates_or_registers() {
        let (mut a, _) = agent(vec![ok(0)]);
        assert_eq!(a.load(&spec()), Ok(Loaded::Updated));
        let (mut a, _) = agent(vec![status(Status::NotFound, 0), ok(0)]);
        assert_eq!(a.load(&spec()), Ok(Loaded::Registered));
        assert_eq!(a.transport.calls[0].0, Function::UpdateContainer);
        assert_eq!(a.transport.calls[1].0, Function::RegisterContainer);
        let (mut a, _) = agent(vec![status(Status::NotAuthorized, 0)]);
        assert!(a.load(&spec()).is_err());
        assert_eq!(a.transport.calls.len(), 1);
    }

    #[test]
    fn counters_buffer_grows_when_needed() {
        let c = Counters::ZERO;
        let list: Vec<(ContainerId, u16, &Counters)> = (0..20)
            .map(|i| (ContainerId(i), 100 + i as u16, &c))
            .collect();
        let mut snap = vec![0u8; counters_len(20)];
        let n = encode_counters(&EngineCounters::default(), list.into_iter(), &mut snap).unwrap();
        let (mut a, _) = agent(vec![
            status(Status::Full, n as u64),
            (
                Reply {
                    rax: 0,
                    rbx: n as u64,
                    ..Reply::default()
                },
                snap.clone(),
            ),
        ]);
        let got = a.read_counters().unwrap();
        assert_eq!(got, snap);
        assert_eq!(a.transport.calls[0].1.len(), 32);
        assert_eq!(a.transport.calls[1].2, n);
        // A size beyond what the ABI allows is an error, not a huge allocation.
        let (mut a, _) = agent(vec![status(Status::Full, u64::MAX)]);
        assert!(a.read_counters().is_err());
    }

    #[test]
    fn reads_events() {
        let events = [Event {
            seq: 5,
            time: 9,
            kind: EventKind::Policy {
                container: Some(ContainerId(7)),
                change: PolicyChange::Registered,
            },
        }];
        let mut bytes = vec![0u8; EVENT_LEN];
        encode_events(&events, &mut bytes);
        let (mut a, _) = agent(vec![(
            Reply {
                rax: 0,
                rbx: EVENT_LEN as u64,
                rcx: 6,
                rdx: 2,
            },
            bytes,
        )]);
        let b = a.read_events(3).unwrap();
        assert_eq!(b.events, events);
        assert_eq!((b.next_seq, b.missed), (6, 2));
        let req = &a.transport.calls[0].1;
        assert_eq!(req.len(), 40);
        assert_eq!(&req[32..], &3u64.to_le_bytes());
        // A reply claiming more bytes than the buffer is refused.
        let (mut a, _) = agent(vec![ok(u64::MAX)]);
        assert!(a.read_events(1).is_err());
    }
}
