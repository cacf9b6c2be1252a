//! `krpc-lab`: the demo (the README's first command) and the experiment, on fresh krpc-servers
//! embedded in this process and driven by krpc-loadgen.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use krpc_lab::demo::{DemoOptions, demo};
use krpc_loadgen::{report, workload::Mix};
use krpc_transport::TlsMode;

/// krpc's lab: fresh krpc-servers in this process, loaded by krpc-loadgen, compared.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a krpc-server per free strategy in this process, load each the same way, compare.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// RPCs per second against each strategy's server.
    #[arg(long, default_value_t = 3000.0)]
    rate: f64,
    /// Measured time per strategy.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warmup per strategy.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
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
    /// Directory for the results, interval logs and report.html.
    #[arg(long, default_value = "krpc-demo")]
    out: PathBuf,
    /// No live progress.
    #[arg(long)]
    quiet: bool,
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

fn demo_command(args: DemoArgs) -> anyhow::Result<()> {
    let results = demo(&DemoOptions {
        rate: args.rate,
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections,
        concurrency: args.concurrency,
        mix: args.method,
        payload: args.payload,
        tls: args.tls,
        out: args.out.clone(),
        progress: !args.quiet,
    })?;
    println!();
    print!("{}", report::table(&results));
    if let Some(pool) = report::pool_table(&results) {
        println!("\nwhere the servers freed request buffers:");
        print!("{pool}");
    }
    println!(
        "\nreport: {} (results and interval logs beside it)",
        args.out.join("report.html").display()
    );
    Ok(())
}
