//! From trials to what a reader may conclude: per configuration and load, the median of each
//! figure with its interval; against the baseline, the difference (a ratio, always with its
//! interval) and whether it is beyond noise; and sentences that say only that.

use crate::{
    record::{Experiment, Load, Trial},
    stats::{Interval, LEVEL, median_interval, ratio_interval, shift_interval},
};

/// Which way is better for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Shown, never judged.
    Neither,
}

/// How a figure is compared with the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// `config / baseline`, with its interval (figures that are always positive).
    Ratio,
    /// `config - baseline`, with its interval (figures that may be 0).
    Difference,
    /// Not compared.
    No,
}

/// A figure of a trial.
#[derive(Clone, Copy, Debug)]
pub struct Figure {
    pub key: &'static str,
    pub name: &'static str,
    pub better: Better,
    pub compare: Compare,
    pub value: fn(&Trial) -> Option<f64>,
    pub unit: Unit,
}

/// How a figure's values print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Rate,
    Micros,
    Percent,
    Count,
    PerThousand,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        if !v.is_finite() {
            return if v > 0.0 { "+inf" } else { "-inf" }.to_owned();
        }
        match self {
            Unit::Rate if v.abs() >= 10_000.0 => format!("{:.1}k", v / 1e3),
            Unit::Rate => format!("{v:.0}"),
            Unit::Micros if v.abs() >= 1_000.0 => format!("{:.2}ms", v / 1e3),
            Unit::Micros if v.abs() >= 100.0 => format!("{v:.0}us"),
            Unit::Micros => format!("{v:.1}us"),
            Unit::Percent => format!("{:.2}%", v * 100.0),
            Unit::Count => format!("{v:.0}"),
            Unit::PerThousand => format!("{v:.1}"),
        }
    }
}

fn pct(t: &Trial, p: f64) -> Option<f64> {
    (t.result.latency.count > 0).then(|| t.result.latency.at(p) as f64)
}

fn pool_share(t: &Trial, part: fn(&crate::scrape::PoolCounters) -> f64) -> Option<f64> {
    let frees = t.server.pool.frees();
    (frees > 0.0).then(|| part(&t.server.pool) / frees)
}

/// Every figure the experiment reports, in table order.
pub const FIGURES: &[Figure] = &[
    Figure {
        key: "rpc_s",
        name: "RPC/s",
        better: Better::Higher,
        compare: Compare::Ratio,
        value: |t| Some(t.result.achieved_rate),
        unit: Unit::Rate,
    },
    Figure {
        key: "p50",
        name: "p50",
        better: Better::Lower,
        compare: Compare::Ratio,
        value: |t| pct(t, 50.0),
        unit: Unit::Micros,
    },
    Figure {
        key: "p99",
        name: "p99",
        better: Better::Lower,
        compare: Compare::Ratio,
        value: |t| pct(t, 99.0),
        unit: Unit::Micros,
    },
    Figure {
        key: "p999",
        name: "p99.9",
        better: Better::Lower,
        compare: Compare::Ratio,
        value: |t| pct(t, 99.9),
        unit: Unit::Micros,
    },
    Figure {
        key: "errors",
        name: "errors",
        better: Better::Neither,
        compare: Compare::No,
        value: |t| Some(t.result.error_count() as f64),
        unit: Unit::Count,
    },
    Figure {
        key: "server_cpu",
        name: "server CPU/RPC",
        better: Better::Lower,
        compare: Compare::Ratio,
        value: Trial::server_cpu_per_rpc_us,
        unit: Unit::Micros,
    },
    Figure {
        key: "free_path",
        name: "free-path share",
        better: Better::Lower,
        compare: Compare::Ratio,
        value: Trial::free_path_share,
        unit: Unit::Percent,
    },
    Figure {
        key: "loadgen_cpu",
        name: "loadgen CPU/RPC",
        better: Better::Neither,
        compare: Compare::No,
        value: Trial::loadgen_cpu_per_rpc_us,
        unit: Unit::Micros,
    },
];

