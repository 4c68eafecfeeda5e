//! What a kernel profile must satisfy to be accepted, stated edge by edge: each limit is shown
//! holding at its last accepted value and refusing the first value past it, so a limit that moved
//! (or a check that was dropped) fails here. Written against the public API, as the agent and the
//! hypervisor use it.

use shoji_shared::profile::{
    CurrentTask, FieldId, KernelProfile, Op, ProfileError, Program, Step, TaskWalk, UidMapLayout,
    ENCODED_LEN, FIELD_COUNT, KERNEL_HALF_5, MAX_INDEX, MAX_OFFSET, MAX_STEPS, MAX_STRIDE,
    MAX_UID_EXTENTS, NS_INUM_MIN, PID_MAX_LIMIT, TASK_WALK_LEN,
};

/// Debian 12's 6.1 uid_map layout (`introspect/fixtures/debian12-6.1.txt`).
const UID_MAP_6_1: UidMapLayout = UidMapLayout {
    map_off: 0,
    nr_extents_off: 0,
    extents_off: 8,
    forward_off: 8,
    extent_size: 12,
    first_off: 0,
    lower_first_off: 4,
    count_off: 8,
    base_extents: 5,
    max_extents: 340,
};

/// A profile shaped like the Debian 12 fixture: every field described, a uid map, cache keys.
fn profile() -> KernelProfile {
    let mut p = KernelProfile::empty(CurrentTask::PerCpu { offset: 0x1fb80 });
    p.release[..14].copy_from_slice(b"6.1.0-56-amd64");
    p.btf_va = 0xffff_ffff_824c_1b88;
    p.btf_len = 4_359_789;
    p.preempt_offset = Some(0x1fb40);
    p.task_flags_off = 0x2c;
    p.page_offset_base_va = 0xffff_ffff_8241_5740;
    p.uid_map = UID_MAP_6_1;
    p.key_offsets = [
        Some(0xad8),
        Some(0x8e0),
        Some(0x9d8),
        Some(0xb90),
        Some(0xbf8),
        Some(0xe10),
    ];
    let pid_ns_local = [
        Step::ptr(0x9d8),
        Step::index(4, 4, 32),
        Step::add_index(0x10),
    ];
    let set = |p: &mut KernelProfile, f: FieldId, steps: &[Step]| {
        p.fields[f as usize] = Program::from_steps(steps).unwrap();
    };
    set(&mut p, FieldId::Pid, &[Step::value(0x970, 4)]);
    set(&mut p, FieldId::Tgid, &[Step::value(0x974, 4)]);
    set(
        &mut p,
        FieldId::PidLocal,
        &[
            pid_ns_local[0],
            pid_ns_local[1],
            pid_ns_local[2],
            Step::value(0x60, 4),
        ],
    );
    set(
        &mut p,
        FieldId::TgidLocal,
        &[
            Step::ptr(0xc00),
            Step::ptr(0x170),
            Step::index(4, 4, 32),
            Step::add_index(0x10),
            Step::value(0x60, 4),
        ],
    );
    set(
        &mut p,
        FieldId::Pgid,
        &[Step::ptr(0xc00), Step::ptr(0x178), Step::value(0x60, 4)],
    );
    set(&mut p, FieldId::Uid, &[Step::ptr(0xb90), Step::value(8, 4)]);
    set(
        &mut p,
        FieldId::Euid,
        &[Step::ptr(0xb90), Step::value(0x18, 4)],
    );
    set(
        &mut p,
        FieldId::UserNsId,
        &[Step::ptr(0xb90), Step::ptr(0x88), Step::value(0x100, 4)],
    );
    set(
        &mut p,
        FieldId::NetNsId,
        &[Step::ptr(0xbf8), Step::ptr(0x28), Step::value(0x90, 4)],
    );
    set(
        &mut p,
        FieldId::PidNsId,
        &[
            pid_ns_local[0],
            pid_ns_local[1],
            pid_ns_local[2],
            Step::ptr(0x68),
            Step::value(0x80, 4),
        ],
    );
    set(
        &mut p,
        FieldId::CgroupId,
        &[
            Step::ptr(0xe10),
            Step::ptr(0x80),
            Step::ptr(0xf8),
            Step::value(0x68, 8),
        ],
    );
    set(&mut p, FieldId::StartTime, &[Step::value(0xad8, 8)]);
    set(
        &mut p,
        FieldId::ExeInode,
        &[
            Step::ptr(0x8e0),
            Step::ptr(0x3b0),
            Step::ptr(0x20),
            Step::value(0x40, 8),
        ],
    );
    // `comm` through an Add step, so that every op appears in the encoding.
    set(
        &mut p,
        FieldId::Comm,
        &[Step::add(0xb00), Step::value(0xa0, 16)],
    );
    set(
        &mut p,
        FieldId::UserNsPtr,
        &[Step::ptr(0xb90), Step::ptr(0x88)],
    );
    p.validate().expect("the base profile is valid");
    p
}

