//! A simulated 82540 for host tests: register file with the real semantics Shoji relies on,
//! a DMA engine that consumes Shoji's real TX ring and fills its real RX ring from an injected
//! queue, plus simulated guest RAM and DMA memory. Needs `std` (host only).

use crate::desc::{cmd, rx_sta, RxWriteBack, TX_STA_DD};
use crate::regs::{self, Ctrl, Int, Rctl, Tctl};
use crate::{DmaRegion, NicRegisters};
use shoji_shared::{GuestMemory, MemError};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::string::String;
use std::vec;
use std::vec::Vec;

/// Shoji's DMA memory, shared between the engine and the simulated NIC.
#[derive(Clone)]
pub struct SimDma {
    mem: Rc<RefCell<Vec<u8>>>,
    phys: u64,
}

impl SimDma {
    /// `len` zeroed bytes the NIC sees at bus address `phys`.
    pub fn new(len: usize, phys: u64) -> Self {
        SimDma {
            mem: Rc::new(RefCell::new(vec![0; len])),
            phys,
        }
    }

    /// Translate a bus address range to an offset, `None` when outside the region.
    pub fn offset_of(&self, phys: u64, len: usize) -> Option<usize> {
        let off = phys.checked_sub(self.phys)?;
        let end = off.checked_add(len as u64)?;
        if end > self.mem.borrow().len() as u64 {
            return None;
        }
        Some(off as usize)
    }
}

impl DmaRegion for SimDma {
    fn len(&self) -> usize {
        self.mem.borrow().len()
    }
    fn phys_base(&self) -> u64 {
        self.phys
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.mem.borrow()[offset..offset + buf.len()]);
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        self.mem.borrow_mut()[offset..offset + data.len()].copy_from_slice(data);
    }
}

/// Guest RAM from GPA 0, with a range owned by the hypervisor (refused) and nothing above.
pub struct GuestRam {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Hypervisor-owned range `[start, end)`, refused with `MemError::Hypervisor`.
    pub hv: (u64, u64),
    /// Writes refused so far (address, length): the tests assert which writes the engine
    /// attempted outside what the guest may address, since the refusal itself makes the bytes
    /// in `hv` stay as they were whatever the engine does.
    pub refused: Vec<(u64, usize)>,
}

impl GuestRam {
    /// `len` bytes of RAM, with `hv` reserved.
    pub fn new(len: usize, hv: (u64, u64)) -> Self {
        GuestRam {
            bytes: vec![0; len],
            hv,
            refused: Vec::new(),
        }
    }

    fn check(&self, gpa: u64, len: usize) -> Result<usize, MemError> {
        let end = gpa.checked_add(len as u64).ok_or(MemError::BadRange)?;
        if gpa < self.hv.1 && end > self.hv.0 {
            return Err(MemError::Hypervisor);
        }
        if end > self.bytes.len() as u64 {
            return Err(MemError::NotRam);
        }
        Ok(gpa as usize)
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let s = self.check(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes[s..s + buf.len()]);
        Ok(())
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        match self.check(gpa, buf.len()) {
            Ok(s) => {
                self.bytes[s..s + buf.len()].copy_from_slice(buf);
                Ok(())
            }
            Err(e) => {
                self.refused.push((gpa, buf.len()));
                Err(e)
            }
        }
    }
}

/// State of the simulated NIC.
pub struct SimState {
    regs: BTreeMap<u32, u32>,
    dma: SimDma,
    /// Frames the NIC put on the wire (without FCS).
    pub sent: Vec<Vec<u8>>,
    /// Frames waiting to be received.
    pub rx_queue: VecDeque<Vec<u8>>,
    /// Whether the NIC transmits as soon as TDT is written.
    pub auto_tx: bool,
    /// Protocol violations by the driver (DMA outside Shoji's region, extended descriptors...).
    pub violations: Vec<String>,
    /// Reads of CTRL for which RST stays set after a reset.
    pub reset_delay: u32,
    reset_left: u32,
    /// Resets performed.
    pub resets: u32,
    /// Frames dropped as too long (RCTL.LPE clear).
    pub rx_oversize: u32,
    /// Interrupts asserted (rising edges of ICR & IMS).
    pub irqs: u32,
    /// The clock the engine's interrupt throttling reads (ns); `None`: no clock.
    pub clock: Option<u64>,
    /// Error bits reported in the write-back of every frame received (0: none).
    pub rx_errors: u8,
}

/// The simulated NIC; clones share state, so a test keeps one while the engine owns another.
#[derive(Clone)]
pub struct SimNic(pub Rc<RefCell<SimState>>);

impl SimNic {
    /// A NIC doing DMA into `dma`, link up, MAC 52:54:00:12:34:56.
    pub fn new(dma: SimDma) -> Self {
        let mut s = SimState {
            regs: BTreeMap::new(),
            dma,
            sent: Vec::new(),
            rx_queue: VecDeque::new(),
            auto_tx: true,
            violations: Vec::new(),
            reset_delay: 0,
            reset_left: 0,
            resets: 0,
            rx_oversize: 0,
            irqs: 0,
            clock: None,
            rx_errors: 0,
        };
        s.power_on();
        SimNic(Rc::new(RefCell::new(s)))
    }

