//! Kernel TLS on `rustls::kernel`: the handshake in rustls (unbuffered, record-exact), then the
//! records in the kernel, with rustls' [`KernelConnection`](rustls::kernel::KernelConnection)
//! kept for what the kernel leaves to user space, so that a TLS 1.3 KeyUpdate from either side
//! works on kernels that can rekey (Linux >= 6.14) and closes the connection cleanly, with its
//! reason counted, on kernels that cannot.
//!
//! - [`handshake`]: drives the handshake; nothing past its last record is read.
//! - [`keys`]: `TCP_ULP` "tls", `TLS_TX`, `TLS_RX` from rustls' traffic secrets.
//! - [`stream`]: the stream tonic reads and writes; KeyUpdates, tickets, alerts, rekeys.
//! - [`record`]: what a non-application record means (pure; fed arbitrary bytes in tests).
//! - [`cmsg`]: the record-type control messages, this path's only `unsafe`.
//! - [`events`]: rekeys and record errors, counted for the server's metrics.

mod cmsg;
mod events;
mod handshake;
mod keys;
mod record;
mod stream;

use std::{io, net::SocketAddr, sync::Arc};

use rustls::{
    ClientConfig, ServerConfig, client::UnbufferedClientConnection, pki_types::ServerName,
    server::UnbufferedServerConnection,
};
use tokio::net::TcpStream;

pub use events::{KtlsCounters, RecordErrorKind, RekeyDirection, RekeyInitiator, ktls_counters};
pub(crate) use handshake::HandshakeError;
pub(crate) use stream::{KtlsStream, records_for};

use crate::io::ConnInfo;

/// How kTLS connections manage their keys. `Default`: rekey at the cipher suite's
/// confidentiality limit, and assume the kernel can rekey (a kernel that cannot says `EBUSY`,
/// which closes the connection with reason `rekey_unsupported`).
#[derive(Clone, Copy, Debug)]
pub struct KtlsOptions {
    rekey_after: Option<u64>,
    kernel_can_rekey: bool,
}

impl Default for KtlsOptions {
    fn default() -> Self {
        Self {
            rekey_after: None,
            kernel_can_rekey: true,
        }
    }
}

impl KtlsOptions {
    /// The smallest rekey limit accepted: one data record and the KeyUpdate must fit under a
    /// key, with room to spare for the records the handshake already sent.
    pub const MIN_REKEY_AFTER: u64 = 16;

    /// What the kernel probe found: whether a second key can be installed.
    pub fn from_probe(support: &crate::KtlsSupport) -> Self {
        Self {
            rekey_after: None,
            kernel_can_rekey: support.can_rekey(),
        }
    }

    /// Send a KeyUpdate once this many records went out under one key, if that comes before
    /// the cipher suite's own limit (AES-GCM: 2^24 records in rustls). For tests, so that a
    /// rekey happens within seconds; raised to [`Self::MIN_REKEY_AFTER`] when lower.
    pub fn with_rekey_after(mut self, records: Option<u64>) -> Self {
        self.rekey_after = records.map(|n| n.max(Self::MIN_REKEY_AFTER));
        self
    }

    pub(crate) fn rekey_after(&self) -> u64 {
        self.rekey_after.unwrap_or(u64::MAX)
    }

    pub(crate) fn kernel_can_rekey(&self) -> bool {
        self.kernel_can_rekey
    }
}

/// A kTLS connection closed because of a record: the peer's, or one the kernel refused. This
/// is the error inside the `io::Error` that reads and writes return from then on.
#[derive(Clone, Debug, thiserror::Error)]
#[error("kTLS connection closed ({}): {message}", reason.as_str())]
pub struct KtlsClosed {
    /// The metric label of the reason.
    pub reason: RecordErrorKind,
    message: String,
}

