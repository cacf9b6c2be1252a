//! The accept loop, after linkerd2-proxy's `serve.rs`: it owns admission (the connection and
//! handshake caps, refused fast and counted), runs each handshake and connection in a task of
//! its own (one slow or hostile peer holds up nobody), logs per-peer failures at `debug` with a
//! counter for each, and never stops because of one peer or one failed accept. Out of file
//! descriptors, it sheds the next pending connection with its reserve descriptor and backs off
//! briefly; connections already accepted keep being served meanwhile by their own tasks.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::FutureExt;
use krpc_pool::{Pool, Strategy};
use krpc_proto::codec::DecodeCtx;
use krpc_transport::{Acceptor, Conn, TlsPath};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, debug_span, warn};

use crate::{
    admission::{Cap, ReserveFd, Slot, Throttle, out_of_resources, refuse},
    conn::{Closed, H2Server, Reason},
    metrics::Metrics,
    rpc_layer::ConnCtx,
};

/// How long the accept loop pauses after running out of file descriptors.
const FD_BACKOFF: Duration = Duration::from_millis(20);

/// What every connection needs, whichever core accepts it.
#[derive(Clone, Debug)]
pub(crate) struct ConnSetup {
    pub(crate) acceptor: Acceptor,
    pub(crate) pool: Pool,
    pub(crate) metrics: Metrics,
    pub(crate) admission: Admission,
}

/// The caps every core's accept loop shares, and their throttled logs.
#[derive(Clone, Debug)]
pub(crate) struct Admission {
    pub(crate) connections: Cap,
    pub(crate) handshakes: Cap,
    refused_log: Arc<Throttle>,
    accept_error_log: Arc<Throttle>,
}

impl Admission {
    pub(crate) fn new(max_connections: usize, max_handshakes: usize) -> Self {
        Self {
            connections: Cap::new(max_connections),
            handshakes: Cap::new(max_handshakes),
            refused_log: Arc::new(Throttle::new(Duration::from_secs(10))),
            accept_error_log: Arc::new(Throttle::new(Duration::from_secs(10))),
        }
    }
}

/// Why a connection was refused before anything was read from it (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    MaxConnections,
    MaxHandshakes,
    FdLimit,
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 3] = [Self::MaxConnections, Self::MaxHandshakes, Self::FdLimit];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxHandshakes => "max_handshakes",
            Self::FdLimit => "fd_limit",
        }
    }
}

/// One core's connections: how they are served, the tasks they run in, and the two stages of
/// shutdown (`drain`: GOAWAY and finish; `force`: close now).
#[derive(Clone, Debug)]
pub(crate) struct CoreConns {
    pub(crate) h2: Arc<H2Server>,
    pub(crate) tasks: TaskTracker,
    pub(crate) drain: CancellationToken,
    pub(crate) force: CancellationToken,
    pub(crate) tally: Arc<crate::serve::Tally>,
}

/// Accepts until `conns.drain` is cancelled.
pub(crate) async fn accept_loop(
    core: usize,
    listener: TcpListener,
    setup: ConnSetup,
    conns: CoreConns,
) {
    let mut reserve = ReserveFd::new();
    loop {
        let accepted = tokio::select! {
            () = conns.drain.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if out_of_resources(&error) => {
                setup.metrics.accept_error("out_of_resources");
                if let Some(n) = setup.admission.accept_error_log.event() {
                    warn!(core, %error, failures = n, "accept failed: out of file descriptors or memory; shedding pending connections");
                }
                // Free one descriptor, take the next pending connection and close it at once,
                // so the backlog is answered instead of left hanging; then pause briefly.
                if reserve.release() {
                    if let Some(Ok((tcp, _))) = listener.accept().now_or_never() {
                        refuse(tcp);
                        refused(&setup, core, Refusal::FdLimit);
                    }
                    reserve.restore();
                }
                tokio::time::sleep(FD_BACKOFF).await;
                continue;
            }
            Err(error) => {
                // ECONNABORTED and friends: that peer is gone; the next one is not.
                setup.metrics.accept_error("other");
                if let Some(n) = setup.admission.accept_error_log.event() {
                    warn!(core, %error, failures = n, "accept failed");
                }
                continue;
            }
        };
        let Some(slot) = setup.admission.connections.try_take() else {
            refuse(tcp);
            refused(&setup, core, Refusal::MaxConnections);
            continue;
        };
        let handshake = match setup.acceptor.path() {
            TlsPath::Off => None,
            TlsPath::Rustls | TlsPath::Ktls => match setup.admission.handshakes.try_take() {
                Some(h) => Some(h),
                None => {
                    refuse(tcp);
                    refused(&setup, core, Refusal::MaxHandshakes);
                    continue;
                }
            },
        };
        let span = debug_span!("conn", core, %peer);
        conns.tasks.spawn(
            connection(setup.clone(), conns.clone(), tcp, peer, slot, handshake).instrument(span),
        );
    }
    debug!(core, "accept loop stopped");
}

