//! SIGTERM under open-loop load: the server stops accepting, sends GOAWAY, answers every RPC
//! that reached it and exits 0 within `--shutdown-grace`; an RPC that outlives the grace is
//! cut off, counted, and does not hold the exit back.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{child::ServerProcess, probe};
use krpc_proto::v1::EchoRequest;
use nix::sys::signal::Signal;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::Code;

/// A field `name=value` of a log line.
fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        .parse()
        .unwrap()
}

#[derive(Default)]
struct Outcomes {
    ok: u64,
    /// Failed RPCs: their place in the schedule, their code and message.
    failed: Vec<(u64, Code, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_open_loop_load_answers_every_rpc_that_reached_the_server() {
    let mut server = ServerProcess::start(
        &["--tls", "off", "--cores", "2", "--shutdown-grace", "10s"],
        None,
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(probe::client(server.addr, None).await);
    }
    // Two streams in flight across the signal, each answered message by message.
    let mut streams = Vec::new();
    for client in clients.iter_mut().take(2) {
        let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
        let replies = client
            .echo_stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        streams.push((tx, replies));
    }
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    // Open loop: 2,000 Echo RPCs a second, each sent on schedule whatever the others do.
    let rate = 2_000.0;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    let total = 4_000u64; // 2 s of load, the signal at 1 s
    while sent < total {
        let due = start + Duration::from_secs_f64(sent as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        if sent == total / 2 {
            server.signal(Signal::SIGTERM);
        }
        let mut client = clients[(sent % 4) as usize].clone();
        let (outcomes, index) = (outcomes.clone(), sent);
        tasks.spawn(async move {
            let result = probe::echo_status(&mut client, sent).await;
            let mut o = outcomes.lock().unwrap();
            match result {
                Ok(()) => o.ok += 1,
                Err(status) => o
                    .failed
                    .push((index, status.code(), status.message().to_owned())),
            }
        });
        sent += 1;
    }
    while tasks.join_next().await.is_some() {}
    // The streams opened before the signal are still answered, then end cleanly.
    let mut stream_messages = 0;
    for (tx, mut replies) in streams {
        for i in 0..3 {
            let payload = Bytes::from(format!("after SIGTERM {i}"));
            tx.send(EchoRequest {
                key: Bytes::new(),
                payload: payload.clone(),
            })
            .await
            .unwrap();
            assert_eq!(replies.next().await.unwrap().unwrap().payload, payload);
            stream_messages += 1;
        }
        drop(tx);
        assert!(replies.next().await.is_none(), "the stream ends cleanly");
    }
    assert_eq!(stream_messages, 6);
    let stopped = server.wait_for("krpc-server stopped");
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");

    let o = outcomes.lock().unwrap();
    // Nothing failed that was due well before the signal; after it, only RPCs the server never
    // took. An RPC due just before the signal may still be on its way when the server closes
    // (its task spawned, its HEADERS not yet written), so the check leaves out the last 200
    // before it (100 ms of schedule); the server's counts below cover every RPC either way.
    assert!(
        o.failed.iter().all(|(index, ..)| *index >= total / 2 - 200),
        "failed well before SIGTERM: {:?}",
        &o.failed[..o.failed.len().min(5)]
    );
    // tonic's client says CANCELLED for a call its connection dropped before sending (hyper's
    // "operation was canceled"), UNAVAILABLE for a refused connection. A request written just
    // as the server closes the drained connection can also meet a reset: the server closes
    // with that request unread, so its kernel answers RST, and the client may lose the GOAWAY
    // still in its receive queue ("transport error" UNKNOWN, or INTERNAL from h2). The server
    // never read it: the counts below prove no RPC that reached the server failed.
    assert!(
        o.failed.iter().all(|(_, code, _)| matches!(
            code,
            Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal
        )),
        "{:?}",
        &o.failed[..o.failed.len().min(5)]
    );
    let started = field(&stopped, "rpcs_started");
    let answered = field(&stopped, "rpcs_answered");
    assert_eq!(field(&stopped, "rpcs_cut_off"), 0);
    // Every RPC that reached the server was answered, and every answer reached its client:
    // the unary ones OK here, plus the two streams.
    assert_eq!(started, answered, "{stopped}");
    assert_eq!(o.ok + 2, answered, "{stopped}");
    assert_eq!(o.ok + o.failed.len() as u64, total);
    println!(
        "{} OK, {} refused after SIGTERM ({:?}), server: {stopped}",
        o.ok,
        o.failed.len(),
        o.failed.first()
    );
    // (Whether any call made after the signal still got through depends on when the GOAWAY
    // reached the client: not asserted. The 2,000 made before it all did, above.)
}

#[tokio::test]
async fn an_rpc_past_the_grace_is_cut_off_and_the_server_exits_0() {
    let mut server = ServerProcess::start(&["--tls", "off", "--shutdown-grace", "1s"], None);
    let mut client = probe::client(server.addr, None).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    let mut replies = client
        .echo_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // An endless stream: one message every 20 ms until the server goes.
    let streaming = tokio::spawn(async move {
        let mut answered = 0u64;
        loop {
            let message = EchoRequest {
                key: Bytes::new(),
                payload: Bytes::from_static(b"forever"),
            };
            if tx.send(message).await.is_err() {
                return (answered, None);
            }
            match replies.next().await {
                Some(Ok(_)) => answered += 1,
                Some(Err(status)) => return (answered, Some(status.code())),
                None => return (answered, None),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    probe::echo(&mut client, 1).await.unwrap();
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    server.wait_for("shutdown grace expired");
    let stopped = server.wait_for("krpc-server stopped");
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() >= Duration::from_millis(900));
    assert_eq!(field(&stopped, "rpcs_cut_off"), 1, "{stopped}");
    let (answered, code) = streaming.await.unwrap();
    assert!(answered > 0);
    assert!(code.is_some(), "the cut stream ended without an error");
}
