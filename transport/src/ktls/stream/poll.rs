//! The tokio IO traits over [`KtlsStream`]: reads that hand control records to the stream,
//! writes that send what is pending first and rekey at the limit.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    Flow, KtlsStream, MAX_CONTROL_RECORDS_PER_POLL, MAX_RECORD, Outgoing, RecordError,
    RekeyInitiator, record, records_for,
};

impl AsyncRead for KtlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.closed_error() {
            return Poll::Ready(Err(e));
        }
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if this.read_closed {
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..MAX_CONTROL_RECORDS_PER_POLL {
            // Not TcpStream::poll_read: after a short read it drops the socket's readiness
            // ("the buffer is drained"), which holds for TCP but not here. A kTLS read stops
            // at the next record of another type, so a KeyUpdate can wait in the socket after a
            // short read, and with the readiness gone and the peer waiting for our answer, no
            // new edge would ever wake us. try_read drops readiness only on EAGAIN.
            ready!(this.tcp.poll_read_ready(cx))?;
            match this.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 {
                        this.key_updates_in_a_row = 0;
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.raw_os_error() == Some(libc::EIO) => match this.read_control() {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Eof) => return Poll::Ready(Ok(())),
                    Ok(Flow::Data) => {
                        let n = this.leftover.len().min(buf.remaining());
                        buf.put_slice(&this.leftover[..n]);
                        this.leftover.drain(..n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(f) => return Poll::Ready(Err(this.finish(f))),
                },
                Err(e) => {
                    return Poll::Ready(Err(match RecordError::from_read_error(&e) {
                        Some(r) => this.fail(r),
                        None => e,
                    }));
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl AsyncWrite for KtlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.closed_error() {
            return Poll::Ready(Err(e));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "kTLS stream already shut down for writing",
            )));
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_pending(Some(cx)))?;
        // One data record and the KeyUpdate that ends the key must still fit.
        if this.tx_records.saturating_add(2) > this.limit {
            if !this.options.kernel_can_rekey() {
                let e = RecordError::RecordLimit {
                    records: this.tx_records,
                    limit: this.limit,
                };
                return Poll::Ready(Err(this.fail(e)));
            }
            // Our records are ours to count (RFC 8446 5.5); the peer rekeys its own at its
            // limit. Not asking for its update keeps each side's rekeys its own decision.
            this.queue_key_update(false, RekeyInitiator::Local);
            ready!(this.poll_pending(Some(cx)))?;
        }
        let room = this
            .limit
            .saturating_sub(this.tx_records.saturating_add(1))
            .max(1);
        let max_bytes =
            usize::try_from(room.saturating_mul(MAX_RECORD as u64)).unwrap_or(usize::MAX);
        let n = if len <= max_bytes {
            ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs))?
        } else {
            let cut = truncate(bufs, max_bytes);
            ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, &cut))?
        };
        let records = records_for(n);
        this.tx_records += records;
        this.records_written += records;
        this.answered_since_data = false;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed.is_none() {
            ready!(this.poll_pending(Some(cx)))?;
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed.is_none() {
            if !this.write_closed {
                if ready!(this.poll_pending(Some(cx))).is_ok() {
                    this.pending = Some(Outgoing {
                        record_type: record::ALERT,
                        bytes: record::CLOSE_NOTIFY_ALERT.to_vec(),
                        sent: 0,
                        then_install_tx: None,
                    });
                }
                this.write_closed = true;
            }
            // The peer may be gone already; the TCP shutdown below still has to happen.
            if ready!(this.poll_pending(Some(cx))).is_err() {
                this.pending = None;
            }
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// The first `max` bytes of `bufs`.
fn truncate<'b>(bufs: &'b [IoSlice<'_>], max: usize) -> Vec<IoSlice<'b>> {
    let mut left = max;
    let mut out = Vec::new();
    for b in bufs {
        if left == 0 {
            break;
        }
        let take = b.len().min(left);
        out.push(IoSlice::new(&b[..take]));
        left -= take;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_truncation() {
        assert_eq!(records_for(0), 0);
        assert_eq!(records_for(1), 1);
        assert_eq!(records_for(MAX_RECORD), 1);
        assert_eq!(records_for(MAX_RECORD + 1), 2);
        let (a, b) = ([1u8; 10], [2u8; 10]);
        let bufs = [IoSlice::new(&a), IoSlice::new(&b)];
        let cut = truncate(&bufs, 15);
        assert_eq!(cut.iter().map(|s| s.len()).collect::<Vec<_>>(), [10, 5]);
        assert_eq!(truncate(&bufs, 100).len(), 2);
    }
}
