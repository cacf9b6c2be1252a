//! The load engine.
//!
//! Open loop (wrk2): a pacer thread computes the schedule, one intended send time per RPC
//! (uniform or Poisson arrivals at the asked rate), and deals it to the connections round
//! robin. It sleeps with `nanosleep` (about 50 µs of slack), not on tokio's millisecond timer,
//! so the schedule is kept to tens of microseconds. A connection sends at once if it has a free
//! slot (`--concurrency` in flight), else queues the send time. Latency is measured from the
//! *intended* time: a stalled server is charged for every RPC it held back (coordinated
//! omission corrected). The uncorrected latency, from the actual send, is kept beside it, and so
//! is the generator's own lag behind its schedule.
//!
//! Closed loop: each slot sends its next RPC when the previous one returns.
//!
//! A connection that breaks is dialled again with backoff (link.rs; `--no-reconnect` turns it
//! off); RPCs due while it is down fail with UNAVAILABLE. Failures are counted by gRPC code and
//! kept in an error histogram of their own: the latency histograms hold successes only.
//!
//! Each connection task owns its histograms (nothing shared on the hot path). Every second it
//! hands an interval histogram to the collector, which feeds the progress line and the
//! HdrHistogram interval log. At the end, the connections' histograms are merged.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use krpc_proto::v1::{InfoRequest, InfoResponse, TlsMode as WireTlsMode};
use krpc_transport::Connector;
use tokio::sync::mpsc;

use crate::{
    conn::GrpcConn,
    connection::{ConnStats, ConnTask, IntervalReport, Window, connection},
    error::{LoadgenError, Result},
    interval::IntervalLog,
    link::Link,
    metrics::LoadgenMetrics,
    pace::pace,
    progress::Progress,
    result::{
        ConfigRecord, Environment, Failed, Latency, RunResult, ServerRecord, encode_histogram,
        new_histogram,
    },
    workload::{Arrival, Workload},
};

/// Open loop at a rate, or closed loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Open { rate: f64, arrival: Arrival },
    Closed,
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// `host:port`.
    pub target: String,
    pub connector: Connector,
    pub mode: Mode,
    pub connections: usize,
    /// RPCs in flight per connection.
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub workload: Workload,
    /// Name in reports; default: the target's strategy and TLS path.
    pub label: Option<String>,
    /// Write the per-second HdrHistogram interval log here.
    pub hdr_log: Option<PathBuf>,
    /// Show progress (a bar on a terminal, a line a second otherwise).
    pub progress: bool,
    pub metrics: Option<LoadgenMetrics>,
    /// Dial a broken connection again, with backoff (else its RPCs fail until the end).
    pub reconnect: bool,
}

