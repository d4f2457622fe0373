//! Hash sets keyed by message-id hashes. The keys are 128-bit xxh3 hashes already, so
//! hashing them again (std's SipHash) is wasted work on the writer's hot path: the set's
//! hasher just folds the key.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// A set of message-id hashes.
pub type HashSet128 = HashSet<u128, BuildHasherDefault<Fold128>>;

/// Folds a `u128` key into 64 bits; any other input falls back to FNV-1a.
#[derive(Default)]
pub struct Fold128(u64);

impl Hasher for Fold128 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}
