//! Fixed-capacity open-addressing hash index from a key to a registry slot number.
//!
//! Linear probing with backward-shift deletion (no tombstones), so lookups stay short after any
//! sequence of inserts and removals. The capacity is a power of two and at least twice the
//! number of keys the registry allows, so probe sequences are short and always terminate. Each
//! entry holds its key next to its slot, so a lookup reads one cache line per probe (8 bytes
//! per entry for MAC and IPv4 keys).

/// A key the index can hash.
pub trait IndexKey: Copy + Eq {
    /// A well-mixed 32-bit hash.
    fn hash32(&self) -> u32;
}

fn mix64(mut x: u64) -> u32 {
    // A 64-bit finaliser (xor-shift-multiply): cheap and well distributed.
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x as u32
}

impl IndexKey for u32 {
    fn hash32(&self) -> u32 {
        mix64(u64::from(*self))
    }
}

impl IndexKey for u64 {
    fn hash32(&self) -> u32 {
        mix64(*self)
    }
}

impl IndexKey for [u8; 6] {
    fn hash32(&self) -> u32 {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(self);
        mix64(u64::from_le_bytes(b))
    }
}

const EMPTY: u16 = u16::MAX;

/// Why an insertion failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexError {
    /// The key is already present (with this slot).
    Exists(u16),
    /// No room left.
    Full,
}

/// One entry: a key and its slot (`EMPTY` when unused).
#[derive(Debug, Clone, Copy)]
struct Entry<K> {
    key: K,
    slot: u16,
}

/// A map from `K` to a slot number (`u16`), with `N` entries (a power of two).
#[derive(Debug, Clone)]
pub struct FixedIndex<K: IndexKey, const N: usize> {
    entries: [Entry<K>; N],
    len: usize,
}

impl<K: IndexKey, const N: usize> FixedIndex<K, N> {
    const MASK: usize = {
        assert!(N.is_power_of_two() && N >= 2);
        N - 1
    };

    /// An empty index; `filler` is any key value (it is never compared while its slot is empty).
    pub const fn new(filler: K) -> Self {
        FixedIndex {
            entries: [Entry {
                key: filler,
                slot: EMPTY,
            }; N],
            len: 0,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot stored for `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<u16> {
        let mut i = key.hash32() as usize & Self::MASK;
        for _ in 0..N {
            let entry = &self.entries[i];
            if entry.slot == EMPTY {
                return None;
            }
            if entry.key == *key {
                return Some(entry.slot);
            }
            i = (i + 1) & Self::MASK;
        }
        None
    }

    /// Insert `key -> slot`; refuses duplicates and keeps one entry free.
    pub fn insert(&mut self, key: K, slot: u16) -> Result<(), IndexError> {
        if let Some(existing) = self.get(&key) {
            return Err(IndexError::Exists(existing));
        }
        if self.len + 1 >= N {
            return Err(IndexError::Full);
        }
        let mut i = key.hash32() as usize & Self::MASK;
        while self.entries[i].slot != EMPTY {
            i = (i + 1) & Self::MASK;
        }
        self.entries[i] = Entry { key, slot };
        self.len += 1;
        Ok(())
    }

    /// Remove `key`; returns the slot it mapped to.
    pub fn remove(&mut self, key: &K) -> Option<u16> {
        let mut i = key.hash32() as usize & Self::MASK;
        let mut found = None;
        for _ in 0..N {
            if self.entries[i].slot == EMPTY {
                break;
            }
            if self.entries[i].key == *key {
                found = Some(i);
                break;
            }
            i = (i + 1) & Self::MASK;
        }
        let mut hole = found?;
        let removed = self.entries[hole].slot;
        self.entries[hole].slot = EMPTY;
        self.len -= 1;
        // Backward-shift: move later members of the probe run into the hole when their home
        // position does not lie cyclically between the hole and their current position.
        let mut j = (hole + 1) & Self::MASK;
        while self.entries[j].slot != EMPTY {
            let home = self.entries[j].key.hash32() as usize & Self::MASK;
            let dist_home_to_j = j.wrapping_sub(home) & Self::MASK;
            let dist_hole_to_j = j.wrapping_sub(hole) & Self::MASK;
            if dist_home_to_j >= dist_hole_to_j {
                self.entries[hole] = self.entries[j];
                self.entries[j].slot = EMPTY;
                hole = j;
            }
            j = (j + 1) & Self::MASK;
        }
        Some(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u32..40, any::<bool>()), 0..300)) {
            let mut idx: FixedIndex<u32, 64> = FixedIndex::new(0);
            let mut model = [None::<u16>; 40];
            for (n, (key, insert)) in ops.into_iter().enumerate() {
                if insert {
                    let r = idx.insert(key, n as u16);
                    match model[key as usize] {
                        Some(s) => prop_assert_eq!(r, Err(IndexError::Exists(s))),
                        None => { prop_assert_eq!(r, Ok(())); model[key as usize] = Some(n as u16); }
                    }
                } else {
                    prop_assert_eq!(idx.remove(&key), model[key as usize].take());
                }
                for k in 0..40u32 {
                    prop_assert_eq!(idx.get(&k), model[k as usize]);
                }
            }
        }
    }

    #[test]
    fn full_index_refuses() {
        let mut idx: FixedIndex<u64, 4> = FixedIndex::new(0);
        for k in 0..3u64 {
            idx.insert(k, k as u16).unwrap();
        }
        assert_eq!(idx.insert(9, 9), Err(IndexError::Full));
        assert_eq!(idx.len(), 3);
    }
}
