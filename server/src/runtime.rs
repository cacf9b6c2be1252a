//! Runtimes. Thread-per-core: one pinned current-thread runtime per core, each with its own
//! SO_REUSEPORT listener and its own tonic server, so a connection lives and dies on one core.
//! Work-stealing: one multi-thread runtime and one listener. The accept loop is in accept.rs.

use std::{
    convert::Infallible,
    fmt, io,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use krpc_pool::{Config as PoolConfig, Pool, Strategy};
use krpc_proto::v1::bench_server::BenchServer;
use krpc_transport::{Acceptor, KtlsSupport, TlsMode};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    BenchService,
    accept::{ConnSetup, ServedConn, accept_loop},
    cores,
    cpus::{allowed_cpus, pin_to},
    handoff::{Handoff, Owners, run_owner},
    metrics::Metrics,
    rpc_layer::RpcLayer,
};

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

/// How the server is configured; what it tells clients about itself (the Info RPC).
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub runtime: RuntimeMode,
    /// Runtime cores: thread-per-core runtimes, or work-stealing workers.
    pub cores: usize,
    pub configured_tls: TlsMode,
    pub ktls: KtlsSupport,
    pub strategy: Strategy,
    pub handoff: Handoff,
    /// A defer list holds at most this many buffers (`--defer-max`).
    pub defer_max: usize,
    /// Bytes a core's free lists may hold (`--pool-cap-bytes`).
    pub pool_cap_bytes: usize,
    /// Largest request message accepted (`--max-message-bytes`).
    pub max_message_bytes: usize,
}

impl ServerInfo {
    /// The defaults of the server's flags, for `runtime` on `cores` cores.
    pub fn new(
        runtime: RuntimeMode,
        cores: usize,
        configured_tls: TlsMode,
        ktls: KtlsSupport,
    ) -> Self {
        Self {
            runtime,
            cores,
            configured_tls,
            ktls,
            strategy: Strategy::PerCore,
            handoff: Handoff::None,
            defer_max: 64,
            pool_cap_bytes: 4 << 20,
            max_message_bytes: 4 << 20,
        }
    }

    /// Threads that are pool cores: every runtime core, and under work-stealing with owner
    /// handoff, one owner thread per core as well (a work-stealing runtime cannot pin a task
    /// to a worker, so the key owners get threads of their own).
    pub fn pool_cores(&self) -> usize {
        let cores = self.cores.max(1);
        match (self.runtime, self.handoff) {
            (RuntimeMode::WorkStealing, Handoff::Owner) => 2 * cores,
            _ => cores,
        }
    }
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
    pool: Pool,
    metrics: Metrics,
}