/// Pool figures: shown per configuration; misses and frees to the allocator are compared.
pub const POOL_FIGURES: &[Figure] = &[
    Figure {
        key: "misses",
        name: "misses/1k allocs",
        better: Better::Lower,
        compare: Compare::Difference,
        value: |t| {
            (t.server.pool.allocs > 0.0).then(|| 1e3 * t.server.pool.misses / t.server.pool.allocs)
        },
        unit: Unit::PerThousand,
    },
    Figure {
        key: "local",
        name: "local frees",
        better: Better::Neither,
        compare: Compare::No,
        value: |t| pool_share(t, |p| p.local_frees),
        unit: Unit::Percent,
    },
    Figure {
        key: "deferred",
        name: "deferred",
        better: Better::Neither,
        compare: Compare::No,
        value: |t| pool_share(t, |p| p.deferred_frees),
        unit: Unit::Percent,
    },
    Figure {
        key: "to_allocator",
        name: "to allocator",
        better: Better::Lower,
        compare: Compare::Difference,
        value: |t| pool_share(t, |p| p.overflow_frees),
        unit: Unit::Percent,
    },
    Figure {
        key: "kicks",
        name: "kicks/1k RPCs",
        better: Better::Neither,
        compare: Compare::No,
        value: |t| (t.server.rpcs > 0.0).then(|| 1e3 * t.server.pool.kicks / t.server.rpcs),
        unit: Unit::PerThousand,
    },
];

/// A figure of one configuration under one load: every round's value, the median, the interval.
#[derive(Clone, Debug)]
pub struct Cell {
    pub values: Vec<f64>,
    pub interval: Option<Interval>,
}

impl Cell {
    fn of(trials: &[&Trial], figure: &Figure) -> Self {
        let values: Vec<f64> = trials.iter().filter_map(|t| (figure.value)(t)).collect();
        Self {
            interval: median_interval(&values, LEVEL),
            values,
        }
    }
}

/// The verdict on one difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Better,
    Worse,
    /// The interval holds "no difference".
    NoDifference,
    /// Too few rounds for any interval at 95%.
    TooFewRounds,
}

/// One configuration against the baseline on one figure.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub figure: Figure,
    pub kind: Compare,
    pub interval: Interval,
    pub verdict: Verdict,
}

impl Comparison {
    /// `×1.04 [0.99, 1.09]` or `+3.1 [1.2, 5.0]` (in the figure's unit).
    pub fn describe(&self) -> String {
        let i = &self.interval;
        if self.verdict == Verdict::TooFewRounds {
            let estimate = match self.kind {
                Compare::Ratio => format!("x{:.2}", i.estimate),
                _ => self.figure.unit.format(i.estimate),
            };
            return format!("{estimate} [no interval: too few rounds]");
        }
        match self.kind {
            Compare::Ratio => format!("x{:.2} [{:.2}, {:.2}]", i.estimate, i.lo, i.hi),
            _ => {
                let f = |v: f64| {
                    let s = self.figure.unit.format(v);
                    if v > 0.0 { format!("+{s}") } else { s }
                };
                format!("{} [{}, {}]", f(i.estimate), f(i.lo), f(i.hi))
            }
        }
    }
}

/// Compares `config`'s values with `base`'s on `figure`; `None` where the figure is not
/// compared or a side has no values.
pub fn compare(figure: &Figure, base: &[f64], config: &[f64]) -> Option<Comparison> {
    let (interval, no_change) = match figure.compare {
        Compare::No => return None,
        Compare::Ratio => (
            ratio_interval(base, config, LEVEL).or_else(|| shift_interval(base, config, LEVEL))?,
            1.0,
        ),
        Compare::Difference => (shift_interval(base, config, LEVEL)?, 0.0),
    };
    // A ratio that fell back to a difference (a zero among the values) is a difference.
    let kind = if figure.compare == Compare::Ratio && ratio_interval(base, config, LEVEL).is_none()
    {
        Compare::Difference
    } else {
        figure.compare
    };
    let no_change = if kind == Compare::Difference {
        0.0
    } else {
        no_change
    };
    // Too few rounds: the interval is unbounded (for a ratio, 0 to infinity).
    let verdict = if interval.hi.is_infinite() {
        Verdict::TooFewRounds
    } else if !interval.excludes(no_change) {
        Verdict::NoDifference
    } else {
        let higher = interval.lo > no_change;
        match (figure.better, higher) {
            (Better::Higher, true) | (Better::Lower, false) => Verdict::Better,
            _ => Verdict::Worse,
        }
    };
    Some(Comparison {
        figure: *figure,
        kind,
        interval,
        verdict,
    })
}

/// One configuration under one load.
#[derive(Clone, Debug)]
pub struct ConfigSummary {
    pub label: String,
    pub rounds: usize,
    pub cells: Vec<Cell>,
    pub pool: Vec<Cell>,
    /// Against the baseline (empty for the baseline itself).
    pub comparisons: Vec<Comparison>,
    /// Rounds whose load generator fell short of the asked rate (open loop).
    pub short_rounds: usize,
}

