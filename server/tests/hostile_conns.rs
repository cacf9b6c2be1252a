//! Connection-level attacks against a krpc-server child process: slowloris before and after
//! the TLS handshake, floods past the connection and handshake caps, running out of file
//! descriptors, garbage and HTTP/1.1 on the h2c port. In each, a well-behaved client connected
//! before the attack is served during and after it, refusals are fast and counted, and the
//! server's peak RSS stays within a bound.

mod common;

use std::time::{Duration, Instant};

use common::{
    child::ServerProcess,
    eventually,
    h2raw::{self, *},
    probe::{self, Prober},
};
use tokio::{io::AsyncWriteExt, net::TcpStream};

const GUARD: Duration = Duration::from_secs(20);
const MEMORY_BOUND_KIB: u64 = 24 * 1024;

fn closed(server: &ServerProcess, reason: &str) -> i64 {
    server.metric_with("krpc_connections_closed_total", "reason", reason)
}

fn refused(server: &ServerProcess, reason: &str) -> i64 {
    server.metric_with("krpc_connections_refused_total", "reason", reason)
}

fn assert_memory_bounded(server: &ServerProcess, before: u64, what: &str) {
    let (_, peak) = server.rss_kib();
    assert!(
        peak <= before + MEMORY_BOUND_KIB,
        "{what}: peak RSS {peak} KiB, {before} KiB before"
    );
}

/// Whether the server closed `tcp` (EOF or RST) before sending a byte; it waits for the
/// first byte or the close, up to GUARD.
async fn refused_at_once(tcp: &mut TcpStream) -> bool {
    let got = read_frames(tcp, GUARD, |r| !r.frames.is_empty()).await;
    got.frames.is_empty() && got.closed
}

#[tokio::test]
async fn slowloris_on_h2c_is_closed_by_the_preface_and_idle_timeouts() {
    let server = ServerProcess::start(
        &[
            "--tls",
            "off",
            "--preface-timeout",
            "500ms",
            "--idle-timeout",
            "1s",
            "--max-connection-age-grace",
            "1s",
        ],
        None,
    );
    let prober = Prober::start(server.addr, None).await;
    let (before, _) = server.rss_kib();
    let started = Instant::now();
    // Says nothing; sends half the preface; sends all of it, then a header block a byte at a
    // time that never ends.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&PREFACE[..10]).await.unwrap();
    let mut trickle = connect_h2c(server.addr).await;
    let headers = frame(HEADERS, 0, 1, &grpc_headers(ECHO, &[]));
    let trickler = tokio::spawn(async move {
        for byte in headers {
            if !send(&mut trickle, &[byte], GUARD).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    let (silent_closed, half_closed) = (
        read_frames(&mut silent, GUARD, |_| false).await,
        read_frames(&mut half, GUARD, |_| false).await,
    );
    assert!(silent_closed.closed && half_closed.closed);
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(
        trickler.await.unwrap(),
        "the trickling client outlived its header block"
    );
    assert_eq!(closed(&server, "preface_timeout"), 2);
    // GOAWAY at 1 s idle; the trickler never answers the GOAWAY's PING, so the grace closes it.
    let idle = closed(&server, "idle_timeout") + closed(&server, "goaway_grace_expired");
    assert_eq!(idle, 1);
    prober.served(10).await;
    prober.finish().await;
    assert_memory_bounded(&server, before, "slowloris h2c");
}

#[tokio::test]
async fn slowloris_on_tls_is_cut_off_in_and_after_the_handshake() {
    let server = ServerProcess::start(
        &[
            "--tls",
            "rustls",
            "--handshake-timeout",
            "500ms",
            "--preface-timeout",
            "500ms",
        ],
        None,
    );
    let ca = server.ca();
    let prober = Prober::start(server.addr, Some(&ca)).await;
    let (before, _) = server.rss_kib();
    // One stalls the handshake; one finishes it and then says nothing.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let connector = krpc_client::TlsArgs {
        tls: krpc_transport::TlsMode::Rustls,
        ca: Some(ca.clone()),
        client_cert: None,
        client_key: None,
        insecure: false,
        server_name: None,
    }
    .connector()
    .unwrap();
    let mut mute = connector
        .connect("127.0.0.1", server.addr.port())
        .await
        .unwrap();
    let started = Instant::now();
    assert!(read_frames(&mut stalled, GUARD, |_| false).await.closed);
    let after = read_frames(&mut mute, GUARD, |_| false).await;
    assert!(after.closed, "the mute TLS client was never closed");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        server.metric_with("krpc_handshake_failures_total", "reason", "timeout"),
        1
    );
    assert_eq!(closed(&server, "preface_timeout"), 1);
    prober.served(10).await;
    prober.finish().await;
    assert_memory_bounded(&server, before, "slowloris TLS");
}

#[tokio::test]
async fn a_connection_flood_past_the_cap_is_refused_fast_and_counted() {
    let server = ServerProcess::start(&["--tls", "off", "--max-connections", "20"], None);
    let prober = Prober::start(server.addr, None).await;
    let (before, _) = server.rss_kib();
    let started = Instant::now();
    let mut flood = Vec::new();
    // The prober holds one slot: 19 more get HTTP/2 (the server's SETTINGS), the rest RST
    // (some so fast that `connect` itself reports it).
    let mut refused_fast = 0;
    for _ in 0..200 {
        match try_connect_h2c(server.addr).await {
            Ok(tcp) => flood.push(tcp),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                refused_fast += 1;
            }
        }
    }
    for tcp in &mut flood {
        if refused_at_once(tcp).await {
            refused_fast += 1;
        }
    }
    assert_eq!(refused_fast, 181);
    assert_eq!(refused(&server, "max_connections"), 181);
    assert_eq!(server.metric("krpc_connections_in_use"), 20);
    prober.served(10).await;
    // One warning per 10 s at most, however many were refused.
    let warnings = server.count_lines("refusing connections");
    let allowed = 1 + started.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=allowed).contains(&warnings),
        "{warnings} warnings in {:?}",
        started.elapsed()
    );
    drop(flood);
    eventually(|| match server.metric("krpc_connections_in_use") {
        1 => Ok(()),
        n => Err(format!("{n} in use")),
    })
    .await;
    let mut fresh = probe::client(server.addr, None).await;
    probe::echo(&mut fresh, 1).await.unwrap();
    prober.finish().await;
    assert_memory_bounded(&server, before, "connection flood");
}

