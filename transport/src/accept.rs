//! Server side: TLS handshake (with a deadline) and, in kTLS mode, the move of the session into
//! the kernel.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::{
    TlsPath,
    io::{Conn, ConnInfo, Io},
    ktls::{self, KtlsError, KtlsOptions, UpgradeError},
};

/// Turns accepted TCP streams into [`Conn`]s. Cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    kind: Kind,
    handshake_timeout: Duration,
}

#[derive(Clone)]
enum Kind {
    Plain,
    Rustls(TlsAcceptor),
    Ktls(Arc<ServerConfig>, KtlsOptions),
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("path", &self.path())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// Why a handshake did not produce a connection. Also the `reason` metric label.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    /// The peer did not finish the handshake in time (slowloris, or a stalled client).
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed: garbage, plaintext, a bad certificate, no common cipher.
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
    /// The handshake succeeded but the kernel refused the session keys; the stream is lost.
    #[error("moving the session into the kernel (kTLS) failed")]
    Ktls(#[source] KtlsError),
    /// The socket failed before TLS started.
    #[error("socket error")]
    Io(#[source] io::Error),
}

impl HandshakeFailure {
    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Tls(_) => "tls",
            Self::Ktls(_) => "ktls_setup",
            Self::Io(_) => "io",
        }
    }
}

/// A handshake failure with the peer it came from.
#[derive(Debug, thiserror::Error)]
#[error("connection from {peer}: {failure}")]
pub struct HandshakeError {
    pub peer: SocketAddr,
    #[source]
    pub failure: HandshakeFailure,
}

impl Acceptor {
    /// Plaintext HTTP/2: no handshake.
    pub fn plaintext() -> Self {
        Self {
            kind: Kind::Plain,
            handshake_timeout: Duration::ZERO,
        }
    }

    /// TLS with `config`; with `ktls`, the session moves into the kernel after the handshake
    /// (the config must then come from [`crate::ServerTls::config`] for [`TlsPath::Ktls`]).
    pub fn tls(config: Arc<ServerConfig>, ktls: bool, handshake_timeout: Duration) -> Self {
        Self {
            kind: if ktls {
                Kind::Ktls(config, KtlsOptions::default())
            } else {
                Kind::Rustls(TlsAcceptor::from(config))
            },
            handshake_timeout,
        }
    }

    /// How kTLS connections manage their keys (rekey limit, whether the kernel can rekey).
    /// No effect on the other paths.
    pub fn with_ktls_options(mut self, options: KtlsOptions) -> Self {
        if let Kind::Ktls(_, o) = &mut self.kind {
            *o = options;
        }
        self
    }

    pub fn path(&self) -> TlsPath {
        match self.kind {
            Kind::Plain => TlsPath::Off,
            Kind::Rustls(_) => TlsPath::Rustls,
            Kind::Ktls(..) => TlsPath::Ktls,
        }
    }

    /// Runs the handshake on an accepted stream.
    pub async fn accept(&self, tcp: TcpStream, peer: SocketAddr) -> Result<Conn, HandshakeError> {
        let fail = |failure| HandshakeError { peer, failure };
        // Small RPCs: a response must not wait for Nagle.
        tcp.set_nodelay(true)
            .map_err(|e| fail(HandshakeFailure::Io(e)))?;
        match &self.kind {
            Kind::Plain => {
                let info = ConnInfo::plaintext(&tcp).map_err(|e| fail(HandshakeFailure::Io(e)))?;
                Ok(Conn::new(Io::Plain(tcp), info))
            }
            Kind::Rustls(tls) => {
                let stream = self.deadline(tls.accept(tcp)).await.map_err(fail)?;
                let (tcp, conn) = stream.get_ref();
                let info = ConnInfo::from_rustls(tcp, TlsPath::Rustls, conn)
                    .map_err(|e| fail(HandshakeFailure::Io(e)))?;
                Ok(Conn::new(Io::Server(Box::new(stream)), info))
            }
            Kind::Ktls(config, options) => {
                // The deadline covers the handshake; moving the keys into the kernel after it
                // is three setsockopt calls.
                let upgrade = ktls::accept(tcp, peer, config.clone(), *options);
                let (stream, info) = match tokio::time::timeout(self.handshake_timeout, upgrade)
                    .await
                {
                    Err(_) => return Err(fail(HandshakeFailure::Timeout(self.handshake_timeout))),
                    Ok(Err(UpgradeError::Handshake(e))) => {
                        return Err(fail(HandshakeFailure::Tls(e.into())));
                    }
                    Ok(Err(UpgradeError::Kernel(e))) => {
                        return Err(fail(HandshakeFailure::Ktls(e)));
                    }
                    Ok(Ok(done)) => done,
                };
                Ok(Conn::new(Io::Ktls(Box::new(stream)), info))
            }
        }
    }

    async fn deadline<T>(
        &self,
        handshake: impl Future<Output = io::Result<T>>,
    ) -> Result<T, HandshakeFailure> {
        match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(HandshakeFailure::Tls(e)),
            Err(_) => Err(HandshakeFailure::Timeout(self.handshake_timeout)),
        }
    }
}
