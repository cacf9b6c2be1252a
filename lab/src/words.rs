//! The sentences of a report. Each says what the intervals say and no more: "no difference
//! beyond noise" when that is what was measured, a direction only when the interval leaves
//! "no difference" out, every ratio with its interval.

use crate::{
    record::{Experiment, Trial},
    stats::{LEVEL, median, median_interval},
    summary::{
        Better, Compare, ConfigSummary, FIGURES, LoadSummary, POOL_FIGURES, Verdict, compare,
    },
};

/// Notes about the whole run, before any table: where it ran and how to read the intervals.
pub(crate) fn header(exp: &Experiment) -> Vec<String> {
    let mut notes = vec![format!("CPUs: {}.", exp.cpus.note)];
    if exp.build != "release" {
        notes.push(
            "WARNING: a debug build: CPU and latency figures do not represent krpc (use \
             --release)."
                .to_owned(),
        );
    }
    notes.push(if exp.fresh_servers {
        "Each trial ran against a server started for it; configurations interleaved, the order \
         rotated every round."
            .to_owned()
    } else {
        "Remote servers: not restarted between trials (each figure is a difference of the \
         server's counters over the trial's window)."
            .to_owned()
    });
    let rounds = exp.rounds;
    let coverage = median_interval(&vec![0.0; rounds.max(1)], LEVEL).map_or(0.0, |i| i.coverage);
    notes.push(format!(
        "Intervals: a median's is [x(k), x(n+1-k)] of its {rounds} rounds (covers {:.1}%{}); a \
         difference's is Hodges-Lehmann with the exact Mann-Whitney 95% interval, a ratio the \
         same on logarithms. A difference is claimed only when its interval leaves out \"no \
         difference\".",
        coverage * 100.0,
        if coverage < LEVEL {
            ": fewer rounds than a 95% interval needs"
        } else {
            ""
        },
    ));
    notes.push(match exp.free_path_source {
        Some(source) => format!(
            "Free-path share: pool free-path CPU time / server CPU time; from {}.",
            source.describe()
        ),
        None => "Free-path share: the server exports no free-path time.".to_owned(),
    });
    notes.push(
        "Server CPU/RPC: the server's runtime threads' own CPU clocks \
         (krpc_server_cpu_seconds_total) over the RPCs it finished in the same window."
            .to_owned(),
    );
    notes
}

fn cell_median(c: &ConfigSummary, key: &str) -> Option<f64> {
    let i = FIGURES.iter().position(|f| f.key == key)?;
    c.cells[i].interval.map(|i| i.estimate)
}

/// Warnings about one load: errors, rates not kept, a load generator that is the bottleneck.
pub(crate) fn warn<'a>(
    exp: &'a Experiment,
    summary: &mut LoadSummary,
    trials_of: &dyn Fn(&str) -> Vec<&'a Trial>,
) {
    let load = summary.load;
    for c in &summary.configs {
        let trials = trials_of(&c.label);
        let with_errors: Vec<&&Trial> = trials
            .iter()
            .filter(|t| t.result.error_count() > 0)
            .collect();
        if !with_errors.is_empty() {
            let total: u64 = with_errors.iter().map(|t| t.result.error_count()).sum();
            summary.warnings.push(format!(
                "{}: {total} failed RPCs in {} of {} rounds.",
                c.label,
                with_errors.len(),
                trials.len()
            ));
        }
        if c.short_rounds > 0 {
            summary.warnings.push(format!(
                "{}: fell short of the asked {load} in {} of {} rounds; its latencies include \
                 the queueing this caused.",
                c.label,
                c.short_rounds,
                trials.len()
            ));
        }
    }
    if !load.is_closed() {
        return;
    }
    // At saturation: is it the server that saturates, or the load generator?
    for c in &summary.configs {
        let trials = trials_of(&c.label);
        let busy = |f: fn(&Trial) -> Option<f64>| -> Option<f64> {
            median(&trials.iter().filter_map(|t| f(t)).collect::<Vec<_>>())
        };
        let (Some(gen_busy), Some(srv_busy)) = (
            busy(Trial::loadgen_busy_cores),
            busy(Trial::server_busy_cores),
        ) else {
            continue;
        };
        // The server's cores, as it said itself (Info), embedded or remote.
        let cores = median(
            &trials
                .iter()
                .filter_map(|t| Some(f64::from(t.result.server.as_ref()?.cores)))
                .collect::<Vec<_>>(),
        )
        .unwrap_or(1.0);
        let gen_cpus = exp.cpus.loadgen.len() as f64;
        let gen_us = cell_median(c, "loadgen_cpu").unwrap_or(f64::NAN);
        let srv_us = cell_median(c, "server_cpu").unwrap_or(f64::NAN);
        if exp.cpus.disjoint {
            if gen_busy >= 0.9 * gen_cpus && srv_busy < 0.9 * cores {
                summary.warnings.push(format!(
                    "{}: the LOAD GENERATOR, not the server, is the bottleneck: it kept its {} \
                     CPU(s) {:.0}% busy ({gen_us:.1} us per RPC) while the server used {srv_busy:.2} \
                     of its {cores} cores. Give it more CPUs (--loadgen-cpus) or threads.",
                    c.label,
                    gen_cpus,
                    100.0 * gen_busy / gen_cpus
                ));
            }
        } else if gen_busy >= srv_busy {
            summary.warnings.push(format!(
                "{}: on shared CPUs the LOAD GENERATOR took {:.0}% of the CPU time ({gen_us:.1} us \
                 per RPC against the server's {srv_us:.1} us): the RPC/s ceiling is as much the \
                 generator's as the server's. Disjoint CPU sets (a host with 4 or more CPUs) \
                 remove it.",
                c.label,
                100.0 * gen_busy / (gen_busy + srv_busy)
            ));
        }
    }
}

