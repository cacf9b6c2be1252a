//! The Prometheus endpoint: every metric family it exposes is documented in docs/metrics.md,
//! protobuf is negotiated for Prometheus (native histograms) and text for everyone else, and
//! the endpoint answers only /metrics; the server's CPU time is counted per core.

mod common;

use common::{Options, TestServer, drive};
use krpc_server::{Handoff, RuntimeMode};
use krpc_transport::TlsPath;

const PROTOBUF_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exposed_family_is_documented_and_counts_what_happened() {
    let server = TestServer::start(Options::tls(TlsPath::Off));
    drive(server.plain_channel().await, 300, 4).await;
    let text = server.scrape();
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .unwrap();
    let families: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    assert!(families.len() >= 20, "{families:?}");
    for (name, kind) in &families {
        // Counters are documented under their sample name (with `_total`), info under `_info`.
        let documented = match *kind {
            "counter" => format!("`{name}_total`"),
            "info" => format!("`{name}_info`"),
            _ => format!("`{name}`"),
        };
        assert!(
            docs.contains(&documented),
            "{documented} is not in docs/metrics.md"
        );
    }
    assert_eq!(common::sum_series(&text, "krpc_pool_allocs_total"), 300);
    assert_eq!(
        common::sum_series(&text, "krpc_connections_accepted_total"),
        1
    );
    assert!(
        text.lines().any(|l| l.starts_with("krpc_rpc_duration_seconds_count{method=\"Put\",code=\"OK\",strategy=\"per-core\",tls=\"off\"")),
        "{text}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn prometheus_gets_protobuf_and_others_get_text() {
    let server = TestServer::start(Options::tls(TlsPath::Off));
    let url = format!("http://{}/metrics", server.metrics_addr);
    let content_type = |mut r: ureq::http::Response<ureq::Body>| {
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        let body = r.body_mut().read_to_vec().unwrap();
        (ct, body)
    };
    let (ct, body) = content_type(
        ureq::get(&url)
            .header("accept", PROTOBUF_ACCEPT)
            .call()
            .unwrap(),
    );
    assert!(ct.starts_with("application/vnd.google.protobuf"), "{ct}");
    assert!(ct.contains("encoding=delimited"), "{ct}");
    assert!(
        !body.is_empty() && !body.starts_with(b"# "),
        "binary, not text"
    );
    let (ct, body) = content_type(ureq::get(&url).call().unwrap());
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(body.ends_with(b"# EOF\n"));
    // The override, for Prometheus < 2.45's second (classic) job.
    let forced = format!("{url}?format=text");
    let (ct, _) = content_type(
        ureq::get(&forced)
            .header("accept", PROTOBUF_ACCEPT)
            .call()
            .unwrap(),
    );
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");

    let other = format!("http://{}/", server.metrics_addr);
    match ureq::get(&other).call() {
        Err(ureq::Error::StatusCode(code)) => assert_eq!(code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
    server.stop().await.unwrap();
}

/// `name{core="i"}` samples of a text exposition, as (core, value).
fn per_core(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix("{core=\""))
        .map(|rest| {
            let (core, value) = rest.split_once("\"} ").unwrap();
            (core.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn process_cpu() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
    t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cpu_is_counted_per_core_and_only_the_runtime_threads() {
    for (runtime, handoff, cores) in [
        (
            RuntimeMode::ThreadPerCore,
            Handoff::Owner,
            ["0", "1"].as_slice(),
        ),
        // Work-stealing with owner handoff: two workers and two key-owner threads.
        (
            RuntimeMode::WorkStealing,
            Handoff::Owner,
            &["0", "1", "2", "3"],
        ),
    ] {
        let server = TestServer::start(Options {
            runtime,
            handoff,
            ..Options::tls(TlsPath::Off)
        });
        let before = per_core(&server.scrape(), "krpc_server_cpu_seconds_total");
        let process_before = process_cpu();
        drive(server.plain_channel().await, 2_000, 8).await;
        let process_used = process_cpu() - process_before;
        let after = per_core(&server.scrape(), "krpc_server_cpu_seconds_total");
        let labels: Vec<&str> = after.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(labels, cores, "{runtime:?}");
        let used: f64 =
            after.iter().map(|(_, v)| v).sum::<f64>() - before.iter().map(|(_, v)| v).sum::<f64>();
        // The runtime threads did the serving; they are part of this process, whose clock
        // also counts the client and the test: more than nothing, less than the whole.
        assert!(used > 0.0, "{runtime:?}: {before:?} -> {after:?}");
        assert!(
            used <= process_used + 1e-3,
            "{runtime:?}: runtime threads {used} s > process {process_used} s"
        );
        for ((_, b), (core, a)) in before.iter().zip(&after) {
            assert!(a >= b, "{runtime:?}: core {core} went backwards");
        }
        server.stop().await.unwrap();
    }
}
