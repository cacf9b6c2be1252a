//! Runtimes and the accept loop. Thread-per-core: one pinned current-thread runtime per core, each
//! with its own SO_REUSEPORT listener and its own tonic server, so a connection lives and dies on
//! one core. Work-stealing: one multi-thread runtime and one listener.

use std::{convert::Infallible, fmt, io, str::FromStr, sync::Arc, thread, time::Duration};

use krpc_proto::v1::bench_server::BenchServer;
use krpc_transport::{Acceptor, Conn, KtlsSupport, TlsMode};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::BenchService;

/// How connections are spread over cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeMode {
    /// One pinned current-thread runtime and one SO_REUSEPORT listener per core.
    ThreadPerCore,
    /// One tokio multi-thread runtime; tasks migrate between workers.
    WorkStealing,
}

impl RuntimeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ThreadPerCore => "thread-per-core",
            Self::WorkStealing => "work-stealing",
        }
    }
}

impl FromStr for RuntimeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "thread-per-core" => Ok(Self::ThreadPerCore),
            "work-stealing" => Ok(Self::WorkStealing),
            other => Err(format!(
                "unknown runtime {other:?} (expected thread-per-core or work-stealing)"
            )),
        }
    }
}

impl fmt::Display for RuntimeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the server tells clients about itself (the Info RPC).
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub runtime: RuntimeMode,
    pub cores: usize,
    pub configured_tls: TlsMode,
    pub ktls: KtlsSupport,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A runtime could not be built.
    #[error("cannot build the tokio runtime for core {core}")]
    Runtime {
        core: usize,
        #[source]
        source: io::Error,
    },
    /// A listener could not be registered with tokio.
    #[error("cannot use listener {index}")]
    Listener {
        index: usize,
        #[source]
        source: io::Error,
    },
    /// tonic's server failed.
    #[error("gRPC server on core {core} failed")]
    Serve {
        core: usize,
        #[source]
        source: tonic::transport::Error,
    },
    /// The embedded descriptor sets could not be indexed for reflection (a build defect).
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// A core's thread panicked.
    #[error("server thread for core {core} panicked")]
    Panicked { core: usize },
}

/// A configured server, ready to serve on bound listeners.
#[derive(Clone, Debug)]
pub struct Server {
    info: Arc<ServerInfo>,
    acceptor: Acceptor,
}

