//! The krpc client library: TLS flags shared by every krpc tool that dials (the `krpc` CLI, the
//! load generator), and a tonic channel to the Bench service over plaintext, rustls or kTLS.

use std::{path::PathBuf, time::Duration};

use krpc_proto::v1::bench_client::BenchClient;
use krpc_transport::{
    ClientTls, Connector, DevCertPaths, Identity, KtlsSupport, TlsMode, TlsPath, TransportError,
    Trust,
};
use tonic::transport::{Channel, Endpoint};

pub use krpc_proto::v1;

/// Why a client could not be set up or connected.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS settings were refused (files, kTLS missing, names).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// TLS is on but no CA was given and no development CA exists.
    #[error(
        "no CA to verify the server with: pass --ca FILE (a krpc-server started without --cert \
         writes its development CA to {dir}/ca.pem), or --insecure"
    )]
    NoCa { dir: String },
    /// The target is not `host:port`.
    #[error("invalid target {target:?} (expected host:port)")]
    InvalidTarget {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Connecting (TCP, TLS or HTTP/2) failed.
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// TLS flags of every krpc tool that dials a server.
#[derive(Clone, Debug, clap::Args)]
pub struct TlsArgs {
    /// TLS mode: off | rustls | ktls | auto (kTLS where the kernel supports it, else rustls).
    #[arg(long, default_value = "auto")]
    pub tls: TlsMode,
    /// CA certificate(s) to verify the server with (PEM). Default: the development CA.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain for mTLS (PEM).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client private key for mTLS (PEM).
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Do not verify the server certificate (development only; prints a warning).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// Name the server certificate must carry (default: the target's host).
    #[arg(long)]
    pub server_name: Option<String>,
}

impl TlsArgs {
    /// Probes the kernel (when TLS is on), resolves the mode and builds the connector.
    pub fn connector(&self) -> Result<Connector, ClientError> {
        // Only ktls and auto depend on the kernel; a client start need not pay for the probe
        // (three loopback connections) otherwise.
        let ktls = match self.tls {
            TlsMode::Ktls | TlsMode::Auto => KtlsSupport::probe(),
            TlsMode::Off | TlsMode::Rustls => {
                KtlsSupport::unavailable(format!("not probed (--tls {})", self.tls))
            }
        };
        self.connector_with(&ktls)
    }

    /// Like [`Self::connector`], with a kTLS probe result already in hand.
    pub fn connector_with(&self, ktls: &KtlsSupport) -> Result<Connector, ClientError> {
        let path = self.tls.resolve(ktls)?;
        if path == TlsPath::Off {
            return Ok(Connector::plaintext());
        }
        let trust = if self.insecure {
            tracing::warn!("--insecure: the server certificate is NOT verified");
            Trust::Insecure
        } else {
            match &self.ca {
                Some(ca) => Trust::ca_file(ca)?,
                None => {
                    let dir = DevCertPaths::default_dir().unwrap_or_default();
                    let ca = DevCertPaths::in_dir(&dir).ca_cert;
                    if !ca.is_file() {
                        return Err(ClientError::NoCa {
                            dir: dir.display().to_string(),
                        });
                    }
                    Trust::ca_file(&ca)?
                }
            }
        };
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem_files(cert, key)?),
            _ => None,
        };
        let config = ClientTls { trust, identity }.config(path, ktls)?;
        Ok(Connector::tls(
            config,
            path == TlsPath::Ktls,
            self.server_name.as_deref(),
        )?)
    }
}

/// Connects a Bench client to `target` (`host:port`) through `connector`.
pub async fn connect(
    target: &str,
    connector: Connector,
) -> Result<BenchClient<Channel>, ClientError> {
    // TLS happens inside the connector, so tonic sees a plain HTTP/2 URI.
    let endpoint = Endpoint::from_shared(format!("http://{target}")).map_err(|source| {
        ClientError::InvalidTarget {
            target: target.to_owned(),
            source,
        }
    })?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect_with_connector(connector)
        .await
        .map_err(|source| ClientError::Connect {
            target: target.to_owned(),
            source,
        })?;
    Ok(BenchClient::new(channel))
}
