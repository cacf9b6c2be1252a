//! `krpc-lab`: the demo (the README's first command), the experiment, and its report, on fresh
//! krpc-servers embedded in this process (or remote ones) driven by krpc-loadgen.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use krpc_lab::{
    cpus::{CpuPlan, allowed, parse_list},
    demo::{DemoOptions, demo},
    engine::{Plan, ServerConfig, Target, run_plan, strategies},
    record::{Experiment, Load},
};
use krpc_loadgen::workload::{Mix, Workload};
use krpc_server::{Handoff, RuntimeMode, Strategy};
use krpc_transport::TlsMode;

/// krpc's lab: fresh krpc-servers in this process, loaded by krpc-loadgen, compared with
/// intervals.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The four free strategies on embedded servers, a short interleaved schedule at one rate:
    /// medians with intervals, free-path share, pool counts, and what they allow one to say.
    Demo(DemoArgs),
    /// Server configurations interleaved in rounds against fresh servers, at saturation and at
    /// fixed rates; every figure a median with its interval, differences against a baseline
    /// claimed only beyond noise. Writes experiment.json (every trial) and report.html.
    Experiment(Box<ExperimentArgs>),
    /// Prints the report of an experiment.json again and rewrites its HTML.
    Report {
        /// An experiment.json (or demo.json) written by this tool.
        json: PathBuf,
        /// Where to write the HTML report.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// RPCs per second against each server.
    #[arg(long, default_value_t = 3000.0)]
    rate: f64,
    /// Rounds (each runs every strategy once, in rotated order).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    rounds: u32,
    /// Measured time per trial.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up per trial.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value = "echo:8,put:1,get:1")]
    method: Mix,
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// TLS mode of the embedded servers and their clients.
    #[arg(long, default_value = "auto")]
    tls: TlsMode,
    /// Directory for demo.json and report.html.
    #[arg(long, default_value = "krpc-demo")]
    out: PathBuf,
    /// No line per trial.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct ExperimentArgs {
    /// Free strategies to compare (one configuration each).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "global,local,per-conn,per-core"
    )]
    strategies: Vec<Strategy>,
    /// The configuration every other is compared with (`local`: the kernel commit's "before").
    #[arg(long, default_value = "local")]
    baseline: String,
    /// none | owner: owner hands keyed RPCs to the core owning the key (cross-core frees).
    #[arg(long, default_value = "owner")]
    handoff: Handoff,
    /// The servers' --defer-max.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    defer_max: u32,
    /// Server cores (default: the server's CPUs).
    #[arg(long)]
    cores: Option<usize>,
    /// thread-per-core or work-stealing.
    #[arg(long, default_value = "thread-per-core")]
    runtime: RuntimeMode,
    /// Load points: `closed` (saturation) and/or rates in RPC/s.
    #[arg(long, value_delimiter = ',', default_value = "closed,5000")]
    loads: Vec<Load>,
    /// Rounds; each runs every configuration once at every load, in rotated order.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(2..))]
    rounds: u32,
    /// Measured time per trial.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up per trial.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// RPCs in flight per connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// echo, put, get, or a weighted mix such as echo:8,put:1,get:1.
    #[arg(long, default_value = "echo")]
    method: Mix,
    /// Payload (Echo) or value (Put) bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// TLS: off (the free path is the larger share without crypto), rustls, ktls, auto.
    #[arg(long, default_value = "off")]
    tls: TlsMode,
    /// CPUs of the servers, e.g. 0-3 (default: half the CPUs on 4 or more, else all, shared).
    #[arg(long, value_parser = cpu_list)]
    server_cpus: Option<CpuList>,
    /// CPUs of the load generator, e.g. 4-7 (default: the other half, or shared).
    #[arg(long, value_parser = cpu_list)]
    loadgen_cpus: Option<CpuList>,
    /// The load generator's worker threads (default: one per load generator CPU).
    #[arg(long)]
    loadgen_threads: Option<usize>,
    /// A server already running elsewhere, as LABEL=GRPC_ADDR,METRICS_ADDR (repeat for each
    /// configuration); replaces the embedded servers. The report says they were not fresh.
    #[arg(long = "remote", value_parser = parse_remote)]
    remotes: Vec<(String, String, String)>,
    /// Directory for experiment.json and report.html.
    #[arg(long, default_value = "krpc-experiment")]
    out: PathBuf,
    /// No line per trial.
    #[arg(long)]
    quiet: bool,
}

