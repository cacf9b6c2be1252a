//! How the load generator counts failures, against a fake server that fails on script
//! (common/fake.rs): each RST_STREAM code and gRPC status gets the code gRPC's HTTP/2 mapping
//! gives it; a GOAWAY or a lost connection is UNAVAILABLE; failed RPCs are in the error
//! histogram and in no latency histogram; successes and failures are counted apart; a broken
//! connection is dialled again (or, with `--no-reconnect`, not), and the RPCs lost are exactly
//! those in flight at the break plus those due while it was down.
//! A test binary of its own: cargo runs test binaries one at a time.

mod common;

use std::time::Duration;

use common::{
    fake::{FakeServer, Reply},
    open_loop,
};
use krpc_loadgen::{result::RunResult, run::run};

fn count(r: &RunResult, code: &str) -> u64 {
    r.errors.get(code).copied().unwrap_or(0)
}

/// Every failure is in the error histogram, every success in the latency histograms, and
/// nothing is in both.
fn assert_apart(r: &RunResult) {
    assert_eq!(r.ok + r.error_count(), r.requests, "{:?}", r.errors);
    assert_eq!(r.latency.count, r.ok);
    assert_eq!(r.uncorrected.count, r.ok);
    assert_eq!(r.failed.latency.count, r.error_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_gets_its_grpc_code_and_stays_out_of_the_latencies() {
    use h2::Reason as R;
    let script = [
        Reply::Ok,
        Reply::Status(8),
        Reply::Reset(R::REFUSED_STREAM),
        Reply::Reset(R::CANCEL),
        Reply::Reset(R::ENHANCE_YOUR_CALM),
        Reply::Reset(R::PROTOCOL_ERROR),
        Reply::Reset(R::INADEQUATE_SECURITY),
    ];
    let server = FakeServer::start(move |n| script[n as usize % script.len()]).await;
    // 700 RPCs, one at a time on one connection: call n gets script[n % 7], 100 of each.
    let config = open_loop(server.addr, 700.0, Duration::from_secs(1), Duration::ZERO);
    let r = run(config).await.unwrap();
    assert_eq!(r.requests, 700);
    assert_eq!(r.ok, 100);
    assert_eq!(
        count(&r, "RESOURCE_EXHAUSTED"),
        200,
        "status 8 and ENHANCE_YOUR_CALM"
    );
    assert_eq!(count(&r, "UNAVAILABLE"), 100, "REFUSED_STREAM");
    assert_eq!(count(&r, "CANCELLED"), 100);
    assert_eq!(count(&r, "INTERNAL"), 100, "PROTOCOL_ERROR");
    assert_eq!(count(&r, "PERMISSION_DENIED"), 100, "INADEQUATE_SECURITY");
    assert_apart(&r);
    // Successes and failures counted apart, per second of the window.
    assert!(
        (r.achieved_rate - 100.0).abs() <= 2.0,
        "{}",
        r.achieved_rate
    );
    assert!((r.failed.rate - 600.0).abs() <= 2.0, "{}", r.failed.rate);
    assert!(!r.kept_up(), "100 successes a second is not 700");
    assert_eq!(r.reconnects, 0);
    let summary = r.summary();
    assert!(summary.contains("100.0 RPC/s succeeded"), "{summary}");
    assert!(summary.contains("not in the latencies above"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_and_a_dropped_connection_are_unavailable_and_the_link_comes_back() {
    let server = FakeServer::start(|n| match n {
        100 => Reply::GoAway(h2::Reason::NO_ERROR),
        300 => Reply::Drop,
        _ => Reply::Ok,
    })
    .await;
    let rate = 500.0;
    let config = open_loop(
        server.addr,
        rate,
        Duration::from_millis(1500),
        Duration::ZERO,
    );
    let r = run(config).await.unwrap();
    assert_eq!(
        r.errors.keys().collect::<Vec<_>>(),
        ["UNAVAILABLE"],
        "{:?}",
        r.errors
    );
    assert_eq!(r.reconnects, 2);
    assert_apart(&r);
    // Lost: the call in flight at each break, and every call due while the link was down.
    let due_while_down = count(&r, "UNAVAILABLE") - 2;
    let expected = rate * r.downtime_s;
    assert!(
        (due_while_down as f64 - expected).abs() <= 3.0,
        "{due_while_down} failed while down, {expected:.1} due in {:.3} s",
        r.downtime_s
    );
    assert!(r.downtime_s >= 0.1, "two outages of at least 80 ms each");
    // Every call the server saw, but those two, came back OK: nothing else was lost.
    assert_eq!(
        server.calls.load(std::sync::atomic::Ordering::SeqCst),
        r.ok + 2
    );
    assert!(r.summary().contains("2 reconnects"), "{}", r.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_every_call_after_the_break_is_unavailable() {
    let server = FakeServer::start(|n| if n == 100 { Reply::Drop } else { Reply::Ok }).await;
    let mut config = open_loop(server.addr, 500.0, Duration::from_secs(1), Duration::ZERO);
    config.reconnect = false;
    let r = run(config).await.unwrap();
    assert_eq!(r.ok, 100);
    assert_eq!(count(&r, "UNAVAILABLE"), 400);
    assert_eq!(r.reconnects, 0);
    assert!(
        r.downtime_s > 0.7,
        "down from the break to the end: {}",
        r.downtime_s
    );
    assert_apart(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_slots_wait_for_the_link_instead_of_failing_in_a_loop() {
    // Closed loop runs thousands of calls a second here: call 5,000 is well inside the window.
    let server = FakeServer::start(|n| if n == 5_000 { Reply::Drop } else { Reply::Ok }).await;
    let mut config = open_loop(
        server.addr,
        1.0,
        Duration::from_millis(1500),
        Duration::ZERO,
    );
    config.mode = krpc_loadgen::run::Mode::Closed;
    config.concurrency = 4;
    let r = run(config).await.unwrap();
    // Only the calls in flight at the drop fail; nothing was due meanwhile.
    assert!(
        (1..=4).contains(&count(&r, "UNAVAILABLE")),
        "{:?} ok {} reconnects {} calls {}",
        r.errors,
        r.ok,
        r.reconnects,
        server.calls.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_eq!(r.reconnects, 1);
    let calls = server.calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        calls > 6_000,
        "served again after the reconnect: {calls} calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_run_costs_only_the_calls_due_while_it_was_away() {
    let server = FakeServer::start(|_| Reply::Ok).await;
    let rate = 1000.0;
    let mut config = open_loop(
        server.addr,
        rate,
        Duration::from_millis(2000),
        Duration::ZERO,
    );
    config.connections = 2;
    let load = tokio::spawn(run(config));
    // 600 ms in, the server goes away for 300 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _restarted = server.restart().await;
    let r = load.await.unwrap().unwrap();
    assert_eq!(
        r.errors.keys().collect::<Vec<_>>(),
        ["UNAVAILABLE"],
        "{:?}",
        r.errors
    );
    assert_eq!(r.reconnects, 2, "both connections");
    assert_apart(&r);
    // Each connection carries half the rate; at most one call per connection was in flight.
    let expected = rate / 2.0 * r.downtime_s;
    let lost = count(&r, "UNAVAILABLE") as f64;
    assert!(
        (lost - expected).abs() <= 2.0 + 3.0,
        "{lost} lost, {expected:.1} due while down ({:.3} s over two connections)",
        r.downtime_s
    );
    assert!(r.downtime_s >= 0.5, "{}", r.downtime_s);
}
