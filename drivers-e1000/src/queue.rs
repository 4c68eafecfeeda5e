//! A small fixed queue of frames (no heap): holds frames the destination ring cannot take yet.

use crate::engine::MAX_WIRE_FRAME;

/// Slots per queue.
pub const QUEUE_SLOTS: usize = 4;

/// A FIFO of up to [`QUEUE_SLOTS`] frames of at most [`MAX_WIRE_FRAME`] bytes.
pub struct FrameQueue {
    buf: [[u8; MAX_WIRE_FRAME]; QUEUE_SLOTS],
    len: [usize; QUEUE_SLOTS],
    head: usize,
    count: usize,
}

impl FrameQueue {
    /// An empty queue.
    pub const fn new() -> Self {
        FrameQueue {
            buf: [[0; MAX_WIRE_FRAME]; QUEUE_SLOTS],
            len: [0; QUEUE_SLOTS],
            head: 0,
            count: 0,
        }
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Append `parts` laid end to end as one frame; false when full or the frame is too large.
    pub fn push_joined(&mut self, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.count == QUEUE_SLOTS || len > MAX_WIRE_FRAME {
            return false;
        }
        let i = (self.head + self.count) % QUEUE_SLOTS;
        let mut at = 0;
        for p in parts {
            self.buf[i][at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.len[i] = len;
        self.count += 1;
        true
    }

    /// The oldest frame.
    pub fn front(&self) -> Option<&[u8]> {
        if self.count == 0 {
            return None;
        }
        Some(&self.buf[self.head][..self.len[self.head]])
    }

    /// Remove the oldest frame.
    pub fn pop(&mut self) {
        if self.count > 0 {
            self.head = (self.head + 1) % QUEUE_SLOTS;
            self.count -= 1;
        }
    }

    /// Drop everything; returns how many frames were discarded.
    pub fn clear(&mut self) -> usize {
        let n = self.count;
        self.count = 0;
        self.head = 0;
        n
    }
}
