//! The Markov model: journeys as a chain from a start state through touch states to
//! conversion or null, and each label credited by its removal effect, the share of
//! conversions the chain loses when every state holding the label leads to null instead.
//!
//! ChannelAttribution estimates the same chain by simulating random walks, which strays a
//! few percent at its default settings; here absorption probabilities are solved from the
//! linear system itself (Gauss-Seidel in depth-first post-order, which is one exact sweep
//! on the acyclic part of the chain, iterated to machine precision on its cycles).
//!
//! Order k: the state at a touch is the last k touches (fewer at a journey's start), so
//! `a > b > c` at order 2 visits `(a)`, `(a,b)`, `(b,c)`, as ChannelAttribution does.
//! Value: a conversion from a state is worth the mean value of the conversions that ended
//! there, and the value's removal effect comes from the same chain with those rewards.

use rustc_hash::FxHashMap;

use super::{AttributionError, Credit, PathTable, Touch, LABELS_MAX};

/// Highest order: four 16-bit labels fill a 64-bit state key.
pub const ORDER_MAX: usize = 4;
/// States at most; each costs a few dozen bytes and a share of every removal solve.
pub const STATES_MAX: usize = 4_000_000;
/// Gauss-Seidel sweeps at most; converging chains need a handful to a few hundred.
const SWEEPS_MAX: usize = 200_000;
/// Stop when no probability moves by more than this (relative to 1) in a sweep.
const TOLERANCE: f64 = 1e-14;

#[derive(Clone, Debug, PartialEq)]
pub struct MarkovAnswer {
    pub credit: Credit,
    /// Per label: share of conversions lost without it.
    pub removal_effects: Vec<f64>,
    /// Per label: share of conversion value lost without it.
    pub removal_effects_value: Vec<f64>,
    /// Probability that a walk from the start converts.
    pub conversion_probability: f64,
    pub states: usize,
}

/// Credits `paths` (labels below `labels`) with an order-`order` Markov chain.
pub fn markov(
    paths: &PathTable,
    labels: usize,
    order: usize,
) -> Result<MarkovAnswer, AttributionError> {
    if !(1..=ORDER_MAX).contains(&order) {
        return Err(AttributionError::Order);
    }
    if labels > LABELS_MAX {
        return Err(AttributionError::TooManyLabels);
    }
    let chain = Chain::build(paths, order)?;
    let total_conversions: f64 = paths
        .iter()
        .filter(|p| !p.touches.is_empty())
        .map(|p| p.conversions)
        .sum();
    let total_value: f64 = paths
        .iter()
        .filter(|p| !p.touches.is_empty())
        .map(|p| p.value)
        .sum();
    let (base, base_value) = chain.solve(None)?;
    let mut removal_effects = vec![0.0; labels];
    let mut removal_effects_value = vec![0.0; labels];
    let mut present = vec![false; labels];
    for &k in &chain.keys {
        for t in unpack(k) {
            present[t as usize] = true;
        }
    }
    if base > 0.0 {
        for (label, _) in present.iter().enumerate().filter(|(_, p)| **p) {
            let (p, v) = chain.solve(Some(label as Touch))?;
            removal_effects[label] = (1.0 - p / base).max(0.0);
            if base_value > 0.0 {
                removal_effects_value[label] = (1.0 - v / base_value).max(0.0);
            }
        }
    }
    let mut credit = Credit::new(labels);
    let spread = |effects: &[f64], total: f64, out: &mut [f64]| {
        let sum: f64 = effects.iter().sum();
        if sum > 0.0 {
            for (o, e) in out.iter_mut().zip(effects) {
                *o = total * e / sum;
            }
        }
    };
    spread(&removal_effects, total_conversions, &mut credit.conversions);
    spread(&removal_effects_value, total_value, &mut credit.value);
    Ok(MarkovAnswer {
        credit,
        removal_effects,
        removal_effects_value,
        conversion_probability: base,
        states: chain.keys.len(),
    })
}

/// Up to four labels, each stored plus one in 16 bits, oldest lowest; 0 is the start.
type Key = u64;

fn push(key: Key, touch: Touch, order: usize) -> Key {
    let slots = key_len(key);
    let t = u64::from(touch) + 1;
    if slots < order {
        key | (t << (16 * slots))
    } else {
        // Drop the oldest label, append the new one.
        (key >> 16) | (t << (16 * (order - 1)))
    }
}

fn key_len(key: Key) -> usize {
    (0..4)
        .take_while(|i| (key >> (16 * i)) & 0xffff != 0)
        .count()
}

fn unpack(key: Key) -> impl Iterator<Item = Touch> {
    (0..4)
        .map(move |i| ((key >> (16 * i)) & 0xffff) as u32)
        .take_while(|&v| v != 0)
        .map(|v| v - 1)
}

/// The chain as weighted edges in compressed rows; state 0 is the start.
struct Chain {
    keys: Vec<Key>,
    /// `edges[offsets[s]..offsets[s + 1]]`: (target, weight) out of state `s`.
    offsets: Vec<usize>,
    edges: Vec<(u32, f64)>,
    /// Weight of walks that stay in `s` (a touch repeated at order 1).
    self_weight: Vec<f64>,
    /// Weight out of `s`, including to conversion and null.
    total: Vec<f64>,
    conversions: Vec<f64>,
    value: Vec<f64>,
    /// States in depth-first post-order from the start: successors before predecessors
    /// wherever the chain has no cycle.
    order: Vec<u32>,
}

