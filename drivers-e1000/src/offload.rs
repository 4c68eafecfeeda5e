//! Software transmit offloads: checksum insertion, TCP segmentation (TSO), VLAN tag insertion,
//! and the Ethernet FCS for guests that keep the CRC on receive.

use crate::desc::{tucmd, TxContext};

/// Why an offload request cannot be honoured (the frame is dropped as a hostile descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// An offset or range in the descriptor lies outside the frame.
    BadOffset,
    /// TSO parameters are unusable (MSS 0, header longer than the packet, too many segments).
    BadTso,
    /// A segment would exceed the largest frame Shoji sends.
    SegmentTooLarge,
}

/// Add `data`, taken as big-endian 16-bit words, to a one's-complement accumulator (RFC 1071).
pub fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Fold a one's-complement accumulator to 16 bits.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Insert a checksum the way the 8254x does: sum `frame[start..=end]` (to the end of the frame
/// when `end` is `None`) as found — the field at `at` holds the driver's seed — plus `extra`, and
/// store the complement big-endian at `at`.
pub fn insert_checksum(
    frame: &mut [u8],
    start: usize,
    end: Option<usize>,
    at: usize,
    extra: u64,
) -> Result<(), OffloadError> {
    let last = match end {
        Some(e) => e,
        None => frame.len().checked_sub(1).ok_or(OffloadError::BadOffset)?,
    };
    if start > last || last >= frame.len() || at.checked_add(2).is_none_or(|e| e > frame.len()) {
        return Err(OffloadError::BadOffset);
    }
    let sum = !fold(sum16(&frame[start..=last], extra));
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Apply the non-TSO offloads of a data descriptor (`IXSM`/`TXSM` with the context offsets).
pub fn checksum_with_context(
    frame: &mut [u8],
    ctx: &TxContext,
    ixsm: bool,
    txsm: bool,
) -> Result<(), OffloadError> {
    let end = |e: u16| if e == 0 { None } else { Some(usize::from(e)) };
    if ixsm {
        insert_checksum(
            frame,
            usize::from(ctx.ipcss),
            end(ctx.ipcse),
            usize::from(ctx.ipcso),
            0,
        )?;
    }
    if txsm {
        insert_checksum(
            frame,
            usize::from(ctx.tucss),
            end(ctx.tucse),
            usize::from(ctx.tucso),
            0,
        )?;
    }
    Ok(())
}

/// A validated TSO job over a gathered packet (header followed by payload).
#[derive(Debug, Clone, Copy)]
pub struct TsoPlan {
    hdrlen: usize,
    mss: usize,
    payload: usize,
    /// Number of wire frames the packet becomes.
    pub segments: usize,
}

impl TsoPlan {
    /// Validate the context against a packet of `pkt_len` bytes; `max_frame` bounds a segment.
    pub fn new(
        ctx: &TxContext,
        pkt_len: usize,
        max_frame: usize,
        max_segments: usize,
    ) -> Result<TsoPlan, OffloadError> {
        let hdrlen = usize::from(ctx.hdrlen);
        let mss = usize::from(ctx.mss);
        let ipcss = usize::from(ctx.ipcss);
        let tucss = usize::from(ctx.tucss);
        let ip_min = if ctx.tucmd & tucmd::IP != 0 { 20 } else { 40 };
        let l4_min = if ctx.tucmd & tucmd::TCP != 0 { 20 } else { 8 };
        if mss == 0
            || hdrlen >= pkt_len
            || ipcss + ip_min > hdrlen
            || tucss < ipcss + ip_min
            || tucss + l4_min > hdrlen
            || usize::from(ctx.ipcso) + 2 > hdrlen
            || usize::from(ctx.tucso) + 2 > hdrlen
        {
            return Err(OffloadError::BadTso);
        }
        if hdrlen + mss > max_frame {
            return Err(OffloadError::SegmentTooLarge);
        }
        let payload = pkt_len - hdrlen;
        let segments = payload.div_ceil(mss);
        if segments > max_segments {
            return Err(OffloadError::BadTso);
        }
        Ok(TsoPlan {
            hdrlen,
            mss,
            payload,
            segments,
        })
    }

    /// Build segment `k` of `pkt` into `out`; returns its length.
    pub fn segment(
        &self,
        ctx: &TxContext,
        ixsm: bool,
        txsm: bool,
        pkt: &[u8],
        k: usize,
        out: &mut [u8],
    ) -> Result<usize, OffloadError> {
        let start = k.checked_mul(self.mss).ok_or(OffloadError::BadTso)?;
        if start >= self.payload {
            return Err(OffloadError::BadTso);
        }
        let seglen = self.mss.min(self.payload - start);
        let total = self.hdrlen + seglen;
        let src = pkt
            .get(..self.hdrlen + self.payload)
            .ok_or(OffloadError::BadTso)?;
        let out = out.get_mut(..total).ok_or(OffloadError::SegmentTooLarge)?;
        out[..self.hdrlen].copy_from_slice(&src[..self.hdrlen]);
        out[self.hdrlen..].copy_from_slice(&src[self.hdrlen + start..self.hdrlen + start + seglen]);
        let last = k + 1 == self.segments;

        let ipcss = usize::from(ctx.ipcss);
        if ctx.tucmd & tucmd::IP != 0 {
            // IPv4: total length and identification change per segment.
            let tot = (total - ipcss) as u16;
            out[ipcss + 2..ipcss + 4].copy_from_slice(&tot.to_be_bytes());
            let id = u16::from_be_bytes([out[ipcss + 4], out[ipcss + 5]]).wrapping_add(k as u16);
            out[ipcss + 4..ipcss + 6].copy_from_slice(&id.to_be_bytes());
        } else {
            // IPv6: payload length.
            let pl = (total - ipcss - 40) as u16;
            out[ipcss + 4..ipcss + 6].copy_from_slice(&pl.to_be_bytes());
        }
        let tucss = usize::from(ctx.tucss);
        if ctx.tucmd & tucmd::TCP != 0 {
            let seq = u32::from_be_bytes([
                out[tucss + 4],
                out[tucss + 5],
                out[tucss + 6],
                out[tucss + 7],
            ])
            .wrapping_add(start as u32);
            out[tucss + 4..tucss + 8].copy_from_slice(&seq.to_be_bytes());
            if !last {
                // FIN and PSH only on the last segment.
                out[tucss + 13] &= !(0x01 | 0x08);
            }
        } else {
            let ul = (total - tucss) as u16;
            out[tucss + 4..tucss + 6].copy_from_slice(&ul.to_be_bytes());
        }
        if ixsm {
            let end = if ctx.ipcse == 0 {
                None
            } else {
                Some(usize::from(ctx.ipcse))
            };
            insert_checksum(out, ipcss, end, usize::from(ctx.ipcso), 0)?;
        }
        if txsm {
            // The driver seeded the pseudo-header without the length; add this segment's.
            let l4len = (total - tucss) as u64;
            insert_checksum(out, tucss, None, usize::from(ctx.tucso), l4len)?;
        }
        Ok(total)
    }
}

/// Insert an 802.1Q tag after the MAC addresses of the frame at `buf[start..start+len]`, using
/// the 4 bytes of headroom before `start`. Returns the new start, `None` when the frame is too
/// short to carry addresses or there is no headroom.
pub fn insert_vlan(buf: &mut [u8], start: usize, len: usize, tpid: u16, tci: u16) -> Option<usize> {
    if len < 12 || start < 4 || start.checked_add(len)? > buf.len() {
        return None;
    }
    let ns = start - 4;
    buf.copy_within(start..start + 12, ns);
    buf[ns + 12..ns + 14].copy_from_slice(&tpid.to_be_bytes());
    buf[ns + 14..ns + 16].copy_from_slice(&tci.to_be_bytes());
    Some(ns)
}

/// Update an IEEE 802.3 CRC-32 (reflected, polynomial 0xEDB88320) with `data`.
/// Start with `0xffff_ffff` and complement at the end (see [`crc32`]).
pub fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    crc
}

