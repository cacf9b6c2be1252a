//! Runtimes. Thread-per-core: one pinned current-thread runtime per core, each with its own
//! SO_REUSEPORT listener and its own accept loop, so a connection lives and dies on one core.
//! Work-stealing: one multi-thread runtime and one listener. A core's serving and shutdown are
//! in serve.rs, the accept loop in accept.rs, a connection in conn.rs.

use std::{
    fmt, io,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use krpc_pool::{Config as PoolConfig, Pool, Strategy};
use krpc_transport::{Acceptor, KtlsSupport, TlsMode};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    BenchService, Limits,
    accept::{Admission, ConnSetup},
    cores,
    cpus::{allowed_cpus, pin_to},
    handoff::{Handoff, Owners, run_owner},
    metrics::Metrics,
    rpc_layer::RpcLayer,
    serve::{CoreServer, ServeTotals, Tally},
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
    /// Connection, HTTP/2, memory and shutdown limits.
    pub limits: Limits,
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
            limits: Limits::default(),
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
    admission: Admission,
    tally: Arc<Tally>,
}

impl Server {
    pub fn new(info: ServerInfo, acceptor: Acceptor) -> Self {
        let pool = Pool::new(PoolConfig {
            strategy: info.strategy,
            cores: info.pool_cores(),
            defer_max: info.defer_max,
            cap_bytes_per_core: info.pool_cap_bytes,
        });
        let admission = Admission::new(
            info.limits.max_connections as usize,
            info.limits.max_handshakes as usize,
        );
        let metrics = Metrics::new(&info, acceptor.path(), pool.clone(), admission.clone());
        Self {
            info: Arc::new(info),
            acceptor,
            pool,
            metrics,
            admission,
            tally: Arc::default(),
        }
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The server's buffer pool (its counters: `pool().snapshot()`).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Connections and RPCs served so far (complete once [`Self::serve`] has returned).
    pub fn totals(&self) -> ServeTotals {
        self.tally.totals()
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

    /// Serves until `shutdown` is cancelled, then stops accepting, sends every connection
    /// GOAWAY, lets in-flight RPCs finish for up to `--shutdown-grace`, closes what is left and
    /// returns. Blocks the calling thread. Thread-per-core wants one listener per core (see
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
                let limits = &self.info.limits;
                let (owners, jobs) = Owners::new(
                    owner_count,
                    limits.owner_queue_bytes,
                    limits.store_max_bytes,
                );
                (Some(owners), jobs.into_iter().map(Some).collect())
            }
        };
        let service = BenchService::new(self.info.clone(), owners);
        let conn = ConnSetup {
            acceptor: self.acceptor.clone(),
            pool: self.pool.clone(),
            metrics: self.metrics.clone(),
            admission: self.admission.clone(),
        };
        let layer = RpcLayer::new(self.info.max_message_bytes);
        let core_server = |core, service, owner_jobs| CoreServer {
            core,
            setup: conn.clone(),
            service,
            layer,
            owner_jobs,
            tally: self.tally.clone(),
        };
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
                    runtime.block_on(core_server(0, service, None).serve(listener, shutdown));
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
                        let jobs = owner_jobs.get_mut(core).and_then(Option::take);
                        let server = core_server(core, service.clone(), jobs);
                        let shutdown = shutdown.clone();
                        thread::Builder::new()
                            .name(format!("krpc-core-{core}"))
                            .spawn(move || {
                                if let Some(cpu) = cpu {
                                    pin_to(cpu);
                                }
                                let _cpu = server.setup.metrics.runtime_thread(core);
                                let runtime = current_thread_runtime(&server.setup.pool, core)?;
                                let served = runtime.block_on(server.serve(listener, shutdown));
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
