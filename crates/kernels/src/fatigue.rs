//! Touch fatigue: how often a channel reaches a person, against what that person then does,
//! and the frequency cap that earns the most.
//!
//! **Windows.** Each person's exposure to a channel is cut into consecutive windows of
//! `window_ms` (a week) starting at their first touch on it; a window counts only when it
//! ends inside the data, and the window in which the person opted out (unsubscribed or
//! complained) is their last. For each window: touches (sends), engagements (opens, clicks),
//! whether the person opted out and whether they converted. Anchoring at the first touch
//! keeps the first window full, which calendar weeks would not.
//!
//! **The response curve** groups windows by their touch count: per count, the share of
//! windows with an opt-out and with a conversion.
//!
//! **The recommended cap.** With a conversion worth `value`, an unsubscribe costing
//! `unsubscribe_cost` and a complaint `complaint_cost` (the future value a lost subscriber
//! takes away; a complaint also hurts deliverability), a window with `x` touches is worth
//! `value·c(x) - k(x)` on average, `c` the conversion rate and `k` the expected opt-out cost.
//! Both curves are first smoothed by isotonic regression (more touches never cost fewer
//! opt-outs; a conversion rate that falls with frequency is flattened, which means "no
//! marginal gain"), weighted by window counts, over the counts with at least `min_windows`
//! windows. The cap is the smallest count where that
//! net value peaks: past it, the marginal opt-outs cost more than the marginal conversions
//! bring.
//!
//! Pure: sorted timestamps in, counts out.

use crate::Millis;

/// Touch counts above this are pooled into it (the curve's last point means "this or more").
pub const TOUCHES_MAX: u32 = 50;

/// One window of one person on one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub start: Millis,
    pub touches: u32,
    pub engagements: u32,
    /// An unsubscribe or a complaint in the window (the person's last window).
    pub opted_out: bool,
    /// A complaint in the window.
    pub complained: bool,
    pub converted: bool,
}

/// The windows of one person on one channel. Every slice is sorted; `end` is where the data
/// ends (exclusive).
#[allow(clippy::too_many_arguments)]
pub fn windows(
    touches: &[Millis],
    engagements: &[Millis],
    unsubscribes: &[Millis],
    complaints: &[Millis],
    conversions: &[Millis],
    end: Millis,
    window_ms: Millis,
    mut visit: impl FnMut(Window),
) {
    let Some(&first) = touches.first() else {
        return;
    };
    let first_out = unsubscribes
        .iter()
        .chain(complaints)
        .copied()
        .filter(|&t| t >= first)
        .min();
    if unsubscribes.iter().chain(complaints).any(|&t| t < first) {
        // Opted out before any recorded touch: not exposed to this channel's frequency.
        return;
    }
    let count = |s: &[Millis], a: Millis, b: Millis| {
        let lo = s.partition_point(|&t| t < a);
        let hi = s.partition_point(|&t| t < b);
        (hi - lo) as u32
    };
    let mut start = first;
    while start + window_ms <= end {
        let stop = start + window_ms;
        let out = first_out.is_some_and(|t| t < stop);
        visit(Window {
            start,
            touches: count(touches, start, stop),
            engagements: count(engagements, start, stop),
            opted_out: out,
            complained: out && count(complaints, start, stop) > 0,
            converted: count(conversions, start, stop) > 0,
        });
        if out {
            break;
        }
        start = stop;
    }
}

/// The windows with one touch count, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bin {
    pub touches: u32,
    pub windows: u64,
    pub opted_out: u64,
    pub complained: u64,
    pub converted: u64,
    pub touches_total: u64,
    pub engagements: u64,
}

/// Bins by touch count, `0..=TOUCHES_MAX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Curve {
    pub bins: Vec<Bin>,
}

impl Default for Curve {
    fn default() -> Self {
        Curve {
            bins: (0..=TOUCHES_MAX)
                .map(|touches| Bin {
                    touches,
                    ..Bin::default()
                })
                .collect(),
        }
    }
}

impl Curve {
    pub fn add(&mut self, w: &Window) {
        let b = &mut self.bins[w.touches.min(TOUCHES_MAX) as usize];
        b.windows += 1;
        b.opted_out += u64::from(w.opted_out);
        b.complained += u64::from(w.complained);
        b.touches_total += w.touches as u64;
        b.converted += u64::from(w.converted);
        b.engagements += w.engagements as u64;
    }
}

/// The smoothed curves and the cap, over the touch counts that had enough windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    /// Touch counts used (>= 1, with at least `min_windows` windows), ascending.
    pub touches: Vec<u32>,
    pub conversion_fit: Vec<f64>,
    /// Expected opt-out cost per window, smoothed.
    pub opt_out_cost_fit: Vec<f64>,
    /// `value·conversion_fit - opt_out_cost_fit` per window.
    pub net_value: Vec<f64>,
    /// `None` when fewer than two touch counts had enough windows.
    pub cap: Option<u32>,
}

/// What outcomes are worth: a conversion, an unsubscribe and a complaint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Values {
    pub conversion: f64,
    pub unsubscribe: f64,
    pub complaint: f64,
}