/// The conclusions about one load.
pub(crate) fn conclude<'a>(
    exp: &'a Experiment,
    summary: &mut LoadSummary,
    trials_of: &dyn Fn(&str) -> Vec<&'a Trial>,
) {
    let load = summary.load;
    let fewest = summary.configs.iter().map(|c| c.rounds).min().unwrap_or(0);
    if fewest < 4 {
        summary.words.push(format!(
            "With {fewest} rounds per configuration no difference can be established at 95% (it \
             takes at least 4 each); the intervals below show the spread, not a verdict. \
             `krpc-lab experiment` runs 6."
        ));
    }
    for c in summary.configs.iter().filter(|c| c.label != exp.baseline) {
        let mut found = Vec::new();
        let mut same = Vec::new();
        let mut untold = Vec::new();
        for cmp in &c.comparisons {
            let name = cmp.figure.name;
            let no_change = if cmp.kind == Compare::Ratio { 1.0 } else { 0.0 };
            match cmp.verdict {
                Verdict::Better | Verdict::Worse => found.push(format!(
                    "{} {name} ({}, {})",
                    if cmp.interval.lo > no_change {
                        "higher"
                    } else {
                        "lower"
                    },
                    cmp.describe(),
                    if cmp.verdict == Verdict::Better {
                        "better"
                    } else {
                        "worse"
                    }
                )),
                Verdict::NoDifference => same.push(name),
                Verdict::TooFewRounds => untold.push(name),
            }
        }
        let mut parts = found;
        if !same.is_empty() {
            parts.push(format!("no difference beyond noise in {}", same.join(", ")));
        }
        if !untold.is_empty() {
            parts.push(format!("too few rounds to tell in {}", untold.join(", ")));
        }
        summary.words.push(format!(
            "{} vs {}: {}.",
            c.label,
            exp.baseline,
            parts.join("; ")
        ));
    }
    // The question the experiment exists for: is one configuration best, beyond noise?
    let judged: Vec<&str> = if load.is_closed() {
        vec!["rpc_s", "p99"]
    } else {
        vec!["p99"]
    };
    for key in judged {
        let Some(figure) = FIGURES.iter().chain(POOL_FIGURES).find(|f| f.key == key) else {
            continue;
        };
        let values = |label: &str| -> Vec<f64> {
            trials_of(label)
                .iter()
                .filter_map(|t| (figure.value)(t))
                .collect()
        };
        let mut medians: Vec<(&str, f64)> = summary
            .configs
            .iter()
            .filter_map(|c| Some((c.label.as_str(), median(&values(&c.label))?)))
            .collect();
        if medians.len() < 2 {
            continue;
        }
        medians.sort_by(|a, b| a.1.total_cmp(&b.1));
        let best = if figure.better == Better::Higher {
            medians[medians.len() - 1].0
        } else {
            medians[0].0
        };
        let not_beaten: Vec<String> = summary
            .configs
            .iter()
            .filter(|c| c.label != best)
            .filter_map(|c| {
                let cmp = compare(figure, &values(&c.label), &values(best))?;
                (cmp.verdict != Verdict::Better)
                    .then(|| format!("{} ({})", c.label, cmp.describe()))
            })
            .collect();
        summary.words.push(if not_beaten.is_empty() {
            format!(
                "{best} has the best {} of the {} at {load}, beyond noise against each.",
                figure.name,
                summary.configs.len()
            )
        } else {
            format!(
                "Best median {} at {load}: {best}; not beyond noise against {}.",
                figure.name,
                not_beaten.join(", ")
            )
        });
    }
}
