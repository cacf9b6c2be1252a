//! `krpc-loadgen report`: runs side by side. A table on stdout, and a self-contained HTML file
//! (no scripts, no external assets) with the percentile spectrum of every run (x: percentile on
//! the usual 1/(1-p) log scale, y: latency, log scale) and, where a run measured it (closed loop,
//! or a target that fell short of the asked rate), their throughput.
//!
//! No ratio columns: one run of each is one sample, and a ratio of two samples says nothing about
//! noise. Repeated, interleaved rounds with intervals are `krpc-lab experiment`'s job.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::{
    error::Result,
    result::{RunResult, fmt_us},
};

/// Where each run's server freed its request buffers (runs that carry the pool's totals: the
/// demo's), or `None` when no run does.
pub fn pool_table(runs: &[RunResult]) -> Option<String> {
    if runs.iter().all(|r| r.server_pool.is_none()) {
        return None;
    }
    let mut rows = vec![
        [
            "run",
            "allocs",
            "misses",
            "local",
            "deferred",
            "to allocator",
            "kicks",
            "outstanding",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for r in runs {
        let Some(p) = &r.server_pool else { continue };
        rows.push(vec![
            r.label.clone(),
            p.allocs.to_string(),
            p.misses.to_string(),
            format!("{:.1}%", p.share_of_frees(p.local_frees)),
            format!("{:.1}%", p.share_of_frees(p.deferred_frees)),
            format!("{:.1}%", p.share_of_frees(p.overflow_frees)),
            p.kicks.to_string(),
            p.outstanding.to_string(),
        ]);
    }
    Some(align(&rows, 1))
}

/// Left-aligns the first `left` columns, right-aligns the rest, a rule under the header.
fn align(rows: &[Vec<String>], left: usize) -> String {
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
                if c < left {
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

/// The comparison table, one row per run.
pub fn table(runs: &[RunResult]) -> String {
    align(&comparison_rows(runs), 2)
}

/// Header and one row per run: what the text table and the HTML table both show.
fn comparison_rows(runs: &[RunResult]) -> Vec<Vec<String>> {
    let header = [
        "run", "server", "RPC/s", "p50", "p90", "p99", "p99.9", "p99.99", "max", "errors",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for r in runs {
        let l = &r.latency;
        let server = r.server.as_ref().map_or_else(
            || "-".to_owned(),
            |s| format!("{} {} {}", s.strategy, s.tls_mode, s.handoff),
        );
        let rate = match r.config.rate {
            Some(asked) if !r.kept_up() => format!("{:.0} (asked {asked}!)", r.achieved_rate),
            _ => format!("{:.0}", r.achieved_rate),
        };
        rows.push(vec![
            r.label.clone(),
            server,
            rate,
            fmt_us(l.at(50.0)),
            fmt_us(l.at(90.0)),
            fmt_us(l.at(99.0)),
            fmt_us(l.at(99.9)),
            fmt_us(l.at(99.99)),
            fmt_us(l.max_us),
            r.error_count().to_string(),
        ]);
    }
    rows
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// x positions of the spectrum: log10(1/(1-p)), 0 (p0) to 6 (p99.9999).
const X_MAX: f64 = 6.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML report. Fails only if a run's histogram does not decode.
pub fn html(runs: &[RunResult]) -> Result<String> {
    let histograms: Vec<Histogram<u64>> = runs
        .iter()
        .map(RunResult::histogram)
        .collect::<Result<_>>()?;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>krpc-loadgen report</title>\n\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
         td,th{{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:right}}td:first-child,th:first-child,td:nth-child(2){{text-align:left}}\
         .note{{color:#555;max-width:60em}}</style></head><body>\n<h1>krpc-loadgen report</h1>\n"
    );
    let _ = writeln!(
        out,
        "<p class=\"note\">Latency from the intended send time (coordinated omission corrected), \
         HdrHistogram, 3 significant digits. One run each: differences between runs may be \
         noise (krpc-lab experiment measures them with intervals).</p>"
    );
    let rows = comparison_rows(runs);
    out.push_str("<table>\n<tr>");
    for cell in &rows[0] {
        let _ = write!(out, "<th>{}</th>", escape(cell));
    }
    out.push_str("</tr>\n");
    for (i, row) in rows[1..].iter().enumerate() {
        // The run's name carries the colour of its line in the plots.
        let _ = write!(
            out,
            "<tr><td><span style=\"color:{}\">&#9632;</span> {}</td>",
            COLORS[i % COLORS.len()],
            escape(&row[0])
        );
        for cell in &row[1..] {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    if let Some(pool) = pool_table(runs) {
        out.push_str(
            "<h2>Where the server freed request buffers</h2>\n<p class=\"note\">Share of \
             frees: <b>local</b> straight onto a free list, <b>deferred</b> to the origin \
             core's (per-core) or the connection's (per-conn) defer list, <b>to allocator</b> \
             past the cap or a full defer list. Kicks: the origin core woken at half a defer \
             list.</p>\n<pre>",
        );
        out.push_str(&escape(&pool));
        out.push_str("</pre>\n");
    }
    out.push_str("<h2>Latency by percentile</h2>\n");
    out.push_str(&spectrum_svg(runs, &histograms));
    // A fixed-rate run that kept up delivered the asked rate: bars of equal length say nothing.
    if runs.iter().any(|r| r.config.rate.is_none() || !r.kept_up()) {
        out.push_str("<h2>Throughput</h2>\n");
        out.push_str(&throughput_svg(runs));
    } else {
        out.push_str(
            "<p class=\"note\">Every run is open loop and kept its asked rate: no throughput \
             chart (each bar would be the asked rate).</p>\n",
        );
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

fn spectrum_svg(runs: &[RunResult], histograms: &[Histogram<u64>]) -> String {
    let (w, h, left, bottom, top, right) = (900.0, 420.0, 70.0, 40.0, 20.0, 20.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    // y: log10 of microseconds, from the decade below the smallest p0 to the one above the max.
    let values = |hist: &Histogram<u64>| -> Vec<(f64, u64)> {
        (0..=(X_MAX * 20.0) as usize)
            .map(|i| {
                let x = i as f64 / 20.0;
                let q = 1.0 - 10f64.powf(-x);
                (x, hist.value_at_quantile(q).max(1))
            })
            .collect()
    };
    let series: Vec<Vec<(f64, u64)>> = histograms.iter().map(values).collect();
    let lo = series
        .iter()
        .flatten()
        .map(|&(_, v)| v)
        .min()
        .unwrap_or(1)
        .max(1);
    let hi = series
        .iter()
        .flatten()
        .map(|&(_, v)| v)
        .max()
        .unwrap_or(10)
        .max(lo * 10);
    let y_lo = (lo as f64).log10().floor();
    let y_hi = (hi as f64).log10().ceil();
    let px = |x: f64| left + x / X_MAX * plot_w;
    let py = |us: u64| top + plot_h - ((us as f64).log10() - y_lo) / (y_hi - y_lo) * plot_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-size=\"12\">"
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        .iter()
        .enumerate()
    {
        let x = px(i as f64);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            top + plot_h,
            h - bottom + 16.0
        );
    }
    let mut decade = y_lo;
    while decade <= y_hi {
        let us = 10f64.powf(decade) as u64;
        let y = py(us);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            left - 6.0,
            y + 4.0,
            fmt_us(us)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>",
        left + plot_w / 2.0,
        h - 4.0
    );
    for (i, (run, points)) in runs.iter().zip(&series).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, v)| format!("{:.1},{:.1}", px(x), py(v)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline class=\"run\" data-label=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            escape(&run.label),
            coords.join(" ")
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left + 10.0,
            top + 8.0 + 16.0 * i as f64,
            left + 26.0,
            top + 17.0 + 16.0 * i as f64,
            escape(&run.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn throughput_svg(runs: &[RunResult]) -> String {
    let bar_h = 24.0;
    let (left, width) = (220.0, 600.0);
    let h = 20.0 + bar_h * 1.5 * runs.len() as f64;
    let max = runs
        .iter()
        .map(|r| r.achieved_rate.max(r.config.rate.unwrap_or(0.0)))
        .fold(1.0, f64::max);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" font-size=\"12\">",
        left + width + 120.0
    );
    for (i, r) in runs.iter().enumerate() {
        let y = 10.0 + bar_h * 1.5 * i as f64;
        let len = r.achieved_rate / max * width;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect class=\"bar\" x=\"{left}\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"{bar_h}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{:.0} RPC/s</text>",
            left - 8.0,
            y + 16.0,
            escape(&r.label),
            COLORS[i % COLORS.len()],
            left + len + 6.0,
            y + 16.0,
            r.achieved_rate
        );
        if let Some(asked) = r.config.rate {
            let x = left + asked / max * width;
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#000\" stroke-dasharray=\"3,2\"><title>asked {asked} RPC/s</title></line>",
                y - 2.0,
                y + bar_h + 2.0
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::PoolSummary;

    fn run(label: &str, pool: Option<PoolSummary>) -> RunResult {
        let h = crate::result::new_histogram();
        let encoded = crate::result::encode_histogram(&h);
        RunResult {
            format: crate::result::FORMAT,
            label: label.to_owned(),
            config: Default::default(),
            server: None,
            environment: Default::default(),
            processes: 1,
            duration_s: 1.0,
            requests: 0,
            ok: 0,
            errors: Default::default(),
            achieved_rate: 0.0,
            failed: Default::default(),
            reconnects: 0,
            downtime_s: 0.0,
            latency: Default::default(),
            uncorrected: Default::default(),
            send_lag: Default::default(),
            histogram: encoded.clone(),
            uncorrected_histogram: encoded.clone(),
            send_lag_histogram: encoded,
            server_pool: pool,
        }
    }

    #[test]
    fn pool_shares_are_of_all_frees_and_absent_without_pool_data() {
        assert!(pool_table(&[run("a", None)]).is_none());
        let pool = PoolSummary {
            allocs: 100,
            misses: 3,
            local_frees: 25,
            deferred_frees: 70,
            overflow_frees: 5,
            kicks: 2,
            outstanding: 0,
        };
        let table = pool_table(&[run("per-core", Some(pool)), run("x", None)]).unwrap();
        let line = table.lines().nth(2).unwrap();
        assert!(line.starts_with("per-core"), "{table}");
        for cell in ["100", "25.0%", "70.0%", "5.0%"] {
            assert!(line.contains(cell), "{cell} missing: {table}");
        }
        assert_eq!(
            table.lines().count(),
            3,
            "runs without pool data have no row"
        );
        let html = html(&[run("per-core", Some(pool))]).unwrap();
        assert!(html.contains("Where the server freed request buffers"));
        assert!(html.contains("70.0%"));
    }

    #[test]
    fn throughput_bars_only_where_throughput_was_measured() {
        let mut fixed = run("fixed", None);
        fixed.config.rate = Some(100.0);
        fixed.achieved_rate = 100.0;
        let page = html(&[fixed.clone(), fixed.clone()]).unwrap();
        assert!(
            !page.contains("class=\"bar\""),
            "kept-up fixed-rate runs get no bars"
        );
        let mut short = fixed.clone();
        short.achieved_rate = 50.0;
        let page = html(&[fixed.clone(), short]).unwrap();
        assert_eq!(
            page.matches("class=\"bar\"").count(),
            2,
            "one fell short: bars"
        );
        let closed = run("closed", None);
        let page = html(&[closed, fixed]).unwrap();
        assert_eq!(page.matches("class=\"bar\"").count(), 2);
        assert!(!table(&[run("a", None)]).contains("ratio"));
    }
}
