//! `GET /metrics` over HTTP/1 on a thread of its own: protobuf (native histograms) for a
//! Prometheus that asks for it, OpenMetrics text for everyone else.

use std::{convert::Infallible, fmt, io, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// OpenMetrics text.
fn encode_text(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Prometheus' delimited protobuf (the format with native histograms).
fn encode_protobuf(registry: &Registry) -> Result<Vec<u8>, String> {
    prometheus_client::encoding::prometheus_protobuf::encode_to_vec(registry)
        .map_err(|e| format!("{e:?}"))
}

const PROTOBUF: &str = "application/vnd.google.protobuf";

/// Serves `registry` as `GET /metrics` on `listener` until `shutdown`, on the calling thread
/// (its own current-thread runtime): protobuf for Prometheus, OpenMetrics text for the rest.
/// The load generator serves its own metrics with it too.
pub fn serve_prometheus(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(respond(&registry, &req)) }
                });
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await
                {
                    debug!(%peer, %error, "metrics connection ended with an error");
                }
            });
        }
    })
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"Prometheus metrics are at /metrics\n"),
        );
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"use GET\n"),
        );
    }
    // `?format=text|protobuf` overrides negotiation: Prometheus before 2.45 keeps only the
    // native half of a histogram scraped as protobuf, so a second job asks for text.
    let forced = req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| match kv {
            "format=text" => Some(false),
            "format=protobuf" => Some(true),
            _ => None,
        })
    });
    let wants_protobuf = forced.unwrap_or_else(|| {
        req.headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains(PROTOBUF) && v.contains("io.prometheus.client.MetricFamily"))
    });
    let encoded = if wants_protobuf {
        encode_protobuf(registry).map(|body| {
            (
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
                Bytes::from(body),
            )
        })
    } else {
        encode_text(registry)
            .map(|text| {
                (
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    Bytes::from(text),
                )
            })
            .map_err(|e| e.to_string())
    };
    match encoded {
        Ok((content_type, body)) => reply(StatusCode::OK, content_type, body),
        Err(error) => {
            warn!(%error, "cannot encode metrics");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                Bytes::from(format!("cannot encode metrics: {error}\n")),
            )
        }
    }
}
