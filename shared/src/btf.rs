//! A reader of the BPF Type Format (BTF), the type information Linux exports at
//! `/sys/kernel/btf/vmlinux`, as the kernel documents it (`Documentation/bpf/btf.rst`).
//!
//! `shojictl` reads the guest kernel's structure layouts from it to build the kernel profile
//! (offsets of `task_struct` members and the like). This reader is small and allocation-free:
//! [`Btf::parse`] checks the header and every type record once (bounds, kinds, string offsets),
//! then [`Btf::types`] walks the records in id order and [`Btf::name`] reads names. Indexing
//! by id or by name is left to the caller, which has an allocator. Only little-endian BTF is
//! accepted (what x86-64 kernels produce). Malformed input is an error, never a panic.

use core::ops::Range;

/// Byte ranges of the BTF header (`struct btf_header`).
mod header {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const VERSION: usize = 2;
    pub const HDR_LEN: Range<usize> = 4..8;
    pub const TYPE_OFF: Range<usize> = 8..12;
    pub const TYPE_LEN: Range<usize> = 12..16;
    pub const STR_OFF: Range<usize> = 16..20;
    pub const STR_LEN: Range<usize> = 20..24;
    /// The header as version 1 defines it; a longer `hdr_len` is accepted.
    pub const LEN: usize = 24;
}

/// Byte ranges of a type record's common part (`struct btf_type`).
mod record {
    use core::ops::Range;
    pub const NAME_OFF: Range<usize> = 0..4;
    pub const INFO: Range<usize> = 4..8;
    pub const SIZE_OR_TYPE: Range<usize> = 8..12;
    pub const LEN: usize = 12;
}

/// The magic number, read little-endian.
pub const MAGIC: u16 = 0xeb9f;
/// The one format version.
pub const VERSION: u8 = 1;

/// Why a BTF blob was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtfError {
    /// The blob is shorter than the header.
    Truncated,
    /// The magic number is not 0xeb9f (little-endian).
    BadMagic,
    /// A format version other than 1.
    BadVersion(u8),
    /// The header's sections lie outside the blob.
    BadSections,
    /// A type record of this id runs past the type section.
    TruncatedType(u32),
    /// A type record of this id has an unknown kind.
    UnknownKind(u32, u8),
    /// A name offset outside the string section, or a name without its terminating NUL.
    BadName(u32),
    /// A name that is not UTF-8.
    NotUtf8(u32),
}

impl core::fmt::Display for BtfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BtfError::Truncated => write!(f, "BTF shorter than its header"),
            BtfError::BadMagic => write!(f, "not little-endian BTF (bad magic)"),
            BtfError::BadVersion(v) => write!(f, "BTF version {v}, expected {VERSION}"),
            BtfError::BadSections => write!(f, "BTF sections lie outside the data"),
            BtfError::TruncatedType(id) => write!(f, "BTF type {id} runs past the type section"),
            BtfError::UnknownKind(id, k) => write!(f, "BTF type {id} has unknown kind {k}"),
            BtfError::BadName(off) => write!(f, "BTF name offset {off} is not a string"),
            BtfError::NotUtf8(off) => write!(f, "BTF name at {off} is not UTF-8"),
        }
    }
}

/// A type's kind (`BTF_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `BTF_KIND_INT`.
    Int,
    /// `BTF_KIND_PTR`.
    Ptr,
    /// `BTF_KIND_ARRAY`.
    Array,
    /// `BTF_KIND_STRUCT`.
    Struct,
    /// `BTF_KIND_UNION`.
    Union,
    /// `BTF_KIND_ENUM`.
    Enum,
    /// `BTF_KIND_FWD`.
    Fwd,
    /// `BTF_KIND_TYPEDEF`.
    Typedef,
    /// `BTF_KIND_VOLATILE`.
    Volatile,
    /// `BTF_KIND_CONST`.
    Const,
    /// `BTF_KIND_RESTRICT`.
    Restrict,
    /// `BTF_KIND_FUNC`.
    Func,
    /// `BTF_KIND_FUNC_PROTO`.
    FuncProto,
    /// `BTF_KIND_VAR`.
    Var,
    /// `BTF_KIND_DATASEC`.
    Datasec,
    /// `BTF_KIND_FLOAT`.
    Float,
    /// `BTF_KIND_DECL_TAG`.
    DeclTag,
    /// `BTF_KIND_TYPE_TAG`.
    TypeTag,
    /// `BTF_KIND_ENUM64`.
    Enum64,
}

