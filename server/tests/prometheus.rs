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
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Options, TestServer, drive};
use krpc_server::{Handoff, Strategy};
use krpc_transport::TlsPath;

/// The Prometheus child process; killed (by PID) and reaped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(binary: &Path, dir: &Path, targets: &[SocketAddr]) -> Self {
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        // Two jobs on the same endpoints: `krpc` negotiates protobuf (native histograms);
        // Prometheus 2.42 then drops the classic buckets, so `krpc-classic` asks for text.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n\
             \x20 - job_name: krpc\n    static_configs:\n      - targets: [{list}]\n\
             \x20 - job_name: krpc-classic\n    params:\n      format: [text]\n    static_configs:\n      - targets: [{list}]\n"
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        // A free loopback port: bound, read, released, handed over.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--enable-feature=native-histograms")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let prometheus = Self { child, addr, log };
        prometheus.wait_ready();
        prometheus
    }

    fn wait_ready(&self) {
        let url = format!("http://{}/-/ready", self.addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        while ureq::get(&url).call().is_err() {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready after 60 s; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query; `strategy` label → value.
    fn query(&self, promql: &str) -> BTreeMap<String, f64> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let body = ureq::get(&url)
            .query("query", promql)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "success", "{promql}: {body}");
        json["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let strategy = r["metric"]["strategy"].as_str().unwrap_or("").to_owned();
                let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (strategy, value)
            })
            .collect()
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

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
        let result = prometheus.query(&promql);
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
    let Some(binary) = find_on_path("prometheus") else {
        assert!(
            std::env::var_os("KRPC_REQUIRE_PROMETHEUS").is_none(),
            "KRPC_REQUIRE_PROMETHEUS is set but `prometheus` is not on PATH"
        );
        eprintln!("SKIPPED: `prometheus` is not installed (scripts/test installs Debian's)");
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
    let prometheus = Prometheus::start(&binary, dir.path(), &targets);

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
                std::fs::read_to_string(&prometheus.log).unwrap_or_default()
            ),
            Err(_) => {}
        }
    }
    drop(prometheus);
    for server in servers {
        server.stop().await.unwrap();
    }
}