impl Server {
    pub fn new(info: ServerInfo, acceptor: Acceptor) -> Self {
        let pool = Pool::new(PoolConfig {
            strategy: info.strategy,
            cores: info.pool_cores(),
            defer_max: info.defer_max,
            cap_bytes_per_core: info.pool_cap_bytes,
        });
        let metrics = Metrics::new(&info, acceptor.path(), pool.clone());
        Self {
            info: Arc::new(info),
            acceptor,
            pool,
            metrics,
        }
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The server's buffer pool (its counters: `pool().snapshot()`).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Serves Prometheus metrics (`GET /metrics`) on `listener` until `shutdown` is cancelled.
    /// Blocks the calling thread; run it on a thread of its own.
    pub fn serve_metrics(
        &self,
        listener: std::net::TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        krpc_telemetry::serve_prometheus(listener, self.metrics.registry(), shutdown)
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight RPCs finish
    /// and returns. Blocks the calling thread. Thread-per-core wants one listener per core (see
    /// [`crate::bind`]); work-stealing serves on the first listener.
    pub fn serve(
        &self,
        listeners: Vec<std::net::TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        let cores = self.info.cores.max(1);
        // One key owner per core that serves: each runtime core, or each worker.
        let owner_count = match self.info.runtime {
            RuntimeMode::ThreadPerCore => listeners.len(),
            RuntimeMode::WorkStealing => cores,
        };
        let (owners, mut owner_jobs) = match self.info.handoff {
            Handoff::None => (None, Vec::new()),
            Handoff::Owner => {
                let (owners, jobs) = Owners::new(owner_count);
                (Some(owners), jobs.into_iter().map(Some).collect())
            }
        };
        let service = BenchService::new(self.info.clone(), owners);
        let conn = ConnSetup {
            acceptor: self.acceptor.clone(),
            pool: self.pool.clone(),
            metrics: self.metrics.clone(),
        };
        let layer = RpcLayer::new(self.info.max_message_bytes);
        match self.info.runtime {
            RuntimeMode::WorkStealing => {
                // Workers become pool cores 0..cores as they start (tokio starts them all when
                // the runtime is built); later threads (blocking pool) are no core.
                let next = Arc::new(AtomicUsize::new(0));
                let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(cores)
                    .thread_name("krpc-worker")
                    .on_thread_start(move || {
                        let core = next.fetch_add(1, Ordering::Relaxed);
                        if core < cores {
                            register_or_warn(&pool, core);
                            WORKER_CPU.set(Some(metrics.runtime_thread(core)));
                        }
                    })
                    .on_thread_stop(|| {
                        cores::unregister();
                        WORKER_CPU.take();
                    })
                    .on_thread_park(cores::drain)
                    .enable_all()
                    .build()
                    .map_err(|source| ServerError::Runtime { core: 0, source })?;
                // Key owners: threads of their own, pool cores cores..2*cores.
                let owner_threads: Vec<_> = owner_jobs
                    .iter_mut()
                    .enumerate()
                    .map(|(i, jobs)| {
                        let (pool, jobs) = (self.pool.clone(), jobs.take());
                        let metrics = self.metrics.clone();
                        let core = cores + i;
                        thread::Builder::new()
                            .name(format!("krpc-owner-{i}"))
                            .spawn(move || {
                                let _cpu = metrics.runtime_thread(core);
                                let runtime = current_thread_runtime(&pool, core)?;
                                if let Some(jobs) = jobs {
                                    runtime.block_on(run_owner(jobs));
                                }
                                drop(runtime);
                                cores::unregister();
                                Ok(())
                            })
                            .map_err(|source| ServerError::Runtime { core, source })
                    })
                    .collect();
                let mut listeners = listeners.into_iter();
                let listener = listeners.next().ok_or(ServerError::Listener {
                    index: 0,
                    source: io::Error::new(io::ErrorKind::InvalidInput, "no listener given"),
                })?;
                let served =
                    runtime.block_on(serve_one(0, listener, conn, service, layer, None, shutdown));
                drop(runtime);
                let owners = join_all(cores, owner_threads, &CancellationToken::new());
                served.and(owners)
            }
            RuntimeMode::ThreadPerCore => {
                let cpus = allowed_cpus();
                let threads: Vec<_> = listeners
                    .into_iter()
                    .enumerate()
                    .map(|(core, listener)| {
                        let cpu = cpus.get(core % cpus.len().max(1)).copied();
                        let (conn, service, layer, shutdown) =
                            (conn.clone(), service.clone(), layer, shutdown.clone());
                        let jobs = owner_jobs.get_mut(core).and_then(Option::take);
                        thread::Builder::new()
                            .name(format!("krpc-core-{core}"))
                            .spawn(move || {
                                if let Some(cpu) = cpu {
                                    pin_to(cpu);
                                }
                                let _cpu = conn.metrics.runtime_thread(core);
                                let runtime = current_thread_runtime(&conn.pool, core)?;
                                let served = runtime.block_on(serve_one(
                                    core, listener, conn, service, layer, jobs, shutdown,
                                ));
                                drop(runtime);
                                cores::unregister();
                                served
                            })
                            .map_err(|source| ServerError::Runtime { core, source })
                    })
                    .collect();
                drop(service);
                join_all(0, threads, &shutdown)
            }
        }
    }
}

thread_local! {
    /// A work-stealing worker's CPU clock registration (tokio's start/stop hooks are closures
    /// without a place to keep it).
    static WORKER_CPU: std::cell::RefCell<Option<krpc_telemetry::cpu::ThreadClockGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// A pinned core's runtime: current-thread, the thread registered as pool core `core`,
/// draining when it parks.
fn current_thread_runtime(
    pool: &Pool,
    core: usize,
) -> Result<tokio::runtime::Runtime, ServerError> {
    register_or_warn(pool, core);
    tokio::runtime::Builder::new_current_thread()
        .on_thread_park(cores::drain)
        .enable_all()
        .build()
        .map_err(|source| ServerError::Runtime { core, source })
}

fn register_or_warn(pool: &Pool, core: usize) {
    if let Err(error) = cores::register(pool, core) {
        // Not fatal: this thread's buffers come from the allocator, counted as unregistered.
        warn!(core, %error, "cannot register the thread as a pool core");
    }
}

/// Joins core threads (numbered from `first`); the first failure cancels `shutdown` (one core
/// failing takes the others down: a half-served port misleads) and is returned.
fn join_all(
    first: usize,
    threads: Vec<Result<thread::JoinHandle<Result<(), ServerError>>, ServerError>>,
    shutdown: &CancellationToken,
) -> Result<(), ServerError> {
    let mut result = Ok(());
    for (i, thread) in threads.into_iter().enumerate() {
        let core = first + i;
        let outcome = match thread {
            Ok(handle) => handle.join().unwrap_or(Err(ServerError::Panicked { core })),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            shutdown.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve_one(
    core: usize,
    listener: std::net::TcpListener,
    conn: ConnSetup,
    service: BenchService,
    layer: RpcLayer,
    owner_jobs: Option<mpsc::Receiver<crate::handoff::Job>>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let listener = TcpListener::from_std(listener).map_err(|source| ServerError::Listener {
        index: core,
        source,
    })?;
    if cores::current().is_some() && conn.pool.config().strategy == Strategy::PerCore {
        tokio::spawn(cores::answer_kicks());
    }
    // This core's key owner (handoff), until every core's service is gone.
    let owner = owner_jobs.map(|jobs| tokio::spawn(run_owner(jobs)));
    // Handshakes run in their own tasks; only finished connections reach tonic, so one slow
    // peer never holds up the others (tonic polls this stream from its accept loop).
    let (tx, rx) = mpsc::channel::<ServedConn>(256);
    tokio::spawn(accept_loop(core, listener, conn, tx, shutdown.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BenchServer<BenchService>>().await;
    let reflection_v1 = reflection().build_v1();
    let reflection_v1alpha = reflection().build_v1alpha();
    let (reflection_v1, reflection_v1alpha) = match (reflection_v1, reflection_v1alpha) {
        (Ok(v1), Ok(v1alpha)) => (v1, v1alpha),
        (Err(source), _) | (_, Err(source)) => return Err(ServerError::Reflection(source)),
    };
    let max = service.max_message_bytes();
    let bench = BenchServer::new(service).max_decoding_message_size(max);

    let served = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(bench)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            ReceiverStream::new(rx).map(Ok::<_, Infallible>),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|source| ServerError::Serve { core, source });
    // Other cores may still hand this core's keys over while they drain: the owner runs until
    // the last service clone (every core's) is gone.
    if let Some(owner) = owner {
        let _ = owner.await;
    }
    served?;
    debug!(core, "core drained");
    Ok(())
}

/// Server reflection over the Bench and health services, so grpcurl and friends can discover them.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(krpc_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