pub fn recommend(curve: &Curve, values: Values, min_windows: u64) -> Recommendation {
    let used: Vec<&Bin> = curve
        .bins
        .iter()
        .filter(|b| b.touches >= 1 && b.windows >= min_windows.max(1))
        .collect();
    let weights: Vec<f64> = used.iter().map(|b| b.windows as f64).collect();
    let rate = |f: fn(&Bin) -> u64| -> Vec<f64> {
        used.iter()
            .map(|b| f(b) as f64 / b.windows as f64)
            .collect()
    };
    let conversion_fit = isotonic_increasing(&rate(|b| b.converted), &weights);
    let cost: Vec<f64> = used
        .iter()
        .map(|b| {
            let unsubscribes = (b.opted_out - b.complained) as f64;
            (values.unsubscribe * unsubscribes + values.complaint * b.complained as f64)
                / b.windows as f64
        })
        .collect();
    let opt_out_cost_fit = isotonic_increasing(&cost, &weights);
    let net_value: Vec<f64> = conversion_fit
        .iter()
        .zip(&opt_out_cost_fit)
        .map(|(c, k)| values.conversion * c - k)
        .collect();
    let cap = (used.len() >= 2)
        .then(|| {
            let best = net_value.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let tol = 1e-12 * best.abs().max(1.0);
            net_value
                .iter()
                .position(|&v| v >= best - tol)
                .map(|i| used[i].touches)
        })
        .flatten();
    Recommendation {
        touches: used.iter().map(|b| b.touches).collect(),
        conversion_fit,
        opt_out_cost_fit,
        net_value,
        cap,
    }
}

/// The weighted least-squares non-decreasing fit of `y` (pool adjacent violators).
pub fn isotonic_increasing(y: &[f64], w: &[f64]) -> Vec<f64> {
    // Blocks of (mean, weight, length).
    let mut blocks: Vec<(f64, f64, usize)> = Vec::with_capacity(y.len());
    for (&v, &wt) in y.iter().zip(w) {
        blocks.push((v, wt.max(f64::MIN_POSITIVE), 1));
        while blocks.len() >= 2 && blocks[blocks.len() - 2].0 > blocks[blocks.len() - 1].0 {
            let (m2, w2, l2) = blocks.pop().expect("two blocks");
            let (m1, w1, l1) = blocks.pop().expect("two blocks");
            blocks.push(((m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, l1 + l2));
        }
    }
    blocks
        .into_iter()
        .flat_map(|(m, _, l)| std::iter::repeat_n(m, l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Millis = 7;

    fn collect(
        touches: &[Millis],
        engagements: &[Millis],
        outs: &[Millis],
        conv: &[Millis],
        end: Millis,
    ) -> Vec<Window> {
        let mut v = Vec::new();
        windows(touches, engagements, outs, &[], conv, end, W, |w| v.push(w));
        v
    }

    #[test]
    fn windows_start_at_the_first_touch_and_stop_at_the_opt_out() {
        let w = collect(&[10, 11, 12, 20, 30], &[11, 21], &[], &[15], 40);
        // [10,17) [17,24) [24,31) [31,38); [38,45) does not end inside the data.
        assert_eq!(
            w.iter()
                .map(|w| (w.start, w.touches, w.engagements, w.converted))
                .collect::<Vec<_>>(),
            [
                (10, 3, 1, true),
                (17, 1, 1, false),
                (24, 1, 0, false),
                (31, 0, 0, false)
            ]
        );
        assert!(w.iter().all(|w| !w.opted_out));
        let w = collect(&[10, 11, 20], &[], &[19], &[], 100);
        assert_eq!(w.len(), 2);
        assert!(w[1].opted_out && !w[0].opted_out);
        // No touches, or an opt-out before the first touch: no windows.
        assert!(collect(&[], &[], &[], &[5], 100).is_empty());
        assert!(collect(&[10], &[], &[3], &[], 100).is_empty());
    }

    #[test]
    fn isotonic_pools_violators() {
        let fit = isotonic_increasing(&[1.0, 3.0, 2.0, 4.0], &[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(fit, [1.0, 2.5, 2.5, 4.0]);
        let fit = isotonic_increasing(&[3.0, 1.0], &[1.0, 3.0]);
        assert_eq!(fit, [1.5, 1.5]);
        assert!(isotonic_increasing(&[], &[]).is_empty());
    }

    /// Known curves: conversion 0.10·(1 - 0.7^x), opt-out 0.004·x²; with value 100 and cost
    /// 30 the cap is the argmax of the true net value.
    #[test]
    fn the_cap_is_where_the_net_value_peaks() {
        let conv = |x: f64| 0.10 * (1.0 - 0.7f64.powf(x));
        let out = |x: f64| 0.004 * x * x;
        let mut curve = Curve::default();
        for x in 1..=10u32 {
            let b = &mut curve.bins[x as usize];
            b.windows = 1_000_000;
            b.converted = (conv(x as f64) * 1e6).round() as u64;
            b.opted_out = (out(x as f64) * 1e6).round() as u64;
        }
        let values = Values {
            conversion: 100.0,
            unsubscribe: 30.0,
            complaint: 30.0,
        };
        let r = recommend(&curve, values, 100);
        let truth = (1..=10u32)
            .max_by(|&a, &b| {
                let net = |x: u32| 100.0 * conv(x as f64) - 30.0 * out(x as f64);
                net(a).total_cmp(&net(b))
            })
            .unwrap();
        assert_eq!(r.cap, Some(truth));
        assert_eq!(r.touches, (1..=10).collect::<Vec<_>>());
        // Too little data: no recommendation.
        let r = recommend(&curve, values, 2_000_000);
        assert_eq!(r.cap, None);
        // Complaints cost more: a tenth of the opt-outs are complaints at 10x the cost.
        for b in &mut curve.bins {
            b.complained = b.opted_out / 10;
        }
        let dear = Values {
            complaint: 300.0,
            ..values
        };
        let r = recommend(&curve, dear, 100);
        assert!(r.cap.unwrap() < truth, "{:?}", r.cap);
        let r = recommend(&curve, values, 2_000_000);
        assert_eq!(r.cap, None);
    }
}