fn encode(p: &KernelProfile) -> Vec<u8> {
    let mut b = vec![0u8; ENCODED_LEN];
    assert_eq!(p.encode(&mut b), Ok(ENCODED_LEN));
    b
}

/// The base profile with one change, validated.
fn with(change: impl FnOnce(&mut KernelProfile)) -> Result<(), ProfileError> {
    let mut p = profile();
    change(&mut p);
    p.validate()
}

/// The base profile with one change to the uid map layout, validated.
fn uid_map(change: impl FnOnce(&mut UidMapLayout)) -> Result<(), ProfileError> {
    with(|p| change(&mut p.uid_map))
}

/// The base profile with `field`'s program replaced, validated.
fn program(field: FieldId, steps: &[Step]) -> Result<(), ProfileError> {
    with(|p| p.fields[field as usize] = Program::from_steps(steps).unwrap())
}

#[test]
fn a_profile_using_every_op_and_both_current_task_methods_round_trips() {
    let p = profile();
    let ops: Vec<Op> = p
        .fields
        .iter()
        .flat_map(|f| f.steps().iter().map(|s| s.op))
        .collect();
    for op in [Op::Ptr, Op::Add, Op::Index, Op::AddIndex, Op::Value] {
        assert!(ops.contains(&op), "{op:?} is exercised");
    }
    assert_eq!(KernelProfile::decode(&encode(&p)), Ok(p));
    let mut old = p;
    old.current = CurrentTask::StackThreadInfo {
        thread_size: 16384,
        task_offset: 8,
    };
    assert_eq!(KernelProfile::decode(&encode(&old)), Ok(old));
}

#[test]
fn encoding_needs_room_for_the_whole_profile_and_writes_exactly_its_length() {
    let p = profile();
    let mut short = vec![0u8; ENCODED_LEN - 1];
    assert_eq!(p.encode(&mut short), Err(ProfileError::BufferTooSmall));
    assert!(short.iter().all(|&b| b == 0), "nothing written on refusal");
    let mut roomy = vec![0xaau8; ENCODED_LEN + 16];
    assert_eq!(p.encode(&mut roomy), Ok(ENCODED_LEN));
    assert_eq!(&roomy[..ENCODED_LEN], &encode(&p)[..]);
    assert!(roomy[ENCODED_LEN..].iter().all(|&b| b == 0xaa));
}

#[test]
fn decoding_refuses_short_input_as_truncated_and_long_input_as_bad_length() {
    let b = encode(&profile());
    assert_eq!(
        KernelProfile::decode(&b[..ENCODED_LEN - 1]),
        Err(ProfileError::Truncated)
    );
    assert_eq!(
        KernelProfile::decode(&b[..16]),
        Err(ProfileError::Truncated)
    );
    let mut long = b.clone();
    long.push(0);
    assert_eq!(KernelProfile::decode(&long), Err(ProfileError::BadLength));
    let mut wrong_total = b.clone();
    wrong_total[12..16].copy_from_slice(&(ENCODED_LEN as u32 + 1).to_le_bytes());
    wrong_total.push(0);
    assert_eq!(
        KernelProfile::decode(&wrong_total),
        Err(ProfileError::BadLength)
    );
}

