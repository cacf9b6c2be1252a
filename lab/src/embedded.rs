//! krpc-servers started inside this process, one per trial, on 127.0.0.1 port 0, with their
//! Prometheus endpoint on a port of its own: the lab reads them exactly as it would read a
//! remote server.

use std::{net::SocketAddr, thread, time::Duration};

use krpc_client::TlsArgs;
use krpc_server::{Handoff, RuntimeMode, Server, ServerError, ServerInfo, Strategy};
use krpc_transport::{
    Acceptor, Connector, DevCertPaths, DevCerts, Identity, KtlsSupport, ServerTls, TlsMode, TlsPath,
};
use tokio_util::sync::CancellationToken;

use crate::{
    cpus::restrict_current_thread,
    error::{LabError, Result},
};

/// TLS for every server of a run and their clients: development certificates in a temporary
/// directory, the kernel probed once.
#[derive(Debug)]
pub struct TlsSetup {
    pub mode: TlsMode,
    pub path: TlsPath,
    pub ktls: KtlsSupport,
    certs: DevCertPaths,
    pub connector: Connector,
    _dir: tempfile::TempDir,
}

impl TlsSetup {
    pub fn new(mode: TlsMode) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| LabError::Runtime {
            what: "cannot create a temporary directory for the certificates",
            source: Some(e),
        })?;
        let certs = DevCerts::generate(&[])?.write(dir.path())?;
        let ktls = if mode == TlsMode::Off {
            KtlsSupport::unavailable("not probed (--tls off)")
        } else {
            KtlsSupport::probe()
        };
        let path = mode.resolve(&ktls)?;
        let connector = TlsArgs {
            tls: mode,
            ca: Some(certs.ca_cert.clone()),
            client_cert: None,
            client_key: None,
            insecure: false,
            server_name: None,
        }
        .connector_with(&ktls)?;
        Ok(Self {
            mode,
            path,
            ktls,
            certs,
            connector,
            _dir: dir,
        })
    }

    fn acceptor(&self) -> Result<Acceptor> {
        Ok(match self.path {
            TlsPath::Off => Acceptor::plaintext(),
            path => {
                let identity =
                    Identity::from_pem_files(&self.certs.server_cert, &self.certs.server_key)?;
                let config = ServerTls {
                    identity,
                    client_ca: None,
                }
                .config(path, &self.ktls)?;
                Acceptor::tls(config, path == TlsPath::Ktls, Duration::from_secs(10))
            }
        })
    }
}

/// What to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    pub strategy: Strategy,
    pub handoff: Handoff,
    pub defer_max: usize,
    pub cores: usize,
    pub runtime: RuntimeMode,
}

/// A running embedded server.
#[derive(Debug)]
pub struct Embedded {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    shutdown: CancellationToken,
    serving: thread::JoinHandle<Result<(), ServerError>>,
    metrics_thread: thread::JoinHandle<std::io::Result<()>>,
}

impl Embedded {
    /// Starts a fresh server for `spec`; its threads run on `cpus`.
    pub fn start(spec: &ServerSpec, tls: &TlsSetup, cpus: &[usize]) -> Result<Self> {
        let server = Server::new(
            ServerInfo {
                strategy: spec.strategy,
                handoff: spec.handoff,
                defer_max: spec.defer_max,
                ..ServerInfo::new(spec.runtime, spec.cores, tls.mode, tls.ktls.clone())
            },
            tls.acceptor()?,
        );
        let bind_err = |e| LabError::Runtime {
            what: "cannot bind an embedded server to 127.0.0.1:0",
            source: Some(e),
        };
        let count = match spec.runtime {
            RuntimeMode::ThreadPerCore => spec.cores,
            RuntimeMode::WorkStealing => 1,
        };
        let listeners = krpc_server::bind((std::net::Ipv4Addr::LOCALHOST, 0).into(), count)
            .map_err(bind_err)?;
        let addr = listeners[0].local_addr().map_err(bind_err)?;
        let metrics_listener =
            std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).map_err(bind_err)?;
        let metrics = metrics_listener.local_addr().map_err(bind_err)?;
        let shutdown = CancellationToken::new();
        let spawn_err = |e| LabError::Runtime {
            what: "cannot start an embedded server thread",
            source: Some(e),
        };
        // The serving thread takes the server's CPU set before it starts the runtime threads:
        // they inherit it, and thread-per-core pins one core to each CPU of it.
        let serving = thread::Builder::new()
            .name("krpc-lab-server".into())
            .spawn({
                let (server, shutdown, cpus) = (server.clone(), shutdown.clone(), cpus.to_vec());
                move || {
                    if let Err(error) = restrict_current_thread(&cpus) {
                        tracing::warn!(%error, "cannot restrict the server to its CPUs");
                    }
                    server.serve(listeners, shutdown)
                }
            })
            .map_err(spawn_err)?;
        let metrics_thread = thread::Builder::new()
            .name("krpc-lab-metrics".into())
            .spawn({
                let (server, shutdown, cpus) = (server, shutdown.clone(), cpus.to_vec());
                move || {
                    let _ = restrict_current_thread(&cpus);
                    server.serve_metrics(metrics_listener, shutdown)
                }
            })
            .map_err(spawn_err)?;
        Ok(Self {
            addr,
            metrics,
            shutdown,
            serving,
            metrics_thread,
        })
    }

    /// Stops the server (in-flight RPCs finish) and waits for its threads.
    pub fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        let served = self.serving.join();
        let _ = self.metrics_thread.join();
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LabError::Server(e)),
            Err(_) => Err(LabError::Runtime {
                what: "an embedded server panicked",
                source: None,
            }),
        }
    }
}
