//! The load generator's gRPC client: unary calls straight on an HTTP/2 connection (the `h2`
//! crate, which hyper and tonic use underneath). A load generator owns its connections and
//! counts a broken one as errors, so it needs none of what sits above h2 in a general client:
//! tonic's `Channel` (a buffer task, reconnects) and hyper's client (a task per request to pipe
//! the body). What it keeps is what makes the result trustworthy: every reply is framed and
//! decoded as the message it must be, and success is grpc-status 0, whether the status comes
//! in the trailers or in a trailers-only response.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Request, header};
use krpc_transport::Connector;
use prost::Message;
use tonic::{Code, Status};

use crate::error::{LoadgenError, Result};

/// One HTTP/2 connection; cheap to clone (all clones share it).
#[derive(Clone, Debug)]
pub(crate) struct GrpcConn {
    send: SendRequest<Bytes>,
    authority: http::uri::Authority,
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
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP/2 connection ended");
            }
        });
        Ok(Self { send, authority })
    }

    /// One unary call: `request` to `path` ("/krpc.v1.Bench/Echo"), the reply decoded as `R`.
    pub(crate) async fn unary<R: Message + Default>(
        &self,
        path: &'static str,
        request: &impl Message,
    ) -> Result<R, Status> {
        let mut frame = BytesMut::with_capacity(5 + request.encoded_len());
        frame.put_u8(0);
        frame.put_u32(request.encoded_len() as u32);
        request
            .encode(&mut frame)
            .map_err(|e| Status::internal(format!("cannot encode the request: {e}")))?;
        let head = Request::post(
            http::Uri::builder()
                .scheme("http")
                .authority(self.authority.clone())
                .path_and_query(path)
                .build()
                .map_err(|e| Status::internal(e.to_string()))?,
        )
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(())
        .map_err(|e| Status::internal(e.to_string()))?;

        let mut send = self.send.clone().ready().await.map_err(h2_status)?;
        let (response, mut body) = send.send_request(head, false).map_err(h2_status)?;
        body.send_data(frame.freeze(), true).map_err(h2_status)?;
        let response = response.await.map_err(h2_status)?;
        let (parts, mut body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Status::new(
                http_code(parts.status),
                format!("HTTP status {}", parts.status),
            ));
        }
        // Trailers-only: an error before any message.
        if let Some(status) = grpc_status(&parts.headers) {
            return Err(status);
        }
        let mut reply = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2_status)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            reply.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(h2_status)?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(status) => return Err(status),
            None if trailers.is_none() => {
                return Err(Status::internal("response ended without grpc-status"));
            }
            None => {}
        }
        let mut reply = reply.freeze();
        if reply.len() < 5 || reply[0] != 0 {
            return Err(Status::internal(
                "reply is not one uncompressed gRPC message",
            ));
        }
        reply.advance(1);
        let len = reply.get_u32() as usize;
        if reply.len() != len {
            return Err(Status::internal(format!(
                "reply frame says {len} bytes, {} came",
                reply.len()
            )));
        }
        R::decode(reply).map_err(|e| Status::internal(format!("reply does not decode: {e}")))
    }
}

/// `None` for grpc-status 0 or no grpc-status header; the error otherwise.
fn grpc_status(headers: &HeaderMap) -> Option<Status> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    if code == 0 {
        return None;
    }
    // The message arrives percent-encoded; tonic decodes it the standard way.
    let message = Status::from_header_map(headers)
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    Some(Status::new(Code::from(code), message))
}

/// gRPC's mapping of HTTP statuses without grpc-status (the spec's table).
fn http_code(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// A broken stream or connection: UNAVAILABLE (the server is gone), or the reset's code.
fn h2_status(e: h2::Error) -> Status {
    match e.reason() {
        Some(h2::Reason::CANCEL) => Status::cancelled(e.to_string()),
        Some(h2::Reason::REFUSED_STREAM) => Status::unavailable(e.to_string()),
        Some(_) => Status::internal(e.to_string()),
        None => Status::unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_is_read_from_headers_or_trailers() {
        let mut h = HeaderMap::new();
        assert!(grpc_status(&h).is_none(), "no grpc-status yet");
        h.insert("grpc-status", "0".parse().unwrap());
        assert!(grpc_status(&h).is_none(), "0 is OK");
        h.insert("grpc-status", "8".parse().unwrap());
        h.insert("grpc-message", "too%20large".parse().unwrap());
        let s = grpc_status(&h).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "too large");
    }

    #[test]
    fn http_statuses_map_as_the_grpc_spec_says() {
        assert_eq!(http_code(http::StatusCode::NOT_FOUND), Code::Unimplemented);
        assert_eq!(http_code(http::StatusCode::BAD_GATEWAY), Code::Unavailable);
        assert_eq!(http_code(http::StatusCode::IM_A_TEAPOT), Code::Unknown);
    }
}