/// The kernel refused a handshaken session: the stream is lost.
#[derive(Debug, thiserror::Error)]
#[error("the kernel refused the session keys (TCP_ULP tls, TLS_TX, TLS_RX)")]
pub struct KtlsError(#[source] pub io::Error);

/// Why a kTLS connection could not be established.
#[derive(Debug)]
pub(crate) enum UpgradeError {
    Handshake(HandshakeError),
    Kernel(KtlsError),
}

/// Server side: handshake, then the records into the kernel.
pub(crate) async fn accept(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    options: KtlsOptions,
) -> Result<(KtlsStream, ConnInfo), UpgradeError> {
    let conn = UnbufferedServerConnection::new(config)
        .map_err(|e| UpgradeError::Handshake(HandshakeError::Tls(e)))?;
    upgrade(tcp, peer, conn, stream::Session::Server, options).await
}

/// Client side: handshake with `name`, then the records into the kernel.
pub(crate) async fn connect(
    tcp: TcpStream,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    options: KtlsOptions,
) -> Result<(KtlsStream, ConnInfo), UpgradeError> {
    let peer = tcp
        .peer_addr()
        .map_err(|e| UpgradeError::Handshake(HandshakeError::Io(e)))?;
    let conn = UnbufferedClientConnection::new(config, name)
        .map_err(|e| UpgradeError::Handshake(HandshakeError::Tls(e)))?;
    upgrade(tcp, peer, conn, stream::Session::Client, options).await
}

async fn upgrade<C: handshake::Unbuffered>(
    mut tcp: TcpStream,
    peer: SocketAddr,
    conn: C,
    session: fn(rustls::kernel::KernelConnection<C::Data>) -> stream::Session,
    options: KtlsOptions,
) -> Result<(KtlsStream, ConnInfo), UpgradeError> {
    let done = handshake::drive(&mut tcp, conn)
        .await
        .map_err(UpgradeError::Handshake)?;
    let suite = done.kernel.negotiated_cipher_suite();
    let info = ConnInfo::ktls(&tcp, done.kernel.protocol_version(), suite)
        .map_err(|e| UpgradeError::Handshake(HandshakeError::Io(e)))?;
    keys::attach(&tcp, done.secrets).map_err(|e| UpgradeError::Kernel(KtlsError(e)))?;
    let stream = KtlsStream::new(
        tcp,
        session(done.kernel),
        peer,
        options,
        suite_limit(suite),
        done.tx_seq,
    );
    Ok((stream, info))
}

/// Records one key may protect (rustls' figure for the suite: 2^24 for AES-GCM, no limit for
/// ChaCha20-Poly1305). krpc's kTLS configs are TLS 1.3 only.
fn suite_limit(suite: rustls::SupportedCipherSuite) -> u64 {
    suite
        .tls13()
        .map_or(u64::MAX, |s| s.common.confidentiality_limit)
}

/// Records a broken or hostile kTLS peer sends after the handshake, for tests of the other
/// side (`krpc --inject-record KIND`): each must close that one connection, never panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRecord {
    /// A ChangeCipherSpec record (TLS 1.3 allows none after the handshake).
    ChangeCipherSpec,
    /// An alert record of four bytes instead of two.
    LongAlert,
    /// A record of content type 99.
    UnknownType,
    /// A handshake record holding a ClientHello header.
    UnexpectedHandshake,
    /// A KeyUpdate whose request byte is neither 0 nor 1.
    BadKeyUpdate,
}

impl BadRecord {
    pub const ALL: [Self; 5] = [
        Self::ChangeCipherSpec,
        Self::LongAlert,
        Self::UnknownType,
        Self::UnexpectedHandshake,
        Self::BadKeyUpdate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChangeCipherSpec => "ccs",
            Self::LongAlert => "long-alert",
            Self::UnknownType => "unknown-type",
            Self::UnexpectedHandshake => "client-hello",
            Self::BadKeyUpdate => "bad-key-update",
        }
    }

    /// The record-error reason the receiving side counts for it.
    pub fn expected_reason(self) -> RecordErrorKind {
        match self {
            Self::ChangeCipherSpec => RecordErrorKind::UnexpectedCcs,
            Self::LongAlert => RecordErrorKind::BadAlert,
            Self::UnknownType => RecordErrorKind::UnknownRecordType,
            Self::UnexpectedHandshake => RecordErrorKind::UnexpectedHandshake,
            Self::BadKeyUpdate => RecordErrorKind::BadHandshake,
        }
    }

    pub(crate) fn record(self) -> (u8, &'static [u8]) {
        match self {
            Self::ChangeCipherSpec => (record::CHANGE_CIPHER_SPEC, &[1]),
            Self::LongAlert => (record::ALERT, &[2, 10, 0, 0]),
            Self::UnknownType => (99, b"?"),
            Self::UnexpectedHandshake => (record::HANDSHAKE, &[1, 0, 0, 0]),
            Self::BadKeyUpdate => (record::HANDSHAKE, &[24, 0, 0, 1, 7]),
        }
    }
}

impl std::str::FromStr for BadRecord {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|r| r.as_str()).collect();
                format!(
                    "unknown record {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_records_are_what_the_receiver_refuses() {
        for bad in BadRecord::ALL {
            assert_eq!(bad.as_str().parse::<BadRecord>(), Ok(bad));
            let (typ, payload) = bad.record();
            let err = record::control(typ, payload, &mut record::Handshakes::default())
                .expect_err("a bad record must be refused");
            assert_eq!(err.kind(), bad.expected_reason(), "{bad:?}");
        }
        assert!(
            "nope"
                .parse::<BadRecord>()
                .unwrap_err()
                .contains("long-alert")
        );
    }

    #[test]
    fn rekey_limit_has_a_floor() {
        let o = KtlsOptions::default();
        assert_eq!(o.rekey_after(), u64::MAX);
        assert!(o.kernel_can_rekey());
        assert_eq!(o.with_rekey_after(Some(3)).rekey_after(), 16);
        assert_eq!(o.with_rekey_after(Some(300)).rekey_after(), 300);
    }
}
