//! Marketing spend per day and source, as the CSV that attribution imports for cost.
//!
//! Spend follows the generated traffic: pay-per-click sources cost their clicks times a
//! cost per click that varies a little by day (auctions), affiliates cost a commission
//! on the sales they referred, and offline flights cost a flat amount per day on air,
//! scaled to the number of persons so return on spend does not depend on data set size.
//! Up to `SPEND_SAMPLE_PERSONS_MAX` persons are simulated to count clicks; above that
//! the sample is scaled up and smoothed by a week, like a budget-paced campaign.

use crate::catalog::Cost;
use crate::clock::{iso_date, DAY_MS};
use crate::journey::{simulate, Kit, Person};
use crate::rng::{Rng, STREAM_SPEND};
use crate::DemoConfig;

/// Persons simulated to measure clicks; exact below it, a scaled sample above it.
pub const SPEND_SAMPLE_PERSONS_MAX: usize = 5_000;

/// CSV with header `date,channel,source,medium,campaign,cost`, one row per day and paid
/// source with a cost, in date order then catalogue order; cost in USD with cents.
pub fn spend_csv(cfg: &DemoConfig) -> String {
    let kit = Kit::new(cfg.brand);
    let days = cfg.days as usize;
    let n = cfg.persons.min(SPEND_SAMPLE_PERSONS_MAX);
    let scale = if n == 0 {
        0.0
    } else {
        cfg.persons as f64 / n as f64
    };
    let sources = kit.sources;
    let mut clicks = vec![vec![0.0f64; days]; sources.len()];
    let mut revenue = vec![vec![0.0f64; days]; sources.len()];
    let mut recycled = Person::default();
    for person in 0..n {
        recycled = simulate(&kit, cfg, person, recycled);
        for p in &recycled.paid {
            let day = ((p.ts - cfg.start_ms) / DAY_MS) as usize;
            if day < days {
                if p.revenue > 0.0 {
                    revenue[p.source as usize][day] += p.revenue;
                } else {
                    clicks[p.source as usize][day] += 1.0;
                }
            }
        }
    }
    if n < cfg.persons {
        for series in clicks.iter_mut().chain(revenue.iter_mut()) {
            *series = smooth_week(series);
        }
    }
    let mut rng = Rng::derive(cfg.seed, STREAM_SPEND, cfg.brand as u64);
    let mut csv = String::from("date,channel,source,medium,campaign,cost\n");
    for day in 0..days {
        let day_start = cfg.start_ms + day as i64 * DAY_MS;
        let mid = (day as f64 + 0.5) / days as f64;
        for (i, s) in sources.iter().enumerate() {
            let cost = match s.cost {
                Cost::Free => continue,
                Cost::PerClick(cpc) => clicks[i][day] * scale * cpc * rng.range(0.9, 1.1),
                Cost::Commission(rate) => revenue[i][day] * scale * rate,
                Cost::PerFlightDay(per_thousand) => {
                    if s.live_at(mid) {
                        per_thousand * cfg.persons as f64 / 1000.0
                    } else {
                        0.0
                    }
                }
            };
            if cost < 0.005 {
                continue;
            }
            csv.push_str(&format!(
                "{},{},{},{},{},{:.2}\n",
                iso_date(day_start),
                field(s.channel.name()),
                field(s.source),
                field(s.medium),
                field(s.campaign),
                cost
            ));
        }
    }
    csv
}

/// A centered 7-day moving average that keeps the total.
fn smooth_week(series: &[f64]) -> Vec<f64> {
    let n = series.len();
    let mut out = vec![0.0; n];
    for (i, v) in series.iter().enumerate() {
        let lo = i.saturating_sub(3);
        let hi = (i + 4).min(n);
        let share = v / (hi - lo) as f64;
        for o in &mut out[lo..hi] {
            *o += share;
        }
    }
    out
}

/// RFC 4180 quoting for the rare field that needs it.
fn field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_keeps_the_total() {
        let s = [0.0, 10.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 7.0];
        let total: f64 = smooth_week(&s).iter().sum();
        assert!((total - 22.0).abs() < 1e-9);
        assert_eq!(field("a,b"), "\"a,b\"");
    }
}
