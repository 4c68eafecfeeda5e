//! The VMCALL contract as guest tools see it: every number decodes to what the documentation
//! says, requests are laid out as documented, and the WhoAmI reply sits at the documented offsets
//! (shojictl decodes it independently of Shoji's build).

use shoji_shared::profile::{CurrentTask, KernelProfile, ENCODED_LEN};
use shoji_shared::vmcall::{
    whoami, Function, ProfileState, Status, ABI_VERSION, AGENT_KEY_LEN, CALL_MAGIC, MAX_BUFFER_LEN,
    PUSH_PROFILE_LEN, READ_COUNTERS_LEN, READ_EVENTS_LEN, UNREGISTER_LEN, WHOAMI_LEN,
    WHOAMI_VERSION,
};
use shoji_shared::{ExecContext, TaskIdentity};

#[test]
fn abi_version_is_1_0() {
    // Documented as major << 16 | minor.
    assert_eq!((ABI_VERSION >> 16, ABI_VERSION & 0xffff), (1, 0));
}

#[test]
fn every_status_has_its_own_description() {
    let all: Vec<Status> = (0..=11).map(|v| Status::from_u64(v).unwrap()).collect();
    assert_eq!(Status::from_u64(12), None);
    for (i, s) in all.iter().enumerate() {
        let d = s.describe();
        assert!(d.len() > 3, "{s:?}: {d:?}");
        for t in &all[..i] {
            assert_ne!(t.describe(), d, "{s:?} and {t:?}");
        }
    }
    assert_eq!(Status::Ok.describe(), "success");
    assert!(Status::NotAuthorized.describe().contains("not authorized"));
}

#[test]
fn profile_state_decodes_its_three_values_only() {
    for s in [
        ProfileState::None,
        ProfileState::Verified,
        ProfileState::Unverified,
    ] {
        assert_eq!(ProfileState::from_u64(s as u64), Some(s));
    }
    assert_eq!(ProfileState::from_u64(0), Some(ProfileState::None));
    assert_eq!(ProfileState::from_u64(3), None);
    assert_eq!(ProfileState::from_u64(u64::MAX), None);
}

#[test]
fn function_numbers_stop_at_list_tasks() {
    assert_eq!(Function::from_u32(10), None);
    assert_eq!(Function::from_u32(u32::MAX), None);
    assert_eq!(
        Function::decode_rax(CALL_MAGIC | 10),
        Some(Err(Status::UnknownFunction))
    );
    // The magic must be exact, not merely present.
    assert_eq!(Function::decode_rax(CALL_MAGIC | (1 << 32) | 2), None);
    assert_eq!(Function::ListTasks.rax(), 0x5348_4f4a_0000_0009);
}

#[test]
fn a_push_request_is_the_key_then_one_encoded_profile_and_fits_a_call() {
    let p = KernelProfile::empty(CurrentTask::PerCpu { offset: 0x1fb80 });
    let mut req = vec![7u8; AGENT_KEY_LEN];
    let mut body = vec![0u8; ENCODED_LEN];
    assert_eq!(p.encode(&mut body), Ok(ENCODED_LEN));
    req.extend_from_slice(&body);
    assert_eq!(req.len(), PUSH_PROFILE_LEN);
    assert_eq!(
        KernelProfile::decode(&req[AGENT_KEY_LEN..PUSH_PROFILE_LEN]),
        Ok(p)
    );
    // Every fixed-size request, and the WhoAmI reply, fits one call's buffer.
    for len in [
        PUSH_PROFILE_LEN,
        UNREGISTER_LEN,
        READ_COUNTERS_LEN,
        READ_EVENTS_LEN,
        WHOAMI_LEN,
    ] {
        assert!(len <= MAX_BUFFER_LEN, "{len}");
    }
    // The limit is a page multiple: tools size their output buffers in pages.
    assert_eq!(MAX_BUFFER_LEN % 4096, 0);
}