impl Kind {
    fn from_raw(k: u8) -> Option<Kind> {
        Some(match k {
            1 => Kind::Int,
            2 => Kind::Ptr,
            3 => Kind::Array,
            4 => Kind::Struct,
            5 => Kind::Union,
            6 => Kind::Enum,
            7 => Kind::Fwd,
            8 => Kind::Typedef,
            9 => Kind::Volatile,
            10 => Kind::Const,
            11 => Kind::Restrict,
            12 => Kind::Func,
            13 => Kind::FuncProto,
            14 => Kind::Var,
            15 => Kind::Datasec,
            16 => Kind::Float,
            17 => Kind::DeclTag,
            18 => Kind::TypeTag,
            19 => Kind::Enum64,
            _ => return None,
        })
    }

    /// Bytes that follow the common record: fixed, plus this much per `vlen` entry.
    fn trailer(self) -> (usize, usize) {
        match self {
            Kind::Int | Kind::Var | Kind::DeclTag => (4, 0),
            Kind::Array => (12, 0),
            Kind::Struct | Kind::Union | Kind::Datasec | Kind::Enum64 => (0, 12),
            Kind::Enum | Kind::FuncProto => (0, 8),
            Kind::Ptr
            | Kind::Fwd
            | Kind::Typedef
            | Kind::Volatile
            | Kind::Const
            | Kind::Restrict
            | Kind::Func
            | Kind::Float
            | Kind::TypeTag => (0, 0),
        }
    }

    /// Whether `size_or_type` names another type (else it is a size in bytes, or unused).
    pub fn refers(self) -> bool {
        matches!(
            self,
            Kind::Ptr
                | Kind::Typedef
                | Kind::Volatile
                | Kind::Const
                | Kind::Restrict
                | Kind::Func
                | Kind::FuncProto
                | Kind::Var
                | Kind::DeclTag
                | Kind::TypeTag
        )
    }

    /// Whether it only qualifies or renames the type it refers to (typedef, const, volatile,
    /// restrict, type tag).
    pub fn is_modifier(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }
}

fn u32_at(b: &[u8], r: Range<usize>) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(r)?.try_into().ok()?))
}

/// One type record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Type<'a> {
    /// Offset of its name in the string section (0: anonymous).
    pub name_off: u32,
    /// Its kind.
    pub kind: Kind,
    /// The kind-specific count (members, enumerators, parameters, variables).
    pub vlen: u16,
    /// The kind flag (bitfield offsets for structs, signedness for enums).
    pub kind_flag: bool,
    /// The size in bytes (int, struct, union, enum, datasec, float) or the referred type id.
    pub size_or_type: u32,
    trailer: &'a [u8],
}

/// A member of a struct or union (`struct btf_member`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Offset of its name (0: an anonymous struct or union member).
    pub name_off: u32,
    /// Its type.
    pub ty: u32,
    /// Offset from the start of the enclosing type, in bits.
    pub bit_offset: u32,
    /// Width for a bitfield (0: not a bitfield, or not recorded).
    pub bitfield_size: u8,
}

/// An enumerator of an enum or enum64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enumerator {
    /// Offset of its name.
    pub name_off: u32,
    /// Its value (for a 32-bit enum, the raw 32 bits zero-extended).
    pub value: u64,
}

/// A variable of a data section (`struct btf_var_secinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionVar {
    /// The `Var` type that names it.
    pub ty: u32,
    /// Its offset in the section.
    pub offset: u32,
    /// Its size.
    pub size: u32,
}