#[tokio::test]
async fn handshakes_past_the_cap_are_refused_fast_and_counted() {
    let server = ServerProcess::start(
        &[
            "--tls",
            "rustls",
            "--max-handshakes",
            "8",
            "--handshake-timeout",
            "20s",
        ],
        None,
    );
    let ca = server.ca();
    let prober = Prober::start(server.addr, Some(&ca)).await;
    let (before, _) = server.rss_kib();
    // 50 peers that open TCP and never start TLS: 8 hold a handshake slot, 42 are refused.
    let mut flood = Vec::new();
    let mut refused_fast = 0;
    for _ in 0..50 {
        match TcpStream::connect(server.addr).await {
            Ok(tcp) => flood.push(tcp),
            // Reset before `connect` returned.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused_fast += 1,
            Err(e) => panic!("{e}"),
        }
    }
    eventually(|| match refused(&server, "max_handshakes") {
        42 => Ok(()),
        n => Err(format!("{n} refused")),
    })
    .await;
    assert_eq!(server.metric("krpc_handshakes_in_progress"), 8);
    // The first 8 hold their slots; every later one was reset.
    for tcp in flood.iter_mut().skip(8) {
        if refused_at_once(tcp).await {
            refused_fast += 1;
        }
    }
    assert_eq!(refused_fast, 42);
    // Established connections are not handshakes: the prober goes on.
    prober.served(10).await;
    drop(flood);
    eventually(|| match server.metric("krpc_handshakes_in_progress") {
        0 => Ok(()),
        n => Err(format!("{n} handshakes")),
    })
    .await;
    let mut fresh = probe::client(server.addr, Some(&ca)).await;
    probe::echo(&mut fresh, 1).await.unwrap();
    prober.finish().await;
    assert_memory_bounded(&server, before, "handshake flood");
}

#[tokio::test]
async fn out_of_file_descriptors_the_server_sheds_and_keeps_serving() {
    // 48 descriptors: about 30 connections' worth once the runtime, listeners and stdio have
    // theirs; --max-connections stays far above, so the process limit is what is hit.
    let server = ServerProcess::start(&["--tls", "off", "--max-connections", "1000"], Some(48));
    let prober = Prober::start(server.addr, None).await;
    let (before, _) = server.rss_kib();
    // While the process is out of descriptors its metrics endpoint cannot accept either:
    // what happened is read from the flood's side until it is over.
    let mut flood = Vec::new();
    let mut shed = 0;
    for _ in 0..100 {
        match try_connect_h2c(server.addr).await {
            Ok(tcp) => flood.push(tcp),
            Err(_) => shed += 1,
        }
    }
    // Each connection gets HTTP/2 (the server's SETTINGS) or is shed with RST: none is left
    // hanging in the backlog.
    let mut served = 0;
    for tcp in &mut flood {
        if refused_at_once(tcp).await {
            shed += 1;
        } else {
            served += 1;
        }
    }
    println!("fd exhaustion: {served} connections served, {shed} shed");
    assert!(shed > 0 && served > 0, "{served} served, {shed} shed");
    // Connections already accepted are served meanwhile.
    prober.served(20).await;
    drop(flood);
    eventually(|| match server.metric("krpc_connections_in_use") {
        1 => Ok(()),
        n => Err(format!("{n} in use")),
    })
    .await;
    assert_eq!(refused(&server, "fd_limit"), shed);
    assert!(server.metric_with("krpc_accept_errors_total", "kind", "out_of_resources") >= shed);
    let mut fresh = probe::client(server.addr, None).await;
    probe::echo(&mut fresh, 1).await.unwrap();
    prober.finish().await;
    assert_memory_bounded(&server, before, "fd exhaustion");
}

#[tokio::test]
async fn garbage_and_http1_on_the_h2c_port_are_closed_without_an_answer() {
    let server = ServerProcess::start(&["--tls", "off"], None);
    let prober = Prober::start(server.addr, None).await;
    let (before, _) = server.rss_kib();
    let requests: [&[u8]; 3] = [
        b"\x00\xffGARBAGE\r\n\r\n not HTTP at all, and longer than a preface\x16\x03",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ];
    for bad in requests {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(bad).await.unwrap();
        let got = read_frames(&mut tcp, GUARD, |_| false).await;
        assert!(got.closed, "still open after {bad:?}");
        // HTTP/2 frames at most (SETTINGS, GOAWAY), never an HTTP/1.1 response.
        assert!(
            got.frames
                .iter()
                .all(|f| matches!(f.kind, h2raw::SETTINGS | h2raw::GOAWAY)),
            "{:?}",
            got.frames
        );
        if let Some(code) = got.goaway() {
            assert_eq!(code, PROTOCOL_ERROR);
        }
        prober.served(3).await;
    }
    assert_eq!(
        closed(&server, "protocol_error") + closed(&server, "io_error"),
        3
    );
    prober.finish().await;
    assert_memory_bounded(&server, before, "garbage on h2c");
}
