//! A real Prometheus (Debian's `prometheus`, which scripts/test installs) scrapes one
//! krpc-server per strategy while RPCs run, with native histograms on (protobuf scrape), and
//! answers through its HTTP API: p99 from the native and from the classic histogram, and
//! rate() of deferred frees and kicks, for every strategy label. Prometheus is killed by its
//! PID when the test ends, pass or fail.
//!
//! Without `prometheus` on PATH the test says SKIPPED, unless KRPC_REQUIRE_PROMETHEUS is set
//! (scripts/test sets it: there, a missing Prometheus is a failure).

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{Options, TestServer, drive};
use krpc_server::{Handoff, Strategy};
use krpc_testkit::{Job, Prometheus, prometheus_binary};
use krpc_transport::TlsPath;

const STRATEGIES: [&str; 4] = ["global", "local", "per-conn", "per-core"];

/// What the test needs from Prometheus, checked in one pass; `Err` says what is missing yet.
fn check(prometheus: &Prometheus) -> Result<(), String> {
    let window = "[20s]";
    let checks = [
        (
            "native p99",
            format!(
                "histogram_quantile(0.99, sum by (strategy) (rate(krpc_rpc_duration_seconds{{job=\"krpc\"}}{window})))"
            ),
            false,
        ),
        (
            "classic p99",
            format!(
                "histogram_quantile(0.99, sum by (strategy, le) (rate(krpc_rpc_duration_seconds_bucket{{job=\"krpc-classic\"}}{window})))"
            ),
            false,
        ),
        (
            "deferred-free rate",
            format!(
                "sum by (strategy) (rate(krpc_pool_deferred_frees_total{{job=\"krpc\"}}{window}))"
            ),
            true,
        ),
        (
            "kick rate",
            format!("sum by (strategy) (rate(krpc_pool_kicks_total{{job=\"krpc\"}}{window}))"),
            true,
        ),
    ];
    for (what, promql, zero_ok) in checks {
        let result = prometheus.query_by(&promql, "strategy");
        for strategy in STRATEGIES {
            match result.get(strategy) {
                None => return Err(format!("{what}: no data for strategy {strategy}")),
                Some(v) if v.is_nan() => return Err(format!("{what}: NaN for {strategy}")),
                Some(v) if !zero_ok && *v <= 0.0 => {
                    return Err(format!("{what}: {v} for {strategy}"));
                }
                Some(_) => {}
            }
        }
        // Owner handoff frees buffers on other cores: the deferring strategies must show it.
        if what == "deferred-free rate" {
            for strategy in ["per-conn", "per-core"] {
                if result[strategy] <= 0.0 {
                    return Err(format!("{what}: 0 for {strategy}"));
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_strategy_and_answers_quantiles_and_rates() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let servers: Vec<TestServer> = Strategy::ALL
        .into_iter()
        .map(|strategy| {
            TestServer::start(Options {
                strategy,
                handoff: Handoff::Owner,
                // Small defer lists: kicks happen at 4 pending buffers.
                defer_max: 8,
                ..Options::tls(TlsPath::Off)
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<SocketAddr> = servers.iter().map(|s| s.metrics_addr).collect();
    // Two jobs on the same endpoints: `krpc` negotiates protobuf (native histograms);
    // Prometheus 2.42 then drops the classic buckets, so `krpc-classic` asks for text.
    let prometheus = Prometheus::start(
        &binary,
        dir.path(),
        &[
            Job::new("krpc", &targets),
            Job::new("krpc-classic", &targets).param("format", "text"),
        ],
    );

    let mut channels = Vec::new();
    for server in &servers {
        channels.push(server.plain_channel().await);
    }
    // Load in rounds until Prometheus has what we ask for (it needs a few scrapes for rate()).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rounds = 0;
    loop {
        let mut load = tokio::task::JoinSet::new();
        for channel in &channels {
            load.spawn(drive(channel.clone(), 400, 16));
        }
        while let Some(done) = load.join_next().await {
            done.unwrap();
        }
        rounds += 1;
        let result = tokio::task::block_in_place(|| check(&prometheus));
        match result {
            Ok(()) => break,
            Err(missing) if Instant::now() > deadline => panic!(
                "after {rounds} rounds of load, Prometheus still lacks: {missing}\nits log:\n{}",
                prometheus.log()
            ),
            Err(_) => {}
        }
    }
    drop(prometheus);
    for server in servers {
        server.stop().await.unwrap();
    }
}