/// An array's element type and length (`struct btf_array`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayInfo {
    /// Element type.
    pub elem: u32,
    /// Index type.
    pub index: u32,
    /// Number of elements.
    pub len: u32,
}

impl<'a> Type<'a> {
    /// The type it refers to, for kinds that refer to one.
    pub fn referred(&self) -> Option<u32> {
        self.kind.refers().then_some(self.size_or_type)
    }

    /// Its size in bytes, for kinds that have one in the record.
    pub fn size(&self) -> Option<u32> {
        matches!(
            self.kind,
            Kind::Int
                | Kind::Struct
                | Kind::Union
                | Kind::Enum
                | Kind::Enum64
                | Kind::Datasec
                | Kind::Float
        )
        .then_some(self.size_or_type)
    }

    /// Element type and length of an array.
    pub fn array(&self) -> Option<ArrayInfo> {
        (self.kind == Kind::Array).then(|| ArrayInfo {
            elem: u32_at(self.trailer, 0..4).unwrap_or(0),
            index: u32_at(self.trailer, 4..8).unwrap_or(0),
            len: u32_at(self.trailer, 8..12).unwrap_or(0),
        })
    }

    fn entries(&self, kind_ok: bool, each: usize) -> impl Iterator<Item = &'a [u8]> {
        let t = if kind_ok { self.trailer } else { &[] };
        t.chunks_exact(each)
    }

    /// The members of a struct or union (none for other kinds).
    pub fn members(&self) -> impl Iterator<Item = Member> + 'a {
        let flag = self.kind_flag;
        self.entries(matches!(self.kind, Kind::Struct | Kind::Union), 12)
            .map(move |e| {
                let off = u32_at(e, 8..12).unwrap_or(0);
                Member {
                    name_off: u32_at(e, 0..4).unwrap_or(0),
                    ty: u32_at(e, 4..8).unwrap_or(0),
                    bit_offset: if flag { off & 0x00ff_ffff } else { off },
                    bitfield_size: if flag { (off >> 24) as u8 } else { 0 },
                }
            })
    }

    /// The enumerators of an enum or enum64 (none for other kinds).
    pub fn enumerators(&self) -> impl Iterator<Item = Enumerator> + 'a {
        let wide = self.kind == Kind::Enum64;
        let each = if wide { 12 } else { 8 };
        self.entries(matches!(self.kind, Kind::Enum | Kind::Enum64), each)
            .map(move |e| {
                let lo = u64::from(u32_at(e, 4..8).unwrap_or(0));
                let hi = if wide {
                    u64::from(u32_at(e, 8..12).unwrap_or(0))
                } else {
                    0
                };
                Enumerator {
                    name_off: u32_at(e, 0..4).unwrap_or(0),
                    value: hi << 32 | lo,
                }
            })
    }

    /// The variables of a data section (none for other kinds).
    pub fn section_vars(&self) -> impl Iterator<Item = SectionVar> + 'a {
        self.entries(self.kind == Kind::Datasec, 12)
            .map(|e| SectionVar {
                ty: u32_at(e, 0..4).unwrap_or(0),
                offset: u32_at(e, 4..8).unwrap_or(0),
                size: u32_at(e, 8..12).unwrap_or(0),
            })
    }
}

/// A parsed, checked BTF blob.
#[derive(Debug, Clone, Copy)]
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    count: u32,
}

/// Decode the record at the start of `b`: the type and the record's total length.
fn decode(b: &[u8], id: u32) -> Result<(Type<'_>, usize), BtfError> {
    let word = |r| u32_at(b, r).ok_or(BtfError::TruncatedType(id));
    let name_off = word(record::NAME_OFF)?;
    let info = word(record::INFO)?;
    let size_or_type = word(record::SIZE_OR_TYPE)?;
    let raw = ((info >> 24) & 0x1f) as u8;
    let kind = Kind::from_raw(raw).ok_or(BtfError::UnknownKind(id, raw))?;
    let vlen = (info & 0xffff) as u16;
    let (fixed, each) = kind.trailer();
    let len = record::LEN + fixed + each * usize::from(vlen);
    let trailer = b.get(record::LEN..len).ok_or(BtfError::TruncatedType(id))?;
    Ok((
        Type {
            name_off,
            kind,
            vlen,
            kind_flag: info & (1 << 31) != 0,
            size_or_type,
            trailer,
        },
        len,
    ))
}