#[test]
fn decoding_refuses_an_unknown_op_byte_in_any_program() {
    let b = encode(&profile());
    // Field 0's first step starts right after its 4-byte program header.
    let first_step = ENCODED_LEN - TASK_WALK_LEN - FIELD_COUNT * (4 + 8 * MAX_STEPS) + 4;
    for op in [6u8, 0x7f, 0xff] {
        let mut bad = b.clone();
        bad[first_step] = op;
        assert_eq!(
            KernelProfile::decode(&bad),
            Err(ProfileError::BadProgram(FieldId::Pid))
        );
    }
}

#[test]
fn release_string_stops_at_the_first_nul() {
    let mut p = profile();
    assert_eq!(p.release_str(), "6.1.0-56-amd64");
    p.release = [b'x'; 64];
    assert_eq!(p.release_str().len(), 64);
    p.release = [0; 64];
    assert_eq!(p.release_str(), "");
}

#[test]
fn field_names_are_distinct_identifiers() {
    let names: Vec<&str> = FieldId::ALL.iter().map(|f| f.name()).collect();
    for (i, n) in names.iter().enumerate() {
        assert!(!n.is_empty());
        assert!(
            n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{n}"
        );
        assert!(!names[..i].contains(n), "{n} named twice");
    }
    assert_eq!(FieldId::Pid.name(), "pid");
    assert_eq!(FieldId::UserNsPtr.name(), "userns_ptr");
}

#[test]
fn pid_max_limit_is_linuxs_64_bit_limit() {
    // include/linux/threads.h: PID_MAX_LIMIT = 4 * 1024 * 1024 where longs are 64-bit, 2^22.
    assert_eq!(PID_MAX_LIMIT, 0x40_0000);
}

#[test]
fn each_field_must_end_in_a_value_of_its_own_width() {
    let widths = [
        (FieldId::Pid, 4),
        (FieldId::Uid, 4),
        (FieldId::PidNsId, 4),
        (FieldId::CgroupId, 8),
        (FieldId::StartTime, 8),
        (FieldId::ExeInode, 8),
        (FieldId::Comm, 16),
    ];
    for (f, w) in widths {
        assert_eq!(f.value_width(), w, "{f:?}");
        assert_eq!(program(f, &[Step::value(0x40, w)]), Ok(()), "{f:?}");
        for other in [1u8, 2, 4, 8, 16].into_iter().filter(|&x| x != w) {
            assert_eq!(
                program(f, &[Step::value(0x40, other)]),
                Err(ProfileError::BadProgram(f)),
                "{f:?} width {other}"
            );
        }
        // A value field may not end in an address.
        assert_eq!(
            program(f, &[Step::ptr(0x40)]),
            Err(ProfileError::BadProgram(f))
        );
    }
    // The user-namespace pointer ends in a pointer, never in a value or a bare offset.
    assert_eq!(FieldId::UserNsPtr.value_width(), 0);
    let f = FieldId::UserNsPtr;
    assert_eq!(program(f, &[Step::ptr(0x40)]), Ok(()));
    assert_eq!(
        program(f, &[Step::ptr(0x40), Step::add(8)]),
        Err(ProfileError::BadProgram(f))
    );
}

