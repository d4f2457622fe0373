//! Survey scores and their confidence intervals: NPS, CSAT, CES and means in general.
//!
//! The interval methods, and why:
//! - **CSAT** (share of 4 and 5 on a 1-5 scale) and every other proportion: the **Wilson
//!   score interval**. Unlike the textbook `p ± z·sqrt(p(1-p)/n)` it stays inside [0, 1]
//!   and keeps its coverage at small `n` and at shares near 0 or 1, which satisfaction
//!   scores often are (statsmodels `proportion_confint(method="wilson")` gives the same).
//! - **NPS** (% promoters 9-10 minus % detractors 0-6): NPS is the mean of a variable that
//!   is +100 for a promoter, 0 for a passive and -100 for a detractor, so its variance has a
//!   closed form, `s² = (10⁴(P + D) - n·NPS²) / (n - 1)`, and the interval is the Student t
//!   interval of that mean, `NPS ± t(n-1)·s/√n`, clipped to [-100, 100]. No bootstrap: the
//!   answer is deterministic and exact for the trinomial's variance; t rather than z keeps
//!   small samples honest (scipy `t.interval` on the coded answers gives the same).
//! - **CES** (mean of 1-7) and sentiment means: the Student t interval of the mean.
//!
//! Pure arithmetic: the quantiles come from the regularized incomplete beta and gamma
//! functions evaluated here (Numerical Recipes' continued fractions), accurate to ~1e-12.

/// An estimate with its interval; `low`/`high` are `None` when `n` is too small for one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub n: u64,
}

/// NPS from the counts of promoters (9-10), passives (7-8) and detractors (0-6), in points
/// (-100..100).
pub fn nps(promoters: u64, passives: u64, detractors: u64, confidence: f64) -> Estimate {
    let n = promoters + passives + detractors;
    if n == 0 {
        return Estimate {
            value: 0.0,
            low: None,
            high: None,
            n,
        };
    }
    let nf = n as f64;
    let value = 100.0 * (promoters as f64 - detractors as f64) / nf;
    if n < 2 {
        return Estimate {
            value,
            low: None,
            high: None,
            n,
        };
    }
    let var = ((1e4 * (promoters + detractors) as f64 - nf * value * value) / (nf - 1.0)).max(0.0);
    let half = student_t_quantile(0.5 + confidence / 2.0, nf - 1.0) * (var / nf).sqrt();
    Estimate {
        value,
        low: Some((value - half).max(-100.0)),
        high: Some((value + half).min(100.0)),
        n,
    }
}

/// A share `successes / n` with its Wilson score interval.
pub fn proportion(successes: u64, n: u64, confidence: f64) -> Estimate {
    if n == 0 {
        return Estimate {
            value: 0.0,
            low: None,
            high: None,
            n,
        };
    }
    let (low, high) = wilson(successes, n, confidence);
    Estimate {
        value: successes as f64 / n as f64,
        low: Some(low),
        high: Some(high),
        n,
    }
}

/// The Wilson score interval of `successes / n`.
pub fn wilson(successes: u64, n: u64, confidence: f64) -> (f64, f64) {
    let nf = n as f64;
    let p = successes as f64 / nf;
    let z = normal_quantile(0.5 + confidence / 2.0);
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let center = (p + z2 / (2.0 * nf)) / denom;
    let half = z / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// A mean from `n` values' sum and sum of squares, with its Student t interval.
pub fn mean(sum: f64, sum_squares: f64, n: u64, confidence: f64) -> Estimate {
    if n == 0 {
        return Estimate {
            value: 0.0,
            low: None,
            high: None,
            n,
        };
    }
    let nf = n as f64;
    let value = sum / nf;
    if n < 2 {
        return Estimate {
            value,
            low: None,
            high: None,
            n,
        };
    }
    let var = ((sum_squares - nf * value * value) / (nf - 1.0)).max(0.0);
    let half = student_t_quantile(0.5 + confidence / 2.0, nf - 1.0) * (var / nf).sqrt();
    Estimate {
        value,
        low: Some(value - half),
        high: Some(value + half),
        n,
    }
}

/// Sums that [`mean`] takes, accumulated one value at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_squares: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_squares += x * x;
    }

    pub fn estimate(&self, confidence: f64) -> Estimate {
        mean(self.sum, self.sum_squares, self.n, confidence)
    }
}

// ------------------------------------------------------------------- distributions

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(a, b).
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// P(T <= t) for Student's t with `df` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t > 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p` quantile of Student's t with `df` degrees of freedom (bisection on the CDF).
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    invert(|x| student_t_cdf(x, df), p)
}

/// P(Z <= x) for the standard normal, through erf(x) = P(1/2, x²).
pub fn normal_cdf(x: f64) -> f64 {
    let half = 0.5 * lower_gamma_regularized(0.5, x * x / 2.0);
    if x >= 0.0 {
        0.5 + half
    } else {
        0.5 - half
    }
}

/// The `p` quantile of the standard normal.
pub fn normal_quantile(p: f64) -> f64 {
    invert(normal_cdf, p)
}

