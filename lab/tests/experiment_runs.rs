//! The experiment engine against real embedded servers, on a tiny schedule: every trial is
//! kept, the order rotates, and each trial carries the server's own account of its window (CPU
//! per core, RPCs, pool counts, free-path time) next to the load generator's. Counts are
//! asserted, never timings: the machine is shared.

use std::time::Duration;

use krpc_lab::{
    cpus::{CpuPlan, allowed},
    engine::{Plan, run_plan, strategies},
    record::{Experiment, Load},
};
use krpc_loadgen::workload::{Method, Mix, Workload};
use krpc_server::{Handoff, RuntimeMode, Strategy};
use krpc_transport::TlsMode;

#[test]
fn every_trial_is_kept_with_the_servers_own_counters() {
    let cpus = CpuPlan::choose(None, None, &allowed()).unwrap();
    let cores = cpus.server.len().clamp(1, 2);
    let plan = Plan {
        kind: "experiment",
        command: "test".into(),
        configs: strategies(
            &[Strategy::Local, Strategy::PerCore],
            Handoff::Owner,
            64,
            cores,
            RuntimeMode::ThreadPerCore,
        ),
        baseline: "local".into(),
        loads: vec![Load::CLOSED, Load { rate: Some(400.0) }],
        rounds: 2,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(800),
        connections: 2,
        concurrency: 4,
        workload: Workload::new(Mix::single(Method::Echo), 64, 64),
        tls: TlsMode::Off,
        loadgen_threads: 1,
        cpus,
        progress: false,
    };
    let exp = run_plan(&plan).unwrap();
    assert_eq!(exp.trials.len(), 2 * 2 * 2);
    assert!(exp.fresh_servers);
    // Round 0 runs local first, round 1 per-core first.
    let first = |round: usize| {
        exp.trials
            .iter()
            .find(|t| t.round == round && t.position == 0)
            .unwrap()
            .config
            .clone()
    };
    assert_eq!(
        (first(0).as_str(), first(1).as_str()),
        ("local", "per-core")
    );
    for t in &exp.trials {
        let what = format!("{} {} round {}", t.config, t.load, t.round);
        assert_eq!(t.result.error_count(), 0, "{what}");
        assert!(t.server.rpcs > 0.0, "{what}");
        let cpu = t.server_cpu_s().expect("the server exports its CPU clocks");
        assert_eq!(t.server.cpu_s.len(), cores, "{what}: one series per core");
        assert!(cpu > 0.0, "{what}");
        // No more CPU than its cores had in the window.
        assert!(
            cpu <= t.server.window_s * cores as f64 * 1.05 + 0.01,
            "{what}: {cpu} s"
        );
        assert!(t.loadgen_cpu_s.unwrap() > 0.0, "{what}");
        // One request buffer per Echo: allocations follow RPCs (the scrapes are a moment
        // apart from the RPC counts, hence the slack).
        let (allocs, rpcs) = (t.server.pool.allocs, t.server.rpcs);
        assert!(
            (allocs - rpcs).abs() <= 0.05 * rpcs + 50.0,
            "{what}: {allocs} allocs, {rpcs} RPCs"
        );
        if t.load.is_closed() {
            let share = t.free_path_share().unwrap();
            assert!(
                share > 0.0 && share < 0.5,
                "{what}: free-path share {share}"
            );
        }
        if t.config == "per-core" {
            assert!(
                t.server.pool.deferred_frees > 0.0,
                "{what}: owner handoff defers"
            );
        } else {
            assert_eq!(
                t.server.pool.deferred_frees, 0.0,
                "{what}: local never defers"
            );
        }
    }
    // Through the file and back, every trial kept.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("experiment.json");
    exp.write(&path).unwrap();
    assert_eq!(Experiment::read(&path).unwrap(), exp);
    let report = krpc_lab::text::report(&exp);
    assert!(report.contains("== closed loop"), "{report}");
    assert!(report.contains("== 400 RPC/s"), "{report}");
}
