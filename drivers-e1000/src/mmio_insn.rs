//! Decoding of the guest instruction that faulted on a trapped MMIO page, so the hypervisor can
//! emulate just that access and advance RIP.
//!
//! Only the plain moves a driver uses for `readb/w/l/q` and `writeb/w/l/q` are accepted:
//! `mov r,[m]`, `mov [m],r`, `mov [m],imm`, the `moffs` forms, `movzx` and `movsx`/`movsxd`.
//! Anything else is refused with an [`InsnError`]; the caller injects #UD or #GP as it sees fit.
//!
//! Registers are numbered in encoding order: 0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI,
//! 7 RDI, 8..15 R8..R15.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind, Register};

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// Why an instruction cannot be emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsnError {
    /// No bytes were supplied.
    Empty,
    /// The bytes do not decode to a valid instruction (or are cut short).
    Invalid,
    /// A valid instruction that is not one of the supported moves.
    Unsupported,
    /// The instruction has no memory operand (cannot have caused the fault).
    NoMemoryOperand,
    /// A LOCK prefix (always #UD on a move).
    Locked,
    /// Bitness other than 16, 32 or 64.
    BadMode,
}

impl InsnError {
    /// Human-readable reason.
    pub fn describe(self) -> &'static str {
        match self {
            InsnError::Empty => "no instruction bytes",
            InsnError::Invalid => "invalid or truncated instruction",
            InsnError::Unsupported => "instruction not supported for MMIO emulation",
            InsnError::NoMemoryOperand => "instruction has no memory operand",
            InsnError::Locked => "LOCK prefix on a move",
            InsnError::BadMode => "unsupported CPU mode",
        }
    }
}

/// How a read result lands in the destination register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extend {
    /// Plain move: 8/16-bit destinations keep the other bits, 32-bit ones clear bits 63:32.
    None,
    /// Zero-extend to the destination width (`movzx`).
    Zero,
    /// Sign-extend to the destination width (`movsx`, `movsxd`).
    Sign,
}

/// A general-purpose register operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpr {
    /// Register number (encoding order, 0..=15).
    pub num: u8,
    /// Operand width in bytes (1, 2, 4, 8).
    pub width: u8,
    /// AH, CH, DH or BH: bits 15:8 of register `num`.
    pub high_byte: bool,
}

/// Where a written value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSource {
    /// A register.
    Reg(Gpr),
    /// An immediate (already sign-extended to the access width and truncated to it).
    Imm(u64),
}

/// The access direction and its register side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// Memory is read into `dest`.
    Read {
        /// Destination register.
        dest: Gpr,
        /// How the value is extended into it.
        extend: Extend,
    },
    /// Memory is written from `src`.
    Write {
        /// Value source.
        src: WriteSource,
    },
}

/// One decoded MMIO access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    /// Width of the memory access in bytes (1, 2, 4, 8).
    pub width: u8,
    /// Read or write, and the register side.
    pub kind: AccessKind,
    /// Instruction length (add to RIP after emulation).
    pub len: u8,
}

impl MmioAccess {
    /// Whether the access writes memory.
    pub fn is_write(&self) -> bool {
        matches!(self.kind, AccessKind::Write { .. })
    }

    /// The value a write stores (truncated to the access width), read from `gprs`.
    pub fn write_value(&self, gprs: &[u64; 16]) -> Option<u64> {
        let v = match self.kind {
            AccessKind::Read { .. } => return None,
            AccessKind::Write {
                src: WriteSource::Imm(v),
            } => v,
            AccessKind::Write {
                src: WriteSource::Reg(r),
            } => {
                let full = gprs[usize::from(r.num & 15)];
                if r.high_byte {
                    full >> 8
                } else {
                    full
                }
            }
        };
        Some(v & width_mask(self.width))
    }

    /// Put the `data` a read returned into the destination register, with x86 semantics.
    /// Does nothing for a write.
    pub fn complete_read(&self, gprs: &mut [u64; 16], data: u64) {
        let AccessKind::Read { dest, extend } = self.kind else {
            return;
        };
        let data = data & width_mask(self.width);
        let v = match extend {
            Extend::None => data,
            Extend::Zero => data,
            Extend::Sign => {
                let bits = u32::from(self.width) * 8;
                if bits >= 64 {
                    data
                } else {
                    let sh = 64 - bits;
                    (((data << sh) as i64) >> sh) as u64
                }
            }
        };
        let slot = &mut gprs[usize::from(dest.num & 15)];
        *slot = match (dest.width, dest.high_byte) {
            (1, true) => (*slot & !0xff00) | ((v & 0xff) << 8),
            (1, false) => (*slot & !0xff) | (v & 0xff),
            (2, _) => (*slot & !0xffff) | (v & 0xffff),
            (4, _) => v & 0xffff_ffff,
            _ => v,
        };
    }
}

