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
    // And a corrupt copy is refused with the reader's error, not a panic.
    let mut bad = btf.clone();
    bad[0] ^= 0xff;
    let e = build(&bad, &Symbols::parse(""), &opts).unwrap_err();
    assert!(e.contains("cannot parse BTF"), "{e}");
}