#[test]
fn programs_hold_at_most_max_steps() {
    let steps = [Step::ptr(8); MAX_STEPS + 1];
    assert_eq!(Program::from_steps(&steps), None);
    let full = Program::from_steps(&steps[..MAX_STEPS]).unwrap();
    assert_eq!(full.steps().len(), MAX_STEPS);
    assert_eq!(Program::from_steps(&[]), Some(Program::EMPTY));
    // Eight steps is a valid program.
    assert_eq!(program(FieldId::UserNsPtr, &steps[..MAX_STEPS]), Ok(()));
    let mut pid = [Step::ptr(8); MAX_STEPS];
    pid[MAX_STEPS - 1] = Step::value(0, 4);
    assert_eq!(program(FieldId::Pid, &pid), Ok(()));
    // A declared length past the step array is refused, and so is a non-empty unused slot.
    let f = FieldId::Pid;
    let mut p = profile();
    p.fields[f as usize].len = MAX_STEPS as u8 + 1;
    assert_eq!(p.validate(), Err(ProfileError::BadProgram(f)));
    let mut p = profile();
    p.fields[f as usize].steps[MAX_STEPS - 1] = Step::ptr(8);
    assert_eq!(p.validate(), Err(ProfileError::BadProgram(f)));
}

#[test]
fn offsets_stop_below_max_offset() {
    let f = FieldId::Uid;
    let last = MAX_OFFSET - 1;
    assert_eq!(program(f, &[Step::ptr(last), Step::value(last, 4)]), Ok(()));
    assert_eq!(program(f, &[Step::add(last), Step::value(0, 4)]), Ok(()));
    for steps in [
        [Step::ptr(MAX_OFFSET), Step::value(0, 4)],
        [Step::add(MAX_OFFSET), Step::value(0, 4)],
        [Step::ptr(0), Step::value(MAX_OFFSET, 4)],
    ] {
        assert_eq!(program(f, &steps), Err(ProfileError::BadProgram(f)));
    }
}

#[test]
fn index_steps_are_bounded_and_followed_by_their_use() {
    let f = FieldId::PidLocal;
    let prog = |index: Step| {
        [
            Step::ptr(0x9d8),
            index,
            Step::add_index(16),
            Step::value(0x60, 4),
        ]
    };
    for width in [1u8, 2, 4] {
        assert_eq!(program(f, &prog(Step::index(4, width, 32))), Ok(()));
    }
    assert_eq!(program(f, &prog(Step::index(4, 4, MAX_INDEX))), Ok(()));
    assert_eq!(program(f, &prog(Step::index(MAX_OFFSET - 1, 4, 0))), Ok(()));
    for bad in [
        Step::index(4, 3, 32),
        Step::index(4, 8, 32),
        Step::index(4, 0, 32),
        Step::index(4, 4, MAX_INDEX + 1),
        Step::index(MAX_OFFSET, 4, 32),
    ] {
        assert_eq!(
            program(f, &prog(bad)),
            Err(ProfileError::BadProgram(f)),
            "{bad:?}"
        );
    }
    // An index read as the last step has no use: refused even where the field ends in an address.
    let g = FieldId::UserNsPtr;
    assert_eq!(
        program(g, &[Step::ptr(8), Step::index(4, 4, 32)]),
        Err(ProfileError::BadProgram(g))
    );
}

#[test]
fn add_index_needs_a_fresh_index_and_a_stride_in_range() {
    let f = FieldId::PidLocal;
    let prog = |stride: u32| {
        [
            Step::ptr(0x9d8),
            Step::index(4, 4, 32),
            Step::add_index(stride),
            Step::value(0x60, 4),
        ]
    };
    assert_eq!(program(f, &prog(1)), Ok(()));
    assert_eq!(program(f, &prog(MAX_STRIDE)), Ok(()));
    for bad in [0, MAX_STRIDE + 1] {
        assert_eq!(program(f, &prog(bad)), Err(ProfileError::BadProgram(f)));
    }
    // No index before it, or the index already used.
    for steps in [
        &[Step::ptr(0x9d8), Step::add_index(16), Step::value(0x60, 4)][..],
        &[
            Step::index(4, 4, 32),
            Step::add_index(16),
            Step::add_index(16),
            Step::value(0x60, 4),
        ][..],
    ] {
        assert_eq!(program(f, steps), Err(ProfileError::BadProgram(f)));
    }
}