impl<'a> Btf<'a> {
    /// Check `bytes` as a BTF blob: header, section bounds, and every type record (length,
    /// kind, and that each name offset, of the type and of its members and enumerators, is a
    /// NUL-terminated UTF-8 string).
    pub fn parse(bytes: &'a [u8]) -> Result<Btf<'a>, BtfError> {
        let word = |r| u32_at(bytes, r).ok_or(BtfError::Truncated);
        if bytes.len() < header::LEN {
            return Err(BtfError::Truncated);
        }
        if bytes.get(header::MAGIC) != Some(&MAGIC.to_le_bytes()[..]) {
            return Err(BtfError::BadMagic);
        }
        let version = bytes[header::VERSION];
        if version != VERSION {
            return Err(BtfError::BadVersion(version));
        }
        let hdr_len = word(header::HDR_LEN)? as usize;
        let section = |off: u32, len: u32| -> Result<&'a [u8], BtfError> {
            let start = hdr_len
                .checked_add(off as usize)
                .ok_or(BtfError::BadSections)?;
            let end = start
                .checked_add(len as usize)
                .ok_or(BtfError::BadSections)?;
            bytes.get(start..end).ok_or(BtfError::BadSections)
        };
        if hdr_len < header::LEN {
            return Err(BtfError::BadSections);
        }
        let types = section(word(header::TYPE_OFF)?, word(header::TYPE_LEN)?)?;
        let strings = section(word(header::STR_OFF)?, word(header::STR_LEN)?)?;
        let mut btf = Btf {
            types,
            strings,
            count: 0,
        };
        let mut at = 0usize;
        let mut id = 1u32;
        while at < types.len() {
            let (t, len) = decode(&types[at..], id)?;
            btf.name(t.name_off)?;
            for m in t.members() {
                btf.name(m.name_off)?;
            }
            for e in t.enumerators() {
                btf.name(e.name_off)?;
            }
            at += len;
            id = id.checked_add(1).ok_or(BtfError::TruncatedType(id))?;
        }
        btf.count = id - 1;
        Ok(btf)
    }

    /// The number of types (ids `1..=count`; id 0 is `void`).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Every type with its id, in id order.
    pub fn types(&self) -> impl Iterator<Item = (u32, Type<'a>)> + 'a {
        let mut rest = self.types;
        let mut id = 0u32;
        core::iter::from_fn(move || {
            // Every record was checked by `parse`.
            let (t, len) = decode(rest, id + 1).ok()?;
            rest = rest.get(len..)?;
            id += 1;
            Some((id, t))
        })
    }

    /// The name at `off` in the string section ("" for offset 0 in a well-formed blob).
    pub fn name(&self, off: u32) -> Result<&'a str, BtfError> {
        let tail = self
            .strings
            .get(off as usize..)
            .ok_or(BtfError::BadName(off))?;
        let end = tail
            .iter()
            .position(|b| *b == 0)
            .ok_or(BtfError::BadName(off))?;
        core::str::from_utf8(&tail[..end]).map_err(|_| BtfError::NotUtf8(off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_ranges_follow_each_other() {
        assert_eq!(header::MAGIC.end, header::VERSION);
        assert_eq!(header::HDR_LEN.end, header::TYPE_OFF.start);
        assert_eq!(header::TYPE_LEN.end, header::STR_OFF.start);
        assert_eq!(header::STR_LEN.end, header::LEN);
        assert_eq!(record::SIZE_OR_TYPE.end, record::LEN);
    }
}
