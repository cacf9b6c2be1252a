//! Every PromQL expression of the Grafana dashboard (deploy/grafana/dashboards/krpc.json)
//! returns data from a real Prometheus (Debian's; scripts/test installs it). Prometheus scrapes
//! one krpc-server per strategy (rustls, owner handoff) and one krpc-loadgen per server, with
//! native histograms on, while load runs. So that every panel has something to show, the test
//! also sends one oversized message to each server (an error series) and one plaintext
//! connection to its TLS port (a handshake failure).
//!
//! One exception, said out loud: on a kernel without kTLS, `/proc/net/tls_stat` does not
//! exist, so the panel of the kernel's kTLS counters has no series. The test checks that
//! `krpc_ktls_available` says 0 there and reports the panel as SKIPPED. Everywhere else, an
//! empty result fails the test.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use krpc_client::TlsArgs;
use krpc_loadgen::{
    metrics::LoadgenMetrics,
    run::{Mode, RunConfig, run},
    workload::{Arrival, Mix, Workload},
};
use krpc_proto::v1::EchoRequest;
use krpc_server::{Handoff, RuntimeMode, Server, ServerInfo, Strategy};
use krpc_testkit::{Job, Prometheus, prometheus_binary};
use krpc_transport::{Acceptor, DevCerts, Identity, KtlsSupport, ServerTls, TlsMode, TlsPath};
use tokio_util::sync::CancellationToken;

struct Target {
    addr: SocketAddr,
    metrics: SocketAddr,
    loadgen_metrics: LoadgenMetrics,
    loadgen_addr: SocketAddr,
}

fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/dashboards/krpc.json"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                // Grafana's variable; Prometheus scrapes every second here.
                expr.replace("$__rate_interval", "30s"),
            ));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");

    let dir = tempfile::tempdir().unwrap();
    let certs = DevCerts::generate(&[]).unwrap().write(dir.path()).unwrap();
    let ktls = KtlsSupport::probe();
    let shutdown = CancellationToken::new();
    let mut targets = Vec::new();
    let mut threads = Vec::new();
    for strategy in Strategy::ALL {
        let identity = Identity::from_pem_files(&certs.server_cert, &certs.server_key).unwrap();
        let config = ServerTls {
            identity,
            client_ca: None,
        }
        .config(TlsPath::Rustls, &ktls)
        .unwrap();
        let server = Server::new(
            ServerInfo {
                strategy,
                handoff: Handoff::Owner,
                defer_max: 8,
                max_message_bytes: 1024,
                ..ServerInfo::new(RuntimeMode::ThreadPerCore, 2, TlsMode::Rustls, ktls.clone())
            },
            Acceptor::tls(config, false, Duration::from_secs(5)),
        );
        let listeners = krpc_server::bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let metrics_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = metrics_listener.local_addr().unwrap();
        let loadgen_metrics = LoadgenMetrics::new();
        let loadgen_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let loadgen_addr = loadgen_listener.local_addr().unwrap();
        threads.push(thread::spawn({
            let (server, shutdown) = (server.clone(), shutdown.clone());
            move || server.serve_metrics(metrics_listener, shutdown).unwrap()
        }));
        threads.push(thread::spawn({
            let (registry, shutdown) = (loadgen_metrics.registry(), shutdown.clone());
            move || krpc_telemetry::serve_prometheus(loadgen_listener, registry, shutdown).unwrap()
        }));
        threads.push(thread::spawn({
            let shutdown = shutdown.clone();
            move || server.serve(listeners, shutdown).unwrap()
        }));
        targets.push(Target {
            addr,
            metrics,
            loadgen_metrics,
            loadgen_addr,
        });
    }
    let scraped: Vec<SocketAddr> = targets
        .iter()
        .flat_map(|t| [t.metrics, t.loadgen_addr])
        .collect();
    let prometheus = Prometheus::start(
        &binary,
        dir.path(),
        &[
            Job::new("krpc", &scraped),
            Job::new("krpc-classic", &scraped).param("format", "text"),
        ],
    );

    let tls = TlsArgs {
        tls: TlsMode::Rustls,
        ca: Some(certs.ca_cert.clone()),
        client_cert: None,
        client_key: None,
        insecure: false,
        server_name: None,
    };
    let connector = tls.connector_with(&ktls).unwrap();
    for t in &targets {
        // A handshake failure: plaintext HTTP on the TLS port; the server closes on us.
        let mut tcp = std::net::TcpStream::connect(t.addr).unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let _ = tcp.read_to_end(&mut Vec::new());
        // An error series: a message over --max-message-bytes.
        let mut client = krpc_client::connect(&t.addr.to_string(), connector.clone())
            .await
            .unwrap();
        let status = client
            .echo(EchoRequest {
                key: Bytes::new(),
                payload: Bytes::from(vec![0u8; 2000]),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut skipped = Vec::new();
    loop {
        let mut load = tokio::task::JoinSet::new();
        for t in &targets {
            load.spawn(run(RunConfig {
                target: t.addr.to_string(),
                connector: connector.clone(),
                mode: Mode::Open {
                    rate: 400.0,
                    arrival: Arrival::Poisson,
                },
                connections: 2,
                concurrency: 4,
                duration: Duration::from_secs(2),
                warmup: Duration::ZERO,
                workload: Workload::new("echo:8,put:1,get:1".parse::<Mix>().unwrap(), 256, 64),
                label: None,
                hdr_log: None,
                progress: false,
                metrics: Some(t.loadgen_metrics.clone()),
                reconnect: true,
            }));
        }
        while let Some(done) = load.join_next().await {
            done.unwrap().unwrap();
        }
        let ktls_available = prometheus.query("max(krpc_ktls_available)");
        let mut missing = Vec::new();
        skipped.clear();
        for (title, expr) in &queries {
            if !prometheus.query(expr).is_empty() {
                continue;
            }
            let kernel_only = expr.contains("krpc_kernel_tls_");
            let no_ktls = ktls_available.first().is_some_and(|(_, v)| *v == 0.0);
            if kernel_only && no_ktls && !std::path::Path::new("/proc/net/tls_stat").exists() {
                skipped.push(format!("{title}: {expr}"));
            } else {
                missing.push(format!("{title}: {expr}"));
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries without data after 120 s:\n{}\nPrometheus log:\n{}",
            missing.join("\n"),
            prometheus.log()
        );
    }
    for s in &skipped {
        eprintln!(
            "SKIPPED (this kernel has no kTLS: /proc/net/tls_stat absent, krpc_ktls_available 0): {s}"
        );
    }
    assert!(skipped.len() <= 2, "{skipped:?}");
    drop(prometheus);
    shutdown.cancel();
    for t in threads {
        t.join().unwrap();
    }
}
