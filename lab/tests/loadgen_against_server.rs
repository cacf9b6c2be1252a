//! krpc-loadgen against real krpc-servers: the asked rate kept, errors counted by code, results
//! and interval logs merged exactly, one plotted line per run in the HTML report. (The wrk2
//! property is in loadgen/tests/coordinated_omission.rs: its own binary, so no other test shares
//! the CPUs.)

mod load;

use std::{net::SocketAddr, thread};

use krpc_loadgen::{
    interval::IntervalLog,
    merge::{merge_logs, merge_results},
    report,
    result::RunResult,
    run::{Mode, run},
    workload::{Arrival, Method, Mix, Workload},
};
use krpc_server::{RuntimeMode, Server, ServerInfo};
use krpc_transport::{Acceptor, KtlsSupport, TlsMode};
use tokio_util::sync::CancellationToken;

/// A krpc-server (plaintext, thread-per-core on 2 cores) in a background thread.
struct Embedded {
    addr: SocketAddr,
    shutdown: CancellationToken,
    thread: Option<thread::JoinHandle<()>>,
}

impl Embedded {
    fn start(info: ServerInfo) -> Self {
        let server = Server::new(info, Acceptor::plaintext());
        let listeners = krpc_server::bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let thread = thread::spawn({
            let shutdown = shutdown.clone();
            move || server.serve(listeners, shutdown).unwrap()
        });
        Self {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn plain_info() -> ServerInfo {
    ServerInfo::new(
        RuntimeMode::ThreadPerCore,
        2,
        TlsMode::Off,
        KtlsSupport::unavailable("test"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asked_rate_is_kept_within_two_percent() {
    let server = Embedded::start(plain_info());
    let mut cfg = load::config(server.addr, 800.0, 3);
    cfg.connections = 2;
    cfg.concurrency = 4;
    // Uniform: a Poisson schedule's own count varies by ~2% over 3 s (sd of 2,400 arrivals
    // is 49); its mean rate is checked in run.rs's unit tests.
    cfg.mode = Mode::Open {
        rate: 800.0,
        arrival: Arrival::Uniform,
    };
    let result = run(cfg).await.unwrap();
    let asked = 800.0;
    let off = (result.achieved_rate - asked).abs() / asked;
    assert!(off < 0.02, "achieved {} of {asked}", result.achieved_rate);
    assert!(result.kept_up());
    assert_eq!(result.ok, result.requests);
    // The generator's own lag is reported, and small next to the schedule's 1.25 ms gaps.
    assert!(result.send_lag.count > 0);
    assert_eq!(result.server.as_ref().unwrap().strategy, "per-core");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_grpc_status() {
    let server = Embedded::start(ServerInfo {
        max_message_bytes: 100,
        ..plain_info()
    });
    let mut cfg = load::config(server.addr, 300.0, 1);
    cfg.workload = Workload::new(Mix::single(Method::Echo), 500, 4);
    let result = run(cfg).await.unwrap();
    assert_eq!(result.ok, 0);
    assert_eq!(result.requests, 300);
    assert_eq!(
        result.errors.get("RESOURCE_EXHAUSTED"),
        Some(&300),
        "{:?}",
        result.errors
    );
    assert!(result.summary().contains("errors: RESOURCE_EXHAUSTED 300"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_interval_logs_merge_exactly_and_report_one_line_per_run() {
    let server = Embedded::start(plain_info());
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    let mut tasks = Vec::new();
    // Two "processes" at once, as on two hosts.
    for i in 0..2 {
        let mut cfg = load::config(server.addr, 400.0, 2);
        cfg.hdr_log = Some(dir.path().join(format!("p{i}.hlog")));
        cfg.label = Some(format!("p{i}"));
        tasks.push(tokio::spawn(run(cfg)));
    }
    for t in tasks {
        runs.push(t.await.unwrap().unwrap());
    }
    // Through the files, as `merge` reads them.
    let mut read_back = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let path = dir.path().join(format!("p{i}.json"));
        r.write(&path).unwrap();
        read_back.push(RunResult::read(&path).unwrap());
    }
    assert_eq!(read_back, runs);
    let merged = merge_results(&read_back).unwrap();
    assert_eq!(merged.requests, runs[0].requests + runs[1].requests);
    assert_eq!(merged.processes, 2);
    assert_eq!(merged.config.rate, Some(800.0));
    let total = merged.histogram().unwrap();
    assert_eq!(total.len(), runs[0].latency.count + runs[1].latency.count);

    let logs: Vec<IntervalLog> = (0..2)
        .map(|i| IntervalLog::read(&dir.path().join(format!("p{i}.hlog"))).unwrap())
        .collect();
    for (log, run) in logs.iter().zip(&runs) {
        assert_eq!(
            log.total().len(),
            run.latency.count,
            "a log holds every measured RPC"
        );
    }
    let merged_log = merge_logs(&logs);
    let path = dir.path().join("merged.hlog");
    merged_log.write(&path, merged_log.start_time).unwrap();
    assert_eq!(IntervalLog::read(&path).unwrap().total().len(), total.len());

    let html = report::html(&[runs[0].clone(), runs[1].clone(), merged.clone()]).unwrap();
    assert_eq!(html.matches("<polyline class=\"run\"").count(), 3);
    for label in ["p0", "p1"] {
        assert!(html.contains(&format!("data-label=\"{label}\"")));
    }
    let table = report::table(&[runs[0].clone(), merged]);
    assert_eq!(table.lines().count(), 4, "{table}");
}

#[test]
fn merging_different_workloads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.json");
    std::fs::write(&path, "{\"not\": \"a result\"}").unwrap();
    let e = RunResult::read(&path).unwrap_err();
    assert!(
        format!("{e:#}").contains("is not a krpc-loadgen result"),
        "{e:#}"
    );
    assert!(
        merge_results(&[])
            .unwrap_err()
            .to_string()
            .contains("nothing to merge")
    );
}