/// Runs the load on the current tokio runtime and returns the result.
pub async fn run(config: RunConfig) -> Result<RunResult> {
    let RunConfig {
        target,
        connector,
        mode,
        connections,
        concurrency,
        duration,
        warmup,
        workload,
        label,
        hdr_log,
        progress,
        metrics,
        reconnect,
    } = config;
    let invalid = |what: &str| Err(LoadgenError::Config(what.to_owned()));
    if connections == 0 {
        return invalid("--connections must be at least 1");
    }
    if concurrency == 0 {
        return invalid("--concurrency must be at least 1");
    }
    if duration.is_zero() {
        return invalid("--duration must be above 0");
    }
    if let Mode::Open { rate, .. } = mode
        && !(rate.is_finite() && rate > 0.0)
    {
        return invalid("--rate must be a positive number of RPCs per second");
    }

    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(GrpcConn::connect(&target, &connector).await?);
    }
    let server = server_info(&clients[0]).await;
    let label = label.unwrap_or_else(|| match &server {
        Some(s) => format!("{}/{}", s.strategy, s.tls_mode),
        None => target.clone(),
    });
    if let (Some(m), Some(s)) = (&metrics, &server) {
        m.describe_target(&s.strategy, &s.tls_mode);
    }
    if let (Some(m), Mode::Open { rate, .. }) = (&metrics, mode) {
        m.asked_rate(rate);
    }

    // Schedule starts a moment from now, after the connections' tasks are running.
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let started_at = SystemTime::now()
        .checked_add(measure_from.saturating_duration_since(Instant::now()))
        .unwrap_or(SystemTime::now())
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());

    let (interval_tx, interval_rx) = mpsc::unbounded_channel();
    let window = Window { measure_from, end };
    let mut schedules = Vec::new();
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let schedule = match mode {
            Mode::Open { .. } => {
                let (tx, rx) = mpsc::unbounded_channel();
                schedules.push(tx);
                Some(rx)
            }
            Mode::Closed => None,
        };
        tasks.push(tokio::spawn(connection(ConnTask {
            index: i,
            link: Link::new(client, target.clone(), connector.clone(), reconnect),
            schedule,
            concurrency,
            workload: workload.clone(),
            window,
            intervals: interval_tx.clone(),
            metrics: metrics.clone(),
        })));
    }
    drop(interval_tx);
    let pacer = match mode {
        Mode::Open { rate, arrival } => Some(
            thread::Builder::new()
                .name("krpc-pacer".into())
                .spawn(move || pace(rate, arrival, start, end, schedules))
                .map_err(|e| LoadgenError::Runtime {
                    what: "cannot start the pacer thread",
                    source: Some(e),
                })?,
        ),
        Mode::Closed => None,
    };
    let collector = tokio::spawn(collect(
        interval_rx,
        connections,
        Progress::new(
            progress,
            duration,
            match mode {
                Mode::Open { rate, .. } => Some(rate),
                Mode::Closed => None,
            },
        ),
    ));

    let mut total = ConnStats::new();
    for task in tasks {
        total.merge(task.await.map_err(|_| LoadgenError::Runtime {
            what: "a connection task panicked",
            source: None,
        })?);
    }
    if let Some(pacer) = pacer {
        let _ = pacer.join();
    }
    let intervals = collector.await.map_err(|_| LoadgenError::Runtime {
        what: "the collector task panicked",
        source: None,
    })?;
    if let Some(path) = &hdr_log {
        intervals.write(path, started_at)?;
    }

    let requests = total.ok + total.errors.values().sum::<u64>();
    let duration_s = duration.as_secs_f64();
    let config = ConfigRecord {
        target,
        tls: connector.path().as_str().to_owned(),
        mode: match mode {
            Mode::Open { .. } => "open",
            Mode::Closed => "closed",
        }
        .to_owned(),
        rate: match mode {
            Mode::Open { rate, .. } => Some(rate),
            Mode::Closed => None,
        },
        arrival: match mode {
            Mode::Open { arrival, .. } => Some(arrival.as_str().to_owned()),
            Mode::Closed => None,
        },
        connections,
        concurrency,
        duration_s,
        warmup_s: warmup.as_secs_f64(),
        mix: workload.mix.to_string(),
        payload_bytes: workload.payload.len(),
        keys: workload.keys.len() as u64,
    };
    Ok(RunResult {
        format: crate::result::FORMAT,
        label,
        config,
        server,
        environment: Environment::here(started_at),
        processes: 1,
        duration_s,
        requests,
        ok: total.ok,
        errors: total.errors,
        achieved_rate: total.ok_in_window as f64 / duration_s,
        failed: Failed {
            rate: total.failed_in_window as f64 / duration_s,
            latency: Latency::of(&total.failed),
            histogram: encode_histogram(&total.failed),
        },
        reconnects: total.reconnects,
        downtime_s: total.downtime.as_secs_f64(),
        latency: Latency::of(&total.corrected),
        uncorrected: Latency::of(&total.uncorrected),
        send_lag: Latency::of(&total.lag),
        histogram: encode_histogram(&total.corrected),
        uncorrected_histogram: encode_histogram(&total.uncorrected),
        send_lag_histogram: encode_histogram(&total.lag),
        server_pool: None,
    })
}

async fn server_info(client: &GrpcConn) -> Option<ServerRecord> {
    let info: InfoResponse = client
        .unary("/krpc.v1.Bench/Info", &InfoRequest {})
        .await
        .ok()?;
    Some(ServerRecord {
        tls_mode: match info.tls_mode() {
            WireTlsMode::Off => "off",
            WireTlsMode::Rustls => "rustls",
            WireTlsMode::Ktls => "ktls",
            WireTlsMode::Unspecified => "unspecified",
        }
        .to_owned(),
        version: info.version,
        runtime: info.runtime,
        cores: info.cores,
        tls_version: info.tls_version,
        cipher: info.cipher,
        ktls: info.ktls,
        ktls_available: info.ktls_available,
        strategy: info.strategy,
        handoff: info.handoff,
    })
}

/// Merges the connections' seconds into one histogram per second.
async fn collect(
    mut reports: mpsc::UnboundedReceiver<IntervalReport>,
    connections: usize,
    mut progress: Progress,
) -> IntervalLog {
    let mut log = IntervalLog::default();
    let mut pending: BTreeMap<u64, (Histogram<u64>, u64, usize)> = BTreeMap::new();
    while let Some(report) = reports.recv().await {
        let entry = pending
            .entry(report.index)
            .or_insert_with(|| (new_histogram(), 0, 0));
        let _ = entry.0.add(&report.latency);
        entry.1 += report.errors;
        entry.2 += 1;
        // A second is complete once every connection reported it.
        while let Some(first) = pending.first_entry() {
            if first.get().2 < connections {
                break;
            }
            let (index, (h, errors, _)) = first.remove_entry();
            progress.second(index, &h, errors);
            log.push(index, h);
        }
    }
    for (index, (h, errors, _)) in pending {
        progress.second(index, &h, errors);
        log.push(index, h);
    }
    progress.finish();
    log
}

/// A multi-thread runtime for the load with `threads` workers.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("krpc-loadgen")
        .enable_all()
        .build()
}