fn width_mask(w: u8) -> u64 {
    match w {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Map an iced register to a [`Gpr`].
fn gpr(r: Register) -> Option<Gpr> {
    let v = r as u32;
    let al = Register::AL as u32;
    let ax = Register::AX as u32;
    let eax = Register::EAX as u32;
    let rax = Register::RAX as u32;
    let (num, width, high_byte) = if (al..al + 20).contains(&v) {
        let i = v - al;
        match i {
            0..=3 => (i, 1, false),
            4..=7 => (i - 4, 1, true),
            _ => (i - 4, 1, false),
        }
    } else if (ax..ax + 16).contains(&v) {
        (v - ax, 2, false)
    } else if (eax..eax + 16).contains(&v) {
        (v - eax, 4, false)
    } else if (rax..rax + 16).contains(&v) {
        (v - rax, 8, false)
    } else {
        return None;
    };
    Some(Gpr {
        num: num as u8,
        width,
        high_byte,
    })
}

/// The one instruction at the start of `bytes` (at most [`MAX_INSN_LEN`] of them are looked
/// at), decoded for a CPU in `bitness`-bit mode as if fetched at `ip`.
fn decode_one(bytes: &[u8], bitness: u32, ip: u64) -> Result<Instruction, InsnError> {
    if bytes.is_empty() {
        return Err(InsnError::Empty);
    }
    if !matches!(bitness, 16 | 32 | 64) {
        return Err(InsnError::BadMode);
    }
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let ins = Decoder::with_ip(bitness, bytes, ip, DecoderOptions::NONE).decode();
    if ins.is_invalid() {
        return Err(InsnError::Invalid);
    }
    Ok(ins)
}

/// Decode the instruction at the start of `bytes` (fetched by the caller from the guest's RIP)
/// for a CPU in `bitness`-bit mode (16, 32 or 64).
pub fn decode(bytes: &[u8], bitness: u32) -> Result<MmioAccess, InsnError> {
    let ins = decode_one(bytes, bitness, 0)?;
    if ins.has_lock_prefix() {
        return Err(InsnError::Locked);
    }
    let len = ins.len() as u8;
    use Code::*;
    // (width, is_write, memory operand index, extend)
    let (width, write, mem_op, extend): (u8, bool, u32, Extend) = match ins.code() {
        Mov_rm8_r8 => (1, true, 0, Extend::None),
        Mov_rm16_r16 => (2, true, 0, Extend::None),
        Mov_rm32_r32 => (4, true, 0, Extend::None),
        Mov_rm64_r64 => (8, true, 0, Extend::None),
        Mov_r8_rm8 => (1, false, 1, Extend::None),
        Mov_r16_rm16 => (2, false, 1, Extend::None),
        Mov_r32_rm32 => (4, false, 1, Extend::None),
        Mov_r64_rm64 => (8, false, 1, Extend::None),
        Mov_rm8_imm8 => (1, true, 0, Extend::None),
        Mov_rm16_imm16 => (2, true, 0, Extend::None),
        Mov_rm32_imm32 => (4, true, 0, Extend::None),
        Mov_rm64_imm32 => (8, true, 0, Extend::None),
        Mov_AL_moffs8 => (1, false, 1, Extend::None),
        Mov_AX_moffs16 => (2, false, 1, Extend::None),
        Mov_EAX_moffs32 => (4, false, 1, Extend::None),
        Mov_RAX_moffs64 => (8, false, 1, Extend::None),
        Mov_moffs8_AL => (1, true, 0, Extend::None),
        Mov_moffs16_AX => (2, true, 0, Extend::None),
        Mov_moffs32_EAX => (4, true, 0, Extend::None),
        Mov_moffs64_RAX => (8, true, 0, Extend::None),
        Movzx_r16_rm8 | Movzx_r32_rm8 | Movzx_r64_rm8 => (1, false, 1, Extend::Zero),
        Movzx_r16_rm16 | Movzx_r32_rm16 | Movzx_r64_rm16 => (2, false, 1, Extend::Zero),
        Movsx_r16_rm8 | Movsx_r32_rm8 | Movsx_r64_rm8 => (1, false, 1, Extend::Sign),
        Movsx_r16_rm16 | Movsx_r32_rm16 | Movsx_r64_rm16 => (2, false, 1, Extend::Sign),
        Movsxd_r64_rm32 => (4, false, 1, Extend::Sign),
        _ => return Err(InsnError::Unsupported),
    };
    if ins.op_count() != 2 {
        return Err(InsnError::Unsupported);
    }
    if !matches!(ins.op_kind(mem_op), OpKind::Memory) {
        return Err(InsnError::NoMemoryOperand);
    }
    let other = 1 - mem_op;
    let kind = if write {
        let src = match ins.op_kind(other) {
            OpKind::Register => {
                WriteSource::Reg(gpr(ins.op_register(other)).ok_or(InsnError::Unsupported)?)
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate32to64 => WriteSource::Imm(ins.immediate(other) & width_mask(width)),
            _ => return Err(InsnError::Unsupported),
        };
        AccessKind::Write { src }
    } else {
        if ins.op_kind(other) != OpKind::Register {
            return Err(InsnError::Unsupported);
        }
        let dest = gpr(ins.op_register(other)).ok_or(InsnError::Unsupported)?;
        AccessKind::Read { dest, extend }
    };
    Ok(MmioAccess { width, kind, len })
}

/// Base addresses of the six segment registers (from the VMCS), for [`operand_address`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentBases {
    /// ES base.
    pub es: u64,
    /// CS base.
    pub cs: u64,
    /// SS base.
    pub ss: u64,
    /// DS base.
    pub ds: u64,
    /// FS base.
    pub fs: u64,
    /// GS base.
    pub gs: u64,
}

/// The linear address that the memory operand of the instruction at the start of `bytes`
/// (fetched at `rip`, CPU in `bitness`-bit mode) accesses, given the guest's registers in
/// encoding order and its segment bases. RIP-relative operands resolve against `rip`.
///
/// A trapped access's page offset is the offset of this address: a nested hypervisor that
/// emulates the access itself may report the guest-physical address of the EPT violation
/// without its page offset (KVM does, for writes to a page Shoji maps read-only), and the
/// instruction's own operand says which register was meant.
pub fn operand_address(
    bytes: &[u8],
    bitness: u32,
    rip: u64,
    gprs: &[u64; 16],
    seg: &SegmentBases,
) -> Result<u64, InsnError> {
    let ins = decode_one(bytes, bitness, rip)?;
    let op = (0..ins.op_count())
        .find(|&i| {
            matches!(
                ins.op_kind(i),
                OpKind::Memory
                    | OpKind::MemorySegSI
                    | OpKind::MemorySegESI
                    | OpKind::MemorySegRSI
                    | OpKind::MemorySegDI
                    | OpKind::MemorySegEDI
                    | OpKind::MemorySegRDI
                    | OpKind::MemoryESDI
                    | OpKind::MemoryESEDI
                    | OpKind::MemoryESRDI
            )
        })
        .ok_or(InsnError::NoMemoryOperand)?;
    ins.virtual_address(op, 0, |reg, _, _| match reg {
        Register::ES => Some(seg.es),
        Register::CS => Some(seg.cs),
        Register::SS => Some(seg.ss),
        Register::DS => Some(seg.ds),
        Register::FS => Some(seg.fs),
        Register::GS => Some(seg.gs),
        // Address registers are 16, 32 or 64 bits wide (never AH..BH).
        r => gpr(r).map(|g| gprs[usize::from(g.num & 15)] & width_mask(g.width)),
    })
    .ok_or(InsnError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(num: u8, width: u8) -> Gpr {
        Gpr {
            num,
            width,
            high_byte: false,
        }
    }

    #[test]
    fn operand_address_of_the_forms_firmware_and_linux_use() {
        let mut g = [0u64; 16];
        g[0] = 0xfee0_0000; // rax
        g[7] = 0xffff_c900_0000_0000; // rdi
        g[12] = 3; // r12
        let seg = SegmentBases::default();
        // mov [rax+0xb0], ecx   (an EOI write; the page offset is 0xb0)
        let a = operand_address(&[0x89, 0x88, 0xb0, 0x00, 0x00, 0x00], 64, 0x1000, &g, &seg);
        assert_eq!(a, Ok(0xfee0_00b0));
        // mov eax, [rdi+r12*4+0x10]
        let a = operand_address(&[0x42, 0x8b, 0x44, 0xa7, 0x10], 64, 0x1000, &g, &seg);
        assert_eq!(a, Ok(0xffff_c900_0000_001c));
        // mov [rip+0x100], eax at rip 0x2000 (6 bytes long): 0x2106
        let a = operand_address(&[0x89, 0x05, 0x00, 0x01, 0x00, 0x00], 64, 0x2000, &g, &seg);
        assert_eq!(a, Ok(0x2106));
        // mov fs:[rax+0x300], ecx with FS base 0x10: the segment base is added
        let fs = SegmentBases {
            fs: 0x10,
            ..SegmentBases::default()
        };
        let a = operand_address(&[0x64, 0x89, 0x88, 0x00, 0x03, 0x00, 0x00], 64, 0, &g, &fs);
        assert_eq!(a, Ok(0xfee0_0310));
        // 32-bit addressing wraps at 4 GiB: mov [eax+0x300], ecx with rax = 0x1_ffff_ff00
        g[0] = 0x1_ffff_ff00;
        let a = operand_address(&[0x67, 0x89, 0x88, 0x00, 0x03, 0x00, 0x00], 64, 0, &g, &seg);
        assert_eq!(a, Ok(0x200));
        // 32-bit mode with a DS base: mov [eax+4], ecx
        let ds = SegmentBases {
            ds: 0x1000,
            ..SegmentBases::default()
        };
        g[0] = 0x20;
        let a = operand_address(&[0x89, 0x48, 0x04], 32, 0, &g, &ds);
        assert_eq!(a, Ok(0x1024));
        // No memory operand, nothing decodable, bad mode.
        assert_eq!(
            operand_address(&[0x89, 0xc8], 64, 0, &g, &seg),
            Err(InsnError::NoMemoryOperand)
        );
        assert_eq!(operand_address(&[], 64, 0, &g, &seg), Err(InsnError::Empty));
        assert_eq!(
            operand_address(&[0x89], 64, 0, &g, &seg),
            Err(InsnError::Invalid)
        );
        assert_eq!(
            operand_address(&[0x89, 0x48, 0x04], 8, 0, &g, &seg),
            Err(InsnError::BadMode)
        );
    }

    #[test]
    fn linux_readl_writel_forms() {
        // mov eax, [rdi+0xc0]   (readl of ICR)
        let a = decode(&[0x8b, 0x87, 0xc0, 0x00, 0x00, 0x00], 64).unwrap();
        assert_eq!(
            a,
            MmioAccess {
                width: 4,
                kind: AccessKind::Read {
                    dest: r(0, 4),
                    extend: Extend::None
                },
                len: 6
            }
        );
        // mov [rax+0x3818], edx   (writel of TDT)
        let a = decode(&[0x89, 0x90, 0x18, 0x38, 0x00, 0x00], 64).unwrap();
        assert_eq!(
            a,
            MmioAccess {
                width: 4,
                kind: AccessKind::Write {
                    src: WriteSource::Reg(r(2, 4))
                },
                len: 6
            }
        );
        // mov dword [rax+0xd8], 0xffffffff   (writel(~0, IMC))
        let a = decode(
            &[0xc7, 0x80, 0xd8, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff],
            64,
        )
        .unwrap();
        assert_eq!(
            a.kind,
            AccessKind::Write {
                src: WriteSource::Imm(0xffff_ffff)
            }
        );
        assert_eq!((a.width, a.len), (4, 10));
        // mov [r12+0x8], r13d   (REX.RB)
        let a = decode(&[0x45, 0x89, 0x6c, 0x24, 0x08], 64).unwrap();
        assert_eq!(
            a.kind,
            AccessKind::Write {
                src: WriteSource::Reg(r(13, 4))
            }
        );
        // movzx ecx, word [rax]
        let a = decode(&[0x0f, 0xb7, 0x08], 64).unwrap();
        assert_eq!(
            a,
            MmioAccess {
                width: 2,
                kind: AccessKind::Read {
                    dest: r(1, 4),
                    extend: Extend::Zero
                },
                len: 3
            }
        );
        // movzx eax, byte [rdx+1]
        let a = decode(&[0x0f, 0xb6, 0x42, 0x01], 64).unwrap();
        assert_eq!(a.width, 1);
        // movsx rax, byte [rbx]
        let a = decode(&[0x48, 0x0f, 0xbe, 0x03], 64).unwrap();
        assert_eq!(
            a.kind,
            AccessKind::Read {
                dest: r(0, 8),
                extend: Extend::Sign
            }
        );
        // mov rax, [rbx]   (readq)
        let a = decode(&[0x48, 0x8b, 0x03], 64).unwrap();
        assert_eq!((a.width, a.len), (8, 3));
        // mov [rbx], ah
        let a = decode(&[0x88, 0x23], 64).unwrap();
        assert_eq!(
            a.kind,
            AccessKind::Write {
                src: WriteSource::Reg(Gpr {
                    num: 0,
                    width: 1,
                    high_byte: true
                })
            }
        );
        // mov word [rax], 0x1234 (66 prefix)
        let a = decode(&[0x66, 0xc7, 0x00, 0x34, 0x12], 64).unwrap();
        assert_eq!(
            (a.width, a.kind),
            (
                2,
                AccessKind::Write {
                    src: WriteSource::Imm(0x1234)
                }
            )
        );
        // mov qword [rax], -1 (imm32 sign-extended)
        let a = decode(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], 64).unwrap();
        assert_eq!(
            a.kind,
            AccessKind::Write {
                src: WriteSource::Imm(u64::MAX)
            }
        );
        // 32-bit mode: mov eax, [0xfebc00c0] (moffs)
        let a = decode(&[0xa1, 0xc0, 0x00, 0xbc, 0xfe], 32).unwrap();
        assert_eq!((a.width, a.len), (4, 5));
        assert!(!a.is_write());
    }

    #[test]
    fn refusals() {
        assert_eq!(decode(&[], 64), Err(InsnError::Empty));
        assert_eq!(decode(&[0x8b], 64), Err(InsnError::Invalid));
        // add [rax], eax
        assert_eq!(decode(&[0x01, 0x00], 64), Err(InsnError::Unsupported));
        // mov eax, ebx (no memory operand)
        assert_eq!(decode(&[0x8b, 0xc3], 64), Err(InsnError::NoMemoryOperand));
        // lock mov [rax], eax → invalid/locked
        assert!(decode(&[0xf0, 0x89, 0x00], 64).is_err());
        // movs, stos
        assert_eq!(decode(&[0xa5], 64), Err(InsnError::Unsupported));
        assert_eq!(decode(&[0xab], 64), Err(InsnError::Unsupported));
        // movd xmm0, [rax]
        assert_eq!(
            decode(&[0x66, 0x0f, 0x6e, 0x00], 64),
            Err(InsnError::Unsupported)
        );
        assert_eq!(decode(&[0x8b, 0x00], 8), Err(InsnError::BadMode));
    }

    #[test]
    fn register_semantics() {
        let mut g = [0u64; 16];
        g[0] = 0xffff_ffff_ffff_ffff;
        let rd32 = decode(&[0x8b, 0x00], 64).unwrap();
        rd32.complete_read(&mut g, 0x1234_5678);
        assert_eq!(
            g[0], 0x1234_5678,
            "32-bit destination clears the upper half"
        );
        g[0] = 0xffff_ffff_ffff_ffff;
        let rd8h = decode(&[0x8a, 0x20], 64).unwrap(); // mov ah, [rax]
        rd8h.complete_read(&mut g, 0x12);
        assert_eq!(g[0], 0xffff_ffff_ffff_12ff);
        let sx = decode(&[0x48, 0x0f, 0xbf, 0x08], 64).unwrap(); // movsx rcx, word [rax]
        sx.complete_read(&mut g, 0x8000);
        assert_eq!(g[1], 0xffff_ffff_ffff_8000);
        let wr = decode(&[0x88, 0x23], 64).unwrap(); // mov [rbx], ah
        g[0] = 0xabcd;
        assert_eq!(wr.write_value(&g), Some(0xab));
        assert_eq!(rd32.write_value(&g), None);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20), mode in 0u32..4) {
            let bitness = [16, 32, 64, 7][mode as usize];
            if let Ok(a) = decode(&bytes, bitness) {
                prop_assert!(matches!(a.width, 1 | 2 | 4 | 8));
                prop_assert!(a.len as usize <= bytes.len());
                let mut g = [0u64; 16];
                a.complete_read(&mut g, u64::MAX);
                let _ = a.write_value(&g);
            }
        }
    }
}
