//! Shoji's BTF reader against an independent one: bpftool (Debian's, from the kernel tree) on a
//! real kernel's BTF. Every type's kind, name, size, referred type, members, enumerators, array
//! and data-section records must agree.
//!
//! The BTF comes from `SHOJI_BTF`, else `/sys/kernel/btf/vmlinux`. Without bpftool or BTF the
//! test says it skipped; under CI (`CI` set) that is a failure, because `cargo xtask setup`
//! installs bpftool and CI kernels carry BTF.

use serde_json::Value;
use shoji_shared::btf::{Btf, Kind};

fn bpftool() -> Option<String> {
    ["bpftool", "/usr/sbin/bpftool", "/sbin/bpftool"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Int => "INT",
        Kind::Ptr => "PTR",
        Kind::Array => "ARRAY",
        Kind::Struct => "STRUCT",
        Kind::Union => "UNION",
        Kind::Enum => "ENUM",
        Kind::Fwd => "FWD",
        Kind::Typedef => "TYPEDEF",
        Kind::Volatile => "VOLATILE",
        Kind::Const => "CONST",
        Kind::Restrict => "RESTRICT",
        Kind::Func => "FUNC",
        Kind::FuncProto => "FUNC_PROTO",
        Kind::Var => "VAR",
        Kind::Datasec => "DATASEC",
        Kind::Float => "FLOAT",
        Kind::DeclTag => "DECL_TAG",
        Kind::TypeTag => "TYPE_TAG",
        Kind::Enum64 => "ENUM64",
    }
}

fn u(v: &Value, key: &str, what: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: bpftool gave no unsigned {key}: {v}"))
}

fn skip(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI must run this check, but {why}");
    }
    eprintln!("SKIPPED: {why}");
}

#[test]
fn the_reader_agrees_with_bpftool_on_a_real_kernel() {
    let path = std::env::var("SHOJI_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
    let Ok(bytes) = std::fs::read(&path) else {
        return skip(&format!("{path} is not readable"));
    };
    let Some(tool) = bpftool() else {
        return skip("bpftool is not installed (cargo xtask setup installs it)");
    };
    let out = std::process::Command::new(&tool)
        .args(["-j", "btf", "dump", "file", &path, "format", "raw"])
        .output()
        .expect("bpftool runs");
    assert!(out.status.success(), "bpftool failed on {path}");
    let dump: Value = serde_json::from_slice(&out.stdout).expect("bpftool prints JSON");
    let theirs = dump["types"].as_array().expect("a types array");

    let btf = Btf::parse(&bytes).expect("the kernel's BTF parses");
    let ours: Vec<_> = btf.types().collect();
    assert_eq!(ours.len(), theirs.len(), "type count");
    assert_eq!(btf.count() as usize, theirs.len());
    assert!(ours.len() > 10_000, "a whole kernel: {} types", ours.len());

    let name = |off: u32| match btf.name(off).expect("names resolve") {
        "" => "(anon)",
        n => n,
    };
    let mut members = 0usize;
    for ((id, t), b) in ours.iter().zip(theirs) {
        let what = format!("{path} type {id}");
        assert_eq!(u64::from(*id), u(b, "id", &what), "{what}: id");
        assert_eq!(kind_name(t.kind), b["kind"], "{what}: kind");
        assert_eq!(name(t.name_off), b["name"], "{what}: name");
        if let Some(size) = t.size() {
            assert_eq!(u64::from(size), u(b, "size", &what), "{what}: size");
        }
        if let Some(r) = t.referred() {
            let key = if t.kind == Kind::FuncProto {
                "ret_type_id"
            } else {
                "type_id"
            };
            assert_eq!(u64::from(r), u(b, key, &what), "{what}: {key}");
        }
        if let Some(a) = t.array() {
            assert_eq!(u64::from(a.elem), u(b, "type_id", &what), "{what}: elem");
            assert_eq!(u64::from(a.index), u(b, "index_type_id", &what));
            assert_eq!(u64::from(a.len), u(b, "nr_elems", &what), "{what}: len");
        }
        if matches!(t.kind, Kind::Struct | Kind::Union) {
            let bm = b["members"].as_array().expect("members");
            assert_eq!(t.members().count(), bm.len(), "{what}: member count");
            for (m, x) in t.members().zip(bm) {
                assert_eq!(name(m.name_off), x["name"], "{what}: member name");
                assert_eq!(
                    u64::from(m.ty),
                    u(x, "type_id", &what),
                    "{what}: member type"
                );
                assert_eq!(u64::from(m.bit_offset), u(x, "bits_offset", &what));
                let width = x["bitfield_size"].as_u64().unwrap_or(0);
                assert_eq!(u64::from(m.bitfield_size), width, "{what}: bitfield size");
                members += 1;
            }
        }
        if matches!(t.kind, Kind::Enum | Kind::Enum64) {
            let bv = b["values"].as_array().expect("values");
            assert_eq!(
                t.enumerators().count(),
                bv.len(),
                "{what}: enumerator count"
            );
            let bits = if t.kind == Kind::Enum { 32 } else { 64 };
            for (e, x) in t.enumerators().zip(bv) {
                assert_eq!(name(e.name_off), x["name"], "{what}: enumerator name");
                // bpftool prints signed enums signed: compare the raw bits.
                let raw = x["val"]
                    .as_u64()
                    .or_else(|| x["val"].as_i64().map(|v| v as u64))
                    .expect("an integer value");
                let mask = if bits == 32 { 0xffff_ffff } else { u64::MAX };
                assert_eq!(e.value, raw & mask, "{what}: enumerator value");
            }
        }
        if t.kind == Kind::Datasec {
            let bv = b["vars"].as_array().expect("vars");
            assert_eq!(t.section_vars().count(), bv.len(), "{what}: var count");
            for (v, x) in t.section_vars().zip(bv) {
                assert_eq!(u64::from(v.ty), u(x, "type_id", &what), "{what}: var type");
                assert_eq!(u64::from(v.offset), u(x, "offset", &what), "{what}: offset");
                assert_eq!(u64::from(v.size), u(x, "size", &what), "{what}: var size");
            }
        }
    }
    assert!(members > 10_000, "{members} members compared");
    eprintln!(
        "{path}: {} types and {members} members agree with {tool}",
        ours.len()
    );
}
