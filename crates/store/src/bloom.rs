//! Bloom filters over 128-bit message-id hashes: the in-memory half of deduplication.
//! A miss proves a message id is new without touching disk; a hit is confirmed against the
//! segment's sorted hash column.
//!
//! Segments written now carry a [`BlockedBloom`]: every key lives in one 64-byte block, so
//! a lookup costs one cache miss per segment instead of one per probe. Older segments
//! carry the classic [`Bloom`], still read.

#[cfg(test)]
const BITS_PER_KEY: usize = 10;
const PROBES: u64 = 7;

/// The classic filter of older segments: `PROBES` bits anywhere in the array.
#[derive(Clone, Debug)]
pub struct Bloom {
    words: Vec<u64>,
}

impl Bloom {
    #[cfg(test)]
    pub fn with_keys(keys: usize) -> Bloom {
        let bits = (keys * BITS_PER_KEY).max(64);
        Bloom {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    pub fn from_words(words: Vec<u64>) -> Bloom {
        Bloom { words }
    }

    fn probes(&self, hash: u128) -> impl Iterator<Item = usize> + '_ {
        let bits = (self.words.len().max(1) * 64) as u64;
        let h1 = hash as u64;
        let h2 = ((hash >> 64) as u64) | 1;
        (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize)
    }

    #[cfg(test)]
    pub fn insert(&mut self, hash: u128) {
        let probes: Vec<usize> = self.probes(hash).collect();
        for b in probes {
            self.words[b / 64] |= 1 << (b % 64);
        }
    }

    pub fn may_contain(&self, hash: u128) -> bool {
        !self.words.is_empty()
            && self
                .probes(hash)
                .all(|b| self.words[b / 64] & (1 << (b % 64)) != 0)
    }
}

/// Bits per key of the blocked filter: about 0.3% false positives (each one costs a read
/// of the segment's hash column), at 1.75 bytes of memory per stored event.
const BLOCKED_BITS_PER_KEY: usize = 14;
/// Words per block: 8 x 64 bits, one cache line.
const BLOCK_WORDS: usize = 8;
/// Odd multipliers that spread one 64-bit hash over the 8 words of a block (as in
/// Parquet's split-block filter).
const SALT: [u64; BLOCK_WORDS] = [
    0x47b6_137b_4497_4d91,
    0x8824_ad5b_a2b7_289d,
    0x7054_95c7_2df1_424b,
    0x9efc_4947_5c6b_fb31,
    0x9e37_79b9_7f4a_7c15,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
    0xd6e8_feb8_6659_fd93,
];

/// A split-block Bloom filter: a key sets one bit in each word of one block.
#[derive(Clone, Debug)]
pub struct BlockedBloom {
    words: Vec<u64>,
}

impl BlockedBloom {
    pub fn with_keys(keys: usize) -> BlockedBloom {
        let blocks = (keys * BLOCKED_BITS_PER_KEY)
            .div_ceil(64 * BLOCK_WORDS)
            .max(1);
        BlockedBloom {
            words: vec![0; blocks * BLOCK_WORDS],
        }
    }

    /// Restores a filter from [`BlockedBloom::words`]; `None` if the length is not whole
    /// blocks.
    pub fn from_words(words: Vec<u64>) -> Option<BlockedBloom> {
        (!words.is_empty() && words.len().is_multiple_of(BLOCK_WORDS))
            .then_some(BlockedBloom { words })
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn locate(&self, hash: u128) -> (usize, [u64; BLOCK_WORDS]) {
        let blocks = (self.words.len() / BLOCK_WORDS) as u128;
        let block = ((((hash >> 64) as u64) as u128 * blocks) >> 64) as usize;
        let low = hash as u64;
        let masks = SALT.map(|s| 1u64 << (low.wrapping_mul(s) >> 58));
        (block * BLOCK_WORDS, masks)
    }

    pub fn insert(&mut self, hash: u128) {
        let (at, masks) = self.locate(hash);
        for (w, m) in self.words[at..at + BLOCK_WORDS].iter_mut().zip(masks) {
            *w |= m;
        }
    }

    pub fn may_contain(&self, hash: u128) -> bool {
        let (at, masks) = self.locate(hash);
        let block = &self.words[at..at + BLOCK_WORDS];
        // No early exit: the eight tests hit one cache line anyway.
        block
            .iter()
            .zip(masks)
            .fold(true, |ok, (w, m)| ok & (w & m != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut classic = Bloom::with_keys(10_000);
        let mut blocked = BlockedBloom::with_keys(10_000);
        for i in 0..10_000u128 {
            let h = crate::message_hash(&format!("m{i}"));
            classic.insert(h);
            blocked.insert(h);
        }
        let inserted = |i: u128| crate::message_hash(&format!("m{i}"));
        assert!((0..10_000u128).all(|i| classic.may_contain(inserted(i))));
        assert!((0..10_000u128).all(|i| blocked.may_contain(inserted(i))));
        let other = |i: u128| crate::message_hash(&format!("other{i}"));
        let fp = (0..10_000u128)
            .filter(|&i| classic.may_contain(other(i)))
            .count();
        assert!(fp < 300, "classic false positive rate too high: {fp}/10000");
        let fp = (0..100_000u128)
            .filter(|&i| blocked.may_contain(other(i)))
            .count();
        assert!(
            fp < 500,
            "blocked false positive rate too high: {fp}/100000"
        );
        let words = blocked.words().to_vec();
        let back = BlockedBloom::from_words(words).unwrap();
        assert!((0..10_000u128).all(|i| back.may_contain(inserted(i))));
        assert!(BlockedBloom::from_words(vec![0; 7]).is_none());
    }
}