/// The Ethernet FCS of a frame given as consecutive parts.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    !parts.iter().fold(0xffff_ffff, |c, p| crc32_update(c, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of 0001 f203 f4f5 f6f7 = 0xddf2 (folded).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum16(&d, 0)), 0xddf2);
        assert_eq!(fold(sum16(&[0xab], 0)), 0xab00);
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn checksum_bounds_are_checked() {
        let mut f = [0u8; 20];
        assert!(insert_checksum(&mut f, 0, None, 19, 0).is_err());
        assert!(insert_checksum(&mut f, 10, Some(5), 0, 0).is_err());
        assert!(insert_checksum(&mut f, 0, Some(20), 0, 0).is_err());
        assert!(insert_checksum(&mut f, 0, None, usize::MAX, 0).is_err());
        assert!(insert_checksum(&mut [], 0, None, 0, 0).is_err());
        assert!(insert_checksum(&mut f, 0, None, 18, 0).is_ok());
    }

    #[test]
    fn vlan_insertion_uses_headroom() {
        let mut b = [0u8; 40];
        for (i, x) in b[4..24].iter_mut().enumerate() {
            *x = i as u8;
        }
        let s = insert_vlan(&mut b, 4, 20, 0x8100, 0x0123).unwrap();
        assert_eq!(s, 0);
        assert_eq!(&b[..12], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(&b[12..18], &[0x81, 0, 0x01, 0x23, 12, 13]);
        assert!(insert_vlan(&mut b, 0, 20, 0x8100, 1).is_none());
        assert!(insert_vlan(&mut b, 4, 11, 0x8100, 1).is_none());
    }
}
