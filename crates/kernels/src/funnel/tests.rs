//! Funnel kernel tests: fixtures for the documented semantics, and property tests against
//! an exhaustive search on random small event streams (ties, repeated steps, events that
//! match several steps).

use super::*;

fn level(spec: &Spec, events: &[(Millis, u64)]) -> usize {
    let ts: Vec<Millis> = events.iter().map(|e| e.0).collect();
    let masks: Vec<u64> = events.iter().map(|e| e.1).collect();
    let mut out = Outcome::default();
    evaluate(spec, &ts, &masks, &mut out);
    out.level
}

const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 4;
const X: u64 = EXCLUSION_BIT;

#[test]
fn ordered_fixtures() {
    let s = Spec::new(3, 10, Order::Ordered);
    assert_eq!(level(&s, &[(0, A), (5, B), (10, C)]), 3);
    assert_eq!(
        level(&s, &[(0, A), (5, B), (11, C)]),
        2,
        "window is from the first step"
    );
    assert_eq!(level(&s, &[(0, A), (5, C), (6, B)]), 2, "order matters");
    assert_eq!(
        level(&s, &[(0, A), (8, A), (12, B), (15, C)]),
        3,
        "a later start restarts"
    );
    assert_eq!(level(&s, &[(5, B), (6, C)]), 0);
    // Ties: at equal timestamps lower steps come first, so they chain.
    assert_eq!(level(&s, &[(3, C), (3, B), (3, A)]), 3);
    // One event matching two steps can serve as both (ClickHouse's default mode).
    assert_eq!(level(&s, &[(0, A | B), (1, C)]), 3);
}

#[test]
fn strict_fixtures() {
    let s = Spec::new(3, 100, Order::Strict);
    assert_eq!(level(&s, &[(0, A), (1, B), (2, C)]), 3);
    assert_eq!(
        level(&s, &[(0, A), (1, 0), (2, B), (3, C)]),
        1,
        "an interruption ends it"
    );
    assert_eq!(
        level(&s, &[(0, 0), (1, A), (2, B)]),
        2,
        "interruptions before the start are fine"
    );
    assert_eq!(
        level(&s, &[(0, A), (1, C), (2, B)]),
        1,
        "a step out of order ends it"
    );
}

#[test]
fn exclusions_and_step_windows() {
    let s = Spec::new(3, 100, Order::Ordered);
    assert_eq!(level(&s, &[(0, A), (1, B), (2, X), (3, C)]), 2);
    assert_eq!(
        level(&s, &[(0, A), (1, B), (2, X), (3, A), (4, B), (5, C)]),
        3
    );
    let mut s = Spec::new(3, 100, Order::Ordered);
    s.step_windows[2] = Some(5);
    assert_eq!(level(&s, &[(0, A), (10, B), (16, C)]), 2);
    assert_eq!(level(&s, &[(0, A), (10, B), (15, C)]), 3);
}

#[test]
fn unordered_fixtures() {
    let s = Spec::new(3, 10, Order::Unordered);
    assert_eq!(level(&s, &[(0, C), (2, B), (4, A)]), 3);
    assert_eq!(level(&s, &[(0, C), (2, A), (40, B)]), 1);
    assert_eq!(level(&s, &[(0, B), (20, C)]), 0);
}

#[test]
fn fifty_steps_answer() {
    let s = Spec::new(50, 1000, Order::Ordered);
    let events: Vec<(Millis, u64)> = (0..50).map(|k| (k as Millis, 1u64 << k)).collect();
    assert_eq!(level(&s, &events), 50);
    let mut out = Outcome::default();
    let ts: Vec<Millis> = events.iter().map(|e| e.0).collect();
    let masks: Vec<u64> = events.iter().map(|e| e.1).collect();
    evaluate(&s, &ts, &masks, &mut out);
    assert_eq!(out.at[49], (0, 48, 49));
}