#[test]
fn a_value_step_must_be_last() {
    let f = FieldId::Uid;
    assert_eq!(
        program(f, &[Step::value(8, 4), Step::value(8, 4)]),
        Err(ProfileError::BadProgram(f))
    );
    assert_eq!(
        program(f, &[Step::ptr(0xb90), Step::value(8, 4), Step::add(8)]),
        Err(ProfileError::BadProgram(f))
    );
    // An End step inside the used length is not a way to stop early.
    let mut p = profile();
    p.fields[f as usize].steps[1] = Step::END;
    assert_eq!(p.validate(), Err(ProfileError::BadProgram(f)));
}

#[test]
fn uid_map_layout_limits() {
    assert_eq!(uid_map(|_| {}), Ok(()));
    let bad = Err(ProfileError::BadUidMap);
    type Edit = fn(&mut UidMapLayout);
    // Each limit at its last accepted value...
    let accepted: [(&str, Edit); 14] = [
        ("map_off", |l| l.map_off = MAX_OFFSET - 1),
        ("nr_extents_off", |l| l.nr_extents_off = 255),
        ("extents_off", |l| l.extents_off = 255),
        ("forward_off", |l| l.forward_off = 255),
        ("extent_size min", |l| l.extent_size = 12),
        ("extent_size max", |l| l.extent_size = 64),
        ("first_off", |l| l.first_off = 8),
        ("lower_first_off", |l| l.lower_first_off = 8),
        ("count_off", |l| l.count_off = 8),
        ("base_extents min", |l| {
            l.base_extents = 1;
        }),
        ("base_extents max", |l| l.base_extents = 16),
        ("max_extents = base", |l| l.max_extents = l.base_extents),
        ("max_extents max", |l| l.max_extents = MAX_UID_EXTENTS),
        ("offsets at the end of a wide extent", |l| {
            l.extent_size = 64;
            l.first_off = 60;
            l.lower_first_off = 60;
            l.count_off = 60;
        }),
    ];
    for (what, edit) in accepted {
        assert_eq!(uid_map(edit), Ok(()), "{what}");
    }
    // ...and refused one step past it.
    let refused: [(&str, Edit); 14] = [
        ("map_off", |l| l.map_off = MAX_OFFSET),
        ("nr_extents_off", |l| l.nr_extents_off = 256),
        ("extents_off", |l| l.extents_off = 256),
        ("forward_off", |l| l.forward_off = 256),
        ("extent_size min", |l| l.extent_size = 11),
        ("extent_size max", |l| l.extent_size = 65),
        ("first_off", |l| l.first_off = 9),
        ("lower_first_off", |l| l.lower_first_off = 9),
        ("count_off", |l| l.count_off = 9),
        ("first_off wraps", |l| l.first_off = u32::MAX - 1),
        ("base_extents min", |l| l.base_extents = 0),
        ("base_extents max", |l| l.base_extents = 17),
        ("max_extents < base", |l| l.max_extents = l.base_extents - 1),
        ("max_extents max", |l| l.max_extents = MAX_UID_EXTENTS + 1),
    ];
    for (what, edit) in refused {
        assert_eq!(uid_map(edit), bad, "{what}");
    }
    // Without a layout (extent size 0) nothing else is looked at: uid mapping is off.
    assert!(!UidMapLayout::default().is_present());
    assert!(UID_MAP_6_1.is_present());
    assert_eq!(uid_map(|l| *l = UidMapLayout::default()), Ok(()));
}

#[test]
fn per_cpu_current_task_offset_is_aligned_and_below_16_mib() {
    let at = |offset: u32| with(|p| p.current = CurrentTask::PerCpu { offset });
    assert_eq!(at(0), Ok(()));
    assert_eq!(at((1 << 24) - 8), Ok(()));
    for bad in [1 << 24, 4, 0x1fb84, 0xffff_fff8] {
        assert_eq!(at(bad), Err(ProfileError::BadCurrentTask), "{bad:#x}");
    }
}

