//! The load generator's gRPC client: unary calls straight on an HTTP/2 connection (the `h2`
//! crate, which hyper and tonic use underneath). A load generator owns its connections, counts
//! the calls a broken one fails, and reconnects itself (link.rs), so it needs none of what sits
//! above h2 in a general client: tonic's `Channel` (a buffer task, reconnects) and hyper's
//! client (a task per request to pipe the body). What it keeps is what makes the result
//! trustworthy: every reply is framed and decoded as the message it must be (grpc.rs), success
//! is grpc-status 0, whether the status comes in the trailers or in a trailers-only response,
//! and a failed stream or connection gets the gRPC code the spec gives it.

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::{Request, header};
use krpc_transport::Connector;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    error::{LoadgenError, Result},
    grpc::{Failure, encode_request, grpc_status, h2_status, http_code, parse_reply},
};

/// One HTTP/2 connection; cheap to clone (all clones share it).
#[derive(Clone, Debug)]
pub(crate) struct GrpcConn {
    send: SendRequest<Bytes>,
    authority: http::uri::Authority,
    /// Cancelled once the connection is lost or going away (the server sent GOAWAY): a call
    /// failed for it, or the connection's driver ended. The owner then reconnects.
    broken: CancellationToken,
}

impl GrpcConn {
    /// Dials `target` (`host:port`) through `connector` (TLS off/rustls/kTLS) and starts HTTP/2.
    pub(crate) async fn connect(target: &str, connector: &Connector) -> Result<Self> {
        let bad_target = || LoadgenError::Target {
            target: target.to_owned(),
        };
        let (host, port) = target
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(bad_target)?;
        let authority: http::uri::Authority = target.parse().map_err(|_| bad_target())?;
        let conn = connector.connect(host, port).await?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(conn)
            .await
            .map_err(|source| LoadgenError::Http2 {
                target: target.to_owned(),
                source,
            })?;
        let broken = CancellationToken::new();
        tokio::spawn({
            let broken = broken.clone();
            async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "HTTP/2 connection ended");
                }
                broken.cancel();
            }
        });
        Ok(Self {
            send,
            authority,
            broken,
        })
    }

    /// Whether the connection is lost or going away.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.is_cancelled()
    }

    /// Resolves once the connection is lost or going away.
    pub(crate) async fn broken(&self) {
        self.broken.cancelled().await
    }

    /// One unary call: `request` to `path` ("/krpc.v1.Bench/Echo"), the reply decoded as `R`.
    pub(crate) async fn unary<R: Message + Default>(
        &self,
        path: &'static str,
        request: &impl Message,
    ) -> Result<R, Status> {
        self.call(path, request).await.map_err(|(status, failure)| {
            if failure == Some(Failure::Connection) {
                self.broken.cancel();
            }
            status
        })
    }

    async fn call<R: Message + Default>(
        &self,
        path: &'static str,
        request: &impl Message,
    ) -> Result<R, (Status, Option<Failure>)> {
        let h2 = |e: h2::Error| {
            let failure = Failure::of(&e);
            (h2_status(e), Some(failure))
        };
        let plain = |status: Status| (status, None);
        let frame = encode_request(request);
        let head = Request::post(
            http::Uri::builder()
                .scheme("http")
                .authority(self.authority.clone())
                .path_and_query(path)
                .build()
                .map_err(|e| plain(Status::internal(e.to_string())))?,
        )
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(())
        .map_err(|e| plain(Status::internal(e.to_string())))?;

        let mut send = self.send.clone().ready().await.map_err(h2)?;
        let (response, mut body) = send.send_request(head, false).map_err(h2)?;
        body.send_data(frame, true).map_err(h2)?;
        let response = response.await.map_err(h2)?;
        let (parts, mut body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(plain(Status::new(
                http_code(parts.status),
                format!("HTTP status {}", parts.status),
            )));
        }
        // Trailers-only: an error before any message.
        if let Some(status) = grpc_status(&parts.headers) {
            return Err(plain(status));
        }
        let mut reply = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            reply.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(h2)?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(status) => return Err(plain(status)),
            None if trailers.is_none() => {
                return Err(plain(Status::internal(
                    "response ended without grpc-status",
                )));
            }
            None => {}
        }
        parse_reply(reply.freeze()).map_err(plain)
    }
}
