//! HTTP/2-level attacks on one connection, written frame by frame (common/h2raw.rs), against a
//! krpc-server child process (h2c, one core, default limits). In each: a well-behaved client
//! connected before the attack is served during and after it, the attacker gets what the
//! limit promises (GOAWAY(ENHANCE_YOUR_CALM), REFUSED_STREAM, …), the server's peak RSS stays
//! within a bound of where it started, and no pooled buffer is left outstanding.

mod common;

use std::time::Duration;

use common::{
    child::ServerProcess,
    eventually,
    h2raw::{self, *},
    probe::{self, Prober},
};

/// How long the attacker waits on the server before calling it stuck.
const GUARD: Duration = Duration::from_secs(10);

/// How far above its pre-attack RSS the server's peak may go. The server starts at about
/// 10 MiB; 5,000 unlimited streams took it from 7 to 48 MiB before the limits were set.
const MEMORY_BOUND_KIB: u64 = 24 * 1024;

struct Attack {
    server: ServerProcess,
    prober: Prober,
    rss_before: u64,
}

impl Attack {
    async fn start(args: &[&str]) -> Self {
        let mut all = vec!["--tls", "off"];
        all.extend_from_slice(args);
        let server = ServerProcess::start(&all, None);
        let prober = Prober::start(server.addr, None).await;
        prober.served(5).await;
        let (rss_before, _) = server.rss_kib();
        Self {
            server,
            prober,
            rss_before,
        }
    }

    /// The checks every attack ends with.
    async fn finish(self, what: &str) -> ServerProcess {
        let Self {
            server,
            prober,
            rss_before,
        } = self;
        prober.served(20).await;
        prober.finish().await;
        let (_, peak) = server.rss_kib();
        assert!(
            peak <= rss_before + MEMORY_BOUND_KIB,
            "{what}: peak RSS {peak} KiB, {rss_before} KiB before the attack"
        );
        println!(
            "{what}: RSS {rss_before} KiB before, peak {peak} KiB (+{} KiB)",
            peak.saturating_sub(rss_before)
        );
        // A client that arrives after the attack is served too.
        let mut fresh = probe::client(server.addr, None).await;
        probe::echo(&mut fresh, 1).await.unwrap();
        drop(fresh);
        eventually(|| match server.metric("krpc_pool_outstanding_buffers") {
            0 => Ok(()),
            n => Err(format!("{n} buffers outstanding")),
        })
        .await;
        server
    }
}

fn closed(server: &ServerProcess, reason: &str) -> i64 {
    server.metric_with("krpc_connections_closed_total", "reason", reason)
}

#[tokio::test]
async fn rapid_reset_is_answered_with_enhance_your_calm() {
    let attack = Attack::start(&[]).await;
    let mut tcp = connect_h2c(attack.server.addr).await;
    let mut flood = Vec::new();
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        flood.extend(open_echo(stream));
        flood.extend(rst_stream(stream, CANCEL));
    }
    send(&mut tcp, &flood, GUARD).await;
    let got = read_frames(&mut tcp, GUARD, |r| r.goaway().is_some()).await;
    assert_eq!(
        got.goaway(),
        Some(ENHANCE_YOUR_CALM),
        "{:?}",
        got.frames.len()
    );
    let server = attack.finish("rapid reset").await;
    assert_eq!(closed(&server, "enhance_your_calm"), 1);
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let attack = Attack::start(&[]).await;
    let mut tcp = connect_h2c(attack.server.addr).await;
    let mut flood = frame(HEADERS, 0, 1, &grpc_headers(ECHO, &[]));
    // Up to 64 MiB of header block that never ends.
    let chunk = frame(CONTINUATION, 0, 1, &literal("x-flood", &[b'a'; 16_000]));
    let mut sent = 0usize;
    for _ in 0..4_000 {
        flood.extend_from_slice(&chunk);
        if flood.len() >= 1 << 20 {
            if !send(&mut tcp, &flood, GUARD).await {
                break;
            }
            sent += flood.len();
            flood.clear();
        }
    }
    let got = read_frames(&mut tcp, GUARD, |r| r.goaway().is_some()).await;
    assert_eq!(got.goaway(), Some(ENHANCE_YOUR_CALM), "after {sent} bytes");
    assert!(
        sent < 32 << 20,
        "the server read {sent} bytes of one header block"
    );
    let server = attack.finish("CONTINUATION flood").await;
    assert_eq!(closed(&server, "enhance_your_calm"), 1);
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_refused_and_the_connection_goes_on() {
    let attack = Attack::start(&["--max-header-list-bytes", "16KiB"]).await;
    let mut tcp = connect_h2c(attack.server.addr).await;
    // 40 KiB of headers over three frames: over the 16 KiB limit.
    let block = grpc_headers(ECHO, &[("x-big", &[b'b'; 40 * 1024])]);
    let mut bytes = frame(HEADERS, 0, 1, &block[..16_000]);
    bytes.extend(frame(CONTINUATION, 0, 1, &block[16_000..32_000]));
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &block[32_000..]));
    // Then a proper RPC on the same connection.
    bytes.extend(echo_rpc(3, b"after-big-headers"));
    assert!(send(&mut tcp, &bytes, GUARD).await);
    let got = read_frames(&mut tcp, GUARD, |r| {
        r.frames
            .iter()
            .any(|f| f.kind == HEADERS && f.stream == 3 && f.flags & END_STREAM != 0)
    })
    .await;
    let answered_1 = got
        .frames
        .iter()
        .any(|f| f.stream == 1 && (f.kind == HEADERS || f.kind == RST_STREAM));
    assert!(answered_1, "stream 1 was neither refused nor reset");
    assert!(got.data(1).is_empty(), "stream 1 reached the handler");
    let reply = got.data(3);
    assert!(
        reply.windows(17).any(|w| w == b"after-big-headers"),
        "the next RPC on the connection was not served: {:?}",
        got.frames
    );
    assert_eq!(got.goaway(), None);
    attack.finish("huge header list").await;
}