#[test]
fn thread_info_method_needs_a_power_of_two_stack_and_an_aligned_task_offset() {
    let at = |thread_size: u32, task_offset: u32| {
        with(|p| {
            p.current = CurrentTask::StackThreadInfo {
                thread_size,
                task_offset,
            }
        })
    };
    for (size, off) in [(4096, 0), (16384, 0), (1 << 20, 0), (16384, 4088)] {
        assert_eq!(at(size, off), Ok(()), "{size} {off}");
    }
    for (size, off) in [
        (12288, 0),   // not a power of two
        (2048, 0),    // too small
        (1 << 21, 0), // too large
        (0, 0),
        (16384, 4096), // task offset outside the first page
        (16384, 4),    // misaligned
        (16384, 12),
    ] {
        assert_eq!(
            at(size, off),
            Err(ProfileError::BadCurrentTask),
            "{size} {off}"
        );
    }
}

#[test]
fn preempt_count_and_flags_offsets_are_aligned_and_bounded() {
    let preempt = |o: Option<u32>| with(|p| p.preempt_offset = o);
    assert_eq!(preempt(None), Ok(()));
    assert_eq!(preempt(Some((1 << 24) - 4)), Ok(()));
    for bad in [1 << 24, 2, 0x1fb42] {
        assert_eq!(preempt(Some(bad)), Err(ProfileError::BadHeader), "{bad:#x}");
    }
    let flags = |o: u32| with(|p| p.task_flags_off = o);
    assert_eq!(flags(MAX_OFFSET - 4), Ok(()));
    for bad in [MAX_OFFSET, 2, 0x2e] {
        assert_eq!(flags(bad), Err(ProfileError::BadHeader), "{bad:#x}");
    }
}

#[test]
fn kernel_addresses_must_be_in_the_kernel_half() {
    let user = 0x0000_7fff_8241_5740;
    for (what, edit) in [
        (
            "page_offset_base_va",
            (|p, v| p.page_offset_base_va = v) as fn(&mut KernelProfile, u64),
        ),
        ("btf_va", |p, v| p.btf_va = v),
    ] {
        assert_eq!(with(|p| edit(p, 0)), Ok(()), "{what} 0 = unknown");
        assert_eq!(with(|p| edit(p, KERNEL_HALF_5)), Ok(()), "{what}");
        for bad in [user, 0x1000, KERNEL_HALF_5 - 1] {
            assert_eq!(
                with(|p| edit(p, bad)),
                Err(ProfileError::BadHeader),
                "{what} {bad:#x}"
            );
        }
    }
}

#[test]
fn default_direct_map_is_a_gib_aligned_kernel_address() {
    let base = |v: u64| with(|p| p.direct_map_default = v);
    for ok in [
        KERNEL_HALF_5,
        0xffff_8880_0000_0000,
        0xffff_8880_4000_0000, // bit 30 set: still GiB aligned
    ] {
        assert_eq!(base(ok), Ok(()), "{ok:#x}");
    }
    for bad in [
        0,
        0x4000_0000,
        KERNEL_HALF_5 - (1 << 30),
        0xffff_8880_0020_0000, // 2 MiB aligned only
        0xffff_8880_0000_1000,
        0xffff_8880_0000_0001,
    ] {
        assert_eq!(base(bad), Err(ProfileError::BadHeader), "{bad:#x}");
    }
}

#[test]
fn initial_user_namespace_inode_is_in_procs_range() {
    let inum = |v: u32| with(|p| p.init_userns_inum = v);
    assert_eq!(inum(NS_INUM_MIN), Ok(()));
    assert_eq!(inum(0xEFFF_FFFD), Ok(()));
    for bad in [NS_INUM_MIN - 1, 0, 1] {
        assert_eq!(inum(bad), Err(ProfileError::BadHeader), "{bad:#x}");
    }
}

#[test]
fn cache_key_offsets_are_aligned_fields_of_task_struct() {
    let key = |v: u32| with(|p| p.key_offsets[3] = Some(v));
    assert_eq!(key(MAX_OFFSET - 8), Ok(()));
    assert_eq!(with(|p| p.key_offsets[3] = None), Ok(()));
    for bad in [MAX_OFFSET, 4, 0xb94, MAX_OFFSET + 8] {
        assert_eq!(key(bad), Err(ProfileError::BadHeader), "{bad:#x}");
    }
}

