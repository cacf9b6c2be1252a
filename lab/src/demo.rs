//! `krpc-lab demo`, the README's main job: for each free strategy, start a krpc-server in
//! this process (TLS auto, owner handoff, development certificates in a temporary directory),
//! drive the same fixed-rate load against it, stop it; then print the comparison and write the
//! HTML report. Needs nothing but the command.

use std::{path::PathBuf, thread, time::Duration};

use krpc_client::TlsArgs;
use krpc_server::{Handoff, RuntimeMode, Server, ServerInfo, Strategy};
use krpc_transport::{Acceptor, DevCerts, Identity, KtlsSupport, ServerTls, TlsMode, TlsPath};
use tokio_util::sync::CancellationToken;

use krpc_loadgen::{
    report,
    result::{PoolSummary, RunResult},
    run::{Mode, RunConfig, run, runtime},
    workload::{Arrival, Mix, Workload},
};

use crate::error::{LabError, Result};

/// The demo's knobs (all have defaults).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub concurrency: usize,
    pub mix: Mix,
    pub payload: usize,
    pub tls: TlsMode,
    pub out: PathBuf,
    pub progress: bool,
}

/// Runs every strategy; returns the results in `Strategy::ALL` order.
pub fn demo(opts: &DemoOptions) -> Result<Vec<RunResult>> {
    std::fs::create_dir_all(&opts.out).map_err(|e| LabError::file("create", &opts.out, e))?;
    let certs_dir = tempfile::tempdir().map_err(|e| LabError::Runtime {
        what: "cannot create a temporary directory for the certificates",
        source: Some(e),
    })?;
    let certs = DevCerts::generate(&[])?.write(certs_dir.path())?;
    let ktls = if opts.tls == TlsMode::Off {
        KtlsSupport::unavailable("not probed (--tls off)")
    } else {
        KtlsSupport::probe()
    };
    let path = opts.tls.resolve(&ktls)?;
    if let Some(reason) = ktls.unavailable_reason()
        && opts.tls == TlsMode::Auto
    {
        eprintln!("kTLS unavailable ({reason}): the demo runs over rustls");
    }
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let client_tls = TlsArgs {
        tls: opts.tls,
        ca: Some(certs.ca_cert.clone()),
        client_cert: None,
        client_key: None,
        insecure: false,
        server_name: None,
    };
    let connector = client_tls.connector_with(&ktls)?;
    let rt = runtime(cores).map_err(|e| LabError::Runtime {
        what: "cannot start the load generator's runtime",
        source: Some(e),
    })?;
    let mut results = Vec::new();
    for strategy in Strategy::ALL {
        let acceptor = match path {
            TlsPath::Off => Acceptor::plaintext(),
            path => {
                let identity = Identity::from_pem_files(&certs.server_cert, &certs.server_key)?;
                let config = ServerTls {
                    identity,
                    client_ca: None,
                }
                .config(path, &ktls)?;
                Acceptor::tls(config, path == TlsPath::Ktls, Duration::from_secs(10))
            }
        };
        let server = Server::new(
            ServerInfo {
                strategy,
                handoff: Handoff::Owner,
                ..ServerInfo::new(RuntimeMode::ThreadPerCore, cores, opts.tls, ktls.clone())
            },
            acceptor,
        );
        let bind_err = |e| LabError::Runtime {
            what: "cannot bind the embedded server to 127.0.0.1:0",
            source: Some(e),
        };
        let listeners = krpc_server::bind((std::net::Ipv4Addr::LOCALHOST, 0).into(), cores)
            .map_err(bind_err)?;
        let addr = listeners[0].local_addr().map_err(bind_err)?;
        let shutdown = CancellationToken::new();
        let serving = thread::spawn({
            let (server, shutdown) = (server.clone(), shutdown.clone());
            move || server.serve(listeners, shutdown)
        });
        eprintln!(
            "== {strategy}: {} RPC/s for {:?} (after {:?} warmup) against an embedded server on {addr}",
            opts.rate, opts.duration, opts.warmup
        );
        let outcome = rt.block_on(run(RunConfig {
            target: addr.to_string(),
            connector: connector.clone(),
            mode: Mode::Open {
                rate: opts.rate,
                arrival: Arrival::Uniform,
            },
            connections: opts.connections,
            concurrency: opts.concurrency,
            duration: opts.duration,
            warmup: opts.warmup,
            workload: Workload::new(opts.mix.clone(), opts.payload, 1024),
            label: Some(strategy.as_str().to_owned()),
            hdr_log: Some(opts.out.join(format!("{strategy}.hlog"))),
            progress: opts.progress,
            metrics: None,
        }));
        shutdown.cancel();
        let served = serving.join();
        let result = outcome?;
        match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(LabError::Server(e)),
            Err(_) => {
                return Err(LabError::Runtime {
                    what: "the embedded server panicked",
                    source: None,
                });
            }
        }
        let pool = server.pool().snapshot().total();
        eprintln!(
            "   pool: {} allocs, {} local frees, {} deferred, {} kicks, {} outstanding",
            pool.allocs, pool.local_frees, pool.deferred_frees, pool.kicks, pool.outstanding
        );
        let mut result = result;
        result.server_pool = Some(PoolSummary {
            allocs: pool.allocs,
            misses: pool.misses,
            local_frees: pool.local_frees,
            deferred_frees: pool.deferred_frees,
            overflow_frees: pool.overflow_frees,
            kicks: pool.kicks,
            outstanding: pool.outstanding,
        });
        result.write(&opts.out.join(format!("{strategy}.json")))?;
        results.push(result);
    }
    let html = report::html(&results)?;
    let report_path = opts.out.join("report.html");
    std::fs::write(&report_path, html).map_err(|e| LabError::file("write", &report_path, e))?;
    Ok(results)
}
