//! Funnels: how far each person gets through an ordered list of steps within a window.
//!
//! `Order::Ordered` is ClickHouse's `windowFunnel(window)` exactly: events are taken in
//! (timestamp, step) order, a step-1 event (re)starts the chain, a step-k event extends the
//! latest chain at step k-1 if it lies within `window` of that chain's first event
//! (inclusive), and the answer is the deepest step reached. `Order::Strict` is
//! `windowFunnel(window, 'strict_order')`: once a chain started, an event matching no
//! step, or a step whose predecessor was never reached, ends the search. `Order::Unordered`
//! counts the largest k such that steps 1..k all occur, in any order, within one window.
//!
//! Extensions over ClickHouse: exclusion events abandon every chain in progress (the
//! person keeps the depth reached before), and a step may carry its own window from the
//! previous step.

use crate::Millis;

/// Steps are bits 0..STEPS_MAX of an event's mask; bit 63 marks an exclusion event.
pub const STEPS_MAX: usize = 62;
pub const EXCLUSION_BIT: u64 = 1 << 63;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    Ordered,
    Strict,
    Unordered,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub steps: usize,
    pub window: Millis,
    pub order: Order,
    /// Per step, a bound on the time since the previous step (index 0 is unused).
    pub step_windows: Vec<Option<Millis>>,
}

impl Spec {
    pub fn new(steps: usize, window: Millis, order: Order) -> Spec {
        Spec {
            steps,
            window,
            order,
            step_windows: vec![None; steps],
        }
    }
}

/// (chain start, time of step k-1, time of step k).
pub type ChainTimes = (Millis, Millis, Millis);

/// What one person achieved: the deepest step, and for each reached step k the timestamps
/// of the chain that reached it: its first event and the events at k-1 and k.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub level: usize,
    /// `at[k]` = (chain start, time of step k-1, time of step k) for k < level.
    pub at: Vec<ChainTimes>,
}

/// Evaluates one person. `ts` is sorted ascending; `masks[i]` has bit k set when event i
/// matches step k, and `EXCLUSION_BIT` when it is an exclusion. In strict mode the slices
/// must hold all of the person's events (a mask of 0 is an interruption); otherwise only
/// matching events are needed.
pub fn evaluate(spec: &Spec, ts: &[Millis], masks: &[u64], out: &mut Outcome) {
    out.level = 0;
    out.at.clear();
    if spec.steps == 0 || ts.is_empty() {
        return;
    }
    match spec.order {
        Order::Unordered => unordered(spec, ts, masks, out),
        _ => ordered(spec, ts, masks, out),
    }
}

const UNSET: Millis = Millis::MIN;

fn ordered(spec: &Spec, ts: &[Millis], masks: &[u64], out: &mut Outcome) {
    let n = spec.steps;
    let strict = spec.order == Order::Strict;
    let step_bits = if n >= 64 { !0 } else { (1u64 << n) - 1 };
    if !strict && n == 1 {
        // ClickHouse answers 1 for any matching event, exclusions aside.
        if let Some(i) = masks.iter().position(|m| m & 1 != 0) {
            out.level = 1;
            out.at.push((ts[i], ts[i], ts[i]));
        }
        return;
    }
    // Per step: (chain start, time of the previous step, time of this step). This runs
    // once per person, so short funnels keep their state in a small array.
    const SMALL: usize = 8;
    if n <= SMALL {
        let mut state = [(UNSET, UNSET, UNSET); SMALL];
        chains(spec, ts, masks, &mut state[..n], step_bits, strict, out);
    } else {
        let mut state = vec![(UNSET, UNSET, UNSET); n];
        chains(spec, ts, masks, &mut state, step_bits, strict, out);
    }
}

/// The chain search of [`ordered`] over `chain`, one entry per step, all unset.
fn chains(
    spec: &Spec,
    ts: &[Millis],
    masks: &[u64],
    chain: &mut [ChainTimes],
    step_bits: u64,
    strict: bool,
    out: &mut Outcome,
) {
    let n = chain.len();
    let mut best: Option<(usize, Vec<ChainTimes>)> = None;
    let mut started = false;
    let mut i = 0;
    'events: while i < ts.len() {
        // One group of equal timestamps: ClickHouse sorts (timestamp, step) pairs, so within
        // a tie the interruptions (step "0") come first, then steps in ascending order.
        let t = ts[i];
        let mut j = i;
        let mut steps_here = 0u64;
        let (mut interrupted, mut excluded) = (false, false);
        while j < ts.len() && ts[j] == t {
            let m = masks[j];
            excluded |= m & EXCLUSION_BIT != 0;
            interrupted |= m & step_bits == 0 && m & EXCLUSION_BIT == 0;
            steps_here |= m & step_bits;
            j += 1;
        }
        i = j;
        if excluded {
            let level = level_of(chain);
            if level > best.as_ref().map_or(0, |b| b.0) {
                best = Some((level, chain[..level].to_vec()));
            }
            for c in chain.iter_mut() {
                c.0 = UNSET;
            }
            started = false;
        }
        // Before the chain starts an interruption is skipped alone: the group's step
        // events still count (ClickHouse sorts the interruption first and moves on).
        if strict && interrupted && started {
            break 'events;
        }
        let mut bits = steps_here;
        while bits != 0 {
            let k = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if k == 0 {
                chain[0] = (t, t, t);
                started = true;
            } else if strict && started && chain[k - 1].0 == UNSET {
                break 'events;
            } else if chain[k - 1].0 != UNSET {
                let (first, _, prev) = chain[k - 1];
                let within = t <= first.saturating_add(spec.window)
                    && spec.step_windows[k].is_none_or(|w| t - prev <= w);
                if within {
                    chain[k] = (first, prev, t);
                    if k + 1 == n {
                        break 'events;
                    }
                }
            }
        }
    }
    let level = level_of(chain);
    match best {
        Some((b, snap)) if b >= level => {
            out.level = b;
            out.at = snap;
        }
        _ => {
            out.level = level;
            out.at.extend_from_slice(&chain[..level]);
        }
    }
}

/// The deepest step a chain reached: the last one with a start.
fn level_of(chain: &[ChainTimes]) -> usize {
    chain
        .iter()
        .rposition(|c| c.0 != UNSET)
        .map_or(0, |k| k + 1)
}

/// The largest k such that steps 1..k all occur within one window, in any order.
fn unordered(spec: &Spec, ts: &[Millis], masks: &[u64], out: &mut Outcome) {
    let mut level = 0;
    for k in 1..=spec.steps {
        let want = if k >= 64 { !0 } else { (1u64 << k) - 1 };
        if !window_covers(ts, masks, want, spec.window) {
            break;
        }
        level = k;
    }
    out.level = level;
}

/// Whether some window [t, t + window] holds events covering every bit of `want`.
fn window_covers(ts: &[Millis], masks: &[u64], want: u64, window: Millis) -> bool {
    let mut counts = [0u32; 64];
    let mut covered = 0u64;
    let mut lo = 0;
    for hi in 0..ts.len() {
        let mut m = masks[hi] & want;
        while m != 0 {
            let b = m.trailing_zeros() as usize;
            m &= m - 1;
            counts[b] += 1;
            covered |= 1 << b;
        }
        while ts[hi] - ts[lo] > window {
            let mut m = masks[lo] & want;
            while m != 0 {
                let b = m.trailing_zeros() as usize;
                m &= m - 1;
                counts[b] -= 1;
                if counts[b] == 0 {
                    covered &= !(1 << b);
                }
            }
            lo += 1;
        }
        if covered == want {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;
