//! The committed fixtures are what this builder's `describe` says about them, and the Symbols
//! parser reads kallsyms format.

use shoji_shared::profile::KernelProfile;
use shojictl::btfprofile::{describe, Symbols};

#[test]
fn fixture_text_matches_binary() {
    for name in ["debian12-6.1", "debian13-6.12"] {
        let dir = format!("{}/../introspect/fixtures", env!("CARGO_MANIFEST_DIR"));
        let bin = std::fs::read(format!("{dir}/{name}.profile")).unwrap();
        let txt = std::fs::read_to_string(format!("{dir}/{name}.txt")).unwrap();
        let p = KernelProfile::decode(&bin).unwrap();
        assert!(
            txt.starts_with(&describe(&p)),
            "{name}: text fixture out of date"
        );
    }
}

#[test]
fn kallsyms_parsing() {
    let s = Symbols::parse(
        "0000000000000000 A fixed_percpu_data\n000000000001fb80 D current_task\nffffffffc0a01000 t foo\t[e1000]\nbad line\n",
    );
    assert_eq!(s.get("current_task"), Some(0x1fb80));
    assert_eq!(s.get("foo"), None);
    assert!(!s.addresses_hidden());
    let hidden = Symbols::parse("0000000000000000 D current_task\n0000000000000000 T _stext\n");
    assert!(hidden.addresses_hidden());
}

/// The builder on a whole real kernel's BTF (this machine's; `SHOJI_BTF` names another): the
/// profile validates, names the kernel by its SHA-256, and finds the task fields. Under CI a
/// missing BTF fails the test.
#[test]
fn builds_a_valid_profile_from_a_real_kernel_btf() {
    use shojictl::btfprofile::{build, BuildOptions};
    let path = std::env::var("SHOJI_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
    let Ok(btf) = std::fs::read(&path) else {
        assert!(std::env::var_os("CI").is_none(), "CI needs {path}");
        eprintln!("SKIPPED: {path} is not readable");
        return;
    };
    let opts = BuildOptions {
        release: "test".into(),
        thread_size: 16384,
    };
    // No symbols: what BTF alone gives (per-CPU offsets from its .data..percpu section).
    let built = build(&btf, &Symbols::parse(""), &opts).unwrap();
    let p = &built.profile;
    p.validate().unwrap();
    assert_eq!(p.fingerprint, shoji_shared::profile::fingerprint(&btf));
    // task_struct.flags comes right after the thread_info/state/stack/usage members.
    assert!(
        (8..0x100).contains(&p.task_flags_off),
        "{:#x}",
        p.task_flags_off
    );
    let text = describe(p);
    for field in [
        "field pid ",
        "field uid ",
        "field netns_id ",
        "field cgroup_id ",
    ] {
        assert!(text.contains(field), "{field} missing:\n{text}");
    }
    // Without init_task there is no walk, and a note says why.
    assert_eq!(p.walk, None);
    assert!(text.contains("task walk          none"), "{text}");
    assert!(
        built
            .notes
            .iter()
            .any(|n| n.contains("task walk unavailable: init_task")),
        "{:?}",
        built.notes
    );
    // Hidden addresses (kptr_restrict) are no better than none.
    let hidden = Symbols::parse("0000000000000000 D init_task\n0000000000000000 T _stext\n");
    assert_eq!(build(&btf, &hidden, &opts).unwrap().profile.walk, None);

    // With init_task the walk is derived; what the kernel ABI fixes is checked exactly.
    let syms = Symbols::parse("ffffffff82a14940 D init_task\n");
    let built = build(&btf, &syms, &opts).unwrap();
    built.profile.validate().unwrap();
    let w = built.profile.walk.expect("task walk");
    w.validate().unwrap();
    assert_eq!(w.init_task_va, 0xffff_ffff_82a1_4940);
    // sock_common: skc_daddr, skc_rcv_saddr, hash, skc_dport/skc_num, skc_family, skc_state.
    assert_eq!(
        (w.daddr_off, w.rcv_saddr_off, w.dport_off, w.num_off),
        (0, 4, 0xc, 0xe)
    );
    assert_eq!((w.family_off, w.state_off), (0x10, 0x12));
    // skc_v6_* follow the fixed head of sock_common (when IPv6 is built in).
    if let (Some(d), Some(r)) = (w.v6_daddr_off, w.v6_rcv_saddr_off) {
        assert!(
            d >= 0x18 && r >= 0x18 && d.abs_diff(r) >= 16,
            "{d:#x} {r:#x}"
        );
    }
    // sk_type and sk_protocol live in struct sock past sock_common (0x88 bytes on 64-bit).
    assert!(w.type_off >= 0x88 && w.protocol_off >= 0x88, "{w:?}");
    assert!(matches!(w.protocol_width, 1 | 2), "{w:?}");
    // files_struct.fdt comes after its count and resize state; fdtable starts with max_fds
    // then fd; socket.sk after state/type/flags (6 x 4..8 bytes at most).
    assert_eq!((w.max_fds_off, w.fd_off), (0, 8));
    assert!((8..0x40).contains(&w.fdt_off), "{w:?}");
    assert!((8..0x40).contains(&w.sk_off), "{w:?}");
    assert!((8..0x40).contains(&w.f_inode_off), "{w:?}");
    assert!((8..0x100).contains(&w.private_data_off), "{w:?}");
    assert!(w.i_mode_off < 0x10, "{w:?}");
    // tasks and files are deep in task_struct, past its scheduler state.
    assert!(
        w.tasks_off > p.task_flags_off && w.files_off > w.tasks_off,
        "{w:?}"
    );
    assert!(w.files_off < 0x4000, "{w:?}");
    let text = describe(&built.profile);
    assert!(
        text.contains("task walk          init_task va 0xffffffff82a14940;"),
        "{text}"
    );

    // And a corrupt copy is refused with the reader's error, not a panic.
    let mut bad = btf.clone();
    bad[0] ^= 0xff;
    let e = build(&bad, &Symbols::parse(""), &opts).unwrap_err();
    assert!(e.contains("cannot parse BTF"), "{e}");
}
