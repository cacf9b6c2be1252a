//! The accept loop and what a connection carries into tonic: handshakes run in tasks of their
//! own (one slow or hostile peer holds up nobody), and every established connection gets its
//! pool context (`per-conn`: a handle of its own) and counts as open until it closes.

use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use krpc_pool::{Pool, Strategy};
use krpc_proto::codec::DecodeCtx;
use krpc_transport::{Acceptor, Conn};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    metrics::{Metrics, OpenConnection},
    rpc_layer::ConnCtx,
};

/// What every connection needs, whichever core accepts it.
#[derive(Clone, Debug)]
pub(crate) struct ConnSetup {
    pub(crate) acceptor: Acceptor,
    pub(crate) pool: Pool,
    pub(crate) metrics: Metrics,
}

/// Accepts until shutdown. Never returns early because of one peer: errors are logged and the
/// loop goes on.
pub(crate) async fn accept_loop(
    core: usize,
    listener: TcpListener,
    setup: ConnSetup,
    conns: mpsc::Sender<ServedConn>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(core, %error, "accept failed");
                    // Out of file descriptors or memory: give the process a moment to close
                    // some instead of spinning on the same error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let setup = setup.clone();
        let conns = conns.clone();
        let span = info_span!("conn", core, %peer);
        tokio::spawn(
            async move {
                match setup.acceptor.accept(tcp, peer).await {
                    Ok(conn) => {
                        let i = conn.info();
                        info!(
                            tls = %i.tls,
                            version = i.tls_version.unwrap_or("-"),
                            cipher = i.cipher.unwrap_or("-"),
                            ktls = i.tls == krpc_transport::TlsPath::Ktls,
                            "connection established"
                        );
                        let served = setup.serve(conn);
                        // The receiver is gone only when the server is shutting down.
                        let _ = conns.send(served).await;
                    }
                    Err(e) => {
                        setup.metrics.handshake_failed(e.failure.reason());
                        warn!(
                            reason = e.failure.reason(),
                            error = %ErrorChain(&e.failure),
                            "handshake failed"
                        );
                    }
                }
            }
            .instrument(span),
        );
    }
    debug!(core, "accept loop stopped");
}

impl ConnSetup {
    /// Attaches the pool context (a per-connection handle under `per-conn`) and the open
    /// connection count to an established connection.
    fn serve(&self, conn: Conn) -> ServedConn {
        let decode = match self.pool.config().strategy {
            Strategy::PerConn => DecodeCtx::conn(self.pool.conn()),
            _ => DecodeCtx::pool(self.pool.clone()),
        };
        let ctx = ConnCtx::new(conn.info().clone(), decode, self.metrics.clone());
        ServedConn {
            _open: self.metrics.connection_opened(conn.info().tls),
            io: conn,
            ctx,
        }
    }
}

/// A connection as tonic serves it: the IO, plus what every request on it carries.
pub(crate) struct ServedConn {
    io: Conn,
    ctx: ConnCtx,
    _open: OpenConnection,
}

impl tonic::transport::server::Connected for ServedConn {
    type ConnectInfo = ConnCtx;

    fn connect_info(&self) -> ConnCtx {
        self.ctx.clone()
    }
}

impl AsyncRead for ServedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Formats an error with its sources, `a: b: c`, for one-line logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