#[tokio::test]
async fn streams_past_the_limit_are_refused() {
    let attack = Attack::start(&["--max-concurrent-streams", "100"]).await;
    let mut tcp = connect_h2c(attack.server.addr).await;
    // Read the server's SETTINGS first, as h2 clients do; then open 5,000 streams and send no
    // body, so that every stream the server accepts stays open.
    let settings = read_frames(&mut tcp, GUARD, |r| {
        r.frames.iter().any(|f| f.kind == SETTINGS)
    })
    .await;
    let max_streams = settings
        .frames
        .iter()
        .find(|f| f.kind == SETTINGS)
        .and_then(|f| {
            f.payload
                .chunks(6)
                .find(|s| s[..2] == [0, 3])
                .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
        });
    assert_eq!(max_streams, Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");
    let mut flood = settings_ack();
    for i in 0..5_000u32 {
        flood.extend(open_echo(2 * i + 1));
    }
    assert!(send(&mut tcp, &flood, GUARD).await);
    let got = read_frames(&mut tcp, GUARD, |r| r.goaway().is_some()).await;
    // h2 counts every refused stream as a reset it had to send: past 1,024 of them
    // (--max-local-error-resets) the connection is closed with ENHANCE_YOUR_CALM.
    let refused = got.resets(REFUSED_STREAM);
    assert_eq!(refused, 1_024);
    assert_eq!(got.goaway(), Some(ENHANCE_YOUR_CALM));
    drop(tcp);
    let server = attack.finish("stream flood").await;
    assert_eq!(closed(&server, "enhance_your_calm"), 1);
}

#[tokio::test]
async fn a_flood_of_streams_the_server_must_reset_ends_in_enhance_your_calm() {
    let attack = Attack::start(&[]).await;
    let mut tcp = connect_h2c(attack.server.addr).await;
    // A pseudo-header after a regular one is a malformed request (RFC 9113 8.3): the server
    // resets the stream with PROTOCOL_ERROR. 1,024 such resets (the default) end the
    // connection.
    // Sent 100 at a time, each batch's resets read before the next (as a client that waits for
    // them would), so that every reset can be counted.
    let block = grpc_headers(ECHO, &[(":method", b"POST")]);
    let mut resets = 0;
    let mut goaway = None;
    for batch in 0..30u32 {
        let mut flood = Vec::new();
        for i in 0..100 {
            let stream = 2 * (batch * 100 + i) + 1;
            flood.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        }
        if !send(&mut tcp, &flood, GUARD).await {
            break;
        }
        let got = read_frames(&mut tcp, GUARD, |r| {
            r.resets(PROTOCOL_ERROR) == 100 || r.goaway().is_some()
        })
        .await;
        resets += got.resets(PROTOCOL_ERROR);
        goaway = got.goaway();
        if goaway.is_some() || got.closed {
            break;
        }
    }
    // Ten batches were reset in full; the eleventh crossed 1,024 and got GOAWAY (its last
    // resets may not be written before the connection closes).
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "after {resets} resets");
    assert!((1_000..=1_024).contains(&resets), "{resets} resets");
    let server = attack.finish("local-error reset flood").await;
    assert_eq!(closed(&server, "enhance_your_calm"), 1);
}

/// Sends `frame` over and over without reading a byte of the answers, for at most `bytes`.
async fn flood_without_reading(addr: std::net::SocketAddr, frame: &[u8], bytes: usize) -> usize {
    let mut tcp = connect_h2c(addr).await;
    let batch: Vec<u8> = frame.repeat((64 << 10) / frame.len());
    let mut sent = 0;
    // Once the server stops reading (its answers are not read), writes stall: that is the
    // backpressure that keeps its memory bounded. Two seconds of stall ends the flood.
    while sent < bytes && send(&mut tcp, &batch, Duration::from_secs(2)).await {
        sent += batch.len();
    }
    sent
}

#[tokio::test]
async fn a_ping_flood_is_held_back_by_backpressure() {
    let attack = Attack::start(&[]).await;
    let sent = flood_without_reading(attack.server.addr, &h2raw::ping(7), 64 << 20).await;
    println!("PING flood: {sent} bytes sent before the server stopped reading");
    attack.finish("PING flood").await;
}

#[tokio::test]
async fn a_settings_flood_is_held_back_by_backpressure() {
    let attack = Attack::start(&[]).await;
    let flood = settings(&[(0x4, 65_535), (0x3, 100)]);
    let sent = flood_without_reading(attack.server.addr, &flood, 64 << 20).await;
    println!("SETTINGS flood: {sent} bytes sent before the server stopped reading");
    attack.finish("SETTINGS flood").await;
}
