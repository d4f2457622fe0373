//! A small mutation fuzzer that runs as an ordinary test on stable Rust: valid corpus
//! samples are mutated (bit flips, interesting bytes, truncations, splices, duplicated
//! ranges, deep nesting, huge numbers, invalid UTF-8) by a seeded generator, so a failure
//! replays from its seed and case number. Each case runs under `catch_unwind` and under a
//! per-thread allocation meter ([`CountingAlloc`], installed as the global allocator by the
//! test binary): a panic, or a parse whose peak of live bytes exceeds its bound, fails the
//! run with the input that caused it. Owns no product behaviour and does no IO.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Cases per target unless `THROUGHLINE_FUZZ_CASES` says otherwise.
pub const CASES_DEFAULT: u64 = 3000;
/// The generator's seed unless `THROUGHLINE_FUZZ_SEED` says otherwise (fixed, so CI
/// replays the same cases; set the variable to explore others).
pub const SEED_DEFAULT: u64 = 0x7468_726f_7567_686c;
/// Mutations applied to one sample, at most.
const MUTATIONS_MAX: u64 = 4;
/// Nesting inserted by the deep-nesting mutation, at most.
const NESTING_INSERT_MAX: usize = 5000;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
    /// Above zero while this thread runs the panic hook, whose allocations are not the
    /// parser's (see [`meter_parsers_only`]).
    static PAUSED: Cell<u32> = const { Cell::new(0) };
}

/// The system allocator, metering this thread's live bytes and their peak.
pub struct CountingAlloc;

fn note(delta: isize) {
    // `try_with`: the thread-locals may already be gone while a thread exits.
    if PAUSED.try_with(Cell::get).unwrap_or(0) > 0 {
        return;
    }
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// metering touches only const-initialized thread-locals, which never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Leaves the panic hook's allocations out of the meter, from now on, in every thread.
///
/// A parser may panic inside a dependency and catch it (the `parquet` crate, see
/// `throughline_formats`); the hook still runs first, and with `RUST_BACKTRACE=1` the
/// default hook symbolizes a backtrace, reading the test binary's debug info: tens of MB
/// that belong to the test run, not to the parse (it once showed as an 84 MB "parse" of
/// a 4.4 KB Parquet file). The previous hook still runs, so messages and backtraces stay.
pub fn meter_parsers_only() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PAUSED.try_with(|p| p.set(p.get() + 1));
            previous(info);
            let _ = PAUSED.try_with(|p| p.set(p.get() - 1));
        }));
    });
}

/// Runs `f` and returns its result and the peak of bytes this thread held live during
/// it, above what it held at the start.
pub fn metered<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|p| p.set(start));
    let out = f();
    let peak = PEAK_BYTES.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

/// splitmix64: small, fast and good enough to drive mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Bytes that tend to matter to the parsers under test.
const INTERESTING: &[u8] = b"{}[]\",:\\\n\r\t;>0-.eE \x00\x7f\xff\xc0\xed";

/// Fragments that tend to matter: huge and odd numbers, escapes, invalid UTF-8.
const FRAGMENTS: &[&[u8]] = &[
    b"1e999999999",
    b"-1e-999999999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"99999999999999999999999999999999999999999999999999999999999999999999999",
    b"0.00000000000000000000000000000000000000000000000000000000000000000001",
    b"NaN",
    b"-0",
    b"\"\\ud800\"",
    b"\"\\udfff\\ud800\"",
    b"\"\\u0000\"",
    b"\xff\xfe\xfd",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"null",
    b"true",
    b"\"\"",
    b"{}",
    b"[]",
    b"\xef\xbb\xbf",
    b"\"2024-02-30T25:61:61Z\"",
    b"\"+275760-09-13T00:00:00.000Z\"",
    b"\"9999999999d\"",
];

