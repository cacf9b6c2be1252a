//! Client side: dial, TLS handshake and, in kTLS mode, the move of the session into the kernel.
//! [`Connector`] is a `tower::Service<Uri>`, so tonic's `Endpoint::connect_with_connector` dials
//! through it.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;

use crate::{
    TlsPath, TransportError,
    io::{Conn, ConnInfo, Io},
    ktls::{self, BadRecord, KtlsError, KtlsOptions, UpgradeError},
};

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target URI has no host or port.
    #[error("target {uri} has no host")]
    InvalidUri { uri: String },
    /// TCP connect failed.
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The host is not a valid TLS server name.
    #[error("{name:?} is not a valid TLS server name (use --server-name)")]
    ServerName { name: String },
    /// The TLS handshake failed (untrusted certificate, refused client certificate, ...).
    #[error("TLS handshake with {server_name} failed")]
    Handshake {
        server_name: String,
        #[source]
        source: io::Error,
    },
    /// The handshake succeeded but the kernel refused the session keys.
    #[error("moving the session into the kernel (kTLS) failed")]
    Ktls(#[source] KtlsError),
    /// A test hook could not send its record.
    #[error("test hook: sending the {what} record failed")]
    TestHook {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What a test client does that a well-behaved one does not. Never set in normal use; the
/// `krpc` CLI exposes them as hidden flags for the kTLS VM tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestHooks {
    /// rustls path: send a KeyUpdate (update_requested) after every this many writes.
    pub rustls_key_update_every: Option<u64>,
    /// kTLS path: send this record right after the handshake, before HTTP/2 starts, on the
    /// connector's first connection only.
    pub inject_after_handshake: Option<BadRecord>,
}

/// Dials connections for a tonic channel. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    kind: Kind,
    /// Overrides the URI's host as the name the server certificate must carry.
    server_name: Option<ServerName<'static>>,
    hooks: TestHooks,
    /// Shared by clones: the first connection has sent `hooks.inject_after_handshake`.
    injected: Arc<AtomicBool>,
}

#[derive(Clone)]
enum Kind {
    Plain,
    Rustls(TlsConnector),
    Ktls(Arc<ClientConfig>, KtlsOptions),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("path", &self.path())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Connector {
    /// Plaintext HTTP/2 (h2c).
    pub fn plaintext() -> Self {
        Self {
            kind: Kind::Plain,
            server_name: None,
            hooks: TestHooks::default(),
            injected: Arc::default(),
        }
    }

    /// TLS with `config`; with `ktls`, the session moves into the kernel after the handshake.
    /// `server_name` replaces the target's host in certificate verification.
    pub fn tls(
        config: Arc<ClientConfig>,
        ktls: bool,
        server_name: Option<&str>,
    ) -> Result<Self, TransportError> {
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_owned()).map_err(|_| TransportError::ServerName {
                    name: name.to_owned(),
                })
            })
            .transpose()?;
        Ok(Self {
            kind: if ktls {
                Kind::Ktls(config, KtlsOptions::default())
            } else {
                Kind::Rustls(TlsConnector::from(config))
            },
            server_name,
            hooks: TestHooks::default(),
            injected: Arc::default(),
        })
    }

    /// How kTLS connections manage their keys (rekey limit, whether the kernel can rekey).
    /// No effect on the other paths.
    pub fn with_ktls_options(mut self, options: KtlsOptions) -> Self {
        if let Kind::Ktls(_, o) = &mut self.kind {
            *o = options;
        }
        self
    }

    /// Test hooks (see [`TestHooks`]).
    pub fn with_test_hooks(mut self, hooks: TestHooks) -> Self {
        self.hooks = hooks;
        self
    }

    pub fn path(&self) -> TlsPath {
        match self.kind {
            Kind::Plain => TlsPath::Off,
            Kind::Rustls(_) => TlsPath::Rustls,
            Kind::Ktls(..) => TlsPath::Ktls,
        }
    }

    /// Connects to `host:port` and runs the handshake.
    pub async fn connect(&self, host: &str, port: u16) -> Result<Conn, ConnectError> {
        // An IPv6 literal arrives bracketed from a URI.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp =
            TcpStream::connect((host, port))
                .await
                .map_err(|source| ConnectError::Connect {
                    addr: format!("{host}:{port}"),
                    source,
                })?;
        let connect_err = |source| ConnectError::Connect {
            addr: format!("{host}:{port}"),
            source,
        };
        tcp.set_nodelay(true).map_err(connect_err)?;
        let name = match (&self.kind, &self.server_name) {
            (Kind::Plain, _) => None,
            (_, Some(name)) => Some(name.clone()),
            (_, None) => Some(ServerName::try_from(host.to_owned()).map_err(|_| {
                ConnectError::ServerName {
                    name: host.to_owned(),
                }
            })?),
        };
        let handshake_err = |source| ConnectError::Handshake {
            server_name: host.to_owned(),
            source,
        };
        match (&self.kind, name) {
            (Kind::Rustls(tls), Some(name)) => {
                let stream = tls.connect(name, tcp).await.map_err(handshake_err)?;
                let (tcp, conn) = stream.get_ref();
                let info =
                    ConnInfo::from_rustls(tcp, TlsPath::Rustls, conn).map_err(connect_err)?;
                Ok(Conn::new(Io::Client(Box::new(stream)), info)
                    .key_update_every(self.hooks.rustls_key_update_every))
            }
            (Kind::Ktls(config, options), Some(name)) => {
                let (stream, info) = match ktls::connect(tcp, name, config.clone(), *options).await
                {
                    Ok(done) => done,
                    Err(UpgradeError::Handshake(e)) => return Err(handshake_err(e.into())),
                    Err(UpgradeError::Kernel(e)) => return Err(ConnectError::Ktls(e)),
                };
                let mut conn = Conn::new(Io::Ktls(Box::new(stream)), info);
                if let (Some(bad), Some(k)) = (self.hooks.inject_after_handshake, conn.ktls_mut())
                    && !self.injected.swap(true, Ordering::Relaxed)
                {
                    let (typ, payload) = bad.record();
                    k.send_record(typ, payload)
                        .await
                        .map_err(|source| ConnectError::TestHook {
                            what: bad.as_str(),
                            source,
                        })?;
                }
                Ok(conn)
            }
            _ => {
                let info = ConnInfo::plaintext(&tcp).map_err(connect_err)?;
                Ok(Conn::new(Io::Plain(tcp), info))
            }
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| ConnectError::InvalidUri {
                uri: uri.to_string(),
            })?;
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            this.connect(host, port).await.map(TokioIo::new)
        })
    }
}