/// Everything about one load point.
#[derive(Clone, Debug)]
pub struct LoadSummary {
    pub load: Load,
    pub configs: Vec<ConfigSummary>,
    /// Warnings a reader must see first (errors, rates not kept, a generator bottleneck).
    pub warnings: Vec<String>,
    /// What the data says, in words.
    pub words: Vec<String>,
}

impl LoadSummary {
    /// Whether throughput was measured (closed loop) rather than asked (a rate every round kept).
    pub fn throughput_measured(&self) -> bool {
        self.load.is_closed() || self.configs.iter().any(|c| c.short_rounds > 0)
    }

    pub fn figures(&self) -> Vec<(usize, &'static Figure)> {
        FIGURES
            .iter()
            .enumerate()
            .filter(|(_, f)| f.key != "rpc_s" || self.throughput_measured())
            .filter(|(_, f)| f.key != "loadgen_cpu" || self.load.is_closed())
            .collect()
    }
}

/// Summarises every load of `exp`.
pub fn summarize(exp: &Experiment) -> Vec<LoadSummary> {
    exp.loads
        .iter()
        .map(|&load| summarize_load(exp, load))
        .collect()
}

fn summarize_load(exp: &Experiment, load: Load) -> LoadSummary {
    let trials_of = |label: &str| -> Vec<&Trial> { exp.trials_of(label, load) };
    let base_trials = trials_of(&exp.baseline);
    let values = |trials: &[&Trial], f: &Figure| -> Vec<f64> {
        trials.iter().filter_map(|t| (f.value)(t)).collect()
    };
    let mut configs = Vec::new();
    for c in &exp.configs {
        let trials = trials_of(&c.label);
        let is_base = c.label == exp.baseline;
        let comparisons = if is_base {
            Vec::new()
        } else {
            FIGURES
                .iter()
                .chain(POOL_FIGURES)
                .filter(|f| f.key != "rpc_s" || load.is_closed())
                .filter_map(|f| compare(f, &values(&base_trials, f), &values(&trials, f)))
                .collect()
        };
        configs.push(ConfigSummary {
            label: c.label.clone(),
            rounds: trials.len(),
            cells: FIGURES.iter().map(|f| Cell::of(&trials, f)).collect(),
            pool: POOL_FIGURES.iter().map(|f| Cell::of(&trials, f)).collect(),
            comparisons,
            short_rounds: trials.iter().filter(|t| !t.result.kept_up()).count(),
        });
    }
    let mut summary = LoadSummary {
        load,
        configs,
        warnings: Vec::new(),
        words: Vec::new(),
    };
    crate::words::warn(exp, &mut summary, &trials_of);
    crate::words::conclude(exp, &mut summary, &trials_of);
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(key: &str) -> &'static Figure {
        FIGURES
            .iter()
            .chain(POOL_FIGURES)
            .find(|f| f.key == key)
            .unwrap()
    }

    #[test]
    fn verdicts_follow_the_intervals_and_the_better_direction() {
        let base = [100.0, 101.0, 99.0, 100.5, 99.5, 100.2];
        let higher = [120.0, 121.0, 119.0, 120.5, 119.5, 120.2];
        let c = compare(fig("rpc_s"), &base, &higher).unwrap();
        assert_eq!(c.verdict, Verdict::Better, "more RPC/s is better");
        assert!(c.describe().starts_with("x1.20 ["), "{}", c.describe());
        let c = compare(fig("p99"), &base, &higher).unwrap();
        assert_eq!(c.verdict, Verdict::Worse, "a higher p99 is worse");
        let c = compare(fig("p99"), &base, &base).unwrap();
        assert_eq!(c.verdict, Verdict::NoDifference);
        let c = compare(fig("p99"), &base[..3], &higher[..3]).unwrap();
        assert_eq!(c.verdict, Verdict::TooFewRounds);
        assert!(compare(fig("errors"), &base, &higher).is_none());
        // Zeros: a ratio cannot be formed, the difference is compared instead.
        let c = compare(fig("misses"), &[0.0; 6], &[5.0, 6.0, 5.5, 7.0, 6.5, 5.2]).unwrap();
        assert_eq!((c.kind, c.verdict), (Compare::Difference, Verdict::Worse));
        assert!(c.describe().starts_with('+'), "{}", c.describe());
    }

    #[test]
    fn units_print_compactly() {
        assert_eq!(Unit::Rate.format(61_234.0), "61.2k");
        assert_eq!(Unit::Rate.format(3_000.0), "3000");
        assert_eq!(Unit::Micros.format(23.14), "23.1us");
        assert_eq!(Unit::Micros.format(1_500.0), "1.50ms");
        assert_eq!(Unit::Percent.format(0.0192), "1.92%");
    }
}
