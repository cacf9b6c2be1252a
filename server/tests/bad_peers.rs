//! Peers that do not speak TLS, or stop half way, are dropped without disturbing anyone else.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Options, TestServer};
use krpc_proto::v1::EchoRequest;
use krpc_transport::{TlsMode, TlsPath};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Generous bound for "the server closed it"; the test normally ends in milliseconds.
const GUARD: Duration = Duration::from_secs(20);

/// Reads until the server closes the connection; returns what it sent before closing.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GUARD, stream.read(&mut buf)).await {
            Err(_) => panic!("server kept the connection open past {GUARD:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn echo_ok(
    client: &mut krpc_proto::v1::bench_client::BenchClient<tonic::transport::Channel>,
) {
    let reply = client
        .echo(EchoRequest {
            key: Bytes::new(),
            payload: Bytes::from_static(b"still here"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload, Bytes::from_static(b"still here"));
}

#[tokio::test]
async fn garbage_and_plaintext_http2_are_dropped_while_others_are_served() {
    let server = TestServer::start(Options::tls(TlsPath::Rustls));
    let mut good = server
        .client(&server.tls_args(TlsMode::Rustls))
        .await
        .unwrap();
    echo_ok(&mut good).await;

    let garbage: &[u8] = b"\x00\xffGARBAGE\r\n\r\n not a TLS record at all \x16\x03";
    let h2_preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let http1: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for bad in [garbage, h2_preface, http1] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(bad).await.unwrap();
        let answer = read_until_closed(&mut stream).await;
        // At most a TLS alert record (content type 21) comes back, never HTTP.
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "server answered {:?} to {:?}",
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(bad)
        );
        echo_ok(&mut good).await;
    }

    // A new client is still welcome after all that.
    let mut fresh = server
        .client(&server.tls_args(TlsMode::Rustls))
        .await
        .unwrap();
    echo_ok(&mut fresh).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_off_after_the_timeout() {
    let server = TestServer::start(Options {
        handshake_timeout: Duration::from_millis(300),
        ..Options::tls(TlsPath::Rustls)
    });

    // One client says nothing; another sends half a ClientHello record header and stalls.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();

    let started = std::time::Instant::now();
    assert!(read_until_closed(&mut silent).await.is_empty());
    read_until_closed(&mut half).await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the handshake timeout: {:?}",
        started.elapsed()
    );

    // Meanwhile, and after, real clients are served.
    let mut good = server
        .client(&server.tls_args(TlsMode::Rustls))
        .await
        .unwrap();
    echo_ok(&mut good).await;
    server.stop().await.unwrap();
}
