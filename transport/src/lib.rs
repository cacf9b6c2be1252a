//! TLS for krpc: rustls configurations (TLS 1.3, ALPN `h2`), the kernel TLS probe, kTLS on
//! `rustls::kernel` (KeyUpdates both ways, rekeys before the cipher's limit), and [`Conn`], the
//! one stream type that tonic serves and dials over plaintext, rustls or kTLS. This is the only
//! crate that touches socket options and TLS.

mod accept;
mod certs;
mod config;
mod connect;
mod error;
mod io;
mod ktls;
mod mode;
mod nic;
mod probe;

pub use accept::{Acceptor, HandshakeError, HandshakeFailure};
pub use certs::{DevCertPaths, DevCerts};
pub use config::{ClientTls, Identity, ServerTls, Trust, read_ca_file};
pub use connect::{ConnectError, Connector, TestHooks};
pub use error::TransportError;
pub use io::{Conn, ConnInfo, tls_records_written};
pub use ktls::{
    BadRecord, KtlsClosed, KtlsCounters, KtlsError, KtlsOptions, RecordErrorKind, RekeyDirection,
    RekeyInitiator, ktls_counters,
};
pub use mode::{TlsMode, TlsPath};
pub use nic::{NicTlsOffload, nic_tls_offload};
pub use probe::KtlsSupport;

/// ALPN protocol id of HTTP/2, the only one krpc speaks.
pub const ALPN_H2: &[u8] = b"h2";
