//! The experiment engine: configurations interleaved in rounds (A B C D, B C D A, …: the order
//! rotates so that no configuration always runs first or last), each trial against a fresh
//! server (or a remote one), at each load point. Per trial it keeps the load generator's result
//! and the server's own counters over the measured window: two scrapes, taken inside the
//! window, a moment after warm-up and a moment before the end.

use std::{
    thread,
    time::{Duration, Instant},
};

use krpc_loadgen::{
    result::Environment,
    run::{Mode, RunConfig, run},
    workload::{Arrival, Workload},
};
use krpc_server::{Handoff, RuntimeMode, Strategy};
use krpc_telemetry::cpu::{ThreadClockGuard, ThreadClocks};
use krpc_transport::TlsMode;

use crate::{
    cpus::{CpuPlan, restrict_current_thread},
    embedded::{Embedded, ServerSpec, TlsSetup},
    error::{LabError, Result},
    record::{ConfigRecord, Experiment, FORMAT, Load, LoadSettings, ServerDelta, Trial},
    scrape::{Scrape, ServerCounters},
};

/// One configuration: a server the lab starts for every trial, or a remote one.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub label: String,
    pub target: Target,
}

/// Where a configuration's server comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Started in this process for every trial.
    Embedded(ServerSpec),
    /// Already running elsewhere: its gRPC and metrics addresses (`host:port`).
    Remote { grpc: String, metrics: String },
}

impl ServerConfig {
    fn record(&self) -> ConfigRecord {
        match &self.target {
            Target::Embedded(spec) => ConfigRecord {
                label: self.label.clone(),
                strategy: Some(spec.strategy.as_str().to_owned()),
                handoff: Some(spec.handoff.as_str().to_owned()),
                defer_max: Some(spec.defer_max),
                cores: Some(spec.cores),
                runtime: Some(spec.runtime.as_str().to_owned()),
                remote: None,
            },
            // What a remote server runs, its trials' results say (its Info reply).
            Target::Remote { grpc, .. } => ConfigRecord {
                label: self.label.clone(),
                strategy: None,
                handoff: None,
                defer_max: None,
                cores: None,
                runtime: None,
                remote: Some(grpc.clone()),
            },
        }
    }
}

/// The default configurations: every strategy with owner handoff (cross-core frees happen).
pub fn strategies(
    strategies: &[Strategy],
    handoff: Handoff,
    defer_max: usize,
    cores: usize,
    runtime: RuntimeMode,
) -> Vec<ServerConfig> {
    strategies
        .iter()
        .map(|&strategy| ServerConfig {
            label: strategy.as_str().to_owned(),
            target: Target::Embedded(ServerSpec {
                strategy,
                handoff,
                defer_max,
                cores,
                runtime,
            }),
        })
        .collect()
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub kind: &'static str,
    pub command: String,
    pub configs: Vec<ServerConfig>,
    pub baseline: String,
    pub loads: Vec<Load>,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    pub concurrency: usize,
    pub workload: Workload,
    pub tls: TlsMode,
    /// CA of remote servers' certificates (TLS on, `Target::Remote`).
    pub remote_ca: Option<std::path::PathBuf>,
    pub cpus: CpuPlan,
    pub loadgen_threads: usize,
    /// One line per trial on stderr.
    pub progress: bool,
}

