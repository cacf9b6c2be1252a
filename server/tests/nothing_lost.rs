//! Nothing lost: after a burst of load (owner handoff on, so buffers are freed on other cores)
//! and a moment idle, every buffer is back: `krpc_pool_outstanding_buffers` is 0 and
//! allocs == frees, for every strategy, in both runtime modes; and when a client disconnects
//! in the middle of a stream. Thread-per-core also drains every deferred buffer once idle
//! (park hook); a work-stealing runtime cannot wake a chosen worker, so there a buffer freed
//! for a worker that is asleep waits on its list until that worker next runs (counted in
//! `krpc_pool_deferred_pending_buffers`, bounded by `--defer-max`).

mod common;

use bytes::Bytes;
use common::{Options, TestServer, drive, eventually};
use krpc_proto::v1::{EchoRequest, bench_client::BenchClient};
use krpc_server::{Handoff, RuntimeMode, Strategy};
use krpc_transport::TlsPath;

fn options(strategy: Strategy, runtime: RuntimeMode) -> Options {
    Options {
        strategy,
        runtime,
        handoff: Handoff::Owner,
        ..Options::tls(TlsPath::Off)
    }
}

async fn burst_then_idle(strategy: Strategy, runtime: RuntimeMode) {
    let server = TestServer::start(options(strategy, runtime));
    let channel = server.plain_channel().await;
    drive(channel.clone(), 3000, 16).await;
    let snapshot = server.server.pool().snapshot().total();
    assert!(
        snapshot.allocs >= 3000,
        "{strategy} {runtime}: {snapshot:?}"
    );
    if strategy != Strategy::Global && strategy != Strategy::Local {
        assert!(
            snapshot.deferred_frees > 0,
            "{strategy} {runtime}: owner handoff should defer frees: {snapshot:?}"
        );
    }
    // per-conn lists drain on the connection's next receive or its close: close it.
    drop(channel);
    match runtime {
        RuntimeMode::ThreadPerCore => {
            eventually(|| server.server.pool().snapshot().check_balanced()).await;
            assert_eq!(server.pool_metric("krpc_pool_deferred_pending_buffers"), 0);
        }
        RuntimeMode::WorkStealing => {
            eventually(|| {
                let t = server.server.pool().snapshot().total();
                let frees = t.local_frees + t.deferred_frees + t.overflow_frees;
                (t.outstanding == 0 && t.allocs == frees)
                    .then_some(())
                    .ok_or_else(|| format!("{t:?}"))
            })
            .await
        }
    }
    assert_eq!(server.pool_metric("krpc_pool_outstanding_buffers"), 0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thread_per_core_returns_every_buffer_for_every_strategy() {
    for strategy in Strategy::ALL {
        burst_then_idle(strategy, RuntimeMode::ThreadPerCore).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_stealing_returns_every_buffer_for_every_strategy() {
    for strategy in Strategy::ALL {
        burst_then_idle(strategy, RuntimeMode::WorkStealing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_leaves_nothing_outstanding() {
    for strategy in Strategy::ALL {
        let server = TestServer::start(options(strategy, RuntimeMode::ThreadPerCore));
        let channel = server.plain_channel().await;
        let mut client = BenchClient::new(channel.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut replies = client
            .echo_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for i in 0..10u8 {
            tx.send(EchoRequest {
                key: Bytes::new(),
                payload: Bytes::from(vec![i; 500]),
            })
            .await
            .unwrap();
            let reply = replies.message().await.unwrap().unwrap();
            assert_eq!(reply.payload[0], i);
        }
        // Ten more in flight, none read back; then the client vanishes.
        for i in 10..20u8 {
            tx.send(EchoRequest {
                key: Bytes::new(),
                payload: Bytes::from(vec![i; 500]),
            })
            .await
            .unwrap();
        }
        drop((replies, tx, client, channel));
        eventually(|| server.server.pool().snapshot().check_balanced()).await;
        assert_eq!(server.pool_metric("krpc_pool_outstanding_buffers"), 0);
        assert!(server.server.pool().snapshot().total().allocs >= 10);
        server.stop().await.unwrap();
    }
}