/// One mutated input derived from `corpus` (which must not be empty).
pub fn mutate(corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut out = corpus[rng.below(corpus.len())].clone();
    let count = 1 + rng.next_u64() % MUTATIONS_MAX;
    for _ in 0..count {
        let at = if out.is_empty() {
            0
        } else {
            rng.below(out.len() + 1)
        };
        match rng.below(10) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => out.truncate(at),
            3 => {
                // Splice: this prefix, another sample's suffix.
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            4 if !out.is_empty() => {
                let a = rng.below(out.len());
                let b = a + rng.below(out.len() - a + 1);
                let copy = out[a..b].to_vec();
                let times = 1 + rng.below(8);
                let tail = out.split_off(at);
                for _ in 0..times {
                    out.extend_from_slice(&copy);
                }
                out.extend_from_slice(&tail);
            }
            5 => {
                let depth = 1 + rng.below(NESTING_INSERT_MAX);
                let open: &[u8] = match rng.below(3) {
                    0 => b"[",
                    1 => b"{\"a\":",
                    _ => b"[{\"properties\":",
                };
                let tail = out.split_off(at);
                for _ in 0..depth {
                    out.extend_from_slice(open);
                }
                out.extend_from_slice(&tail);
            }
            6 | 7 => {
                let frag = FRAGMENTS[rng.below(FRAGMENTS.len())];
                let tail = out.split_off(at);
                out.extend_from_slice(frag);
                out.extend_from_slice(&tail);
            }
            8 if !out.is_empty() => {
                let a = rng.below(out.len());
                let b = a + rng.below((out.len() - a).min(64) + 1);
                out.drain(a..b);
            }
            _ => {
                let b = INTERESTING[rng.below(INTERESTING.len())];
                out.insert(at, b);
            }
        }
    }
    out
}

/// The number of cases and the seed, from the environment or the defaults.
pub fn settings() -> (u64, u64) {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        var("THROUGHLINE_FUZZ_CASES", CASES_DEFAULT),
        var("THROUGHLINE_FUZZ_SEED", SEED_DEFAULT),
    )
}

/// The peak of live bytes a parse of `input_bytes` may reach: proportional to the input,
/// plus room for fixed buffers (readers' buffers, tables, compiled templates).
pub fn bound_bytes(input_bytes: usize) -> usize {
    const PER_INPUT_BYTE: usize = 64;
    const FIXED_BYTES: usize = 8 << 20;
    input_bytes * PER_INPUT_BYTE + FIXED_BYTES
}

/// Fuzzes `check` with inputs mutated from `corpus` (the samples themselves run first).
/// `check` returns `Err(why)` when the parser broke a property; a panic or an allocation
/// over [`bound_bytes`] fails too. Panics at the end naming the first failing input.
pub fn fuzz(target: &str, corpus: &[Vec<u8>], mut check: impl FnMut(&[u8]) -> Result<(), String>) {
    assert!(!corpus.is_empty(), "{target}: an empty corpus");
    meter_parsers_only();
    let (cases, seed) = settings();
    let mut rng = Rng::new(seed ^ fnv(target.as_bytes()));
    let total = corpus.len() as u64 + cases;
    for case in 0..total {
        let input = match corpus.get(case as usize) {
            Some(sample) => sample.clone(),
            None => mutate(corpus, &mut rng),
        };
        let (outcome, peak) = metered(|| catch_unwind(AssertUnwindSafe(|| check(&input))));
        let failure = match outcome {
            Err(panic) => Some(format!("panicked: {}", panic_text(&panic))),
            Ok(Err(why)) => Some(why),
            Ok(Ok(())) if peak > bound_bytes(input.len()) => Some(format!(
                "allocated {peak} live bytes for {} input bytes (bound {})",
                input.len(),
                bound_bytes(input.len())
            )),
            Ok(Ok(())) => None,
        };
        if let Some(why) = failure {
            panic!(
                "fuzz target {target}, seed {seed}, case {case}: {why}\ninput ({} bytes): {:?}",
                input.len(),
                String::from_utf8_lossy(&input[..input.len().min(4096)])
            );
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic".into()
    }
}

/// FNV-1a, which gives each target its own stream of cases from one seed.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_replay_from_the_seed() {
        let corpus = vec![b"{\"a\":[1,2,3]}".to_vec(), b"x,y\n1,2\n".to_vec()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|_| mutate(&corpus, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
