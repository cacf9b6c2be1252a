//! One established connection, served by hyper's HTTP/2 server with every limit set from
//! [`Limits`], over tonic's routes. krpc owns this loop instead of tonic's `Server` builder
//! because tonic's loop has no preface or idle timeout, no hook for admission, no deadline on
//! its graceful shutdown, and hands per-connection state to requests only through its
//! `Connected` extension; here each connection gets its own service carrying its [`ConnCtx`].
//!
//! A watchdog beside the connection enforces, in order of need: the preface timeout (the
//! client's HTTP/2 preface and first SETTINGS must arrive), the idle timeout and the maximum
//! age (GOAWAY, then at most `--max-connection-age-grace` to finish), and the server's
//! shutdown (GOAWAY; its deadline belongs to the caller, which cancels `force`).

use std::{
    future::Future,
    io,
    pin::{Pin, pin},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::server::conn::http2;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use krpc_transport::Conn;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;

use crate::{
    Limits,
    rpc_layer::{ConnCtx, RpcLayer},
};

/// Spawns each HTTP/2 stream's task into the core's tracker, so that the shutdown waits for
/// streams as well as connections.
#[derive(Clone, Debug)]
pub(crate) struct TrackedExec(pub(crate) TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// What every connection on one core is served with.
#[derive(Debug)]
pub(crate) struct H2Server {
    builder: http2::Builder<TrackedExec>,
    routes: Routes,
    layer: RpcLayer,
    preface_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_age: Option<Duration>,
    goaway_grace: Duration,
}

impl H2Server {
    pub(crate) fn new(limits: &Limits, routes: Routes, layer: RpcLayer, exec: TrackedExec) -> Self {
        let mut builder = http2::Builder::new(exec);
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_local_error_reset_streams(limits.max_local_error_resets as usize)
            .max_pending_accept_reset_streams(limits.max_pending_accept_resets as usize)
            .max_header_list_size(limits.max_header_list_bytes)
            .initial_stream_window_size(limits.stream_window_bytes)
            .initial_connection_window_size(limits.connection_window_bytes)
            .keep_alive_interval(limits.keepalive_interval.get())
            .keep_alive_timeout(limits.keepalive_timeout);
        Self {
            builder,
            routes,
            layer,
            preface_timeout: limits.preface_timeout,
            idle_timeout: limits.idle_timeout.get(),
            max_age: limits.max_connection_age.get(),
            goaway_grace: limits.max_connection_age_grace,
        }
    }

    /// Serves `conn` until it closes, the watchdog closes it, or `force` is cancelled.
    /// `drain` cancelled means the server is shutting down: GOAWAY, then finish.
    pub(crate) async fn serve(
        &self,
        conn: Conn,
        ctx: ConnCtx,
        drain: &CancellationToken,
        force: &CancellationToken,
    ) -> Closed {
        let service = self.layer.service(self.routes.clone(), ctx.clone());
        let io = TokioIo::new(ConnIo {
            io: conn,
            ctx: ctx.clone(),
            preface: Preface::default(),
        });
        let mut http = pin!(
            self.builder
                .serve_connection(io, TowerToHyperService::new(service))
        );
        let opened = Instant::now();
        // Why and since when the server asked this connection to go away.
        let mut goaway: Option<(Reason, Instant)> = None;
        loop {
            let activity = ctx.activity();
            let check = self.next_check(opened, activity, goaway);
            tokio::select! {
                served = http.as_mut() => {
                    return Closed::classify(served, goaway.map(|(r, _)| r));
                }
                () = force.cancelled() => {
                    return Closed::new(Reason::ShutdownForced, activity.in_flight());
                }
                () = drain.cancelled(), if goaway.is_none_or(|(r, _)| r != Reason::Shutdown) => {
                    if !activity.preface_done() {
                        // No HTTP/2 yet: nothing to drain, and GOAWAY would wait for the
                        // preface.
                        return Closed::new(Reason::Shutdown, 0);
                    }
                    http.as_mut().graceful_shutdown();
                    goaway = Some((Reason::Shutdown, Instant::now()));
                }
                () = sleep_until(check) => {
                    let now = Instant::now();
                    if !activity.preface_done() && now >= opened + self.preface_timeout {
                        return Closed::new(Reason::PrefaceTimeout, 0);
                    }
                    match goaway {
                        Some((Reason::Shutdown, _)) => {}
                        Some((_, since)) if now >= since + self.goaway_grace => {
                            return Closed::new(Reason::GraceExpired, activity.in_flight());
                        }
                        Some(_) => {}
                        None => {
                            let reason = if self.max_age.is_some_and(|age| now >= opened + age) {
                                Some(Reason::MaxAge)
                            } else if self.idle_timeout.is_some_and(|idle| {
                                activity.idle_since().is_some_and(|since| now >= since + idle)
                            }) {
                                Some(Reason::Idle)
                            } else {
                                None
                            };
                            if let Some(reason) = reason {
                                http.as_mut().graceful_shutdown();
                                goaway = Some((reason, now));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The next moment the watchdog has something to check (`None`: nothing until an event).
    fn next_check(
        &self,
        opened: Instant,
        activity: &crate::rpc_layer::Activity,
        goaway: Option<(Reason, Instant)>,
    ) -> Option<Instant> {
        let preface = (!activity.preface_done()).then(|| opened + self.preface_timeout);
        let later = match goaway {
            Some((Reason::Shutdown, _)) => None,
            Some((_, since)) => Some(since + self.goaway_grace),
            None => {
                let age = self.max_age.map(|age| opened + age);
                // Idle: from when the connection last had no RPC in flight. With RPCs in
                // flight, look again one timeout from now (cheap, and no wake-up per RPC).
                let idle = self.idle_timeout.map(|idle| {
                    activity
                        .idle_since()
                        .map_or(Instant::now() + idle, |since| since + idle)
                });
                [age, idle].into_iter().flatten().min()
            }
        };
        [preface, later].into_iter().flatten().min()
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Why a connection closed: the `reason` label of `krpc_connections_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// The client closed it (or finished after a GOAWAY it asked for).
    Peer,
    /// No RPC in flight for `--idle-timeout`: GOAWAY, closed.
    Idle,
    /// Older than `--max-connection-age`: GOAWAY, closed.
    MaxAge,
    /// Sent GOAWAY for idleness or age, still open after `--max-connection-age-grace`.
    GraceExpired,
    /// Server shutdown: GOAWAY, drained.
    Shutdown,
    /// Still open at the end of `--shutdown-grace`: its streams reset.
    ShutdownForced,
    /// No HTTP/2 preface and SETTINGS within `--preface-timeout`.
    PrefaceTimeout,
    /// A keepalive PING went unanswered for `--keepalive-timeout`.
    KeepaliveTimeout,
    /// The client broke HTTP/2 (the server sent GOAWAY with an error code).
    ProtocolError,
    /// The client flooded resets or errors (GOAWAY ENHANCE_YOUR_CALM).
    Calm,
    /// The socket failed (reset by the peer, broken pipe).
    Io,
}

impl Reason {
    pub(crate) const ALL: [Reason; 11] = [
        Self::Peer,
        Self::Idle,
        Self::MaxAge,
        Self::GraceExpired,
        Self::Shutdown,
        Self::ShutdownForced,
        Self::PrefaceTimeout,
        Self::KeepaliveTimeout,
        Self::ProtocolError,
        Self::Calm,
        Self::Io,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Idle => "idle_timeout",
            Self::MaxAge => "max_age",
            Self::GraceExpired => "goaway_grace_expired",
            Self::Shutdown => "shutdown",
            Self::ShutdownForced => "shutdown_forced",
            Self::PrefaceTimeout => "preface_timeout",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::ProtocolError => "protocol_error",
            Self::Calm => "enhance_your_calm",
            Self::Io => "io_error",
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) struct Closed {
    pub(crate) reason: Reason,
    /// RPCs in flight when the server cut the connection (0 unless it did).
    pub(crate) cut_off: usize,
    /// hyper's error, if the connection ended with one (for the debug log).
    pub(crate) error: Option<hyper::Error>,
}

impl Closed {
    fn new(reason: Reason, cut_off: usize) -> Self {
        Self {
            reason,
            cut_off,
            error: None,
        }
    }

    fn classify(served: Result<(), hyper::Error>, goaway: Option<Reason>) -> Self {
        let error = match served {
            Ok(()) => return Self::new(goaway.unwrap_or(Reason::Peer), 0),
            Err(e) => e,
        };
        let reason = if error.is_timeout() {
            Reason::KeepaliveTimeout
        } else {
            match find_h2(&error) {
                Some(h2) if h2.is_io() => Reason::Io,
                Some(h2) if h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) => Reason::Calm,
                Some(h2) if h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR) => {
                    goaway.unwrap_or(Reason::Peer)
                }
                Some(_) => Reason::ProtocolError,
                None => Reason::Io,
            }
        };
        Self {
            reason,
            cut_off: 0,
            error: Some(error),
        }
    }
}

fn find_h2(error: &hyper::Error) -> Option<&h2::Error> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = e.source();
    }
    None
}

/// The connection's IO, watching the first bytes for the client's preface and SETTINGS.
struct ConnIo {
    io: Conn,
    ctx: ConnCtx,
    preface: Preface,
}

/// HTTP/2's client preface (RFC 9113 3.4) is 24 fixed bytes, then a SETTINGS frame: a 9-byte
/// header whose first 3 bytes are the payload length. Whether the bytes are right is h2's
/// business; this only counts them.
struct Preface {
    head: [u8; 33],
    read: usize,
}

impl Default for Preface {
    fn default() -> Self {
        Self {
            head: [0; 33],
            read: 0,
        }
    }
}

impl Preface {
    /// Feeds bytes read; true once preface and SETTINGS frame are complete.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let have = self.read.min(self.head.len());
        let copy = (self.head.len() - have).min(bytes.len());
        self.head[have..have + copy].copy_from_slice(&bytes[..copy]);
        self.read = self.read.saturating_add(bytes.len());
        if self.read < self.head.len() {
            return false;
        }
        let len = u32::from_be_bytes([0, self.head[24], self.head[25], self.head[26]]) as usize;
        self.read >= self.head.len() + len
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if !this.ctx.activity().preface_done()
            && let Poll::Ready(Ok(())) = polled
            && this.preface.feed(&buf.filled()[before..])
        {
            this.ctx.activity().set_preface_done();
        }
        polled
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn settings(len: u8) -> Vec<u8> {
        let mut frame = vec![0, 0, len, 4, 0, 0, 0, 0, 0];
        frame.extend(std::iter::repeat_n(0u8, len as usize));
        frame
    }

    #[test]
    fn the_preface_is_complete_with_its_settings_frame_in_any_split() {
        let mut wire = PREFACE.to_vec();
        wire.extend(settings(12));
        for split in 0..wire.len() {
            let mut p = Preface::default();
            let first = p.feed(&wire[..split]);
            assert!(!first, "complete after {split} of {} bytes", wire.len());
            assert!(p.feed(&wire[split..]), "split at {split}");
        }
        let mut byte_by_byte = Preface::default();
        let done: Vec<bool> = wire.iter().map(|b| byte_by_byte.feed(&[*b])).collect();
        assert_eq!(done.iter().position(|d| *d), Some(wire.len() - 1));
    }

    #[test]
    fn an_empty_settings_frame_completes_at_33_bytes() {
        let mut p = Preface::default();
        assert!(!p.feed(PREFACE));
        assert!(p.feed(&settings(0)));
    }

    #[test]
    fn reason_labels_are_distinct() {
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
