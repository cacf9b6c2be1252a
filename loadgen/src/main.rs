//! `krpc-loadgen`: run load, compare runs, merge runs.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, thread, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use krpc_client::TlsArgs;
use krpc_loadgen::{
    interval::IntervalLog,
    merge::{merge_logs, merge_results},
    metrics::LoadgenMetrics,
    report,
    result::RunResult,
    run::{Mode, RunConfig, run, runtime},
    workload::{Arrival, Mix, Workload},
};
use tokio_util::sync::CancellationToken;

/// Load generator for krpc: open loop at a fixed rate (latency from the intended send time,
/// coordinated omission corrected) or closed loop; HdrHistogram results, reports, merges.
/// (The demo and the experiment are `krpc-lab`'s.)
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive load against a krpc-server and print a wrk2-style summary.
    Run(Box<RunArgs>),
    /// Compare result files: a table on stdout, and an HTML report with plots.
    Report {
        /// Result files written by `run --json` (or `merge`).
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Where to write the HTML report.
        #[arg(long, default_value = "krpc-report.html")]
        html: PathBuf,
    },
    /// Merge results (and interval logs) of several load generator processes into one.
    Merge {
        /// Result files written by `run --json`.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// The merged result.
        #[arg(long)]
        out: PathBuf,
        /// Interval logs of the same processes (repeat the flag).
        #[arg(long = "hdr-log")]
        hdr_logs: Vec<PathBuf>,
        /// Where to write the merged interval log (needs --hdr-log).
        #[arg(long, requires = "hdr_logs")]
        hdr_log_out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// Open loop: RPCs per second, over all connections.
    #[arg(
        long,
        required_unless_present = "closed_loop",
        conflicts_with = "closed_loop"
    )]
    rate: Option<f64>,
    /// Open-loop arrivals: uniform (evenly spaced) or poisson.
    #[arg(long, default_value = "uniform")]
    arrival: Arrival,
    /// Closed loop: each slot sends when its previous RPC returns (measures max throughput).
    #[arg(long)]
    closed_loop: bool,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// RPCs in flight per connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time before measuring (load runs, nothing is recorded).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// echo, put, get, or a weighted mix such as echo:8,put:1,get:1.
    #[arg(long, default_value = "echo")]
    method: Mix,
    /// Payload (Echo) or value (Put) size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Name of this run in reports (default: the server's strategy/TLS path).
    #[arg(long)]
    label: Option<String>,
    /// Write the result (config, server Info, environment, percentiles, histograms) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write per-second histograms as an HdrHistogram interval log.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Serve the load generator's own metrics to Prometheus here while it runs.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// No live progress.
    #[arg(long)]
    quiet: bool,
    /// Do not dial a broken connection again: its RPCs fail (UNAVAILABLE) until the end.
    /// Default: reconnect with backoff (100 ms, x1.6, +/-20% jitter, at most 5 s).
    #[arg(long)]
    no_reconnect: bool,
    /// Exit with status 3 when more than this fraction of the RPCs due in the measured window
    /// failed (0 to 1; e.g. 0.001). For CI.
    #[arg(long, value_parser = parse_fraction)]
    max_error_rate: Option<f64>,
}

/// Exit status when `--max-error-rate` is exceeded (1: an error, 2: bad flags).
const ERROR_RATE_EXCEEDED: u8 = 3;

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number between 0 and 1"))?;
    if !(0.0..=1.0).contains(&f) {
        return Err(format!(
            "{s} is not between 0 and 1 (a fraction: 0.01 is 1%)"
        ));
    }
    Ok(f)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return krpc_telemetry::usage_error("krpc-loadgen", e),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match cli.command {
        Command::Run(args) => match run_command(*args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(ERROR_RATE_EXCEEDED),
            Err(e) => Err(e),
        },
        Command::Report { results, html } => report_command(&results, &html),
        Command::Merge {
            results,
            out,
            hdr_logs,
            hdr_log_out,
        } => merge_command(&results, &out, &hdr_logs, hdr_log_out.as_deref()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "krpc-loadgen: error: {}",
                krpc_telemetry::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// Runs the load; `Ok(false)` when the error rate went over `--max-error-rate`.
fn run_command(args: RunArgs) -> anyhow::Result<bool> {
    let threads = args
        .threads
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
    let connector = args.tls.connector()?;
    let metrics = args.metrics_listen.map(|_| LoadgenMetrics::new());
    let shutdown = CancellationToken::new();
    let metrics_thread = match (args.metrics_listen, &metrics) {
        (Some(addr), Some(m)) => {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
            let (registry, shutdown) = (m.registry(), shutdown.clone());
            Some(thread::spawn(move || {
                krpc_telemetry::serve_prometheus(listener, registry, shutdown)
            }))
        }
        _ => None,
    };
    let mode = match args.rate {
        Some(rate) => Mode::Open {
            rate,
            arrival: args.arrival,
        },
        None => Mode::Closed,
    };
    let config = RunConfig {
        target: args.addr,
        connector,
        mode,
        connections: args.connections,
        concurrency: args.concurrency,
        duration: args.duration,
        warmup: args.warmup,
        workload: Workload::new(args.method, args.payload, args.keys),
        label: args.label,
        hdr_log: args.hdr_log,
        progress: !args.quiet,
        metrics,
        reconnect: !args.no_reconnect,
    };
    let rt = runtime(threads).context("cannot start the runtime")?;
    let result = rt.block_on(run(config));
    shutdown.cancel();
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    let result = result?;
    print!("{}", result.summary());
    if let Some(path) = &args.json {
        result.write(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(max) = args.max_error_rate
        && result.error_rate() > max
    {
        eprintln!(
            "krpc-loadgen: error rate {:.4}% ({} of {} RPCs) is over --max-error-rate {}",
            100.0 * result.error_rate(),
            result.error_count(),
            result.requests,
            max
        );
        return Ok(false);
    }
    Ok(true)
}

fn report_command(paths: &[PathBuf], html: &std::path::Path) -> anyhow::Result<()> {
    let runs: Vec<RunResult> = paths
        .iter()
        .map(|p| RunResult::read(p))
        .collect::<Result<_, _>>()?;
    print!("{}", report::table(&runs));
    if let Some(pool) = report::pool_table(&runs) {
        println!("\nwhere the servers freed request buffers:");
        print!("{pool}");
    }
    let page = report::html(&runs)?;
    std::fs::write(html, page).with_context(|| format!("cannot write {}", html.display()))?;
    eprintln!("wrote {}", html.display());
    Ok(())
}

fn merge_command(
    paths: &[PathBuf],
    out: &std::path::Path,
    logs: &[PathBuf],
    log_out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let results: Vec<RunResult> = paths
        .iter()
        .map(|p| RunResult::read(p))
        .collect::<Result<_, _>>()?;
    let merged = merge_results(&results)?;
    if let Some(log_out) = log_out {
        let logs: Vec<IntervalLog> = logs
            .iter()
            .map(|p| IntervalLog::read(p))
            .collect::<Result<_, _>>()?;
        let log = merge_logs(&logs);
        log.write(log_out, log.start_time)?;
        eprintln!("wrote {}", log_out.display());
    }
    merged.write(out)?;
    print!("{}", merged.summary());
    eprintln!("wrote {}", out.display());
    Ok(())
}