fn hex(d: [u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_fingerprint_is_sha256_by_the_fips_vectors() {
    use shoji_shared::profile::fingerprint as sha256;
    assert_eq!(
        hex(sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex(sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // 56 bytes: the length no longer fits the first block's padding.
    assert_eq!(
        hex(sha256(
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        )),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}

#[test]
fn the_fingerprint_streamed_in_any_chunking_matches_one_shot() {
    use shoji_shared::profile::{fingerprint as sha256, Digest, FingerprintHasher as Sha256};
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 253) as u8).collect();
    let whole = sha256(&data);
    for chunk in [1, 3, 55, 63, 64, 65, 127, 999] {
        let mut h = Sha256::new();
        for c in data.chunks(chunk) {
            h.update(c);
        }
        assert_eq!(<[u8; 32]>::from(h.finalize()), whole, "chunks of {chunk}");
    }
    let mut h = Sha256::default();
    h.update(&data[..1]);
    h.update(&data[1..]);
    assert_eq!(<[u8; 32]>::from(h.finalize()), whole);
}

/// Debian 12's 6.1 task-walk offsets (6.1.0-57-amd64, as `shojictl profile` derives them from its
/// BTF and System.map: `introspect/fixtures/debian12-6.1.profile`).
const WALK_6_1: TaskWalk = TaskWalk {
    init_task_va: 0xffff_ffff_82a1_aa40,
    tasks_off: 0x890,
    files_off: 0xbe8,
    fdt_off: 0x20,
    max_fds_off: 0,
    fd_off: 8,
    f_inode_off: 0x20,
    i_mode_off: 0,
    private_data_off: 0xc8,
    sk_off: 0x18,
    family_off: 0x10,
    state_off: 0x12,
    daddr_off: 0,
    rcv_saddr_off: 4,
    dport_off: 0xc,
    num_off: 0xe,
    v6_daddr_off: Some(0x38),
    v6_rcv_saddr_off: Some(0x48),
    protocol_off: 0x204,
    protocol_width: 2,
    type_off: 0x202,
};

#[test]
fn walk_6_1_is_what_the_debian12_fixture_holds() {
    let path = format!(
        "{}/../introspect/fixtures/debian12-6.1.profile",
        env!("CARGO_MANIFEST_DIR")
    );
    let p = KernelProfile::decode(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(p.walk, Some(WALK_6_1));
}

#[test]
fn the_task_walk_round_trips_and_its_absence_is_all_zero() {
    let mut p = profile();
    let none = encode(&p);
    assert!(none[ENCODED_LEN - TASK_WALK_LEN..].iter().all(|&b| b == 0));
    assert_eq!(KernelProfile::decode(&none).unwrap().walk, None);
    p.walk = Some(WALK_6_1);
    let b = encode(&p);
    assert_eq!(b[ENCODED_LEN - TASK_WALK_LEN], 1);
    assert_eq!(KernelProfile::decode(&b).unwrap(), p);
    let mut no_ipv6 = WALK_6_1;
    no_ipv6.v6_daddr_off = None;
    no_ipv6.v6_rcv_saddr_off = None;
    p.walk = Some(no_ipv6);
    assert_eq!(
        KernelProfile::decode(&encode(&p)).unwrap().walk,
        Some(no_ipv6)
    );
}

#[test]
fn a_task_walk_block_that_is_neither_present_nor_all_zero_is_refused() {
    let mut p = profile();
    p.walk = Some(WALK_6_1);
    let b = encode(&p);
    let at = ENCODED_LEN - TASK_WALK_LEN;
    for flag in [0u32, 2, 0xffff_ffff] {
        let mut bad = b.clone();
        bad[at..at + 4].copy_from_slice(&flag.to_le_bytes());
        assert_eq!(
            KernelProfile::decode(&bad),
            Err(ProfileError::BadTaskWalk),
            "flag {flag}"
        );
    }
    // Absent, with one stray byte in any later position.
    let zero = encode(&profile());
    for i in at + 4..ENCODED_LEN {
        let mut bad = zero.clone();
        bad[i] = 1;
        assert_eq!(
            KernelProfile::decode(&bad),
            Err(ProfileError::BadTaskWalk),
            "byte {i}"
        );
    }
}

#[test]
fn task_walk_limits_hold_at_their_edges() {
    let check = |w: TaskWalk| {
        let mut p = profile();
        p.walk = Some(w);
        p.validate()
    };
    let bad = Err(ProfileError::BadTaskWalk);
    assert_eq!(check(WALK_6_1), Ok(()));
    let mut w = WALK_6_1;
    w.init_task_va = KERNEL_HALF_5;
    assert_eq!(check(w), Ok(()));
    w.init_task_va = KERNEL_HALF_5 - 8;
    assert_eq!(check(w), bad);
    w.init_task_va = WALK_6_1.init_task_va + 4;
    assert_eq!(check(w), bad);
    // Pointer members: 8-aligned, below MAX_OFFSET.
    type Set = fn(&mut TaskWalk, u32);
    let pointers: [Set; 7] = [
        |w, v| w.tasks_off = v,
        |w, v| w.files_off = v,
        |w, v| w.fdt_off = v,
        |w, v| w.fd_off = v,
        |w, v| w.f_inode_off = v,
        |w, v| w.private_data_off = v,
        |w, v| w.sk_off = v,
    ];
    for (i, set) in pointers.iter().enumerate() {
        let mut w = WALK_6_1;
        set(&mut w, MAX_OFFSET - 8);
        assert_eq!(check(w), Ok(()), "pointer {i}");
        set(&mut w, MAX_OFFSET);
        assert_eq!(check(w), bad, "pointer {i}");
        set(&mut w, 0x104);
        assert_eq!(check(w), bad, "pointer {i}");
    }
    let words: [Set; 3] = [
        |w, v| w.max_fds_off = v,
        |w, v| w.daddr_off = v,
        |w, v| w.rcv_saddr_off = v,
    ];
    for (i, set) in words.iter().enumerate() {
        let mut w = WALK_6_1;
        set(&mut w, MAX_OFFSET - 4);
        assert_eq!(check(w), Ok(()), "word {i}");
        set(&mut w, 0x102);
        assert_eq!(check(w), bad, "word {i}");
    }
    let halves: [Set; 5] = [
        |w, v| w.i_mode_off = v,
        |w, v| w.family_off = v,
        |w, v| w.dport_off = v,
        |w, v| w.num_off = v,
        |w, v| w.type_off = v,
    ];
    for (i, set) in halves.iter().enumerate() {
        let mut w = WALK_6_1;
        set(&mut w, MAX_OFFSET - 2);
        assert_eq!(check(w), Ok(()), "half {i}");
        set(&mut w, 0x101);
        assert_eq!(check(w), bad, "half {i}");
    }
    let mut w = WALK_6_1;
    w.state_off = MAX_OFFSET - 1;
    assert_eq!(check(w), Ok(()));
    w.state_off = MAX_OFFSET;
    assert_eq!(check(w), bad);
    let mut w = WALK_6_1;
    w.v6_daddr_off = Some(0x3a);
    assert_eq!(check(w), bad);
    let mut w = WALK_6_1;
    w.v6_rcv_saddr_off = Some(MAX_OFFSET);
    assert_eq!(check(w), bad);
    // A one-byte sk_protocol may sit at an odd offset; a two-byte one may not.
    let mut w = WALK_6_1;
    w.protocol_width = 1;
    w.protocol_off = WALK_6_1.protocol_off + 1;
    assert_eq!(check(w), Ok(()));
    w.protocol_width = 2;
    assert_eq!(check(w), bad);
    for width in [0, 3, 4, 8] {
        let mut w = WALK_6_1;
        w.protocol_width = width;
        assert_eq!(check(w), bad, "width {width}");
    }
}
