//! [`Conn`]: one stream type over plaintext, rustls (either side) and kTLS, so that one tonic
//! server and one tonic channel type serve every TLS mode.

use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{client, server};

use crate::{
    TlsPath,
    ktls::{KtlsStream, records_for},
};

/// TLS records written by the connections of this process that have closed, by path: off,
/// rustls, ktls. Each connection counts in a plain field and adds its total here when dropped,
/// so the hot path touches no shared cache line.
static RECORDS_WRITTEN: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// TLS records written by this process's closed connections on `path`: ⌈bytes / 16 KiB⌉ per
/// write, which is how rustls and the kernel both cut records (exact for rustls; for kTLS an
/// upper bound, equal unless a write was partial), plus kTLS's own KeyUpdates and alerts.
/// For benchmarks: records per RPC, side by side for the two paths.
pub fn tls_records_written(path: TlsPath) -> u64 {
    RECORDS_WRITTEN[path as usize].load(Ordering::Relaxed)
}

/// What is known about an established connection. Handlers read it from request extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: TlsPath,
    /// Negotiated protocol version ("TLSv1_3"), `None` in plaintext.
    pub tls_version: Option<&'static str>,
    /// Negotiated cipher suite ("TLS13_AES_128_GCM_SHA256"), `None` in plaintext.
    pub cipher: Option<&'static str>,
}

impl ConnInfo {
    pub(crate) fn from_rustls(
        tcp: &TcpStream,
        tls: TlsPath,
        conn: &rustls::CommonState,
    ) -> io::Result<Self> {
        Ok(Self {
            tls,
            tls_version: conn.protocol_version().and_then(|v| v.as_str()),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str()),
            ..Self::plaintext(tcp)?
        })
    }

    pub(crate) fn ktls(
        tcp: &TcpStream,
        version: rustls::ProtocolVersion,
        suite: rustls::SupportedCipherSuite,
    ) -> io::Result<Self> {
        Ok(Self {
            tls: TlsPath::Ktls,
            tls_version: version.as_str(),
            cipher: suite.suite().as_str(),
            ..Self::plaintext(tcp)?
        })
    }

    pub(crate) fn plaintext(tcp: &TcpStream) -> io::Result<Self> {
        Ok(Self {
            peer: tcp.peer_addr()?,
            local: tcp.local_addr()?,
            tls: TlsPath::Off,
            tls_version: None,
            cipher: None,
        })
    }
}

pub(crate) enum Io {
    Plain(TcpStream),
    Server(Box<server::TlsStream<TcpStream>>),
    Client(Box<client::TlsStream<TcpStream>>),
    Ktls(Box<KtlsStream>),
}

/// An established connection, TLS done, ready for HTTP/2.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// rustls records written (kTLS streams count their own).
    records_written: u64,
    /// Test hook (rustls client only): ask for a KeyUpdate after every this many writes.
    key_update_every: Option<KeyUpdateEvery>,
}

#[derive(Clone, Copy, Debug)]
struct KeyUpdateEvery {
    every: u64,
    writes: u64,
}

impl Conn {
    pub(crate) fn new(io: Io, info: ConnInfo) -> Self {
        Self {
            io,
            info,
            records_written: 0,
            key_update_every: None,
        }
    }

    /// Test hook: a user-space rustls client that sends a TLS 1.3 KeyUpdate (update_requested,
    /// as rustls' `refresh_traffic_keys` does) after every `every` writes, so that a kTLS server
    /// sees peer-initiated rekeys in both directions within seconds instead of after 2^24
    /// records. No effect on other paths.
    pub(crate) fn key_update_every(mut self, every: Option<u64>) -> Self {
        if matches!(self.io, Io::Client(_)) {
            self.key_update_every = every.map(|every| KeyUpdateEvery {
                every: every.max(1),
                writes: 0,
            });
        }
        self
    }

    /// The kTLS stream, for test hooks that send records a peer should not.
    pub(crate) fn ktls_mut(&mut self) -> Option<&mut KtlsStream> {
        match &mut self.io {
            Io::Ktls(k) => Some(k),
            _ => None,
        }
    }

    /// After a write of `n` bytes: the record count, and the key-update test hook.
    fn wrote(&mut self, n: usize) {
        if matches!(self.io, Io::Server(_) | Io::Client(_)) {
            self.records_written += records_for(n);
        }
        let (Some(k), Io::Client(io)) = (&mut self.key_update_every, &mut self.io) else {
            return;
        };
        if n == 0 {
            return;
        }
        k.writes += 1;
        if k.writes % k.every == 0 {
            // Queued in rustls; tokio-rustls sends it with the next write or flush.
            if let Err(e) = io.get_mut().1.refresh_traffic_keys() {
                tracing::debug!(error = %e, "test hook: KeyUpdate refused by rustls");
            }
        }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let records = match &self.io {
            Io::Ktls(k) => k.records_written(),
            _ => self.records_written,
        };
        RECORDS_WRITTEN[self.info.tls as usize].fetch_add(records, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

// Every variant is `Unpin` (TcpStream and Boxes), so plain `Pin::new` is enough to reach them.
macro_rules! each {
    ($self:ident, $io:ident => $body:expr) => {
        match &mut $self.get_mut().io {
            Io::Plain($io) => $body,
            Io::Server($io) => $body,
            Io::Client($io) => $body,
            Io::Ktls($io) => $body,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(match &mut this.io {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Server(io) => Pin::new(io).poll_write(cx, buf),
            Io::Client(io) => Pin::new(io).poll_write(cx, buf),
            Io::Ktls(io) => Pin::new(io).poll_write(cx, buf),
        })?;
        this.wrote(n);
        Poll::Ready(Ok(n))
    }

    /// Vectored on every path: one writev, and so one record, for HTTP/2's header + body pairs
    /// under kTLS (the kernel makes a record of each send), one rustls record under rustls.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(match &mut this.io {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Server(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Client(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Ktls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        })?;
        this.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_shutdown(cx))
    }
}