/// splitmix64, so every failure names a replayable seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The obvious definition, by exhaustive search: expand events into (time, step) pairs in
/// (time, step) order; level L is reachable when pairs p1 < p2 < ... < pL exist with pj at
/// step j and pL within the window of p1.
fn brute_ordered(steps: usize, window: Millis, events: &[(Millis, u64)]) -> usize {
    let mut pairs: Vec<(Millis, usize)> = Vec::new();
    for &(t, m) in events {
        for k in 0..steps {
            if m & (1 << k) != 0 {
                pairs.push((t, k));
            }
        }
    }
    pairs.sort();
    fn reach(
        pairs: &[(Millis, usize)],
        from: usize,
        step: usize,
        start: Millis,
        window: Millis,
        steps: usize,
    ) -> usize {
        let mut best = step;
        if step == steps {
            return best;
        }
        for i in from..pairs.len() {
            if pairs[i].1 == step && pairs[i].0 <= start + window {
                best = best.max(reach(pairs, i + 1, step + 1, start, window, steps));
            }
        }
        best
    }
    let mut best = 0;
    for i in 0..pairs.len() {
        if pairs[i].1 == 0 {
            best = best.max(reach(&pairs, i + 1, 1, pairs[i].0, window, steps));
        }
    }
    best
}

fn brute_unordered(steps: usize, window: Millis, events: &[(Millis, u64)]) -> usize {
    (1..=steps)
        .take_while(|&k| {
            events.iter().any(|&(t0, _)| {
                (0..k).all(|s| {
                    events
                        .iter()
                        .any(|&(t, m)| t >= t0 && t <= t0 + window && m & (1 << s) != 0)
                })
            })
        })
        .count()
}

fn random_events(rng: &mut Rng, steps: usize, exclusions: bool) -> Vec<(Millis, u64)> {
    let n = rng.below(9) as usize + 1;
    let mut t = 0;
    let mut events: Vec<(Millis, u64)> = (0..n)
        .map(|_| {
            // Frequent ties: a third of events share the previous timestamp.
            if rng.below(3) != 0 {
                t += rng.below(6) as Millis;
            }
            let mut m = 0;
            for k in 0..steps {
                if rng.below(3) == 0 {
                    m |= 1 << k;
                }
            }
            if exclusions && rng.below(6) == 0 {
                m = EXCLUSION_BIT;
            }
            (t, m)
        })
        .collect();
    events.sort_by_key(|e| e.0);
    events
}

#[test]
fn ordered_equals_exhaustive_search() {
    let mut rng = Rng(1);
    for case in 0..20_000 {
        let steps = rng.below(4) as usize + 2;
        let window = rng.below(12) as Millis;
        let events = random_events(&mut rng, steps, false);
        let spec = Spec::new(steps, window, Order::Ordered);
        assert_eq!(
            level(&spec, &events),
            brute_ordered(steps, window, &events),
            "case {case}: steps {steps} window {window} events {events:?}"
        );
    }
}

#[test]
fn exclusions_equal_search_between_them() {
    let mut rng = Rng(2);
    for case in 0..20_000 {
        let steps = rng.below(3) as usize + 2;
        let window = rng.below(12) as Millis;
        let events = random_events(&mut rng, steps, true);
        // Exclusions cut the stream; each piece is searched on its own.
        let mut best = 0;
        let mut piece = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let t = events[i].0;
            let group: Vec<_> = events[i..]
                .iter()
                .take_while(|e| e.0 == t)
                .copied()
                .collect();
            i += group.len();
            if group.iter().any(|e| e.1 & EXCLUSION_BIT != 0) {
                best = best.max(brute_ordered(steps, window, &piece));
                piece.clear();
            }
            piece.extend(group.into_iter().filter(|e| e.1 & EXCLUSION_BIT == 0));
        }
        best = best.max(brute_ordered(steps, window, &piece));
        let spec = Spec::new(steps, window, Order::Ordered);
        assert_eq!(
            level(&spec, &events),
            best,
            "case {case}: steps {steps} window {window} events {events:?}"
        );
    }
}

#[test]
fn unordered_equals_exhaustive_search() {
    let mut rng = Rng(3);
    for case in 0..20_000 {
        let steps = rng.below(4) as usize + 1;
        let window = rng.below(12) as Millis;
        let events = random_events(&mut rng, steps, false);
        let spec = Spec::new(steps, window, Order::Unordered);
        assert_eq!(
            level(&spec, &events),
            brute_unordered(steps, window, &events),
            "case {case}: events {events:?}"
        );
    }
}
