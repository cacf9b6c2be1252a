//! A krpc-server on 127.0.0.1:0 in a background thread, with its own development PKI.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

pub mod child;
pub mod h2raw;
pub mod probe;

use std::{net::SocketAddr, path::PathBuf, thread, time::Duration};

use bytes::{Buf, BufMut, Bytes};
use krpc_client::TlsArgs;
use krpc_proto::v1::bench_client::BenchClient;
use krpc_server::{Handoff, RuntimeMode, Server, ServerError, ServerInfo, Strategy};
use krpc_transport::{
    Acceptor, DevCertPaths, DevCerts, Identity, KtlsSupport, ServerTls, TlsMode, TlsPath,
    read_ca_file,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

pub struct Options {
    pub tls: TlsPath,
    pub mtls: bool,
    pub runtime: RuntimeMode,
    pub cores: usize,
    pub handshake_timeout: Duration,
    pub strategy: Strategy,
    pub handoff: Handoff,
    pub max_message_bytes: usize,
    pub defer_max: usize,
}

impl Options {
    pub fn tls(tls: TlsPath) -> Self {
        Self {
            tls,
            mtls: false,
            runtime: RuntimeMode::ThreadPerCore,
            cores: 2,
            handshake_timeout: Duration::from_secs(10),
            strategy: Strategy::PerCore,
            handoff: Handoff::None,
            max_message_bytes: 4 << 20,
            defer_max: 64,
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The Prometheus endpoint, `http://{metrics_addr}/metrics`.
    pub metrics_addr: SocketAddr,
    pub server: Server,
    pub certs: DevCertPaths,
    shutdown: CancellationToken,
    thread: Option<thread::JoinHandle<Result<(), ServerError>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start(opts: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = DevCerts::generate(&[]).unwrap().write(dir.path()).unwrap();
        let ktls = KtlsSupport::probe();
        let acceptor = match opts.tls {
            TlsPath::Off => Acceptor::plaintext(),
            path => {
                let identity =
                    Identity::from_pem_files(&certs.server_cert, &certs.server_key).unwrap();
                let client_ca = opts.mtls.then(|| read_ca_file(&certs.ca_cert).unwrap());
                let config = ServerTls {
                    identity,
                    client_ca,
                }
                .config(path, &KtlsSupport::probe())
                .unwrap();
                Acceptor::tls(config, path == TlsPath::Ktls, opts.handshake_timeout)
            }
        };
        let configured_tls = match opts.tls {
            TlsPath::Off => TlsMode::Off,
            TlsPath::Rustls => TlsMode::Rustls,
            TlsPath::Ktls => TlsMode::Ktls,
        };
        let server = Server::new(
            ServerInfo {
                strategy: opts.strategy,
                handoff: opts.handoff,
                max_message_bytes: opts.max_message_bytes,
                defer_max: opts.defer_max,
                ..ServerInfo::new(opts.runtime, opts.cores, configured_tls, ktls)
            },
            acceptor,
        );
        let count = match opts.runtime {
            RuntimeMode::ThreadPerCore => opts.cores,
            RuntimeMode::WorkStealing => 1,
        };
        let listeners = krpc_server::bind("127.0.0.1:0".parse().unwrap(), count).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let metrics_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics_addr = metrics_listener.local_addr().unwrap();
        thread::spawn({
            let (server, shutdown) = (server.clone(), shutdown.clone());
            move || server.serve_metrics(metrics_listener, shutdown)
        });
        let thread = thread::spawn({
            let (server, shutdown) = (server.clone(), shutdown.clone());
            move || server.serve(listeners, shutdown)
        });
        Self {
            addr,
            metrics_addr,
            server,
            certs,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Client TLS flags that trust this server's CA.
    pub fn tls_args(&self, tls: TlsMode) -> TlsArgs {
        TlsArgs {
            tls,
            ca: Some(self.certs.ca_cert.clone()),
            client_cert: None,
            client_key: None,
            insecure: false,
            server_name: None,
        }
    }

    pub fn with_client_cert(&self, mut args: TlsArgs) -> TlsArgs {
        args.client_cert = Some(self.certs.client_cert.clone());
        args.client_key = Some(self.certs.client_key.clone());
        args
    }

    pub async fn client(
        &self,
        args: &TlsArgs,
    ) -> Result<BenchClient<Channel>, krpc_client::ClientError> {
        krpc_client::connect(&self.addr.to_string(), args.connector()?).await
    }

    /// Stops the server (graceful) and returns how `serve` ended. Async because the graceful
    /// drain waits for clients to close their connections, and those clients' connection tasks
    /// run on the test's runtime: blocking it here would wait forever.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for TestServer {
    /// A test that ends early (a failed assertion) still stops the server; it drains in the
    /// background rather than blocking the runtime its clients live on.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The full cause chain of an error, `a: b: c`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub fn cert_dir(server: &TestServer) -> PathBuf {
    server.certs.ca_cert.parent().unwrap().to_owned()
}

/// Sends raw bytes as the message and returns the reply's raw bytes: lets a test put anything
/// on the wire inside a well-formed gRPC frame.
#[derive(Default)]
pub struct RawCodec;

pub struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl TestServer {
    /// A plaintext channel to this server (for servers started with `TlsPath::Off`).
    pub async fn plain_channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// `GET /metrics` as OpenMetrics text.
    pub fn scrape(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// Sum over cores of one pool series in the text exposition.
    pub fn pool_metric(&self, name: &str) -> i64 {
        sum_series(&self.scrape(), name)
    }
}

/// Sum of every sample of `name` (any labels) in a text exposition.
pub fn sum_series(text: &str, name: &str) -> i64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(|l| {
            let value = l.rsplit(' ').next().unwrap();
            value.parse::<f64>().unwrap() as i64
        })
        .sum()
}

/// `n` RPCs over `channel`, `concurrency` at a time: Echo, Put and Get in turn, keys spread
/// over 64 values (so every owner core gets some), payloads of 100 to 3,000 bytes.
pub async fn drive(channel: Channel, n: usize, concurrency: usize) {
    use krpc_proto::v1::{EchoRequest, GetRequest, PutRequest};
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let mut client = BenchClient::new(channel.clone());
        tasks.spawn(async move {
            for i in (worker..n).step_by(concurrency) {
                let key = Bytes::from(format!("key-{}", i % 64));
                let payload = Bytes::from(vec![i as u8; 100 + (i * 37) % 2900]);
                match i % 3 {
                    0 => {
                        let reply = client
                            .echo(EchoRequest {
                                key,
                                payload: payload.clone(),
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        assert_eq!(reply.payload, payload);
                    }
                    1 => {
                        client
                            .put(PutRequest {
                                key,
                                value: payload,
                            })
                            .await
                            .unwrap();
                    }
                    _ => {
                        client.get(GetRequest { key }).await.unwrap();
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Waits (up to 10 s) until `check` holds; returns its last error otherwise.
pub async fn eventually<E: std::fmt::Debug>(mut check: impl FnMut() -> Result<(), E>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("condition still false after 10 s: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
