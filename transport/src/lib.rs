//! TLS for krpc: rustls configurations (TLS 1.3, ALPN `h2`), the kernel TLS probe, the upgrade of
//! a handshaken stream to kTLS, and [`Conn`], the one stream type that tonic serves and dials over
//! plaintext, rustls or kTLS. This is the only crate that touches socket options and TLS.

mod accept;
mod certs;
mod config;
mod connect;
mod error;
mod io;
mod mode;
mod nic;
mod probe;

pub use accept::{Acceptor, HandshakeError, HandshakeFailure};
pub use certs::{DevCertPaths, DevCerts};
pub use config::{ClientTls, Identity, ServerTls, Trust, read_ca_file};
pub use connect::{ConnectError, Connector};
pub use error::TransportError;
pub use io::{Conn, ConnInfo};
pub use mode::{TlsMode, TlsPath};
pub use nic::{NicTlsOffload, nic_tls_offload};
pub use probe::KtlsSupport;

/// ALPN protocol id of HTTP/2, the only one krpc speaks.
pub const ALPN_H2: &[u8] = b"h2";
