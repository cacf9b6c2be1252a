//! One HTTP/2 connection per load generator connection, driven by hyper directly. tonic's
//! `Channel` puts a buffer (a channel and a worker task) and reconnect logic in front of every
//! call; a load generator wants neither: it owns its connections, and a broken one is an error
//! to count, not to hide. `H2` is the thin tower service tonic's generated client needs.

use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use krpc_transport::Connector;
use tonic::body::Body;

/// A cheap-to-clone handle on one HTTP/2 connection.
#[derive(Clone, Debug)]
pub(crate) struct H2 {
    send: http2::SendRequest<Body>,
}

impl H2 {
    /// Dials `target` (`host:port`) through `connector` (TLS off/rustls/kTLS) and starts HTTP/2.
    pub(crate) async fn connect(target: &str, connector: &Connector) -> anyhow::Result<Self> {
        let (host, port) = target
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("target {target:?} is not host:port"))?;
        let conn = connector
            .connect(host, port)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {target}: {}", chain(&e)))?;
        let (send, connection) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake(TokioIo::new(conn))
            .await
            .map_err(|e| anyhow::anyhow!("HTTP/2 handshake with {target} failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP/2 connection ended");
            }
        });
        Ok(Self { send })
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl tower::Service<Request<Body>> for H2 {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // tonic builds requests with a path-only URI; HTTP/2 needs scheme and authority.
        let uri = req.uri();
        if uri.scheme().is_none() {
            let mut parts = uri.clone().into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some(http::uri::Authority::from_static("krpc"));
            if let Ok(full) = http::Uri::from_parts(parts) {
                *req.uri_mut() = full;
            }
        }
        Box::pin(self.send.send_request(req))
    }
}
