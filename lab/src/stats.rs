//! Statistics for a few noisy rounds, without assuming a distribution.
//!
//! - **A configuration's figure**: the median of its rounds, with the order-statistic interval
//!   `[x(k), x(n+1-k)]`, whose coverage is exact for any continuous distribution:
//!   `1 - 2 P(B <= k-1)`, `B ~ Binomial(n, 1/2)`. The widest such interval is the range of the
//!   rounds; with 5 rounds it covers 93.8%, with 6, 96.9%. The coverage is reported, never
//!   rounded up to "95%".
//! - **A difference against the baseline**: the Hodges–Lehmann shift (median of all pairwise
//!   differences) with the exact Mann–Whitney interval `[d(k), d(mn+1-k)]` over the sorted
//!   differences (what R's `wilcox.test(conf.int = TRUE)` gives). A ratio is the same on the
//!   logarithms, taken back with `exp`. A difference is claimed only when its interval leaves
//!   out 0 (a ratio: 1).
//!
//! Rounds of one configuration are treated as independent samples; interleaving and rotating
//! the order spreads slow drift over every configuration alike, so it widens intervals instead
//! of faking differences.

/// An estimate and its interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
    /// Probability that the interval covers the true value (exact, distribution-free).
    pub coverage: f64,
}

impl Interval {
    /// Whether the interval leaves out `value` (the "no difference" point: 0, or 1 for a ratio).
    pub fn excludes(&self, value: f64) -> bool {
        self.lo > value || self.hi < value
    }
}

