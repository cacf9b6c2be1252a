//! One core's server: its listener's accept loop, the routes every connection is served with
//! (Bench, health, reflection), and its shutdown: stop accepting, GOAWAY on every connection,
//! wait up to `--shutdown-grace` for the RPCs in flight, then close whatever is left.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use krpc_pool::Strategy;
use krpc_proto::v1::bench_server::BenchServer;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;
use tracing::{debug, warn};

use crate::{
    BenchService, ServerError,
    accept::{ConnSetup, CoreConns, accept_loop},
    conn::{H2Server, TrackedExec},
    cores,
    handoff::{OwnerJobs, run_owner},
    rpc_layer::RpcLayer,
};

/// What the server's connections did, summed over cores as each connection closes.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    rpcs_started: AtomicU64,
    rpcs_answered: AtomicU64,
    rpcs_cut_off: AtomicU64,
    connections: AtomicU64,
}

impl Tally {
    /// A closed connection's RPCs: started (reached the service), answered (a status sent),
    /// cut off (in flight when the server closed the connection).
    pub(crate) fn add(&self, started: u64, answered: u64, cut_off: usize) {
        self.rpcs_started.fetch_add(started, Ordering::Relaxed);
        self.rpcs_answered.fetch_add(answered, Ordering::Relaxed);
        self.rpcs_cut_off
            .fetch_add(cut_off as u64, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn totals(&self) -> ServeTotals {
        ServeTotals {
            connections: self.connections.load(Ordering::Relaxed),
            rpcs_started: self.rpcs_started.load(Ordering::Relaxed),
            rpcs_answered: self.rpcs_answered.load(Ordering::Relaxed),
            rpcs_cut_off: self.rpcs_cut_off.load(Ordering::Relaxed),
        }
    }
}

/// The server's connections and RPCs so far, counted when each connection closes: once
/// [`crate::Server::serve`] has returned, every connection is in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeTotals {
    /// Connections served (past the handshake) and closed.
    pub connections: u64,
    /// RPCs that reached the service.
    pub rpcs_started: u64,
    /// RPCs the server answered with a status. `started - answered` were cancelled by their
    /// clients or cut off.
    pub rpcs_answered: u64,
    /// RPCs in flight on connections the server closed itself: at the end of
    /// `--shutdown-grace`, or `--max-connection-age-grace`.
    pub rpcs_cut_off: u64,
}

/// One core: serves `listener` until `shutdown`, then drains within `grace`.
pub(crate) struct CoreServer {
    pub(crate) core: usize,
    pub(crate) setup: ConnSetup,
    pub(crate) service: BenchService,
    pub(crate) layer: RpcLayer,
    pub(crate) owner_jobs: Option<OwnerJobs>,
    pub(crate) tally: Arc<Tally>,
}

impl CoreServer {
    pub(crate) async fn serve(
        self,
        listener: std::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        let Self {
            core,
            setup,
            service,
            layer,
            owner_jobs,
            tally,
        } = self;
        let listener = TcpListener::from_std(listener).map_err(|source| ServerError::Listener {
            index: core,
            source,
        })?;
        if cores::current().is_some() && setup.pool.config().strategy == Strategy::PerCore {
            tokio::spawn(cores::answer_kicks());
        }
        // This core's key owner (handoff), until every core's service is gone.
        let owner = owner_jobs.map(|jobs| tokio::spawn(run_owner(jobs)));
        let limits = service.limits().clone();
        let routes = routes(service).await?;
        let tasks = TaskTracker::new();
        let force = CancellationToken::new();
        let conns = CoreConns {
            h2: Arc::new(H2Server::new(
                &limits,
                routes,
                layer,
                TrackedExec(tasks.clone()),
            )),
            tasks: tasks.clone(),
            drain: shutdown.clone(),
            force: force.clone(),
            tally,
        };
        let accepting = tokio::spawn(accept_loop(core, listener, setup, conns));
        shutdown.cancelled().await;
        // The accept loop returns at once, dropping the listener: new connections are refused
        // by the kernel from here on. Every connection has been sent GOAWAY (its watchdog
        // saw `drain`); their RPCs in flight finish.
        let _ = accepting.await;
        tasks.close();
        let forced = tokio::time::timeout(limits.shutdown_grace, tasks.wait())
            .await
            .is_err();
        if forced {
            warn!(
                core,
                grace = ?limits.shutdown_grace,
                "shutdown grace expired: closing the remaining connections"
            );
            force.cancel();
            // Closed connections fail their streams at once; a stream task still running
            // after this is dropped with the runtime.
            if tokio::time::timeout(Duration::from_secs(1), tasks.wait())
                .await
                .is_err()
            {
                warn!(
                    core,
                    tasks = tasks.len(),
                    "tasks still running after the forced close"
                );
            }
        }
        // Other cores may still hand this core's keys over while they drain: the owner runs
        // until the last service clone (every core's) is gone. After a forced close it may
        // never be, and nobody waits for an answer any more.
        if let Some(owner) = owner {
            if forced {
                owner.abort();
            }
            let _ = owner.await;
        }
        debug!(core, forced, "core drained");
        Ok(())
    }
}

/// Bench, gRPC health checking and server reflection, as tonic routes.
async fn routes(service: BenchService) -> Result<Routes, ServerError> {
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
    Ok(Routes::new(bench)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare())
}

/// Server reflection over the Bench and health services, so grpcurl and friends can discover them.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(krpc_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