/// A CPU list flag (one value, many CPUs).
#[derive(Clone, Debug)]
struct CpuList(Vec<usize>);

fn cpu_list(s: &str) -> Result<CpuList, String> {
    parse_list(s).map(CpuList)
}

fn parse_remote(s: &str) -> Result<(String, String, String), String> {
    let bad = || {
        format!(
            "{s:?} is not LABEL=GRPC_ADDR,METRICS_ADDR (example: per-core=10.0.0.5:50051,10.0.0.5:9100)"
        )
    };
    let (label, addrs) = s.split_once('=').ok_or_else(bad)?;
    let (grpc, metrics) = addrs.split_once(',').ok_or_else(bad)?;
    if label.is_empty() || !grpc.contains(':') || !metrics.contains(':') {
        return Err(bad());
    }
    Ok((label.to_owned(), grpc.to_owned(), metrics.to_owned()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return krpc_telemetry::usage_error("krpc-lab", e),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match cli.command {
        Command::Demo(args) => demo_command(args),
        Command::Experiment(args) => experiment_command(*args),
        Command::Report { json, html } => report_command(&json, html.as_deref()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "krpc-lab: error: {}",
                krpc_telemetry::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn demo_command(args: DemoArgs) -> anyhow::Result<()> {
    let exp = demo(&DemoOptions {
        rate: args.rate,
        rounds: args.rounds as usize,
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections,
        concurrency: args.concurrency,
        mix: args.method,
        payload: args.payload,
        tls: args.tls,
        out: args.out.clone(),
        progress: !args.quiet,
        command: command_line(),
    })?;
    print!("{}", krpc_lab::text::report(&exp));
    println!(
        "\nreport: {} (every trial in demo.json beside it)",
        args.out.join("report.html").display()
    );
    Ok(())
}

fn experiment_command(args: ExperimentArgs) -> anyhow::Result<()> {
    let cpus = CpuPlan::choose(
        args.server_cpus.map(|c| c.0),
        args.loadgen_cpus.map(|c| c.0),
        &allowed(),
    )?;
    let cores = args.cores.unwrap_or(cpus.server.len());
    if cores == 0 {
        anyhow::bail!("--cores must be at least 1");
    }
    let configs = if args.remotes.is_empty() {
        strategies(
            &args.strategies,
            args.handoff,
            args.defer_max as usize,
            cores,
            args.runtime,
        )
    } else {
        args.remotes
            .iter()
            .map(|(label, grpc, metrics)| ServerConfig {
                label: label.clone(),
                target: Target::Remote {
                    grpc: grpc.clone(),
                    metrics: metrics.clone(),
                },
            })
            .collect()
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let plan = Plan {
        kind: "experiment",
        command: command_line(),
        configs,
        baseline: args.baseline,
        loads: args.loads,
        rounds: args.rounds as usize,
        warmup: args.warmup,
        duration: args.duration,
        connections: args.connections,
        concurrency: args.concurrency,
        workload: Workload::new(args.method, args.payload, args.keys),
        tls: args.tls,
        loadgen_threads: args.loadgen_threads.unwrap_or(cpus.loadgen.len()).max(1),
        cpus,
        progress: !args.quiet,
    };
    let exp = run_plan(&plan)?;
    let json = args.out.join("experiment.json");
    exp.write(&json)?;
    let html = args.out.join("report.html");
    write_html(&exp, &html)?;
    print!("{}", krpc_lab::text::report(&exp));
    println!(
        "\nwrote {} (every trial) and {}",
        json.display(),
        html.display()
    );
    Ok(())
}

fn write_html(exp: &Experiment, path: &std::path::Path) -> anyhow::Result<()> {
    let page = krpc_lab::html::report(exp)?;
    std::fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))
}

fn report_command(json: &std::path::Path, html: Option<&std::path::Path>) -> anyhow::Result<()> {
    let exp = Experiment::read(json)?;
    print!("{}", krpc_lab::text::report(&exp));
    if let Some(html) = html {
        write_html(&exp, html)?;
        eprintln!("wrote {}", html.display());
    }
    Ok(())
}
