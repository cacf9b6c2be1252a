//! A krpc-server on 127.0.0.1:0 in a background thread, with its own development PKI.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::{net::SocketAddr, path::PathBuf, thread, time::Duration};

use krpc_client::TlsArgs;
use krpc_proto::v1::bench_client::BenchClient;
use krpc_server::{Handoff, RuntimeMode, Server, ServerError, ServerInfo, Strategy};
use krpc_transport::{
    Acceptor, DevCertPaths, DevCerts, Identity, KtlsSupport, ServerTls, TlsMode, TlsPath,
    read_ca_file,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Options {
    pub tls: TlsPath,
    pub mtls: bool,
    pub runtime: RuntimeMode,
    pub cores: usize,
    pub handshake_timeout: Duration,
    pub strategy: Strategy,
    pub handoff: Handoff,
    pub max_message_bytes: usize,
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
