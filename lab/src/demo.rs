//! `krpc-lab demo`, the README's first command: the experiment engine on a short schedule. The
//! four free strategies, each on fresh embedded servers (TLS auto, owner handoff, development
//! certificates in a temporary directory), interleaved in a few rounds at one fixed rate; then
//! the medians with their intervals, the free-path share, the pool's counts and what they allow
//! one to say. Needs nothing but the command.

use std::{path::PathBuf, time::Duration};

use krpc_loadgen::workload::{Mix, Workload};
use krpc_server::{Handoff, RuntimeMode, Strategy};
use krpc_transport::TlsMode;

use crate::{
    cpus::{CpuPlan, allowed},
    engine::{Plan, run_plan, strategies},
    error::{LabError, Result},
    record::{Experiment, Load},
};

/// The demo's knobs (all have defaults in the binary).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub rate: f64,
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub concurrency: usize,
    pub mix: Mix,
    pub payload: usize,
    pub tls: TlsMode,
    pub out: PathBuf,
    pub progress: bool,
    pub command: String,
}

/// Runs the demo and writes `demo.json` and `report.html` into `out`.
pub fn demo(opts: &DemoOptions) -> Result<Experiment> {
    std::fs::create_dir_all(&opts.out).map_err(|e| LabError::file("create", &opts.out, e))?;
    let cpus = CpuPlan::choose(None, None, &allowed())?;
    let cores = cpus.server.len();
    let plan = Plan {
        kind: "demo",
        command: opts.command.clone(),
        configs: strategies(
            &Strategy::ALL,
            Handoff::Owner,
            64,
            cores,
            RuntimeMode::ThreadPerCore,
        ),
        baseline: Strategy::Local.as_str().to_owned(),
        loads: vec![Load {
            rate: Some(opts.rate),
        }],
        rounds: opts.rounds,
        warmup: opts.warmup,
        duration: opts.duration,
        connections: opts.connections,
        concurrency: opts.concurrency,
        workload: Workload::new(opts.mix.clone(), opts.payload, 1024),
        tls: opts.tls,
        loadgen_threads: cpus.loadgen.len(),
        cpus,
        progress: opts.progress,
    };
    let exp = run_plan(&plan)?;
    exp.write(&opts.out.join("demo.json"))?;
    let html = crate::html::report(&exp)?;
    let path = opts.out.join("report.html");
    std::fs::write(&path, html).map_err(|e| LabError::file("write", &path, e))?;
    Ok(exp)
}
