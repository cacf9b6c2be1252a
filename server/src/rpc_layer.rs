//! The tower layer every RPC goes through, around tonic's routes:
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
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use krpc_proto::codec::DecodeCtx;
use pin_project_lite::pin_project;
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::{
    cores,
    metrics::{Metrics, method_index},
};

/// What the server attaches to each connection; tonic clones it into every request's
/// extensions. One `Arc` per connection: a request clones only its own connection's count, never
/// one that every core shares (the pool's, the metrics').
#[derive(Clone, Debug)]
pub struct ConnCtx(Arc<ConnState>);

#[derive(Debug)]
struct ConnState {
    info: krpc_transport::ConnInfo,
    decode: DecodeCtx,
    metrics: Metrics,
}

impl ConnCtx {
    pub(crate) fn new(info: krpc_transport::ConnInfo, decode: DecodeCtx, metrics: Metrics) -> Self {
        Self(Arc::new(ConnState {
            info,
            decode,
            metrics,
        }))
    }

    /// The connection's peer, TLS path, version and cipher.
    pub fn info(&self) -> &krpc_transport::ConnInfo {
        &self.0.info
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RpcLayer {
    max_message_bytes: usize,
}

impl RpcLayer {
    pub(crate) fn new(max_message_bytes: usize) -> Self {
        Self { max_message_bytes }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            layer: *self,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
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

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Every connection the server accepts carries a ConnCtx; without one (not a krpc
        // connection) the request is neither pooled nor recorded.
        let conn = req.extensions().get::<ConnCtx>().cloned();
        let decode = conn.as_ref().map(|c| c.0.decode.clone());
        let record = conn.map(|conn| Record {
            start: Instant::now(),
            method: method_index(req.uri().path()),
            conn,
            max_message_bytes: self.layer.max_message_bytes,
        });
        let inner = scoped(&decode, || self.inner.call(req));
        RpcFuture {
            inner,
            decode,
            record,
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
    /// The connection, whose metrics handle records the RPC.
    conn: ConnCtx,
    max_message_bytes: usize,
}

impl Record {
    /// Rewrites tonic's "too large" OUT_OF_RANGE to RESOURCE_EXHAUSTED, records the status
    /// found in `headers`, and says whether there was one.
    fn finish_with(&self, headers: &mut HeaderMap) -> bool {
        let Some(code) = grpc_status(headers) else {
            return false;
        };
        let code = if code == Code::OutOfRange as usize {
            self.remap_too_large(headers).unwrap_or(code)
        } else {
            code
        };
        self.finish(code);
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

    fn finish(&self, code: usize) {
        self.conn
            .0
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
        Poll::Ready(result.map(|response| {
            let (mut parts, body) = response.into_parts();
            // A trailers-only response (an error before any message) has its status here.
            if record
                .as_ref()
                .is_some_and(|r| r.finish_with(&mut parts.headers))
            {
                record = None;
            }
            Response::from_parts(
                parts,
                RpcBody {
                    inner: body,
                    decode: this.decode.take(),
                    record,
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
    }

    impl<B> PinnedDrop for RpcBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its trailers: the client went away (reset or disconnect).
            if let Some(record) = this.project().record.take() {
                record.finish(Code::Cancelled as usize);
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
        if let Some(Ok(f)) = &mut frame
            && let Some(trailers) = f.trailers_mut()
            && let Some(record) = this.record.take()
            && !record.finish_with(trailers)
        {
            // Trailers without grpc-status: not a gRPC response; count it as UNKNOWN.
            record.finish(Code::Unknown as usize);
        }
        if frame.is_none()
            && let Some(record) = this.record.take()
        {
            record.finish(Code::Unknown as usize);
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