fn refused(setup: &ConnSetup, core: usize, why: Refusal) {
    setup.metrics.connection_refused(why);
    if let Some(n) = setup.admission.refused_log.event() {
        warn!(
            core,
            reason = why.as_str(),
            refused = n,
            connections = setup.admission.connections.in_use(),
            handshakes = setup.admission.handshakes.in_use(),
            "refusing connections (counted in krpc_connections_refused_total; logged at most every 10 s)"
        );
    }
}

/// One connection from accept to close: handshake (holding a handshake slot), then HTTP/2.
async fn connection(
    setup: ConnSetup,
    conns: CoreConns,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: Slot,
    handshake: Option<Slot>,
) {
    let conn = tokio::select! {
        conn = setup.acceptor.accept(tcp, peer) => conn,
        // A handshake in progress at shutdown is dropped: it has no RPC yet.
        () = conns.drain.cancelled() => return,
    };
    drop(handshake);
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            setup.metrics.handshake_failed(e.failure.reason());
            debug!(
                reason = e.failure.reason(),
                error = %ErrorChain(&e.failure),
                "handshake failed"
            );
            return;
        }
    };
    let i = conn.info();
    debug!(
        tls = %i.tls,
        version = i.tls_version.unwrap_or("-"),
        cipher = i.cipher.unwrap_or("-"),
        "connection established"
    );
    let ctx = setup.conn_ctx(&conn);
    let open = setup.metrics.connection_opened(conn.info().tls);
    let closed = conns
        .h2
        .serve(conn, ctx.clone(), &conns.drain, &conns.force)
        .await;
    drop(open);
    let (started, answered) = ctx.activity().totals();
    conns.tally.add(started, answered, closed.cut_off);
    setup
        .metrics
        .connection_closed(closed.reason, closed.cut_off);
    log_closed(&closed, started, answered);
}

fn log_closed(closed: &Closed, started: u64, answered: u64) {
    let reason = closed.reason.as_str();
    match (&closed.error, closed.reason) {
        (_, Reason::ShutdownForced | Reason::GraceExpired) if closed.cut_off > 0 => warn!(
            reason,
            cut_off = closed.cut_off,
            "connection closed with RPCs in flight"
        ),
        (Some(error), _) => {
            debug!(reason, started, answered, error = %ErrorChain(error), "connection closed")
        }
        (None, _) => debug!(reason, started, answered, "connection closed"),
    }
}

impl ConnSetup {
    /// The context an established connection's requests carry: its facts, its pool context (a
    /// handle of its own under `per-conn`) and the metrics.
    fn conn_ctx(&self, conn: &Conn) -> ConnCtx {
        let decode = match self.pool.config().strategy {
            Strategy::PerConn => DecodeCtx::conn(self.pool.conn()),
            _ => DecodeCtx::pool(self.pool.clone()),
        };
        ConnCtx::new(conn.info().clone(), decode, self.metrics.clone())
    }
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
