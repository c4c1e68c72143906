//! Paired comparison over seeds: the seeds of two score stages share their base model (same
//! seed, same training run upstream), so a model is compared with the baseline through the
//! per-seed differences d_s = x_s − b_s: their mean and the Student-t interval
//! mean ± t_{0.975, n−1} · sd / √n, sd the sample standard deviation (n − 1). The quantile is
//! computed from the t distribution's CDF (the regularised incomplete beta function), not
//! looked up.

/// The per-seed differences of one metric and their 95% t-interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    pub n: usize,
    pub mean: f64,
    /// The 95% interval of the mean difference; `None` with one seed (no spread to estimate).
    pub interval: Option<(f64, f64)>,
}

impl Paired {
    /// `values[s] − baseline[s]` over the seeds both have (in seed order); `None` when the seed
    /// counts differ.
    pub fn of(values: &[f64], baseline: &[f64]) -> Option<Paired> {
        if values.len() != baseline.len() || values.is_empty() {
            return None;
        }
        let d: Vec<f64> = values.iter().zip(baseline).map(|(x, b)| x - b).collect();
        let n = d.len();
        let mean = d.iter().sum::<f64>() / n as f64;
        let interval = (n > 1).then(|| {
            let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let half = t_quantile(0.975, (n - 1) as f64) * var.sqrt() / (n as f64).sqrt();
            (mean - half, mean + half)
        });
        Some(Paired { n, mean, interval })
    }

    /// Whether the interval lies wholly above zero (`Some(true)`), wholly below
    /// (`Some(false)`), or contains it or does not exist (`None`).
    pub fn sign(&self) -> Option<bool> {
        match self.interval {
            Some((lo, _)) if lo > 0.0 => Some(true),
            Some((_, hi)) if hi < 0.0 => Some(false),
            _ => None,
        }
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error below 1e-13).
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
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum: f64 = G[0] + G[1..].iter().enumerate().map(|(i, g)| g / (x + i as f64 + 1.0)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
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
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// P(T ≤ t) for Student's t with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p` quantile (0.5 < p < 1) of Student's t with `df` degrees of freedom, by bisection
/// on the CDF to 1e-12.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1.0);
    while t_cdf(hi, df) < p {
        hi *= 2.0;
    }
    while hi - lo > 1e-12 * hi.max(1.0) {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_published_table() {
        // Two-sided 95% critical values (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2), and
        // the normal limit 1.959964.
        for (df, expected) in [
            (1.0, 12.7062),
            (2.0, 4.3027),
            (3.0, 3.1824),
            (4.0, 2.7764),
            (5.0, 2.5706),
            (9.0, 2.2622),
            (29.0, 2.0452),
            (30.0, 2.0423),
            (100.0, 1.9840),
            (1e7, 1.9600),
        ] {
            let q = t_quantile(0.975, df);
            assert!((q - expected).abs() < 5e-5, "df {df}: {q} vs {expected}");
        }
        // Exact closed forms: df 1 is Cauchy (tan(π(p − ½))), df 2 is p−½ = t/(2√(2+t²)).
        assert!((t_quantile(0.975, 1.0) - (std::f64::consts::PI * 0.475).tan()).abs() < 1e-9);
        let t = t_quantile(0.9, 2.0);
        assert!((t / (2.0 * (2.0 + t * t).sqrt()) - 0.4).abs() < 1e-12);
        assert!((t_cdf(0.0, 7.0) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn paired_differences_give_the_t_interval() {
        // d = (1, 2, 3): mean 2, sd 1, half-width t(0.975, 2)/√3 = 4.302653/1.732051.
        let p = Paired::of(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        let half = 4.302_652_729_911_275 / 3f64.sqrt();
        let (lo, hi) = p.interval.unwrap();
        assert!(
            (p.mean - 2.0).abs() < 1e-12
                && (lo - (2.0 - half)).abs() < 1e-9
                && (hi - (2.0 + half)).abs() < 1e-9
        );
        assert_eq!(p.sign(), None, "the interval (−0.48, 4.48) contains 0");
        // The same differences shifted up by a constant are clearly positive.
        let p = Paired::of(&[11.0, 12.0, 13.0], &[0.0, 0.0, 0.0]).unwrap();
        assert_eq!(p.sign(), Some(true));
        // Pairing matters: unpaired, 2±1 vs 1±1 would overlap; paired, the seeds agree exactly.
        let p = Paired::of(&[0.30, 0.40, 0.50], &[0.20, 0.30, 0.40]).unwrap();
        assert_eq!(p.sign(), Some(true));
        assert_eq!(Paired::of(&[1.0], &[0.5]).unwrap().interval, None);
        assert_eq!(Paired::of(&[1.0, 2.0], &[0.5]), None);
    }
}
