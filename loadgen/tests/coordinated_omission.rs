//! The wrk2 property: against a server that stalls 100 ms once, the latency measured from the
//! intended send time (corrected) shows the stall in its tail, because every RPC due during the
//! stall waited for it; the latency measured from the actual send (uncorrected) does not.
//! A test binary of its own: cargo runs test binaries one at a time, so no other test competes
//! for the two CPUs while it measures.

use std::{pin::Pin, time::Duration};

use futures_util::Stream;
mod common;

use common::open_loop;
use krpc_loadgen::run::run;
use krpc_proto::v1::{
    EchoRequest, EchoResponse, GetRequest, GetResponse, InfoRequest, InfoResponse, PutRequest,
    PutResponse,
    bench_server::{Bench, BenchServer},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Answers Echo at once, except one call (the `stall_at`-th) that it holds for 100 ms.
struct StallOnce {
    calls: std::sync::atomic::AtomicUsize,
    stall_at: usize,
    /// Time every call takes (a server slower than the asked rate).
    always: Duration,
}

type EchoStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Bench for StallOnce {
    async fn echo(&self, r: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n == self.stall_at {
            // The behaviour under test: a server that stops answering for 100 ms.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !self.always.is_zero() {
            tokio::time::sleep(self.always).await;
        }
        Ok(Response::new(EchoResponse {
            payload: r.into_inner().payload,
        }))
    }
    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Err(Status::unimplemented("echo only"))
    }
    async fn get(&self, _: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Err(Status::unimplemented("echo only"))
    }
    type EchoStreamStream = EchoStream;
    async fn echo_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoStream>, Status> {
        Err(Status::unimplemented("echo only"))
    }
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse::default()))
    }
}

/// Serves `server` on 127.0.0.1:0 with TCP_NODELAY, as krpc-server sets it: otherwise Nagle
/// and delayed ACKs add their own 40 ms stalls.
async fn serve(server: StallOnce) -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BenchServer::new(server))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop.clone().cancelled_owned(),
            ),
    );
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_keep_up_is_called_out() {
    // 10 ms a call, one in flight: at most 100 RPC/s, asked for 300.
    let (addr, stop) = serve(StallOnce {
        calls: Default::default(),
        stall_at: usize::MAX,
        always: Duration::from_millis(10),
    })
    .await;
    let result = run(open_loop(
        addr,
        300.0,
        Duration::from_secs(1),
        Duration::ZERO,
    ))
    .await
    .unwrap();
    stop.cancel();
    assert!(result.achieved_rate < 120.0, "{}", result.achieved_rate);
    assert!(!result.kept_up());
    let summary = result.summary();
    assert!(
        summary.contains("WARNING: the target did not keep up"),
        "{summary}"
    );
    // Every RPC due in the window was still sent, answered and measured, queueing included.
    assert_eq!(result.requests, 300);
    assert!(result.latency.at(99.0) > 1_000_000, "{:?}", result.latency);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_in_the_corrected_tail_and_not_in_the_uncorrected_one() {
    let (addr, stop) = serve(StallOnce {
        calls: Default::default(),
        // Mid-window: 0.3 s warmup + 1.5 s at 1000/s, plus the Info call.
        stall_at: 1800,
        always: Duration::ZERO,
    })
    .await;
    // One RPC in flight: everything due during the stall queues behind it.
    let result = run(open_loop(
        addr,
        1000.0,
        Duration::from_secs(3),
        Duration::from_millis(300),
    ))
    .await
    .unwrap();
    stop.cancel();

    assert_eq!(result.error_count(), 0);
    assert_eq!(result.requests, 3000);
    let corrected = result.latency.at(99.9);
    let uncorrected = result.uncorrected.at(99.9);
    // About 100 RPCs were due during the stall, the first of them waited ~100 ms: p99.9 (the
    // 3rd worst of 3000) is one of them.
    assert!(corrected >= 80_000, "corrected p99.9 {corrected} us");
    assert!(result.latency.max_us >= 95_000, "{:?}", result.latency);
    // From the actual send only the stalled RPC itself was slow: p99.9 misses it.
    assert!(uncorrected < 20_000, "uncorrected p99.9 {uncorrected} us");
    assert!(result.uncorrected.max_us >= 95_000);
    // The same, counted: RPCs over 50 ms.
    let over = |h: &hdrhistogram::Histogram<u64>| h.count_between(50_000, u64::MAX);
    let corrected_h = result.histogram().unwrap();
    let uncorrected_h =
        krpc_loadgen::result::decode_histogram(&result.uncorrected_histogram).unwrap();
    assert!(over(&corrected_h) >= 30, "{}", over(&corrected_h));
    assert!(over(&uncorrected_h) <= 3, "{}", over(&uncorrected_h));
}