impl Chain {
    fn build(paths: &PathTable, order: usize) -> Result<Chain, AttributionError> {
        let mut ids: FxHashMap<Key, u32> = FxHashMap::default();
        ids.insert(0, 0);
        let mut keys: Vec<Key> = vec![0];
        let mut weights: FxHashMap<u64, f64> = FxHashMap::default();
        let mut conversions = vec![0.0];
        let mut value = vec![0.0];
        let mut nulls = vec![0.0];
        for p in paths.iter() {
            let w = p.conversions + p.nulls;
            if p.touches.is_empty() || w <= 0.0 {
                continue;
            }
            let (mut key, mut prev) = (0, 0u32);
            for &t in p.touches {
                if t as usize >= LABELS_MAX {
                    return Err(AttributionError::TooManyLabels);
                }
                key = push(key, t, order);
                let next = ids.len() as u32;
                let id = *ids.entry(key).or_insert(next);
                if id == next {
                    if keys.len() >= STATES_MAX {
                        return Err(AttributionError::TooManyStates { order });
                    }
                    keys.push(key);
                    conversions.push(0.0);
                    value.push(0.0);
                    nulls.push(0.0);
                }
                *weights
                    .entry(u64::from(prev) << 32 | u64::from(id))
                    .or_default() += w;
                prev = id;
            }
            conversions[prev as usize] += p.conversions;
            value[prev as usize] += p.value;
            nulls[prev as usize] += p.nulls;
        }
        let n = keys.len();
        let mut edges: Vec<(u32, u32, f64)> = weights
            .into_iter()
            .map(|(k, w)| ((k >> 32) as u32, k as u32, w))
            .collect();
        edges.sort_unstable_by_key(|&(a, b, _)| (a, b));
        let mut offsets = vec![0usize; n + 1];
        let mut self_weight = vec![0.0; n];
        let mut total: Vec<f64> = (0..n).map(|s| conversions[s] + nulls[s]).collect();
        let mut out = Vec::with_capacity(edges.len());
        for &(a, b, w) in &edges {
            total[a as usize] += w;
            if a == b {
                self_weight[a as usize] += w;
            } else {
                out.push((b, w));
                offsets[a as usize + 1] += 1;
            }
        }
        for s in 0..n {
            offsets[s + 1] += offsets[s];
        }
        let order = post_order(n, &offsets, &out);
        Ok(Chain {
            keys,
            offsets,
            edges: out,
            self_weight,
            total,
            conversions,
            value,
            order,
        })
    }

    /// Probability of conversion and expected value from the start, with the states
    /// holding `removed` leading to null.
    fn solve(&self, removed: Option<Touch>) -> Result<(f64, f64), AttributionError> {
        let n = self.keys.len();
        let dead: Vec<bool> = match removed {
            None => vec![false; n],
            Some(r) => self
                .keys
                .iter()
                .map(|&k| unpack(k).any(|t| t == r))
                .collect(),
        };
        let mut x = vec![0.0f64; n];
        let mut y = vec![0.0f64; n];
        let value_scale = self.value.iter().copied().fold(0.0f64, f64::max).max(1.0);
        for _ in 0..SWEEPS_MAX {
            let (mut dx, mut dy) = (0.0f64, 0.0f64);
            for &s in &self.order {
                let s = s as usize;
                if dead[s] {
                    continue;
                }
                let stay = self.total[s] - self.self_weight[s];
                if stay <= 0.0 {
                    continue;
                }
                let (mut px, mut py) = (self.conversions[s], self.value[s]);
                for &(t, w) in &self.edges[self.offsets[s]..self.offsets[s + 1]] {
                    px += w * x[t as usize];
                    py += w * y[t as usize];
                }
                let (nx, ny) = (px / stay, py / stay);
                dx = dx.max((nx - x[s]).abs());
                dy = dy.max((ny - y[s]).abs());
                x[s] = nx;
                y[s] = ny;
            }
            if dx <= TOLERANCE && dy <= TOLERANCE * value_scale {
                return Ok((x[0], y[0]));
            }
        }
        Err(AttributionError::NoConvergence { sweeps: SWEEPS_MAX })
    }
}

/// Depth-first post-order of the states reachable from state 0 (all of them: every state
/// was entered from the start).
fn post_order(n: usize, offsets: &[usize], edges: &[(u32, f64)]) -> Vec<u32> {
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    // (state, next edge to follow)
    let mut stack: Vec<(u32, usize)> = vec![(0, offsets[0])];
    seen[0] = true;
    while let Some(top) = stack.last_mut() {
        let (s, next) = (top.0 as usize, top.1);
        if next < offsets[s + 1] {
            top.1 += 1;
            let t = edges[next].0;
            if !seen[t as usize] {
                seen[t as usize] = true;
                stack.push((t, offsets[t as usize]));
            }
        } else {
            order.push(s as u32);
            stack.pop();
        }
    }
    order
}
