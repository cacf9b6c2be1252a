//! Malformed gRPC inside well-formed HTTP/2 (sent with the h2 crate's client, which lets a test
//! put any bytes in a request body): a length prefix beyond the data, the compressed flag with
//! no grpc-encoding, a prefix that claims 4 GiB, a message over the limit, a body cut inside its
//! prefix. Each gets a gRPC error status, the connection and the server go on, the pool gets
//! every buffer back and the server's memory stays bounded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{child::ServerProcess, eventually, probe::Prober};
use h2::client::SendRequest;
use http::{HeaderMap, Request};
use tokio::net::TcpStream;

const GUARD: Duration = Duration::from_secs(10);
const MEMORY_BOUND_KIB: u64 = 24 * 1024;

async fn h2_client(addr: std::net::SocketAddr) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Sends `body` as an Echo request (`extra` headers added) and returns grpc-status and
/// grpc-message, from the headers (trailers-only) or the trailers.
async fn call(
    client: &mut SendRequest<Bytes>,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> (String, String) {
    let mut request = Request::post("http://localhost/krpc.v1.Bench/Echo")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request.body(()).unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (response, mut stream) = ready.send_request(request, false).unwrap();
    stream.send_data(Bytes::from(body), true).unwrap();
    let response = tokio::time::timeout(GUARD, response)
        .await
        .expect("no response")
        .unwrap();
    let (parts, mut body) = response.into_parts();
    assert_eq!(parts.status, 200);
    let status = |h: &HeaderMap| {
        let get = |n: &str| {
            h.get(n)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        Some((get("grpc-status"), get("grpc-message"))).filter(|(s, _)| !s.is_empty())
    };
    if let Some(found) = status(&parts.headers) {
        return found;
    }
    while let Some(data) = body.data().await {
        let _ = data.unwrap();
    }
    let trailers = body.trailers().await.unwrap().expect("no trailers");
    status(&trailers).expect("no grpc-status in the trailers")
}

fn prefix(compressed: u8, len: u32) -> Vec<u8> {
    let mut out = vec![compressed];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// An EchoRequest with a `len`-byte payload.
fn echo_message(len: usize) -> Vec<u8> {
    let mut out = vec![0x12];
    let mut n = len;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.resize(out.len() + len, b'p');
    out
}

#[tokio::test]
async fn malformed_framing_gets_an_error_status_and_serving_goes_on() {
    let server = ServerProcess::start(&["--tls", "off", "--max-message-bytes", "1MiB"], None);
    let prober = Prober::start(server.addr, None).await;
    let (before, _) = server.rss_kib();
    let mut client = h2_client(server.addr).await;

    // 1. The prefix says 100 bytes; 10 follow, then the stream ends.
    let mut body = prefix(0, 100);
    body.extend_from_slice(&[0x12, 8, b'x', b'x', b'x', b'x', b'x', b'x', b'x', b'x']);
    let (code, message) = call(&mut client, body, &[]).await;
    println!("short body: {code} {message}");
    assert_eq!(code, "13", "INTERNAL: {message}");

    // 2. Compressed flag set, no grpc-encoding header.
    let mut body = prefix(1, 12);
    body.extend(echo_message(10));
    let (code, message) = call(&mut client, body, &[]).await;
    assert_eq!(code, "13", "INTERNAL: {message}");
    assert!(message.contains("grpc-encoding"), "{message}");

    // 3. A compression flag that is neither 0 nor 1.
    let mut body = prefix(7, 12);
    body.extend(echo_message(10));
    let (code, message) = call(&mut client, body, &[]).await;
    assert_eq!(code, "13", "INTERNAL: {message}");

    // 4. A prefix claiming 4 GiB, with a few bytes behind it: refused from the prefix alone.
    let mut body = prefix(0, u32::MAX);
    body.extend_from_slice(b"tiny");
    let (code, message) = call(&mut client, body, &[]).await;
    assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");
    assert!(message.contains("--max-message-bytes"), "{message}");

    // 5. A real message just over the limit (1 MiB + 1 KiB).
    let message_bytes = echo_message((1 << 20) + 1024);
    let mut body = prefix(0, message_bytes.len() as u32);
    body.extend(message_bytes);
    let (code, message) = call(&mut client, body, &[]).await;
    assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");

    // 6. The body ends inside the 5-byte prefix.
    let (code, message) = call(&mut client, vec![0, 0, 0], &[]).await;
    assert_eq!(code, "13", "INTERNAL: {message}");

    // 7. Not protobuf at all inside a correct frame.
    let mut body = prefix(0, 4);
    body.extend_from_slice(&[0x12, 0xff, 0xff, 0xff]);
    let (code, message) = call(&mut client, body, &[]).await;
    assert_eq!(code, "3", "INVALID_ARGUMENT: {message}");

    // The same connection still serves a well-formed call.
    let message_bytes = echo_message(32);
    let mut body = prefix(0, message_bytes.len() as u32);
    body.extend(message_bytes);
    let (code, message) = call(&mut client, body, &[]).await;
    assert_eq!(code, "0", "{message}");

    prober.served(10).await;
    prober.finish().await;
    let (_, peak) = server.rss_kib();
    assert!(
        peak <= before + MEMORY_BOUND_KIB,
        "peak RSS {peak} KiB, {before} KiB before"
    );
    eventually(|| match server.metric("krpc_pool_outstanding_buffers") {
        0 => Ok(()),
        n => Err(format!("{n} outstanding")),
    })
    .await;
}
