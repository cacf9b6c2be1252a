//! A client killed with SIGKILL in the middle of a run (unary RPCs of every method and open
//! streams on four connections, owner handoff so buffers cross cores) leaves nothing behind:
//! 0 buffers outstanding, 0 connections open, the server's descriptors back where they were.
//!
//! The client is this test binary itself, run again with only the ignored helper test selected
//! and the target in its environment, so that it can be killed as a whole process.

mod common;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{child::ServerProcess, eventually, probe};
use krpc_proto::v1::{EchoRequest, GetRequest, PutRequest};
use tokio_stream::wrappers::ReceiverStream;

const TARGET: &str = "KRPC_TEST_KILLED_CLIENT_TARGET";

#[tokio::test]
#[ignore = "the client that a_client_killed_mid_run_leaves_nothing_behind starts and kills"]
async fn killed_client() {
    let Ok(addr) = std::env::var(TARGET) else {
        return;
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..4 {
        let client = probe::client(addr, None).await;
        for worker in 0..8u64 {
            let mut client = client.clone();
            tasks.spawn(async move {
                for i in 0.. {
                    let key = Bytes::from(format!("key-{}", i % 64));
                    let payload = Bytes::from(vec![worker as u8; 100 + (i as usize * 37) % 2900]);
                    let _ = match i % 3 {
                        0 => client.echo(EchoRequest { key, payload }).await.map(drop),
                        1 => client
                            .put(PutRequest {
                                key,
                                value: payload,
                            })
                            .await
                            .map(drop),
                        _ => client.get(GetRequest { key }).await.map(drop),
                    };
                }
            });
        }
        // And a stream that is in the middle of a message when the kill comes.
        let mut client = client.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tasks.spawn(async move {
            let _replies = client.echo_stream(ReceiverStream::new(rx)).await;
            for i in 0u64.. {
                let message = EchoRequest {
                    key: Bytes::new(),
                    payload: Bytes::from(vec![conn; 1000 + (i % 1000) as usize]),
                };
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[tokio::test]
async fn a_client_killed_mid_run_leaves_nothing_behind() {
    let server = ServerProcess::start(
        &["--tls", "off", "--cores", "2", "--handoff", "owner"],
        None,
    );
    // Descriptors once every runtime is up and the metrics endpoint has been scraped: one
    // client served and gone.
    let mut warm = probe::client(server.addr, None).await;
    probe::echo(&mut warm, 0).await.unwrap();
    drop(warm);
    eventually(|| match server.metric("krpc_connections_open") {
        0 => Ok(()),
        n => Err(n),
    })
    .await;
    let fds_before = server.fds();
    let mut client = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "killed_client",
            "--test-threads",
            "1",
        ])
        .env(TARGET, server.addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Mid-run: all four connections up and thousands of RPCs done.
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = Instant::now();
    while server.metric("krpc_rpc_duration_seconds_count") < 3_000
        || server.metric("krpc_connections_open") < 4
    {
        assert!(Instant::now() < deadline, "the client never got going");
        assert!(client.try_wait().unwrap().is_none(), "the client exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.metric("krpc_pool_allocs_total") > 0);
    println!("mid-run after {:?}", started.elapsed());
    client.kill().unwrap(); // SIGKILL
    client.wait().unwrap();
    let killed = Instant::now();
    // Every buffer back, every connection closed and its slot given back, the descriptors
    // where they were.
    eventually(|| {
        let state = [
            ("connections open", server.metric("krpc_connections_open")),
            (
                "connection slots in use",
                server.metric("krpc_connections_in_use"),
            ),
            (
                "buffers outstanding",
                server.metric("krpc_pool_outstanding_buffers"),
            ),
            (
                "buffers pending on defer lists",
                server.metric("krpc_pool_deferred_pending_buffers"),
            ),
            (
                "descriptors over the count before",
                server.fds() as i64 - fds_before as i64,
            ),
        ];
        state
            .iter()
            .all(|(_, n)| *n == 0)
            .then_some(())
            .ok_or(format!("{state:?}: {:?}", server.fd_targets()))
    })
    .await;
    println!("clean {:?} after the kill", killed.elapsed());
}
