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
