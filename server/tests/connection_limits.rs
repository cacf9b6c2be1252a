//! The connection limits that are not attacks: a peer that stops answering PINGs is closed
//! after `--keepalive-timeout`; a connection past `--max-connection-age` is sent GOAWAY and,
//! still open after `--max-connection-age-grace`, closed with its RPC counted as cut off; an
//! idle connection gets GOAWAY after `--idle-timeout` and a tonic client simply reconnects.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    child::ServerProcess,
    eventually,
    h2raw::{self, *},
    probe,
};
use krpc_proto::v1::EchoRequest;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

const GUARD: Duration = Duration::from_secs(20);

fn closed(server: &ServerProcess, reason: &str) -> i64 {
    server.metric_with("krpc_connections_closed_total", "reason", reason)
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_and_one_that_answers_is_not() {
    let server = ServerProcess::start(
        &[
            "--tls",
            "off",
            "--keepalive-interval",
            "300ms",
            "--keepalive-timeout",
            "300ms",
            "--idle-timeout",
            "none",
        ],
        None,
    );
    // tonic's h2 answers PINGs.
    let mut answering = probe::client(server.addr, None).await;
    probe::echo(&mut answering, 0).await.unwrap();
    // This one reads but never answers.
    let mut mute = connect_h2c(server.addr).await;
    assert!(send(&mut mute, &settings_ack(), GUARD).await);
    let got = read_frames(&mut mute, GUARD, |_| false).await;
    assert!(got.closed, "still open after {GUARD:?}");
    assert!(
        got.frames
            .iter()
            .any(|f| f.kind == h2raw::PING && f.flags & ACK == 0),
        "the server never pinged: {:?}",
        got.frames
    );
    assert_eq!(closed(&server, "keepalive_timeout"), 1);
    // Several keepalive periods later, the answering client is still connected and served.
    probe::echo(&mut answering, 1).await.unwrap();
    assert_eq!(server.metric("krpc_connections_open"), 1);
    assert_eq!(closed(&server, "keepalive_timeout"), 1);
}

#[tokio::test]
async fn past_its_age_a_connection_gets_goaway_then_is_closed_after_the_grace() {
    let server = ServerProcess::start(
        &[
            "--tls",
            "off",
            "--max-connection-age",
            "500ms",
            "--max-connection-age-grace",
            "1s",
        ],
        None,
    );
    // A raw client sees the GOAWAY: NO_ERROR, a graceful one.
    let mut raw = connect_h2c(server.addr).await;
    assert!(send(&mut raw, &settings_ack(), GUARD).await);
    let got = read_frames(&mut raw, GUARD, |r| r.goaway().is_some()).await;
    assert_eq!(got.goaway(), Some(NO_ERROR));
    drop(raw);

    // A stream that outlives age + grace is cut off, and counted.
    let mut client = probe::client(server.addr, None).await;
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .echo_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    let ended = tokio::time::timeout(GUARD, async {
        loop {
            let message = EchoRequest {
                key: Bytes::new(),
                payload: Bytes::from_static(b"still streaming"),
            };
            // The cut shows as an error status, or as the request stream closed under us,
            // whichever the client notices first.
            if requests.send(message).await.is_err() {
                return Ok(None);
            }
            match replies.next().await {
                Some(Ok(_)) => answered += 1,
                Some(Err(status)) => return Ok(Some(status)),
                None => return Err("ended without a status".to_owned()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stream outlived the connection's age and grace");
    assert!(ended.is_ok(), "{ended:?}");
    assert!(answered > 10, "{answered} replies before the cut");
    eventually(|| match closed(&server, "goaway_grace_expired") {
        1 => Ok(()),
        n => Err(n),
    })
    .await;
    assert_eq!(server.metric("krpc_rpcs_cut_off_total"), 1);
    assert!(
        closed(&server, "max_age") >= 1,
        "the raw client's connection"
    );
}

#[tokio::test]
async fn an_idle_connection_gets_goaway_and_a_client_reconnects() {
    let server = ServerProcess::start(&["--tls", "off", "--idle-timeout", "300ms"], None);
    let mut client = probe::client(server.addr, None).await;
    probe::echo(&mut client, 0).await.unwrap();
    eventually(|| match closed(&server, "idle_timeout") {
        1 => Ok(()),
        n => Err(n),
    })
    .await;
    assert_eq!(server.metric("krpc_connections_open"), 0);
    // The channel dials again on its next call.
    probe::echo(&mut client, 1).await.unwrap();
    assert_eq!(
        server.metric_with("krpc_connections_accepted_total", "tls", "off"),
        2
    );
}