    /// Queue a frame arriving from the wire (without FCS) and receive what fits.
    pub fn inject(&self, frame: &[u8]) {
        let mut s = self.0.borrow_mut();
        s.rx_queue.push_back(frame.to_vec());
        s.receive();
    }

    /// Transmit whatever the ring holds (when `auto_tx` is off).
    pub fn run_tx(&self) {
        self.0.borrow_mut().transmit();
    }

    /// Take the frames sent so far.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.0.borrow_mut().sent)
    }

    /// Set a device register directly, as the hardware would (no side effects).
    pub fn set_reg(&self, off: u32, v: u32) {
        self.0.borrow_mut().w(off, v);
    }

    /// Current value of a register, without side effects.
    pub fn reg(&self, off: u32) -> u32 {
        self.0.borrow().r(off)
    }

    /// Whether the interrupt line is asserted.
    pub fn irq_asserted(&self) -> bool {
        let s = self.0.borrow();
        s.r(regs::ICR) & s.r(regs::IMS) != 0
    }
}

impl SimState {
    fn r(&self, off: u32) -> u32 {
        self.regs.get(&off).copied().unwrap_or(0)
    }
    fn w(&mut self, off: u32, v: u32) {
        self.regs.insert(off, v);
    }

    fn power_on(&mut self) {
        self.regs.clear();
        self.w(regs::CTRL, (Ctrl::FD | Ctrl::SLU).bits());
        self.w(regs::STATUS, 0x0000_0083);
        self.w(regs::VET, regs::VET_DEFAULT);
        self.w(regs::TCTL, 0x0000_0008 | (0x0f << 4) | (0x40 << 12));
        self.w(regs::RAL0, 0x1200_5452);
        self.w(regs::RAH0, 0x8000_5634);
    }

    fn raise(&mut self, causes: u32) {
        let before = self.r(regs::ICR) & self.r(regs::IMS);
        let icr = self.r(regs::ICR) | causes;
        self.w(regs::ICR, icr);
        if before == 0 && icr & self.r(regs::IMS) != 0 {
            self.irqs += 1;
        }
    }

    fn read_dma(&mut self, phys: u64, len: usize, what: &str) -> Option<Vec<u8>> {
        match self.dma.offset_of(phys, len) {
            Some(off) => {
                let mut b = vec![0; len];
                self.dma.read(off, &mut b);
                Some(b)
            }
            None => {
                self.violations.push(std::format!(
                    "{what}: DMA read outside Shoji's region at {phys:#x}+{len}"
                ));
                None
            }
        }
    }

    fn write_dma(&mut self, phys: u64, data: &[u8], what: &str) -> bool {
        match self.dma.offset_of(phys, data.len()) {
            Some(off) => {
                self.dma.write(off, data);
                true
            }
            None => {
                self.violations.push(std::format!(
                    "{what}: DMA write outside Shoji's region at {phys:#x}"
                ));
                false
            }
        }
    }

    fn transmit(&mut self) {
        if self.r(regs::TCTL) & Tctl::EN.bits() == 0 {
            return;
        }
        let base = (u64::from(self.r(regs::TDBAH)) << 32) | u64::from(self.r(regs::TDBAL));
        let n = self.r(regs::TDLEN) / 16;
        if n == 0 {
            return;
        }
        let mut frame = Vec::new();
        let mut any = false;
        let mut start = self.r(regs::TDH);
        let mut h = start;
        for _ in 0..n {
            if h == self.r(regs::TDT) {
                break;
            }
            let Some(d) = self.read_dma(base + u64::from(h) * 16, 16, "tx desc") else {
                return;
            };
            let c = d[11];
            if c & cmd::DEXT != 0 {
                self.violations
                    .push("extended TX descriptor on the real ring".into());
            }
            let addr = u64::from_le_bytes(d[..8].try_into().unwrap());
            let len = usize::from(u16::from_le_bytes([d[8], d[9]]));
            if let Some(b) = self.read_dma(addr, len, "tx buffer") {
                frame.extend_from_slice(&b);
            }
            if c & cmd::RS != 0 {
                let st = [d[12] | TX_STA_DD];
                let _ = self.write_dma(base + u64::from(h) * 16 + 12, &st, "tx status");
            }
            h = (h + 1) % n;
            if c & cmd::EOP != 0 {
                if c & cmd::IFCS == 0 {
                    self.violations.push("frame sent without IFCS".into());
                }
                self.sent.push(std::mem::take(&mut frame));
                start = h;
                any = true;
            }
        }
        // A partial packet stays in the ring until its EOP arrives.
        self.w(regs::TDH, start);
        if any {
            let mut c = Int::TXDW.bits();
            if start == self.r(regs::TDT) {
                c |= Int::TXQE.bits();
            }
            self.raise(c);
        }
    }