/// The regularized lower incomplete gamma P(a, x): a series below a + 1, else a continued
/// fraction for the complement.
fn lower_gamma_regularized(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let gln = ln_gamma(a);
    if x < a + 1.0 {
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..1000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        sum * (-x + a * x.ln() - gln).exp()
    } else {
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-x + a * x.ln() - gln).exp() * h
    }
}

/// The x where an increasing `cdf` reaches `p`.
fn invert(cdf: impl Fn(f64) -> f64, p: f64) -> f64 {
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    let (mut lo, mut hi) = (-1.0, 1.0);
    while cdf(lo) > p {
        lo *= 2.0;
    }
    while cdf(hi) < p {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-13 * hi.abs().max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Quantiles against published table values (scipy.stats gives the same digits).
    #[test]
    fn quantiles_match_the_tables() {
        assert!(close(normal_quantile(0.975), 1.959_963_984_540_054, 1e-9));
        assert!(close(normal_quantile(0.995), 2.575_829_303_548_901, 1e-9));
        assert!(close(normal_quantile(0.5), 0.0, 1e-12));
        assert!(close(
            student_t_quantile(0.975, 1.0),
            12.706_204_736_174_7,
            1e-7
        ));
        assert!(close(
            student_t_quantile(0.975, 9.0),
            2.262_157_162_740_992,
            1e-9
        ));
        assert!(close(
            student_t_quantile(0.975, 29.0),
            2.045_229_642_132_703,
            1e-9
        ));
        assert!(close(
            student_t_quantile(0.95, 100.0),
            1.660_234_326_890_349,
            1e-9
        ));
        assert!(close(
            student_t_quantile(0.025, 9.0),
            -2.262_157_162_740_992,
            1e-9
        ));
    }

    /// Hand-computed: 5 promoters, 3 passives, 2 detractors. NPS = 100(5 - 2)/10 = 30;
    /// s² = (10⁴·7 - 10·900)/9 = 61000/9; half = t(0.975, 9)·sqrt(s²/10).
    #[test]
    fn nps_by_hand() {
        let e = nps(5, 3, 2, 0.95);
        assert!(close(e.value, 30.0, 1e-12));
        let half = 2.262_157_162_740_992 * (61000.0f64 / 9.0 / 10.0).sqrt();
        assert!(close(e.low.unwrap(), 30.0 - half, 1e-7), "{e:?}");
        assert!(close(e.high.unwrap(), 30.0 + half, 1e-7), "{e:?}");
        assert_eq!(e.n, 10);
        // All promoters: no spread, the interval is the point.
        let all = nps(4, 0, 0, 0.95);
        assert_eq!(
            (all.value, all.low, all.high),
            (100.0, Some(100.0), Some(100.0))
        );
        // Wide intervals are clipped to the scale.
        let wide = nps(1, 0, 1, 0.95);
        assert_eq!((wide.low, wide.high), (Some(-100.0), Some(100.0)));
        assert_eq!(nps(1, 0, 0, 0.95).low, None);
        assert_eq!(nps(0, 0, 0, 0.95).n, 0);
    }

    /// Hand-computed Wilson interval for 8 of 10 at 95%: z = 1.959964,
    /// center = (0.8 + z²/20)/(1 + z²/10), half = z/(1 + z²/10)·sqrt(0.016 + z²/400).
    #[test]
    fn wilson_by_hand() {
        let z: f64 = 1.959_963_984_540_054;
        let d = 1.0 + z * z / 10.0;
        let center = (0.8 + z * z / 20.0) / d;
        let half = z / d * (0.016 + z * z / 400.0).sqrt();
        let e = proportion(8, 10, 0.95);
        assert!(close(e.low.unwrap(), center - half, 1e-9));
        assert!(close(e.high.unwrap(), center + half, 1e-9));
        // statsmodels proportion_confint(8, 10, method="wilson"): (0.4901625, 0.9433178).
        assert!(close(e.low.unwrap(), 0.490_162_5, 1e-6));
        assert!(close(e.high.unwrap(), 0.943_317_8, 1e-6));
        let zero = proportion(0, 20, 0.95);
        assert_eq!(zero.low, Some(0.0));
        assert!(zero.high.unwrap() > 0.0);
    }

    /// CES answers 2, 4, 4, 5, 7: mean 4.4, s² = 3.3, half = t(0.975, 4)·sqrt(3.3/5).
    #[test]
    fn mean_by_hand() {
        let mut m = Moments::default();
        for x in [2.0, 4.0, 4.0, 5.0, 7.0] {
            m.add(x);
        }
        let e = m.estimate(0.95);
        assert!(close(e.value, 4.4, 1e-12));
        let half = 2.776_445_105_197_799 * (3.3f64 / 5.0).sqrt();
        assert!(close(e.low.unwrap(), 4.4 - half, 1e-8), "{e:?}");
        assert!(close(e.high.unwrap(), 4.4 + half, 1e-8));
    }
}
