//! The report on a terminal: per load, the medians with their intervals, the pool's counts, the
//! warnings and the words. Every ratio carries its interval.

use std::fmt::Write as _;

use crate::{
    record::Experiment,
    summary::{Cell, Figure, LoadSummary, POOL_FIGURES, summarize},
    words::header,
};

/// `61.2k [58.1k, 63.9k]`.
pub fn cell_text(figure: &Figure, cell: &Cell) -> String {
    match cell.interval {
        Some(i) if i.lo == i.hi => figure.unit.format(i.estimate),
        Some(i) => format!(
            "{} [{}, {}]",
            figure.unit.format(i.estimate),
            figure.unit.format(i.lo),
            figure.unit.format(i.hi)
        ),
        None => "-".to_owned(),
    }
}

/// Left-aligns the first column, right-aligns the rest, a rule under the header.
fn align(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "{}", rule.join("  "));
        }
    }
    out
}

/// The medians table of one load (rows: configurations).
pub fn medians_rows(s: &LoadSummary) -> Vec<Vec<String>> {
    let figures = s.figures();
    let mut rows = vec![
        std::iter::once("config".to_owned())
            .chain(figures.iter().map(|(_, f)| f.name.to_owned()))
            .collect::<Vec<_>>(),
    ];
    for c in &s.configs {
        let mut row = vec![c.label.clone()];
        row.extend(figures.iter().map(|&(i, f)| cell_text(f, &c.cells[i])));
        rows.push(row);
    }
    rows
}

/// The pool table of one load.
pub fn pool_rows(s: &LoadSummary) -> Vec<Vec<String>> {
    let mut rows = vec![
        std::iter::once("config".to_owned())
            .chain(POOL_FIGURES.iter().map(|f| f.name.to_owned()))
            .collect::<Vec<_>>(),
    ];
    for c in &s.configs {
        let mut row = vec![c.label.clone()];
        row.extend(
            POOL_FIGURES
                .iter()
                .zip(&c.pool)
                .map(|(f, cell)| cell_text(f, cell)),
        );
        rows.push(row);
    }
    rows
}

/// The whole report.
pub fn report(exp: &Experiment) -> String {
    let mut out = String::new();
    let s = &exp.load_settings;
    let _ = writeln!(
        out,
        "krpc-lab {}: {} configurations x {} load(s) x {} rounds; {} B {} over TLS {}, {} \
         connections x {} in flight, {:.1} s measured after {:.1} s warm-up; {:.0} s in all.",
        exp.kind,
        exp.configs.len(),
        exp.loads.len(),
        exp.rounds,
        s.payload_bytes,
        s.mix,
        exp.tls,
        s.connections,
        s.concurrency,
        s.duration_s,
        s.warmup_s,
        exp.wall_s
    );
    for note in header(exp) {
        let _ = writeln!(out, "  {note}");
    }
    for load in summarize(exp) {
        let _ = writeln!(
            out,
            "\n== {} (median [interval] of {} rounds; baseline {}) ==",
            load.load, exp.rounds, exp.baseline
        );
        for w in &load.warnings {
            let _ = writeln!(out, "WARNING: {w}");
        }
        out.push_str(&align(&medians_rows(&load)));
        if !load.throughput_measured() {
            let _ = writeln!(
                out,
                "(RPC/s not shown: every round kept the asked {}.)",
                load.load
            );
        }
        let _ = writeln!(out, "\nwhere the servers freed request buffers:");
        out.push_str(&align(&pool_rows(&load)));
        let _ = writeln!(out);
        for w in &load.words {
            let _ = writeln!(out, "{w}");
        }
    }
    out
}
