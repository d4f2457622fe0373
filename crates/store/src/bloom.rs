//! A Bloom filter over 128-bit message-id hashes: the in-memory half of deduplication.
//! A miss proves a message id is new without touching disk; a hit is confirmed against the
//! segment's sorted hash column.

const BITS_PER_KEY: usize = 10;
const PROBES: u64 = 7;

#[derive(Clone, Debug)]
pub struct Bloom {
    words: Vec<u64>,
}

impl Bloom {
    pub fn with_keys(keys: usize) -> Bloom {
        let bits = (keys * BITS_PER_KEY).max(64);
        Bloom {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    pub fn from_words(words: Vec<u64>) -> Bloom {
        Bloom { words }
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn probes(&self, hash: u128) -> impl Iterator<Item = usize> + '_ {
        let bits = (self.words.len() * 64) as u64;
        let h1 = hash as u64;
        let h2 = ((hash >> 64) as u64) | 1;
        (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize)
    }

    pub fn insert(&mut self, hash: u128) {
        let probes: Vec<usize> = self.probes(hash).collect();
        for b in probes {
            self.words[b / 64] |= 1 << (b % 64);
        }
    }

    pub fn may_contain(&self, hash: u128) -> bool {
        self.probes(hash)
            .all(|b| self.words[b / 64] & (1 << (b % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::with_keys(10_000);
        for i in 0..10_000u128 {
            b.insert(crate::message_hash(&format!("m{i}")));
        }
        assert!((0..10_000u128).all(|i| b.may_contain(crate::message_hash(&format!("m{i}")))));
        let fp = (0..10_000u128)
            .filter(|i| b.may_contain(crate::message_hash(&format!("other{i}"))))
            .count();
        assert!(fp < 300, "false positive rate too high: {fp}/10000");
    }
}