/// An identity with every field known and every value distinct.
fn everything() -> TaskIdentity {
    TaskIdentity {
        task: 0xffff_8880_0102_0304,
        context: ExecContext::Task,
        pid: Some(0x1111_0001),
        tgid: Some(0x1111_0002),
        pid_local: Some(0x1111_0003),
        tgid_local: Some(0x1111_0004),
        pgid: Some(0x1111_0005),
        uid: Some(0x1111_0006),
        euid: Some(0x1111_0007),
        uid_local: Some(0x1111_0008),
        userns_id: Some(0x1111_0009),
        netns_id: Some(0x1111_000a),
        pidns_id: Some(0x1111_000b),
        cgroup_id: Some(0x2222_0000_0000_000c),
        start_time: Some(0x2222_0000_0000_000d),
        exe_inode: Some(0x2222_0000_0000_000e),
        comm: Some(*b"fifteen-chars-x\0"),
    }
}

/// `id` as a WhoAmI reply gives it back: without the `task_struct` address.
fn as_reported(id: TaskIdentity) -> TaskIdentity {
    TaskIdentity { task: 0, ..id }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn whoami_reply_follows_the_documented_layout() {
    let id = everything();
    let b = whoami::encode(&id);
    assert_eq!(b.len(), WHOAMI_LEN);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), WHOAMI_VERSION);
    assert_eq!(b[2], 0, "context: task");
    assert_eq!(b[3], 0);
    assert_eq!(u32_at(&b, 4), 0x7fff, "all 15 fields known");
    assert_ne!(id.task, 0);
    assert_eq!(
        u64_at(&b, 8),
        0,
        "no kernel address (the task_struct's) in the reply"
    );
    let u32s = [
        id.pid,
        id.tgid,
        id.pid_local,
        id.tgid_local,
        id.pgid,
        id.uid,
        id.euid,
        id.uid_local,
        id.userns_id,
        id.netns_id,
        id.pidns_id,
    ];
    for (i, v) in u32s.iter().enumerate() {
        assert_eq!(Some(u32_at(&b, 16 + 4 * i)), *v, "u32 field {i}");
    }
    assert_eq!(u32_at(&b, 60), 0);
    assert_eq!(Some(u64_at(&b, 64)), id.cgroup_id);
    assert_eq!(Some(u64_at(&b, 72)), id.start_time);
    assert_eq!(Some(u64_at(&b, 80)), id.exe_inode);
    assert_eq!(&b[88..104], &id.comm.unwrap());
    assert_eq!(whoami::decode(&b), Some(as_reported(id)));

    // Unknown fields: zero, bit clear.
    let sparse = TaskIdentity {
        euid: None,
        exe_inode: None,
        comm: None,
        ..id
    };
    let s = whoami::encode(&sparse);
    assert_eq!(u32_at(&s, 4), 0x7fff & !(1 << 6) & !(1 << 13) & !(1 << 14));
    assert_eq!(u32_at(&s, 16 + 4 * 6), 0);
    assert_eq!(u64_at(&s, 80), 0);
    assert!(s[88..].iter().all(|&x| x == 0));
    assert_eq!(whoami::decode(&s), Some(as_reported(sparse)));
}

#[test]
fn whoami_round_trips_every_context() {
    for (context, code) in [
        (ExecContext::Task, 0u8),
        (ExecContext::KernelThread, 1),
        (ExecContext::HardIrq, 2),
        (ExecContext::SoftIrq, 3),
        (ExecContext::Unknown, 255),
    ] {
        let id = TaskIdentity {
            context,
            ..everything()
        };
        let b = whoami::encode(&id);
        assert_eq!(b[2], code, "{context:?}");
        assert_eq!(whoami::decode(&b), Some(as_reported(id)), "{context:?}");
    }
}

#[test]
fn whoami_decode_refuses_malformed_replies() {
    let good = whoami::encode(&everything());
    assert!(whoami::decode(&good).is_some());
    // Too short; a longer buffer is read up to the reply's length.
    assert_eq!(whoami::decode(&good[..WHOAMI_LEN - 1]), None);
    let mut long = good.to_vec();
    long.push(0xff);
    assert_eq!(whoami::decode(&long), Some(as_reported(everything())));
    let broken = |at: usize, v: u8| {
        let mut b = good;
        b[at] = v;
        whoami::decode(&b)
    };
    assert_eq!(broken(0, 2), None, "version");
    assert_eq!(broken(1, 1), None, "version high byte");
    for code in [4u8, 7, 254] {
        assert_eq!(broken(2, code), None, "context {code}");
    }
    assert_eq!(broken(3, 1), None, "reserved byte");
    assert_eq!(broken(5, 0x80), None, "validity bit 15");
    assert_eq!(broken(7, 0x80), None, "validity bit 31");
}
