//! `krpc-loadgen merge`: one run spread over several load generator processes (hosts, pods)
//! becomes one result. Histograms are added, not averaged: the merged percentiles are those of
//! every RPC of every process. Interval logs are aligned on wall-clock seconds.

use crate::{
    error::{LoadgenError, Result},
    interval::IntervalLog,
    result::{Latency, RunResult, decode_histogram, encode_histogram},
};

/// Adds up results of processes that ran the same workload over the same window.
pub fn merge_results(results: &[RunResult]) -> Result<RunResult> {
    let Some(first) = results.first() else {
        return Err(LoadgenError::NothingToMerge);
    };
    let workload = |r: &RunResult| format!("{} with {} B", r.config.mix, r.config.payload_bytes);
    for r in &results[1..] {
        if workload(r) != workload(first) {
            return Err(LoadgenError::DifferentWorkloads {
                first: workload(first),
                other: workload(r),
            });
        }
    }
    let mut merged = first.clone();
    let add = |field: fn(&RunResult) -> &str| -> Result<hdrhistogram::Histogram<u64>> {
        let mut total = decode_histogram(field(first))?;
        for r in &results[1..] {
            let h = decode_histogram(field(r))?;
            total.add(&h).map_err(|e| LoadgenError::Histogram {
                detail: format!("run {:?} does not add up: {e:?}", r.label),
            })?;
        }
        Ok(total)
    };
    let corrected = add(|r| &r.histogram)?;
    let uncorrected = add(|r| &r.uncorrected_histogram)?;
    let lag = add(|r| &r.send_lag_histogram)?;
    // Format 1 results have no error histogram: they add nothing to it.
    let mut failed = crate::result::new_histogram();
    for r in results.iter().filter(|r| !r.failed.histogram.is_empty()) {
        let h = decode_histogram(&r.failed.histogram)?;
        failed.add(&h).map_err(|e| LoadgenError::Histogram {
            detail: format!("run {:?} does not add up: {e:?}", r.label),
        })?;
    }
    merged.failed.histogram = encode_histogram(&failed);
    merged.failed.latency = Latency::of(&failed);
    merged.failed.rate = results.iter().map(|r| r.failed.rate).sum();
    merged.reconnects = results.iter().map(|r| r.reconnects).sum();
    merged.downtime_s = results.iter().map(|r| r.downtime_s).sum();
    merged.histogram = encode_histogram(&corrected);
    merged.uncorrected_histogram = encode_histogram(&uncorrected);
    merged.send_lag_histogram = encode_histogram(&lag);
    merged.latency = Latency::of(&corrected);
    merged.uncorrected = Latency::of(&uncorrected);
    merged.send_lag = Latency::of(&lag);
    merged.processes = results.iter().map(|r| r.processes).sum();
    // A format 1 result among them mixes errors into the latencies: so does the merge.
    merged.format = results
        .iter()
        .map(|r| r.format)
        .min()
        .unwrap_or(first.format);
    // The same server seen by every process: its pool totals are not added up.
    merged.server_pool = first.server_pool;
    merged.requests = results.iter().map(|r| r.requests).sum();
    merged.ok = results.iter().map(|r| r.ok).sum();
    merged.errors.clear();
    for r in results {
        for (code, n) in &r.errors {
            *merged.errors.entry(code.clone()).or_default() += n;
        }
    }
    merged.duration_s = results.iter().map(|r| r.duration_s).fold(0.0, f64::max);
    merged.achieved_rate = results.iter().map(|r| r.achieved_rate).sum();
    merged.config.connections = results.iter().map(|r| r.config.connections).sum();
    merged.config.rate = results.iter().map(|r| r.config.rate).sum::<Option<f64>>();
    let mut hosts: Vec<&str> = results
        .iter()
        .map(|r| r.environment.hostname.as_str())
        .collect();
    hosts.dedup();
    merged.environment.hostname = hosts.join(",");
    merged.environment.started_at = results
        .iter()
        .map(|r| r.environment.started_at)
        .fold(f64::INFINITY, f64::min);
    Ok(merged)
}

/// Adds interval logs second by wall-clock second.
pub fn merge_logs(logs: &[IntervalLog]) -> IntervalLog {
    let base = logs
        .iter()
        .map(|l| l.start_time)
        .fold(f64::INFINITY, f64::min);
    let base = if base.is_finite() { base } else { 0.0 };
    let mut merged = IntervalLog {
        start_time: base,
        ..Default::default()
    };
    for log in logs {
        let offset = (log.start_time - base).round().max(0.0) as u64;
        for (second, h) in &log.intervals {
            merged.push(second + offset, h.clone());
        }
    }
    merged
}
