//! A [`GuestMemory`] wrapper that counts accesses (the cost measure of an attribution).

use core::cell::Cell;

use shoji_shared::{GuestMemory, MemError};

/// Counts every `read` and `write` that reaches the inner memory.
#[derive(Debug)]
pub struct CountingMemory<M> {
    inner: M,
    reads: Cell<u64>,
    bytes: Cell<u64>,
    writes: Cell<u64>,
}

impl<M> CountingMemory<M> {
    /// Wrap `inner`.
    pub fn new(inner: M) -> Self {
        CountingMemory {
            inner,
            reads: Cell::new(0),
            bytes: Cell::new(0),
            writes: Cell::new(0),
        }
    }
    /// Reads so far.
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }
    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.get()
    }
    /// Writes so far.
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }
    /// Reset the counters.
    pub fn reset(&self) {
        self.reads.set(0);
        self.bytes.set(0);
        self.writes.set(0);
    }
    /// The wrapped memory.
    pub fn inner(&self) -> &M {
        &self.inner
    }
    /// The wrapped memory, mutably.
    pub fn inner_mut(&mut self) -> &mut M {
        &mut self.inner
    }
}

impl<M: GuestMemory> GuestMemory for CountingMemory<M> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.set(self.reads.get().wrapping_add(1));
        self.bytes
            .set(self.bytes.get().wrapping_add(buf.len() as u64));
        self.inner.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        self.writes.set(self.writes.get().wrapping_add(1));
        self.inner.write(gpa, buf)
    }
}
