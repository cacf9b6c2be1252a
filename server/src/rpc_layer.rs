//! The per-connection service every RPC goes through, around tonic's routes. Built once per
//! connection with that connection's [`ConnCtx`], so per-connection state reaches each request
//! explicitly (it is also put in the request's extensions, where handlers read it). It:
//! - counts the connection's RPCs in flight (its idle timeout and the shutdown's accounting);
//! - scopes the connection's [`DecodeCtx`] around the handler's future *and* the response body
//!   (a streaming request is decoded while the response body is polled), so the pooled codec
//!   takes buffers from this server's pool and, under `per-conn`, from this connection;
//! - records `krpc_rpc_duration_seconds` when the status is known (headers of a trailers-only
//!   response, else the trailers), on the recording core's own histogram;
//! - answers a request over `--max-message-bytes` with RESOURCE_EXHAUSTED, as grpc-go and
//!   grpc-java do (tonic says OUT_OF_RANGE). tonic refuses it from the length prefix, before
//!   buffering it or decoding: the pool is never touched.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use krpc_proto::codec::DecodeCtx;
use pin_project_lite::pin_project;
use tonic::{Code, Status};
use tower::Service;

use crate::{
    cores,
    metrics::{Metrics, method_index},
};

/// What the server attaches to each connection: its facts, its pool context, its RPCs in
/// flight. One `Arc` per connection: a request clones only its own connection's count, never
/// one that every core shares (the pool's, the metrics').
#[derive(Clone, Debug)]
pub struct ConnCtx(Arc<ConnState>);

#[derive(Debug)]
struct ConnState {
    info: krpc_transport::ConnInfo,
    decode: DecodeCtx,
    metrics: Metrics,
    activity: Activity,
}

/// A connection's RPCs: in flight now, started and answered since it opened, and since when it
/// has been idle. Written only by this connection's requests.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    started: AtomicU64,
    answered: AtomicU64,
    /// Milliseconds after `opened` at which `in_flight` last dropped to 0.
    idle_since_ms: AtomicU64,
    /// The client's HTTP/2 preface and first SETTINGS frame have arrived.
    preface: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            preface: AtomicBool::new(false),
        }
    }

    pub(crate) fn preface_done(&self) -> bool {
        self.preface.load(Ordering::Relaxed)
    }

    pub(crate) fn set_preface_done(&self) {
        self.preface.store(true, Ordering::Relaxed);
    }

    /// RPCs whose response has not ended yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// RPCs that reached the service, and RPCs the server answered (a status sent).
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.started.load(Ordering::Relaxed),
            self.answered.load(Ordering::Relaxed),
        )
    }

    /// When the connection last had no RPC in flight; `None` while it has some.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.in_flight() > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.opened + std::time::Duration::from_millis(ms))
    }
}

impl ConnCtx {
    pub(crate) fn new(info: krpc_transport::ConnInfo, decode: DecodeCtx, metrics: Metrics) -> Self {
        Self(Arc::new(ConnState {
            info,
            decode,
            metrics,
            activity: Activity::new(),
        }))
    }

    /// The connection's peer, TLS path, version and cipher.
    pub fn info(&self) -> &krpc_transport::ConnInfo {
        &self.0.info
    }

    pub(crate) fn activity(&self) -> &Activity {
        &self.0.activity
    }
}

/// Keeps an RPC counted in flight on its connection until its response ends (or is dropped).
#[derive(Debug)]
struct InFlight(ConnCtx);

impl InFlight {
    fn start(conn: ConnCtx) -> Self {
        let a = &conn.0.activity;
        a.started.fetch_add(1, Ordering::Relaxed);
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0.0.activity;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = a.opened.elapsed().as_millis() as u64;
            a.idle_since_ms.store(ms, Ordering::Release);
        }
    }
}

/// Builds each connection's [`RpcService`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RpcLayer {
    max_message_bytes: usize,
}

impl RpcLayer {
    pub(crate) fn new(max_message_bytes: usize) -> Self {
        Self { max_message_bytes }
    }