/// The 95% the experiment aims its intervals at.
pub const LEVEL: f64 = 0.95;

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The median (mean of the middle two for an even count); `None` without finite values.
pub fn median(xs: &[f64]) -> Option<f64> {
    let v = sorted(xs);
    let n = v.len();
    match n {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// `P(B <= k)` for `B ~ Binomial(n, 1/2)`, in log space so large `n` does not underflow.
fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut total = 0.0;
    for i in 0..=k.min(n) {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        total += (ln_choose + ln_half_n).exp();
    }
    total.min(1.0)
}

/// The median of `xs` with the narrowest order-statistic interval whose coverage is at least
/// `level`; when even the range of the values covers less (few rounds), the range, with its
/// coverage. `None` without finite values.
pub fn median_interval(xs: &[f64], level: f64) -> Option<Interval> {
    let v = sorted(xs);
    let n = v.len();
    let estimate = median(&v)?;
    // k is 1-based: the interval [x(k), x(n+1-k)].
    let coverage = |k: usize| 1.0 - 2.0 * binomial_half_cdf(n, k - 1);
    let k = (1..=n.div_ceil(2))
        .rev()
        .find(|&k| coverage(k) >= level)
        .unwrap_or(1);
    Some(Interval {
        estimate,
        lo: v[k - 1],
        hi: v[n - k],
        coverage: coverage(k).max(0.0),
    })
}

/// Null distribution of the Mann–Whitney count U for samples of `m` and `n`: `P(U <= u)`
/// for each `u` in `0..=m*n` (no ties).
fn mann_whitney_cdf(m: usize, n: usize) -> Vec<f64> {
    // counts[j][u]: arrangements of i x's and j y's with U = u, built up over i (rows of the
    // recursion f(i, j, u) = f(i-1, j, u-j) + f(i, j-1, u)).
    let mut prev: Vec<Vec<f64>> = (0..=n).map(|_| vec![1.0]).collect(); // i = 0: U = 0 only
    for i in 1..=m {
        let mut cur: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
        cur.push(vec![1.0]); // j = 0
        for j in 1..=n {
            let mut row = vec![0.0; i * j + 1];
            for (u, c) in prev[j].iter().enumerate() {
                row[u + j] += c;
            }
            for (u, c) in cur[j - 1].iter().enumerate() {
                row[u] += c;
            }
            cur.push(row);
        }
        prev = cur;
    }
    let counts = &prev[n];
    let total: f64 = counts.iter().sum();
    let mut acc = 0.0;
    counts
        .iter()
        .map(|c| {
            acc += c;
            acc / total
        })
        .collect()
}

/// The shift `b - a` (Hodges–Lehmann) with the exact Mann–Whitney interval at `level`. When the
/// samples are too small for any interval at that level (fewer than 4 rounds each at 95%), the
/// interval is unbounded: no difference can be claimed. `None` if either side is empty.
pub fn shift_interval(a: &[f64], b: &[f64], level: f64) -> Option<Interval> {
    let (a, b) = (sorted(a), sorted(b));
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut diffs: Vec<f64> = b
        .iter()
        .flat_map(|y| a.iter().map(move |x| y - x))
        .collect();
    diffs.sort_by(f64::total_cmp);
    let estimate = median(&diffs)?;
    let cdf = mann_whitney_cdf(a.len(), b.len());
    let tail = (1.0 - level) / 2.0;
    // Largest k with P(U <= k-1) <= tail; the interval is [d(k), d(mn+1-k)] (1-based).
    let k = (1..=diffs.len().div_ceil(2))
        .take_while(|&k| cdf[k - 1] <= tail)
        .last();
    Some(match k {
        Some(k) => Interval {
            estimate,
            lo: diffs[k - 1],
            hi: diffs[diffs.len() - k],
            coverage: 1.0 - 2.0 * cdf[k - 1],
        },
        None => Interval {
            estimate,
            lo: f64::NEG_INFINITY,
            hi: f64::INFINITY,
            coverage: 1.0,
        },
    })
}

/// The ratio `b / a` (Hodges–Lehmann on the logarithms) with its interval; `None` unless every
/// value is positive.
pub fn ratio_interval(a: &[f64], b: &[f64], level: f64) -> Option<Interval> {
    if a.iter().chain(b).any(|&x| x.is_nan() || x <= 0.0) {
        return None;
    }
    let ln = |v: &[f64]| v.iter().map(|x| x.ln()).collect::<Vec<_>>();
    let s = shift_interval(&ln(a), &ln(b), level)?;
    Some(Interval {
        estimate: s.estimate.exp(),
        lo: s.lo.exp(),
        hi: s.hi.exp(),
        coverage: s.coverage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*) and normal noise by Box–Muller: the
    /// tests are about statistics, so their randomness is fixed.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self, mean: f64, sd: f64) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            mean + sd * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
        fn sample(&mut self, n: usize, mean: f64, sd: f64) -> Vec<f64> {
            (0..n).map(|_| self.normal(mean, sd)).collect()
        }
    }

    #[test]
    fn medians_and_their_exact_coverage() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        // 5 rounds: the range, 1 - 2/32.
        let i = median_interval(&[5.0, 1.0, 4.0, 2.0, 3.0], LEVEL).unwrap();
        assert_eq!((i.estimate, i.lo, i.hi), (3.0, 1.0, 5.0));
        assert!((i.coverage - 0.9375).abs() < 1e-12, "{i:?}");
        // 6 rounds: the range covers 1 - 2/64 = 96.9% >= 95%.
        let i = median_interval(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], LEVEL).unwrap();
        assert_eq!((i.lo, i.hi), (1.0, 6.0));
        assert!((i.coverage - 0.96875).abs() < 1e-12);
        // 3 rounds: only 75%, and said so.
        let i = median_interval(&[1.0, 2.0, 3.0], LEVEL).unwrap();
        assert!((i.coverage - 0.75).abs() < 1e-12);
        // 20 rounds: the 6th and 15th values (coverage 95.9%), not the range.
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        let i = median_interval(&xs, LEVEL).unwrap();
        assert_eq!((i.lo, i.hi), (6.0, 15.0));
        assert!(i.coverage >= 0.95 && i.coverage < 0.97, "{i:?}");
    }

    #[test]
    fn the_mann_whitney_distribution_matches_the_tables() {
        // m = n = 5: 252 arrangements; U = 0, 1, 2, 3 have 1, 1, 2, 3 of them.
        let cdf = mann_whitney_cdf(5, 5);
        assert_eq!(cdf.len(), 26);
        for (u, expected) in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 7.0)] {
            assert!((cdf[u] - expected / 252.0).abs() < 1e-12, "U <= {u}");
        }
        assert!((cdf[25] - 1.0).abs() < 1e-12);
        // Symmetric: P(U <= u) = 1 - P(U <= mn - u - 1).
        let cdf = mann_whitney_cdf(4, 7);
        for u in 0..28 {
            assert!((cdf[u] - (1.0 - cdf[28 - u - 1])).abs() < 1e-12);
        }
    }

    #[test]
    fn identical_inputs_show_no_difference() {
        let a = [101.0, 97.0, 103.0, 99.0, 100.0, 98.0];
        let s = shift_interval(&a, &a, LEVEL).unwrap();
        assert_eq!(s.estimate, 0.0);
        assert!(!s.excludes(0.0), "{s:?}");
        let r = ratio_interval(&a, &a, LEVEL).unwrap();
        assert!((r.estimate - 1.0).abs() < 1e-12);
        assert!(!r.excludes(1.0), "{r:?}");
    }

    #[test]
    fn a_clear_shift_is_detected_with_its_size() {
        // n = m = 5, fully separated: the exact interval is [d(3), d(23)] at 96.8%.
        let a = [100.0, 102.0, 98.0, 101.0, 99.0];
        let b = [110.0, 112.0, 108.0, 111.0, 109.0];
        let s = shift_interval(&a, &b, LEVEL).unwrap();
        assert_eq!(s.estimate, 10.0);
        assert!(s.excludes(0.0) && s.lo > 5.0 && s.hi < 15.0, "{s:?}");
        assert!((s.coverage - (1.0 - 2.0 * 4.0 / 252.0)).abs() < 1e-12);
        let r = ratio_interval(&a, &b, LEVEL).unwrap();
        assert!(r.excludes(1.0) && (r.estimate - 1.1).abs() < 0.01, "{r:?}");
        // The other way round: a negative shift, a ratio below 1.
        let s = shift_interval(&b, &a, LEVEL).unwrap();
        assert!(s.hi < 0.0, "{s:?}");
    }

    #[test]
    fn too_few_rounds_can_never_claim_a_difference() {
        // 3 rounds each: the smallest two-sided p-value is 0.1, so no 95% interval exists.
        let s = shift_interval(&[1.0, 2.0, 3.0], &[100.0, 101.0, 102.0], LEVEL).unwrap();
        assert!(s.lo.is_infinite() && s.hi.is_infinite(), "{s:?}");
        assert!(!s.excludes(0.0));
        assert!(ratio_interval(&[1.0, 0.0], &[1.0, 2.0], LEVEL).is_none());
    }

    #[test]
    fn false_claims_stay_rare_and_real_shifts_are_found() {
        // 2,000 synthetic experiments of 6 rounds per side, noise sd 15% (this machine's drift).
        let mut rng = Rng(0x6b72_7063);
        let runs = 2_000;
        let mut false_claims = 0;
        let mut found = 0;
        let mut covered = 0;
        for _ in 0..runs {
            let a = rng.sample(6, 100.0, 15.0);
            let same = rng.sample(6, 100.0, 15.0);
            let shifted = rng.sample(6, 150.0, 15.0);
            if shift_interval(&a, &same, LEVEL).unwrap().excludes(0.0) {
                false_claims += 1;
            }
            if shift_interval(&a, &shifted, LEVEL).unwrap().excludes(0.0) {
                found += 1;
            }
            if !median_interval(&a, LEVEL).unwrap().excludes(100.0) {
                covered += 1;
            }
        }
        // Nominal: at most 5% (exactly 4.1% for 6 vs 6) false claims; 96.9% coverage.
        assert!(
            false_claims <= runs * 6 / 100,
            "{false_claims} false claims of {runs}"
        );
        assert!(
            found >= runs * 95 / 100,
            "a 3-sd shift found only {found} times of {runs}"
        );
        assert!(
            covered >= runs * 95 / 100,
            "median covered {covered} times of {runs}"
        );
    }
}
