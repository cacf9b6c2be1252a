//! [`Conn`]: one stream type over plaintext, rustls (either side) and kTLS, so that one tonic
//! server and one tonic channel type serve every TLS mode.

use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use ktls::KtlsStream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{client, server};

use crate::TlsPath;

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
    Ktls(KtlsStream<TcpStream>),
}

/// An established connection, TLS done, ready for HTTP/2.
pub struct Conn {
    io: Io,
    info: ConnInfo,
}

impl Conn {
    pub(crate) fn new(io: Io, info: ConnInfo) -> Self {
        Self { io, info }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
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

// Every variant is `Unpin` (TcpStream, Box, and KtlsStream over TcpStream), so plain
// `Pin::new` is enough to reach them.
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
        each!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Server(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Client(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            // KtlsStream has no vectored write. The kernel encrypts whatever is written to the
            // socket, so writev on the TCP stream underneath is exactly what KtlsStream's own
            // write would do (which only adds a check for a close_notify already sent), with
            // one syscall, and so fewer records, for HTTP/2's header + body pairs.
            Io::Ktls(io) => Pin::new(io.get_mut()).poll_write_vectored(cx, bufs),
        }
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
