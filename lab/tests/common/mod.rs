//! Synthetic experiments: trials built from chosen numbers, so the summaries, words and reports
//! can be checked against known truths (no servers, no timing).

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::collections::BTreeMap;

use krpc_lab::{
    cpus::CpuPlan,
    record::{ConfigRecord, Experiment, FORMAT, Load, LoadSettings, ServerDelta, Trial},
    scrape::{FreePathSource, PoolCounters},
};
use krpc_loadgen::result::{
    ConfigRecord as RunConfig, Latency, RunResult, ServerRecord, encode_histogram, new_histogram,
};

/// What one synthetic trial measured.
#[derive(Clone, Copy, Debug)]
pub struct Numbers {
    pub rpc_s: f64,
    /// Every RPC's latency is drawn around this (µs): 90% at it, 9% at 2x, 1% at 5x.
    pub latency_us: u64,
    pub server_cpu_us: f64,
    pub free_path_share: f64,
    pub misses_per_1k: f64,
}

/// A trial of `config` at `load` in `round` with `n`'s figures (10,000 RPCs recorded).
pub fn trial(config: &str, load: Load, round: usize, position: usize, n: Numbers) -> Trial {
    let mut h = new_histogram();
    h.record_n(n.latency_us, 9_000).unwrap();
    h.record_n(2 * n.latency_us, 900).unwrap();
    h.record_n(5 * n.latency_us, 100).unwrap();
    let encoded = encode_histogram(&h);
    let rpcs = n.rpc_s * 4.0;
    let cpu = n.server_cpu_us * rpcs * 1e-6;
    let result = RunResult {
        format: krpc_loadgen::result::FORMAT,
        label: config.to_owned(),
        config: RunConfig {
            rate: load.rate,
            mode: if load.is_closed() { "closed" } else { "open" }.to_owned(),
            ..Default::default()
        },
        server: Some(ServerRecord {
            cores: 2,
            strategy: config.to_owned(),
            ..Default::default()
        }),
        environment: Default::default(),
        processes: 1,
        duration_s: 4.0,
        requests: 10_000,
        ok: 10_000,
        errors: BTreeMap::new(),
        achieved_rate: n.rpc_s,
        failed: Default::default(),
        reconnects: 0,
        downtime_s: 0.0,
        latency: Latency::of(&h),
        uncorrected: Latency::of(&h),
        send_lag: Latency::of(&h),
        histogram: encoded.clone(),
        uncorrected_histogram: encoded.clone(),
        send_lag_histogram: encoded,
        server_pool: None,
    };
    Trial {
        round,
        position,
        config: config.to_owned(),
        load,
        server: ServerDelta {
            window_s: 4.0,
            cpu_s: [("0".to_owned(), cpu / 2.0), ("1".to_owned(), cpu / 2.0)].into(),
            rpcs,
            free_path_s: Some(cpu * n.free_path_share),
            pool: PoolCounters {
                allocs: rpcs,
                hits: rpcs - rpcs * n.misses_per_1k / 1e3,
                misses: rpcs * n.misses_per_1k / 1e3,
                local_frees: rpcs / 2.0,
                deferred_frees: rpcs / 2.0,
                overflow_frees: 0.0,
                drained: rpcs / 2.0,
                kicks: 0.0,
            },
        },
        loadgen_cpu_s: Some(cpu / 2.0),
        result,
    }
}

/// An experiment over `configs` (first: baseline) and `loads`, `rounds` rounds; `numbers`
/// gives each trial's figures from (config index, load index, round).
pub fn experiment(
    configs: &[&str],
    loads: &[Load],
    rounds: usize,
    numbers: impl Fn(usize, usize, usize) -> Numbers,
) -> Experiment {
    let mut trials = Vec::new();
    for round in 0..rounds {
        for (l, &load) in loads.iter().enumerate() {
            for position in 0..configs.len() {
                let c = (position + round) % configs.len();
                trials.push(trial(
                    configs[c],
                    load,
                    round,
                    position,
                    numbers(c, l, round),
                ));
            }
        }
    }
    Experiment {
        format: FORMAT,
        kind: "experiment".to_owned(),
        command: "krpc-lab experiment (synthetic)".to_owned(),
        configs: configs
            .iter()
            .map(|&label| ConfigRecord {
                label: label.to_owned(),
                strategy: Some(label.to_owned()),
                handoff: Some("owner".to_owned()),
                defer_max: Some(64),
                cores: Some(2),
                runtime: Some("thread-per-core".to_owned()),
                remote: None,
            })
            .collect(),
        baseline: configs[0].to_owned(),
        loads: loads.to_vec(),
        rounds,
        load_settings: LoadSettings {
            connections: 4,
            concurrency: 16,
            warmup_s: 1.0,
            duration_s: 4.0,
            mix: "echo".to_owned(),
            payload_bytes: 64,
            keys: 1024,
            loadgen_threads: 2,
        },
        tls: "off".to_owned(),
        cpus: CpuPlan::choose(None, None, &[0, 1]).unwrap(),
        fresh_servers: true,
        free_path_source: Some(FreePathSource::SampledFrees),
        build: "release".to_owned(),
        environment: Default::default(),
        wall_s: 1.0,
        trials,
    }
}

/// Deterministic jitter in [-1, 1] for (config, load, round): the synthetic noise.
pub fn jitter(c: usize, l: usize, r: usize) -> f64 {
    let x = (c * 7919 + l * 104_729 + r * 1_299_709 + 17) as u64;
    let x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    (x as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}