impl Plan {
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(LabError::Config(m));
        if self.configs.is_empty() {
            return bad("no configuration to run".into());
        }
        if !self.configs.iter().any(|c| c.label == self.baseline) {
            return bad(format!(
                "--baseline {:?} is not one of the configurations ({})",
                self.baseline,
                self.configs
                    .iter()
                    .map(|c| c.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.rounds < 2 {
            return bad("--rounds must be at least 2 (5 or more to claim differences)".into());
        }
        if self.loads.is_empty() {
            return bad("--loads names no load".into());
        }
        if self.duration < Duration::from_millis(500) {
            return bad("--duration must be at least 500ms".into());
        }
        if self.connections == 0 || self.concurrency == 0 {
            return bad("--connections and --concurrency must be at least 1".into());
        }
        Ok(())
    }

    /// Order of the configurations in `round`: rotated by one each round.
    pub fn order(&self, round: usize) -> Vec<&ServerConfig> {
        let n = self.configs.len();
        (0..n).map(|i| &self.configs[(i + round) % n]).collect()
    }
}

thread_local! {
    static LOADGEN_CPU: std::cell::RefCell<Option<ThreadClockGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// The load generator's runtime: its workers on the load generator's CPUs, their CPU time
/// counted in `clocks`.
fn loadgen_runtime(
    threads: usize,
    cpus: Vec<usize>,
    clocks: ThreadClocks,
) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("krpc-loadgen")
        .on_thread_start(move || {
            let _ = restrict_current_thread(&cpus);
            LOADGEN_CPU.set(Some(clocks.register_current("loadgen")));
        })
        .on_thread_stop(|| {
            LOADGEN_CPU.take();
        })
        .enable_all()
        .build()
}

/// One reading of the server's counters and the load generator's clocks.
struct Reading {
    at: Instant,
    server: ServerCounters,
    loadgen_cpu_s: f64,
}

fn read(metrics: &str, clocks: &ThreadClocks) -> Result<Reading> {
    let server = ServerCounters::from_scrape(&Scrape::fetch(metrics)?);
    Ok(Reading {
        at: Instant::now(),
        server,
        loadgen_cpu_s: clocks.total().as_secs_f64(),
    })
}

fn delta(a: &Reading, b: &Reading) -> ServerDelta {
    ServerDelta {
        window_s: (b.at - a.at).as_secs_f64(),
        cpu_s: b
            .server
            .cpu_s
            .iter()
            .map(|(core, v)| (core.clone(), v - a.server.cpu_s.get(core).unwrap_or(&0.0)))
            .collect(),
        rpcs: b.server.rpcs - a.server.rpcs,
        free_path_s: b
            .server
            .free_path_s
            .zip(a.server.free_path_s)
            .map(|(b, a)| b - a),
        pool: b.server.pool.since(&a.server.pool),
    }
}

/// Runs the plan. Returns every trial; nothing is summarised here.
pub fn run_plan(plan: &Plan) -> Result<Experiment> {
    plan.check()?;
    let started = Instant::now();
    let tls = TlsSetup::new(plan.tls, plan.remote_ca.as_deref())?;
    let clocks = ThreadClocks::new();
    let rt = loadgen_runtime(
        plan.loadgen_threads,
        plan.cpus.loadgen.clone(),
        clocks.clone(),
    )
    .map_err(|e| LabError::Runtime {
        what: "cannot start the load generator's runtime",
        source: Some(e),
    })?;
    let total = plan.rounds * plan.loads.len() * plan.configs.len();
    let mut trials = Vec::with_capacity(total);
    let mut free_path_source = None;
    for round in 0..plan.rounds {
        for &load in &plan.loads {
            for (position, config) in plan.order(round).into_iter().enumerate() {
                let trial = run_trial(plan, config, load, round, position, &tls, &rt, &clocks)?;
                if plan.progress {
                    eprintln!(
                        "[{}/{total}] round {} {load:<12} {:<10} {}",
                        trials.len() + 1,
                        round + 1,
                        config.label,
                        progress_line(&trial)
                    );
                }
                trials.push(trial.0);
                free_path_source = free_path_source.or(trial.1);
            }
        }
    }
    let started_at = trials
        .first()
        .map_or(0.0, |t: &Trial| t.result.environment.started_at);
    Ok(Experiment {
        format: FORMAT,
        kind: plan.kind.to_owned(),
        command: plan.command.clone(),
        configs: plan.configs.iter().map(ServerConfig::record).collect(),
        baseline: plan.baseline.clone(),
        loads: plan.loads.clone(),
        rounds: plan.rounds,
        load_settings: LoadSettings {
            connections: plan.connections,
            concurrency: plan.concurrency,
            warmup_s: plan.warmup.as_secs_f64(),
            duration_s: plan.duration.as_secs_f64(),
            mix: plan.workload.mix.to_string(),
            payload_bytes: plan.workload.payload.len(),
            keys: plan.workload.keys.len() as u64,
            loadgen_threads: plan.loadgen_threads,
        },
        tls: tls.path.as_str().to_owned(),
        cpus: plan.cpus.clone(),
        fresh_servers: plan
            .configs
            .iter()
            .all(|c| matches!(c.target, Target::Embedded(_))),
        free_path_source,
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_owned(),
        environment: Environment::here(started_at),
        wall_s: started.elapsed().as_secs_f64(),
        trials,
    })
}

fn progress_line((t, _): &(Trial, Option<crate::scrape::FreePathSource>)) -> String {
    let mut line = format!(
        "{:>9.0} RPC/s  p99 {:>8}",
        t.result.achieved_rate,
        krpc_loadgen::result::fmt_us(t.result.latency.at(99.0))
    );
    if let Some(cpu) = t.server_cpu_per_rpc_us() {
        line.push_str(&format!("  server {cpu:.1} us CPU/RPC"));
    }
    if let Some(share) = t.free_path_share() {
        line.push_str(&format!("  free path {:.2}%", share * 100.0));
    }
    if t.result.error_count() > 0 {
        line.push_str(&format!("  {} errors", t.result.error_count()));
    }
    line
}

#[allow(clippy::too_many_arguments)]
fn run_trial(
    plan: &Plan,
    config: &ServerConfig,
    load: Load,
    round: usize,
    position: usize,
    tls: &TlsSetup,
    rt: &tokio::runtime::Runtime,
    clocks: &ThreadClocks,
) -> Result<(Trial, Option<crate::scrape::FreePathSource>)> {
    let (server, target, metrics) = match &config.target {
        Target::Remote { grpc, metrics } => (None, grpc.clone(), metrics.clone()),
        Target::Embedded(spec) => {
            let server = Embedded::start(spec, tls, &plan.cpus.server)?;
            let (addr, metrics) = (server.addr.to_string(), server.metrics.to_string());
            (Some(server), addr, metrics)
        }
    };
    // The scrapes sit inside the load generator's measured window: it starts measuring
    // `warmup` after its connections are up (a few ms here), and stops `duration` later.
    let called = Instant::now();
    let margin = (plan.duration / 10).min(Duration::from_millis(250));
    let first_at = called + plan.warmup + margin;
    let second_at = called + plan.warmup + plan.duration - margin;
    let sampler = thread::Builder::new()
        .name("krpc-lab-sampler".into())
        .spawn({
            let (metrics, clocks) = (metrics.clone(), clocks.clone());
            move || -> Result<(Reading, Reading)> {
                thread::sleep(first_at.saturating_duration_since(Instant::now()));
                let first = read(&metrics, &clocks)?;
                thread::sleep(second_at.saturating_duration_since(Instant::now()));
                let second = read(&metrics, &clocks)?;
                Ok((first, second))
            }
        })
        .map_err(|e| LabError::Runtime {
            what: "cannot start the sampler thread",
            source: Some(e),
        })?;
    let outcome = rt.block_on(run(RunConfig {
        target,
        connector: tls.connector.clone(),
        mode: match load.rate {
            Some(rate) => Mode::Open {
                rate,
                arrival: Arrival::Uniform,
            },
            None => Mode::Closed,
        },
        connections: plan.connections,
        concurrency: plan.concurrency,
        duration: plan.duration,
        warmup: plan.warmup,
        workload: plan.workload.clone(),
        label: Some(config.label.clone()),
        hdr_log: None,
        progress: false,
        metrics: None,
        // A trial whose connection breaks shows it in its errors; it is not patched up.
        reconnect: false,
    }));
    let readings = sampler.join().map_err(|_| LabError::Runtime {
        what: "the sampler thread panicked",
        source: None,
    });
    if let Some(server) = server {
        server.stop()?;
    }
    let result = outcome?;
    let (first, second) = readings??;
    let source = second.server.free_path_source;
    let trial = Trial {
        round,
        position,
        config: config.label.clone(),
        load,
        server: delta(&first, &second),
        loadgen_cpu_s: Some(second.loadgen_cpu_s - first.loadgen_cpu_s),
        result,
    };
    Ok((trial, source))
}
