//! `krpc-lab table`: several experiments (a sweep) as one markdown table, the kernel commit's
//! "before" and "after" side by side: per regime and load, the baseline's and one other
//! configuration's medians, their ratio with its interval, and which configuration is best.

use std::fmt::Write as _;

use crate::{
    record::{Experiment, Load},
    stats::{LEVEL, median},
    summary::{Compare, FIGURES, Verdict, compare},
    words::best_of,
};

/// What sets a regime apart: payload, method, handoff, defer_max, cores, TLS.
pub fn regime(exp: &Experiment) -> String {
    let c = exp.configs.first();
    let field = |f: fn(&crate::record::ConfigRecord) -> Option<String>| {
        c.and_then(f).unwrap_or_else(|| "?".to_owned())
    };
    format!(
        "{} B {}, handoff {}, defer-max {}, {} cores, TLS {}",
        exp.load_settings.payload_bytes,
        exp.load_settings.mix,
        field(|c| c.handoff.clone()),
        field(|c| c.defer_max.map(|d| d.to_string())),
        field(|c| c.cores.map(|d| d.to_string())),
        exp.tls
    )
}

fn cell(exp: &Experiment, load: Load, after: &str, key: &str) -> String {
    let Some(figure) = FIGURES.iter().find(|f| f.key == key) else {
        return "-".to_owned();
    };
    let values = |label: &str| -> Vec<f64> {
        exp.trials_of(label, load)
            .iter()
            .filter_map(|t| (figure.value)(t))
            .collect()
    };
    let (before, now) = (values(&exp.baseline), values(after));
    let (Some(b), Some(a)) = (median(&before), median(&now)) else {
        return "-".to_owned();
    };
    let mut out = format!("{} → {}", figure.unit.format(b), figure.unit.format(a));
    if let Some(cmp) = compare(figure, &before, &now) {
        let verdict = match cmp.verdict {
            Verdict::Better => " **better**",
            Verdict::Worse => " **worse**",
            Verdict::NoDifference => " same",
            Verdict::TooFewRounds => "",
        };
        let _ = write!(out, ", {}{verdict}", cmp.describe());
        debug_assert!(cmp.kind == Compare::Ratio || cmp.kind == Compare::Difference);
    }
    out
}

/// The markdown table: one row per experiment and load.
pub fn markdown(exps: &[Experiment], after: &str) -> String {
    let mut out = String::new();
    let before = exps.first().map_or("baseline", |e| e.baseline.as_str());
    let _ = writeln!(
        out,
        "| regime | load | RPC/s {before} → {after} | p99 | server CPU/RPC | free-path share | best RPC/s | best p99 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for exp in exps {
        for &load in &exp.loads {
            let best = |key: &str| match best_of(exp, load, key) {
                Some(b) if b.not_beaten.is_empty() => format!("**{}**, beyond noise", b.label),
                Some(b) => format!("{} (not beyond noise)", b.label),
                None => "-".to_owned(),
            };
            let rpc = if load.is_closed() {
                cell(exp, load, after, "rpc_s")
            } else {
                "asked rate".to_owned()
            };
            let _ = writeln!(
                out,
                "| {} | {load} | {rpc} | {} | {} | {} | {} | {} |",
                regime(exp),
                cell(exp, load, after, "p99"),
                cell(exp, load, after, "server_cpu"),
                cell(exp, load, after, "free_path"),
                if load.is_closed() {
                    best("rpc_s")
                } else {
                    "-".to_owned()
                },
                best("p99"),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nEach cell: median of the {before} rounds → median of the {after} rounds, then \
         {after}/{before} as a ratio [95% interval] (Hodges-Lehmann, exact Mann-Whitney); \
         **better**/**worse** only where the interval leaves out 1. Intervals at {:.0}%.",
        LEVEL * 100.0
    );
    out
}
