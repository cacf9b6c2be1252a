//! A well-behaved client that keeps calling Echo while a test attacks the server, and says
//! whether every call succeeded.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use krpc_client::TlsArgs;
use krpc_proto::v1::{EchoRequest, bench_client::BenchClient};
use krpc_transport::TlsMode;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Pause between two probes: the probe must not itself load the two cores the attack needs.
const PACE: Duration = Duration::from_millis(5);

pub struct Prober {
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A client of the server at `addr`: plaintext, or rustls trusting `ca`.
pub async fn client(addr: SocketAddr, ca: Option<&Path>) -> BenchClient<Channel> {
    let args = TlsArgs {
        tls: if ca.is_some() {
            TlsMode::Rustls
        } else {
            TlsMode::Off
        },
        ca: ca.map(Path::to_owned),
        client_cert: None,
        client_key: None,
        insecure: false,
        server_name: None,
    };
    krpc_client::connect(&addr.to_string(), args.connector().unwrap())
        .await
        .unwrap()
}

/// One Echo; the status when it fails.
pub async fn echo_status(client: &mut BenchClient<Channel>, n: u64) -> Result<(), tonic::Status> {
    let payload = Bytes::from(format!("probe {n}"));
    let reply = client
        .echo(EchoRequest {
            key: Bytes::new(),
            payload: payload.clone(),
        })
        .await?;
    assert_eq!(reply.into_inner().payload, payload, "a wrong echo");
    Ok(())
}

pub async fn echo(client: &mut BenchClient<Channel>, n: u64) -> Result<(), String> {
    let payload = Bytes::from(format!("probe {n}"));
    let reply = client
        .echo(EchoRequest {
            key: Bytes::new(),
            payload: payload.clone(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    if reply.into_inner().payload != payload {
        return Err("wrong echo".into());
    }
    Ok(())
}

impl Prober {
    /// Connects (before the attack) and starts probing.
    pub async fn start(addr: SocketAddr, ca: Option<&Path>) -> Self {
        let mut client = client(addr, ca).await;
        echo(&mut client, 0).await.unwrap();
        let ok = Arc::new(AtomicU64::new(1));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
            async move {
                let mut n = 1;
                while !stop.is_cancelled() {
                    match echo(&mut client, n).await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            0
                        }
                    };
                    n += 1;
                    tokio::time::sleep(PACE).await;
                }
            }
        });
        Self {
            ok,
            failures,
            stop,
            task,
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more probes have succeeded: the server is serving now.
    pub async fn served(&self, n: u64) {
        let start = self.ok();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ok() < start + n {
            assert!(
                Instant::now() < deadline,
                "the well-behaved client got {} replies in 20 s, wanted {n}; failures: {:?}",
                self.ok() - start,
                self.failures.lock().unwrap()
            );
            tokio::time::sleep(PACE).await;
        }
    }

    /// Stops probing; every probe must have succeeded. Returns how many did.
    pub async fn finish(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap();
        let ok = self.ok.load(Ordering::Relaxed);
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "the well-behaved client failed {} times: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        ok
    }
}
