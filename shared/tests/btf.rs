//! Shoji's BTF reader on hand-built blobs: every kind's record, names, bitfields, signed and
//! 64-bit enumerators, and malformed input (truncations, bad headers, bad names, random bytes),
//! which must be refused with an error and never panic.

use proptest::prelude::*;
use shoji_shared::btf::{Btf, BtfError, Kind, MAGIC};

/// Builds a little-endian BTF blob record by record.
#[derive(Default)]
struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Blob {
    fn new() -> Blob {
        Blob {
            types: Vec::new(),
            strings: vec![0],
        }
    }

    fn s(&mut self, name: &str) -> u32 {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn w(&mut self, v: u32) -> &mut Blob {
        self.types.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn ty(&mut self, name: &str, kind: u32, vlen: u32, flag: bool, size_or_type: u32) -> &mut Blob {
        let n = if name.is_empty() { 0 } else { self.s(name) };
        let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
        self.w(n).w(info).w(size_or_type)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.push(1); // version
        b.push(0); // flags
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strings);
        b
    }
}

/// One of each kind, ids 1..=19 in kind order.
fn every_kind() -> Vec<u8> {
    let mut b = Blob::new();
    b.ty("int", 1, 0, false, 4).w(32); // 1 INT
    b.ty("", 2, 0, false, 1); // 2 PTR -> 1
    b.ty("", 3, 0, false, 0).w(1).w(1).w(16); // 3 ARRAY of 16 int
    let (x, y) = (b.s("x"), b.s("y"));
    // 4 STRUCT pair { int x; int y:3 at bit 35 } with bitfield offsets (kind flag).
    b.ty("pair", 4, 2, true, 8)
        .w(x)
        .w(1)
        .w(0)
        .w(y)
        .w(1)
        .w((3 << 24) | 35);
    let v = b.s("v");
    b.ty("", 5, 1, false, 4).w(v).w(1).w(0); // 5 UNION { int v }
    let (neg, big) = (b.s("NEG"), b.s("BIG"));
    b.ty("sign", 6, 2, true, 4)
        .w(neg)
        .w(-1i32 as u32)
        .w(big)
        .w(7); // 6 ENUM
    b.ty("later", 7, 0, false, 0); // 7 FWD
    b.ty("int_t", 8, 0, false, 1); // 8 TYPEDEF -> 1
    b.ty("", 9, 0, false, 8); // 9 VOLATILE -> 8
    b.ty("", 10, 0, false, 9); // 10 CONST -> 9
    b.ty("", 11, 0, false, 2); // 11 RESTRICT -> 2
    b.ty("f", 12, 0, false, 13); // 12 FUNC -> 13
    let p = b.s("p");
    b.ty("", 13, 1, false, 1).w(p).w(1); // 13 FUNC_PROTO int (int p)
    b.ty("cpu_var", 14, 0, false, 1).w(1); // 14 VAR
    b.ty(".data..percpu", 15, 1, false, 64).w(14).w(32).w(4); // 15 DATASEC
    b.ty("double", 16, 0, false, 8); // 16 FLOAT
    b.ty("tag", 17, 0, false, 12).w(-1i32 as u32); // 17 DECL_TAG -> 12
    b.ty("user", 18, 0, false, 2); // 18 TYPE_TAG -> 2
    let huge = b.s("HUGE");
    b.ty("wide", 19, 1, false, 8)
        .w(huge)
        .w(0x89ab_cdef)
        .w(0x0123_4567); // 19 ENUM64
    b.bytes()
}

#[test]
fn every_kind_reads_back() {
    let bytes = every_kind();
    let btf = Btf::parse(&bytes).unwrap();
    assert_eq!(btf.count(), 19);
    let t: Vec<_> = btf.types().collect();
    assert_eq!(t.len(), 19);
    let kinds: Vec<Kind> = t.iter().map(|(_, t)| t.kind).collect();
    use Kind::*;
    assert_eq!(
        kinds,
        [
            Int, Ptr, Array, Struct, Union, Enum, Fwd, Typedef, Volatile, Const, Restrict, Func,
            FuncProto, Var, Datasec, Float, DeclTag, TypeTag, Enum64
        ]
    );
    assert!(t.iter().enumerate().all(|(i, (id, _))| *id == i as u32 + 1));
    let name = |i: usize| btf.name(t[i].1.name_off).unwrap();
    assert_eq!(name(0), "int");
    assert_eq!(name(1), "");
    assert_eq!(t[0].1.size(), Some(4));
    assert_eq!(t[1].1.referred(), Some(1));
    assert_eq!(t[1].1.size(), None);
    let a = t[2].1.array().unwrap();
    assert_eq!((a.elem, a.index, a.len), (1, 1, 16));
    assert_eq!(t[0].1.array(), None);

    let st = t[3].1;
    assert_eq!(
        (name(3), st.size(), st.vlen, st.kind_flag),
        ("pair", Some(8), 2, true)
    );
    let m: Vec<_> = st.members().collect();
    assert_eq!(btf.name(m[0].name_off).unwrap(), "x");
    assert_eq!((m[0].ty, m[0].bit_offset, m[0].bitfield_size), (1, 0, 0));
    assert_eq!(btf.name(m[1].name_off).unwrap(), "y");
    assert_eq!((m[1].bit_offset, m[1].bitfield_size), (35, 3));
    // Without the kind flag the offset word is all offset.
    assert!(!t[4].1.kind_flag);
    let u: Vec<_> = t[4].1.members().collect();
    assert_eq!((u.len(), u[0].bit_offset, u[0].bitfield_size), (1, 0, 0));
    // Members of something that has none.
    assert_eq!(t[0].1.members().count(), 0);
    assert_eq!(t[5].1.members().count(), 0);

    let e: Vec<_> = t[5].1.enumerators().collect();
    assert_eq!(btf.name(e[0].name_off).unwrap(), "NEG");
    assert_eq!(e[0].value, 0xffff_ffff);
    assert_eq!(e[1].value, 7);
    let e64: Vec<_> = t[18].1.enumerators().collect();
    assert_eq!(e64[0].value, 0x0123_4567_89ab_cdef);
    assert_eq!(t[3].1.enumerators().count(), 0);

    for (i, want) in [
        (7, Some(1)),
        (8, Some(8)),
        (9, Some(9)),
        (10, Some(2)),
        (11, Some(13)),
    ] {
        assert_eq!(t[i].1.referred(), want, "type {}", i + 1);
    }
    assert!(t[7].1.kind.is_modifier() && t[17].1.kind.is_modifier());
    assert!(!t[1].1.kind.is_modifier() && !t[11].1.kind.is_modifier());
    assert_eq!(t[12].1.referred(), Some(1));
    assert_eq!(t[13].1.referred(), Some(1));
    let vars: Vec<_> = t[14].1.section_vars().collect();
    assert_eq!((vars[0].ty, vars[0].offset, vars[0].size), (14, 32, 4));
    assert_eq!(t[14].1.size(), Some(64));
    assert_eq!(t[3].1.section_vars().count(), 0);
    assert_eq!(t[15].1.size(), Some(8));
    assert_eq!(t[16].1.referred(), Some(12));
    assert_eq!(t[6].1.referred(), None);
    assert_eq!(t[6].1.size(), None);
}

#[test]
fn a_struct_without_the_kind_flag_keeps_all_32_offset_bits() {
    let mut b = Blob::new();
    let m = b.s("far");
    b.ty("big", 4, 1, false, 1 << 22).w(m).w(0).w(0x0300_0010);
    let bytes = b.bytes();
    let btf = Btf::parse(&bytes).unwrap();
    let (_, t) = btf.types().next().unwrap();
    assert!(!t.kind_flag);
    let far = t.members().next().unwrap();
    assert_eq!((far.bit_offset, far.bitfield_size), (0x0300_0010, 0));
}

#[test]
fn headers_and_sections_are_checked() {
    let good = every_kind();
    assert_eq!(Btf::parse(&good[..23]).unwrap_err(), BtfError::Truncated);
    let mut b = good.clone();
    b[0..2].copy_from_slice(&0x9febu16.to_le_bytes()); // big-endian BTF
    assert_eq!(Btf::parse(&b).unwrap_err(), BtfError::BadMagic);
    let mut b = good.clone();
    b[2] = 2;
    assert_eq!(Btf::parse(&b).unwrap_err(), BtfError::BadVersion(2));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&8u32.to_le_bytes()); // header shorter than version 1's
    assert_eq!(Btf::parse(&b).unwrap_err(), BtfError::BadSections);
    let mut b = good.clone();
    b[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // string section past the end
    assert_eq!(Btf::parse(&b).unwrap_err(), BtfError::BadSections);
    let mut b = good.clone();
    b[16..20].copy_from_slice(&u32::MAX.to_le_bytes()); // offset overflow
    assert_eq!(Btf::parse(&b).unwrap_err(), BtfError::BadSections);
    // A longer header (a later version's fields) is skipped over.
    let mut longer = good[..24].to_vec();
    longer[4..8].copy_from_slice(&32u32.to_le_bytes());
    longer.extend_from_slice(&[0; 8]);
    longer.extend_from_slice(&good[24..]);
    assert_eq!(Btf::parse(&longer).unwrap().count(), 19);
    // The header alone, both sections empty: a valid, empty BTF.
    let mut bare = good[..24].to_vec();
    bare[8..24].copy_from_slice(&[0; 16]);
    let btf = Btf::parse(&bare).unwrap();
    assert_eq!((btf.count(), btf.types().count()), (0, 0));
    // An empty type section is a valid, empty BTF.
    let empty = Blob::new().bytes();
    let btf = Btf::parse(&empty).unwrap();
    assert_eq!((btf.count(), btf.types().count()), (0, 0));
}

#[test]
fn records_and_names_are_checked() {
    let mut b = Blob::new();
    b.ty("x", 20, 0, false, 0); // kind 20 does not exist
    assert_eq!(
        Btf::parse(&b.bytes()).unwrap_err(),
        BtfError::UnknownKind(1, 20)
    );
    let mut b = Blob::new();
    b.ty("s", 4, 2, false, 8).w(0).w(0).w(0); // two members announced, one present
    assert_eq!(
        Btf::parse(&b.bytes()).unwrap_err(),
        BtfError::TruncatedType(1)
    );
    let mut b = Blob::new();
    b.ty("int", 1, 0, false, 4).w(32);
    b.w(999).w(2 << 24).w(1); // a PTR named past the string section
    assert_eq!(Btf::parse(&b.bytes()).unwrap_err(), BtfError::BadName(999));
    let mut b = Blob::new();
    let bad = b.strings.len() as u32;
    b.strings.extend_from_slice(&[0xff, 0xfe, 0]);
    b.w(bad).w(2 << 24).w(0);
    assert_eq!(Btf::parse(&b.bytes()).unwrap_err(), BtfError::NotUtf8(bad));
    // A member's name is checked too.
    let mut b = Blob::new();
    b.ty("s", 4, 1, false, 4).w(77).w(0).w(0);
    assert_eq!(Btf::parse(&b.bytes()).unwrap_err(), BtfError::BadName(77));
    // A string section without its final NUL.
    let mut b = Blob::new();
    b.ty("int", 1, 0, false, 4).w(32);
    b.strings.pop();
    assert_eq!(Btf::parse(&b.bytes()).unwrap_err(), BtfError::BadName(1));
    // Every error has a message.
    assert_eq!(
        BtfError::TruncatedType(3).to_string(),
        "BTF type 3 runs past the type section"
    );
}

#[test]
fn every_truncation_of_the_type_section_is_refused() {
    let good = every_kind();
    let type_len = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
    for cut in 1..type_len {
        // Shrink the type section by `cut` bytes, keeping the strings where they are.
        let mut b = good.clone();
        b[12..16].copy_from_slice(&((type_len - cut) as u32).to_le_bytes());
        match Btf::parse(&b) {
            Err(BtfError::TruncatedType(_)) => {}
            // Cutting exactly at a record boundary leaves fewer, whole types.
            Ok(btf) => assert!(btf.count() < 19, "cut {cut}"),
            Err(e) => panic!("cut {cut}: {e}"),
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(btf) = Btf::parse(&data) {
            for (_, t) in btf.types() {
                let _ = (t.members().count(), t.enumerators().count(), t.section_vars().count());
                let _ = btf.name(t.name_off);
            }
        }
    }

    #[test]
    fn flipped_bytes_of_a_good_blob_never_panic(at in 0usize..400, v in any::<u8>()) {
        let mut b = every_kind();
        let i = at % b.len();
        b[i] = v;
        if let Ok(btf) = Btf::parse(&b) {
            let n = btf.types().count();
            prop_assert_eq!(n as u32, btf.count());
            for (_, t) in btf.types() {
                for m in t.members() {
                    prop_assert!(btf.name(m.name_off).is_ok());
                }
            }
        }
    }
}
