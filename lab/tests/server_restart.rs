//! A krpc-server restarted in the middle of a run: the load generator (reconnecting, its
//! default) loses exactly the RPCs that were due while no server was there, each counted as
//! UNAVAILABLE, and nothing that reached either server: the OK replies it counts are every RPC
//! the two servers answered.

mod load;

use std::{
    thread,
    time::{Duration, Instant},
};

use krpc_loadgen::run::{RunConfig, run};
use krpc_server::{RuntimeMode, ServeTotals, Server, ServerInfo};
use krpc_transport::{Acceptor, KtlsSupport, TlsMode};
use tokio_util::sync::CancellationToken;

/// A plaintext krpc-server on `listeners` in a background thread; returns how to stop it.
fn serve(
    listeners: Vec<std::net::TcpListener>,
) -> (CancellationToken, thread::JoinHandle<ServeTotals>) {
    let info = ServerInfo::new(
        RuntimeMode::ThreadPerCore,
        2,
        TlsMode::Off,
        KtlsSupport::unavailable("test"),
    );
    let server = Server::new(info, Acceptor::plaintext());
    let shutdown = CancellationToken::new();
    let thread = thread::spawn({
        let shutdown = shutdown.clone();
        move || {
            server.serve(listeners, shutdown).unwrap();
            server.totals()
        }
    });
    (shutdown, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_costs_only_the_rpcs_due_while_the_server_was_away() {
    let listeners = krpc_server::bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let (stop_first, first) = serve(listeners);
    let rate = 1_000.0;
    let load = tokio::spawn(run(RunConfig {
        connections: 2,
        concurrency: 8,
        warmup: Duration::ZERO,
        ..load::config(addr, rate, 3)
    }));
    // One second in, a graceful stop (GOAWAY, in-flight RPCs answered), and a new server on
    // the same port 300 ms after the first is gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_first.cancel();
    let first = tokio::task::spawn_blocking(move || first.join().unwrap())
        .await
        .unwrap();
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listeners = krpc_server::bind(addr, 2).unwrap();
    let (stop_second, second) = serve(listeners);
    let restarted = stopped.elapsed();
    let r = load.await.unwrap().unwrap();
    stop_second.cancel();
    let second = tokio::task::spawn_blocking(move || second.join().unwrap())
        .await
        .unwrap();

    assert_eq!(
        r.errors.keys().collect::<Vec<_>>(),
        ["UNAVAILABLE"],
        "{:?}",
        r.errors
    );
    assert_eq!(r.reconnects, 2, "both connections came back");
    assert_eq!(first.rpcs_cut_off + second.rpcs_cut_off, 0);
    // Every RPC a server answered reached the load generator as OK (plus its Info call).
    assert_eq!(
        first.rpcs_answered + second.rpcs_answered,
        r.ok + 1,
        "{first:?} {second:?}"
    );
    assert_eq!(r.ok + r.error_count(), r.requests);
    // What was lost is what was due while a connection was down: each carries half the rate.
    let lost = r.error_count() as f64;
    let due = rate / 2.0 * r.downtime_s;
    assert!(
        (lost - due).abs() <= 4.0,
        "{lost} lost, {due:.1} due in {:.3} s down (summed over 2 connections)",
        r.downtime_s
    );
    assert!(
        r.downtime_s >= 2.0 * 0.3,
        "each connection was down at least the 300 ms without a server: {}",
        r.downtime_s
    );
    assert!(r.failed.latency.count == r.error_count() && r.latency.count == r.ok);
    println!(
        "{} OK, {} lost, {:.3} s down over 2 connections; the new server was up {:?} after the old one stopped",
        r.ok,
        r.error_count(),
        r.downtime_s,
        restarted
    );
}