    /// The service of one connection: `inner` (tonic's routes) for requests of `conn`.
    pub(crate) fn service<S>(&self, inner: S, conn: ConnCtx) -> RpcService<S> {
        RpcService {
            inner,
            conn,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RpcService<S> {
    inner: S,
    conn: ConnCtx,
    max_message_bytes: usize,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let decode = self.conn.0.decode.clone();
        let record = Record {
            start: Instant::now(),
            method: method_index(req.uri().path()),
            max_message_bytes: self.max_message_bytes,
        };
        let flight = InFlight::start(self.conn.clone());
        req.extensions_mut().insert(self.conn.clone());
        let inner = decode.clone().sync_scope(|| self.inner.call(req));
        RpcFuture {
            inner,
            decode: Some(decode),
            record: Some(record),
            flight: Some(flight),
        }
    }
}

/// Runs `f` inside the decode context, if there is one.
fn scoped<R>(decode: &Option<DecodeCtx>, f: impl FnOnce() -> R) -> R {
    match decode {
        Some(ctx) => ctx.clone().sync_scope(f),
        None => f(),
    }
}

#[derive(Debug)]
struct Record {
    start: Instant,
    method: usize,
    max_message_bytes: usize,
}

impl Record {
    /// Rewrites tonic's "too large" OUT_OF_RANGE to RESOURCE_EXHAUSTED, records the status
    /// found in `headers` as answered, and says whether there was one.
    fn finish_with(&self, conn: &ConnCtx, headers: &mut HeaderMap) -> bool {
        let Some(code) = grpc_status(headers) else {
            return false;
        };
        let code = if code == Code::OutOfRange as usize {
            self.remap_too_large(headers).unwrap_or(code)
        } else {
            code
        };
        self.answered(conn, code);
        true
    }

    fn remap_too_large(&self, headers: &mut HeaderMap) -> Option<usize> {
        let status = Status::from_header_map(headers)?;
        let detail = status
            .message()
            .strip_prefix("Error, decoded message length too large: ")?;
        let remapped = Status::resource_exhausted(format!(
            "request message too large ({detail}; server flag --max-message-bytes {})",
            self.max_message_bytes
        ));
        remapped.add_header(headers).ok()?;
        Some(Code::ResourceExhausted as usize)
    }

    /// The server ended the response with `code`.
    fn answered(&self, conn: &ConnCtx, code: usize) {
        conn.0.activity.answered.fetch_add(1, Ordering::Relaxed);
        self.finish(conn, code);
    }

    fn finish(&self, conn: &ConnCtx, code: usize) {
        conn.0
            .metrics
            .record_rpc(cores::current(), self.method, code, self.start.elapsed());
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<usize> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

pin_project! {
    pub(crate) struct RpcFuture<F> {
        #[pin]
        inner: F,
        decode: Option<DecodeCtx>,
        record: Option<Record>,
        flight: Option<InFlight>,
    }

    impl<F> PinnedDrop for RpcFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the handler answered: the client reset the stream, or the
            // connection was closed under it.
            let this = this.project();
            if let (Some(record), Some(flight)) = (this.record.take(), this.flight.as_ref()) {
                record.finish(&flight.0, Code::Cancelled as usize);
            }
        }
    }
}

impl<F, B, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<RpcBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let result = ready!(scoped(this.decode, || inner.poll(cx)));
        let mut record = this.record.take();
        let flight = this.flight.take();
        Poll::Ready(result.map(|response| {
            let (mut parts, body) = response.into_parts();
            // A trailers-only response (an error before any message) has its status here.
            if let (Some(r), Some(f)) = (&record, &flight)
                && r.finish_with(&f.0, &mut parts.headers)
            {
                record = None;
            }
            Response::from_parts(
                parts,
                RpcBody {
                    inner: body,
                    decode: this.decode.take(),
                    record,
                    flight,
                },
            )
        }))
    }
}

pin_project! {
    /// The response body: polled inside the decode context; records the RPC at its trailers.
    pub(crate) struct RpcBody<B> {
        #[pin]
        inner: B,
        decode: Option<DecodeCtx>,
        record: Option<Record>,
        // Counts the RPC in flight until the body is gone.
        flight: Option<InFlight>,
    }

    impl<B> PinnedDrop for RpcBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its trailers: the client went away (reset or disconnect), or the
            // connection was closed under it.
            let this = this.project();
            if let (Some(record), Some(flight)) = (this.record.take(), this.flight.as_ref()) {
                record.finish(&flight.0, Code::Cancelled as usize);
            }
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RpcBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let inner = this.inner;
        let mut frame = ready!(scoped(this.decode, || inner.poll_frame(cx)));
        let Some(flight) = this.flight.as_ref() else {
            return Poll::Ready(frame);
        };
        if let Some(Ok(f)) = &mut frame
            && let Some(trailers) = f.trailers_mut()
            && let Some(record) = this.record.take()
            && !record.finish_with(&flight.0, trailers)
        {
            // Trailers without grpc-status: not a gRPC response; count it as UNKNOWN.
            record.answered(&flight.0, Code::Unknown as usize);
        }
        if frame.is_none()
            && let Some(record) = this.record.take()
        {
            record.answered(&flight.0, Code::Unknown as usize);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
