//! The HTML report: self-contained (inline SVG, no scripts, no external assets). Per load: the
//! medians with their intervals, the comparisons against the baseline, the percentile spectrum
//! of each configuration (median of its rounds, the band its interval), one interval chart per
//! figure (median, interval, every round), the pool's counts, and the words.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::{
    error::Result,
    record::{Experiment, Trial},
    stats::{LEVEL, median_interval},
    summary::{Figure, LoadSummary, Verdict, summarize},
    text::{medians_rows, pool_rows},
    words::header,
};

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report. Fails only if a trial's histogram does not decode.
pub fn report(exp: &Experiment) -> Result<String> {
    let mut out = String::new();
    let title = format!("krpc-lab {}", exp.kind);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:80em}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}.note{{color:#555}}.warning{{color:#a00;font-weight:bold}}\
         .better{{color:#080}}.worse{{color:#a00}}.same{{color:#555}}</style></head><body>\n<h1>{title}</h1>\n"
    );
    out.push_str("<ul class=\"note\">\n");
    for note in header(exp) {
        let _ = writeln!(out, "<li>{}</li>", escape(&note));
    }
    let _ = writeln!(
        out,
        "<li>{}</li>\n</ul>",
        escape(&format!("Command: {}", exp.command))
    );
    for load in summarize(exp) {
        section(&mut out, exp, &load)?;
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

fn color(exp: &Experiment, label: &str) -> &'static str {
    let i = exp
        .configs
        .iter()
        .position(|c| c.label == label)
        .unwrap_or(0);
    COLORS[i % COLORS.len()]
}

fn table(out: &mut String, exp: &Experiment, rows: &[Vec<String>], class: &str) {
    let _ = write!(out, "<table class=\"{class}\">\n<tr>");
    for cell in &rows[0] {
        let _ = write!(out, "<th>{}</th>", escape(cell));
    }
    out.push_str("</tr>\n");
    for row in &rows[1..] {
        let _ = write!(
            out,
            "<tr><td><span style=\"color:{}\">&#9632;</span> {}</td>",
            color(exp, &row[0]),
            escape(&row[0])
        );
        for cell in &row[1..] {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn section(out: &mut String, exp: &Experiment, s: &LoadSummary) -> Result<()> {
    let load = s.load.to_string();
    let _ = writeln!(
        out,
        "<section class=\"load\" data-load=\"{}\">\n<h2>{}</h2>",
        escape(&load),
        escape(&load)
    );
    for w in &s.warnings {
        let _ = writeln!(out, "<p class=\"warning\">{}</p>", escape(w));
    }
    let _ = writeln!(
        out,
        "<p class=\"note\">Median of {} rounds [its interval].{}</p>",
        exp.rounds,
        if s.throughput_measured() {
            ""
        } else {
            " RPC/s is not shown: every round kept the asked rate, so it is the asked rate."
        }
    );
    table(out, exp, &medians_rows(s), "medians");
    let _ = writeln!(out, "<h3>Against {}</h3>", escape(&exp.baseline));
    comparisons(out, exp, s);
    out.push_str("<ul class=\"words\">\n");
    for w in &s.words {
        let _ = writeln!(out, "<li>{}</li>", escape(w));
    }
    out.push_str("</ul>\n");
    let _ = writeln!(
        out,
        "<h3>Latency by percentile</h3>\n<p class=\"note\">Corrected for coordinated omission. \
         Line: the median of the rounds at each percentile; band: its interval.</p>"
    );
    out.push_str(&spectrum(exp, s)?);
    out.push_str(
        "<h3>Intervals</h3>\n<p class=\"note\">Dot: median; bar: its interval; small \
                  grey dots: the rounds.</p>\n",
    );
    for (i, figure) in s.figures() {
        if charted(figure.key) {
            out.push_str(&interval_chart(exp, s, i, figure));
        }
    }
    out.push_str("<h3>Where the servers freed request buffers</h3>\n");
    table(out, exp, &pool_rows(s), "pool");
    out.push_str("</section>\n");
    Ok(())
}

/// Rows: configurations; columns: the compared figures; each cell the ratio (or difference)
/// against the baseline with its interval, coloured by the verdict.
fn comparisons(out: &mut String, exp: &Experiment, s: &LoadSummary) {
    let Some(first) = s.configs.iter().find(|c| !c.comparisons.is_empty()) else {
        return;
    };
    out.push_str("<table class=\"comparisons\">\n<tr><th>config</th>");
    for cmp in &first.comparisons {
        let _ = write!(out, "<th>{}</th>", escape(cmp.figure.name));
    }
    out.push_str("</tr>\n");
    for c in s.configs.iter().filter(|c| !c.comparisons.is_empty()) {
        let _ = write!(
            out,
            "<tr><td><span style=\"color:{}\">&#9632;</span> {}</td>",
            color(exp, &c.label),
            escape(&c.label)
        );
        for cmp in &c.comparisons {
            let (class, word) = match cmp.verdict {
                Verdict::Better => ("better", "better, beyond noise"),
                Verdict::Worse => ("worse", "worse, beyond noise"),
                Verdict::NoDifference => ("same", "no difference beyond noise"),
                Verdict::TooFewRounds => ("same", "too few rounds to tell"),
            };
            let _ = write!(
                out,
                "<td class=\"{class}\" title=\"{word}\">{}</td>",
                escape(&cmp.describe())
            );
        }
        out.push_str("</tr>\n");
    }
    out.push_str(
        "</table>\n<p class=\"note\">Each cell: configuration vs baseline, x ratio or \
         difference, [95% interval]. <span class=\"better\">Green</span>: better beyond noise; \
         <span class=\"worse\">red</span>: worse beyond noise; grey: no difference beyond \
         noise.</p>\n",
    );
}

/// Spectrum x positions: log10(1/(1-p)).
fn x_max(trials: &[&Trial]) -> f64 {
    let fewest = trials
        .iter()
        .map(|t| t.result.latency.count)
        .min()
        .unwrap_or(1)
        .max(10);
    // Beyond 1/n the percentile is the maximum of the round.
    ((fewest as f64).log10().floor()).clamp(2.0, 6.0)
}

fn spectrum(exp: &Experiment, s: &LoadSummary) -> Result<String> {
    let (w, h, left, bottom, top, right) = (900.0, 420.0, 70.0, 40.0, 20.0, 20.0);
    let (plot_w, plot_h) = (w - left - right, h - top - bottom);
    let all: Vec<&Trial> = exp.trials.iter().filter(|t| t.load == s.load).collect();
    let xm = x_max(&all);
    let steps = (xm * 20.0) as usize;
    // Per configuration: for each x, (median, lo, hi) over rounds.
    let mut series = Vec::new();
    for c in &s.configs {
        let hists: Vec<Histogram<u64>> = exp
            .trials_of(&c.label, s.load)
            .into_iter()
            .map(|t| t.result.histogram())
            .collect::<std::result::Result<_, _>>()?;
        let points: Vec<(f64, f64, f64, f64)> = (0..=steps)
            .filter_map(|i| {
                let x = i as f64 / 20.0;
                let q = 1.0 - 10f64.powf(-x);
                let vals: Vec<f64> = hists
                    .iter()
                    .filter(|h| !h.is_empty())
                    .map(|h| h.value_at_quantile(q).max(1) as f64)
                    .collect();
                let iv = median_interval(&vals, LEVEL)?;
                Some((x, iv.estimate, iv.lo, iv.hi))
            })
            .collect();
        series.push((c.label.as_str(), points));
    }
    let values = series
        .iter()
        .flat_map(|(_, p)| p.iter().flat_map(|&(_, m, lo, hi)| [m, lo, hi]));
    let (lo, hi) = values.fold((f64::MAX, 1.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let y_lo = lo.max(1.0).log10().floor();
    let y_hi = hi.log10().ceil().max(y_lo + 1.0);
    let px = |x: f64| left + x / xm * plot_w;
    let py = |us: f64| top + plot_h - (us.max(1.0).log10() - y_lo) / (y_hi - y_lo) * plot_h;
    let mut svg = format!(
        "<svg class=\"spectrum-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-size=\"12\">\n"
    );
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    for (i, label) in labels.iter().enumerate().take(xm as usize + 1) {
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
        let us = 10f64.powf(decade);
        let y = py(us);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            left - 6.0,
            y + 4.0,
            krpc_loadgen::result::fmt_us(us as u64)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>",
        left + plot_w / 2.0,
        h - 4.0
    );
    for (i, (label, points)) in series.iter().enumerate() {
        let c = color(exp, label);
        let upper: Vec<String> = points
            .iter()
            .map(|&(x, _, _, hi)| format!("{:.1},{:.1}", px(x), py(hi)))
            .collect();
        let lower: Vec<String> = points
            .iter()
            .rev()
            .map(|&(x, _, lo, _)| format!("{:.1},{:.1}", px(x), py(lo)))
            .collect();
        let _ = writeln!(
            svg,
            "<polygon class=\"band\" data-label=\"{}\" fill=\"{c}\" fill-opacity=\"0.15\" stroke=\"none\" points=\"{} {}\"/>",
            escape(label),
            upper.join(" "),
            lower.join(" ")
        );
        let line: Vec<String> = points
            .iter()
            .map(|&(x, m, _, _)| format!("{:.1},{:.1}", px(x), py(m)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline class=\"spectrum\" data-label=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            escape(label),
            line.join(" ")
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left + 10.0,
            top + 8.0 + 16.0 * i as f64,
            left + 26.0,
            top + 17.0 + 16.0 * i as f64,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    Ok(svg)
}

/// One figure: per configuration a row with its rounds, its median and the median's interval.
fn interval_chart(exp: &Experiment, s: &LoadSummary, index: usize, figure: &Figure) -> String {
    let rows: Vec<(&str, &crate::summary::Cell)> = s
        .configs
        .iter()
        .map(|c| (c.label.as_str(), &c.cells[index]))
        .collect();
    let all = rows.iter().flat_map(|(_, c)| {
        c.values
            .iter()
            .copied()
            .chain(c.interval.into_iter().flat_map(|i| [i.lo, i.hi]))
    });
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return String::new();
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.01).max(1e-12);
    let (lo, hi) = ((lo - pad).max(0.0), hi + pad);
    let (left, width, row_h) = (160.0, 600.0, 26.0);
    let h = 40.0 + row_h * rows.len() as f64;
    let px = |v: f64| left + (v - lo) / (hi - lo) * width;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption>\n<svg class=\"interval-chart\" data-figure=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" font-size=\"12\">\n",
        escape(figure.name),
        figure.key,
        left + width + 40.0
    );
    for (r, (label, cell)) in rows.iter().enumerate() {
        let y = 14.0 + row_h * r as f64;
        let c = color(exp, label);
        let _ = write!(
            svg,
            "<g class=\"interval\" data-label=\"{}\" data-figure=\"{}\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            escape(label),
            figure.key,
            left - 8.0,
            y + 4.0,
            escape(label)
        );
        for &v in &cell.values {
            let _ = write!(
                svg,
                "<circle class=\"round\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#999\"/>",
                px(v),
                y + 7.0
            );
        }
        if let Some(i) = cell.interval {
            let _ = write!(
                svg,
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{c}\" stroke-width=\"3\"><title>{:.1}% interval: {} to {}</title></line><circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{c}\"><title>median {}</title></circle>",
                px(i.lo),
                px(i.hi),
                i.coverage * 100.0,
                figure.unit.format(i.lo),
                figure.unit.format(i.hi),
                px(i.estimate),
                figure.unit.format(i.estimate)
            );
        }
        svg.push_str("</g>\n");
    }
    let axis_y = 20.0 + row_h * rows.len() as f64;
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{axis_y:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            px(v),
            figure.unit.format(v)
        );
    }
    svg.push_str("</svg></figure>\n");
    svg
}

/// Whether a figure gets an interval chart (p50 and errors are in the table only; the load
/// generator's CPU is about the generator, not the configurations).
pub fn charted(key: &str) -> bool {
    !matches!(key, "errors" | "p50" | "loadgen_cpu")
}