impl Server {
    pub fn new(info: ServerInfo, acceptor: Acceptor) -> Self {
        Self {
            info: Arc::new(info),
            acceptor,
        }
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight RPCs finish
    /// and returns. Blocks the calling thread. Thread-per-core wants one listener per core (see
    /// [`crate::bind`]); work-stealing serves on the first listener.
    pub fn serve(
        &self,
        listeners: Vec<std::net::TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        let service = BenchService::new(self.info.clone());
        match self.info.runtime {
            RuntimeMode::WorkStealing => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(self.info.cores.max(1))
                    .thread_name("krpc-worker")
                    .enable_all()
                    .build()
                    .map_err(|source| ServerError::Runtime { core: 0, source })?;
                let mut listeners = listeners.into_iter();
                let listener = listeners.next().ok_or(ServerError::Listener {
                    index: 0,
                    source: io::Error::new(io::ErrorKind::InvalidInput, "no listener given"),
                })?;
                runtime.block_on(serve_one(
                    0,
                    listener,
                    self.acceptor.clone(),
                    service,
                    shutdown,
                ))
            }
            RuntimeMode::ThreadPerCore => {
                let cpus = allowed_cpus();
                let threads: Vec<_> = listeners
                    .into_iter()
                    .enumerate()
                    .map(|(core, listener)| {
                        let cpu = cpus.get(core % cpus.len().max(1)).copied();
                        let (acceptor, service, shutdown) =
                            (self.acceptor.clone(), service.clone(), shutdown.clone());
                        thread::Builder::new()
                            .name(format!("krpc-core-{core}"))
                            .spawn(move || {
                                if let Some(cpu) = cpu {
                                    pin_to(cpu);
                                }
                                let runtime = tokio::runtime::Builder::new_current_thread()
                                    .enable_all()
                                    .build()
                                    .map_err(|source| ServerError::Runtime { core, source })?;
                                runtime.block_on(serve_one(
                                    core, listener, acceptor, service, shutdown,
                                ))
                            })
                            .map_err(|source| ServerError::Runtime { core, source })
                    })
                    .collect();
                let mut result = Ok(());
                for (core, thread) in threads.into_iter().enumerate() {
                    let outcome = match thread {
                        Ok(handle) => handle.join().unwrap_or(Err(ServerError::Panicked { core })),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = outcome {
                        // One core failing takes the others down: a half-served port misleads.
                        shutdown.cancel();
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                }
                result
            }
        }
    }
}

async fn serve_one(
    core: usize,
    listener: std::net::TcpListener,
    acceptor: Acceptor,
    service: BenchService,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let listener = TcpListener::from_std(listener).map_err(|source| ServerError::Listener {
        index: core,
        source,
    })?;
    // Handshakes run in their own tasks; only finished connections reach tonic, so one slow
    // peer never holds up the others (tonic polls this stream from its accept loop).
    let (tx, rx) = mpsc::channel::<Conn>(256);
    tokio::spawn(accept_loop(core, listener, acceptor, tx, shutdown.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BenchServer<BenchService>>().await;
    let reflection_v1 = reflection().build_v1();
    let reflection_v1alpha = reflection().build_v1alpha();
    let (reflection_v1, reflection_v1alpha) = match (reflection_v1, reflection_v1alpha) {
        (Ok(v1), Ok(v1alpha)) => (v1, v1alpha),
        (Err(source), _) | (_, Err(source)) => return Err(ServerError::Reflection(source)),
    };

    tonic::transport::Server::builder()
        .add_service(BenchServer::new(service))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            ReceiverStream::new(rx).map(Ok::<_, Infallible>),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|source| ServerError::Serve { core, source })?;
    debug!(core, "core drained");
    Ok(())
}

/// Server reflection over the Bench and health services, so grpcurl and friends can discover them.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(krpc_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Accepts until shutdown. Never returns early because of one peer: errors are logged and the
/// loop goes on.
async fn accept_loop(
    core: usize,
    listener: TcpListener,
    acceptor: Acceptor,
    conns: mpsc::Sender<Conn>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(core, %error, "accept failed");
                    // Out of file descriptors or memory: give the process a moment to close
                    // some instead of spinning on the same error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        let span = info_span!("conn", core, %peer);
        tokio::spawn(
            async move {
                match acceptor.accept(tcp, peer).await {
                    Ok(conn) => {
                        let i = conn.info();
                        info!(
                            tls = %i.tls,
                            version = i.tls_version.unwrap_or("-"),
                            cipher = i.cipher.unwrap_or("-"),
                            ktls = i.tls == krpc_transport::TlsPath::Ktls,
                            "connection established"
                        );
                        // The receiver is gone only when the server is shutting down.
                        let _ = conns.send(conn).await;
                    }
                    Err(e) => warn!(
                        reason = e.failure.reason(),
                        error = %ErrorChain(&e.failure),
                        "handshake failed"
                    ),
                }
            }
            .instrument(span),
        );
    }
    debug!(core, "accept loop stopped");
}

/// Formats an error with its sources, `a: b: c`, for one-line logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    use nix::{sched::sched_getaffinity, unistd::Pid};
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn pin_to(cpu: usize) {
    use nix::{
        sched::{CpuSet, sched_setaffinity},
        unistd::Pid,
    };
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    match pinned {
        Ok(()) => debug!(cpu, "runtime pinned"),
        Err(error) => warn!(cpu, %error, "cannot pin runtime thread; running unpinned"),
    }
}