    fn receive(&mut self) {
        let rctl = Rctl::from_bits_retain(self.r(regs::RCTL));
        if !rctl.contains(Rctl::EN) {
            return;
        }
        let base = (u64::from(self.r(regs::RDBAH)) << 32) | u64::from(self.r(regs::RDBAL));
        let n = self.r(regs::RDLEN) / 16;
        let Some(bsize) = rctl.buffer_size() else {
            self.violations.push("reserved RCTL buffer size".into());
            return;
        };
        if n == 0 {
            return;
        }
        let bsize = bsize as usize;
        let mut any = false;
        while let Some(f) = self.rx_queue.front().cloned() {
            let mut f = f;
            let mut special = 0u16;
            let mut vp = false;
            if self.r(regs::CTRL) & Ctrl::VME.bits() != 0
                && f.len() >= 18
                && u32::from(u16::from_be_bytes([f[12], f[13]])) == self.r(regs::VET)
            {
                special = u16::from_be_bytes([f[14], f[15]]);
                f.drain(12..16);
                vp = true;
            }
            if !rctl.contains(Rctl::SECRC) {
                f.extend_from_slice(&crate::offload::crc32(&[&f]).to_le_bytes());
            }
            let wire_len = if rctl.contains(Rctl::SECRC) {
                f.len() + 4
            } else {
                f.len()
            };
            if !rctl.contains(Rctl::LPE) && wire_len > 1522 {
                self.rx_oversize += 1;
                self.rx_queue.pop_front();
                continue;
            }
            let need = f.len().div_ceil(bsize) as u32;
            let free = (self.r(regs::RDT) + n - self.r(regs::RDH)) % n;
            if need > free {
                break;
            }
            self.rx_queue.pop_front();
            let chunks: Vec<&[u8]> = f.chunks(bsize).collect();
            for (k, c) in chunks.iter().enumerate() {
                let h = self.r(regs::RDH);
                let da = base + u64::from(h) * 16;
                let Some(d) = self.read_dma(da, 8, "rx desc") else {
                    return;
                };
                let addr = u64::from_le_bytes(d[..8].try_into().unwrap());
                if !self.write_dma(addr, c, "rx buffer") {
                    return;
                }
                let mut status = rx_sta::DD;
                if k + 1 == chunks.len() {
                    status |= rx_sta::EOP;
                }
                if vp {
                    status |= rx_sta::VP;
                }
                let wb = RxWriteBack {
                    len: c.len() as u16,
                    csum: 0,
                    status,
                    errors: self.rx_errors,
                    special,
                };
                self.write_dma(da + 8, &wb.to_u64().to_le_bytes(), "rx writeback");
                self.w(regs::RDH, (h + 1) % n);
            }
            any = true;
        }
        if any {
            self.raise(Int::RXT0.bits());
        }
    }
}

impl NicRegisters for SimNic {
    fn read32(&mut self, offset: u32) -> u32 {
        let mut s = self.0.borrow_mut();
        match offset {
            regs::ICR => {
                let v = s.r(regs::ICR);
                s.w(regs::ICR, 0);
                v
            }
            regs::CTRL => {
                if s.reset_left > 0 {
                    s.reset_left -= 1;
                    s.r(regs::CTRL) | Ctrl::RST.bits()
                } else {
                    s.r(regs::CTRL)
                }
            }
            regs::ICS | regs::IMC => 0,
            o => s.r(o),
        }
    }

    fn write32(&mut self, offset: u32, value: u32) {
        let mut s = self.0.borrow_mut();
        match offset {
            regs::CTRL => {
                if value & Ctrl::RST.bits() != 0 {
                    s.power_on();
                    s.resets += 1;
                    s.reset_left = s.reset_delay;
                } else {
                    s.w(regs::CTRL, value);
                }
            }
            regs::ICS => s.raise(value),
            regs::ICR => {
                let v = s.r(regs::ICR) & !value;
                s.w(regs::ICR, v);
            }
            regs::IMS => {
                let v = s.r(regs::IMS) | value;
                let before = s.r(regs::ICR) & s.r(regs::IMS);
                s.w(regs::IMS, v);
                if before == 0 && s.r(regs::ICR) & v != 0 {
                    s.irqs += 1;
                }
            }
            regs::IMC => {
                let v = s.r(regs::IMS) & !value;
                s.w(regs::IMS, v);
            }
            regs::TDT | regs::TCTL => {
                s.w(offset, value);
                if s.auto_tx {
                    s.transmit();
                }
            }
            regs::RDT | regs::RCTL => {
                s.w(offset, value);
                s.receive();
            }
            regs::STATUS => {}
            o => s.w(o, value),
        }
    }

    fn now_ns(&mut self) -> Option<u64> {
        self.0.borrow().clock
    }
}
