//! [`KtlsStream`]: a TCP stream whose records the kernel encrypts and decrypts, with rustls'
//! [`KernelConnection`] kept beside it for what the kernel leaves to user space: records that are
//! not application data (KeyUpdate, NewSessionTicket, alerts), and new keys.
//!
//! Reads are plain `read`s. A record of another type makes the kernel fail the read with `EIO`
//! and keep the record; it is then fetched with `recvmsg` and its `TLS_GET_RECORD_TYPE` control
//! message, and acted on: a KeyUpdate puts the peer's next key into the kernel (`TLS_RX`; the
//! kernel refuses further reads with `EKEYEXPIRED` until then), and when the peer asks, our own
//! KeyUpdate goes out (`TLS_SET_RECORD_TYPE`) before our next key (`TLS_TX`), with no write of
//! ours in between: every write first sends what is pending. Writes count the records they make
//! so that we rekey before the cipher's confidentiality limit.

use std::{
    io,
    net::SocketAddr,
    os::fd::AsFd,
    task::{Context, Poll, ready},
};

use rustls::{
    ConnectionTrafficSecrets, HandshakeType, client::ClientConnectionData,
    kernel::KernelConnection, server::ServerConnectionData,
};
use tokio::{io::Interest, net::TcpStream};
use tracing::{debug, warn};

use super::{
    KtlsClosed, KtlsOptions, cmsg,
    events::{self, RekeyDirection, RekeyInitiator},
    keys,
    record::{self, Control, Handshakes, RecordError},
};

/// The most plaintext the kernel puts in one record (TLS_MAX_PAYLOAD_SIZE).
pub(crate) const MAX_RECORD: usize = 1 << 14;
/// KeyUpdates the peer may send in a row without application data between them (BoringSSL's
/// and rustls' bound): more is a peer making us spin.
const MAX_KEY_UPDATES_IN_A_ROW: u32 = 32;
/// Control records handled in one `poll_read` before the task yields, so a peer that sends
/// nothing else cannot hold a runtime thread.
const MAX_CONTROL_RECORDS_PER_POLL: usize = 64;

/// Records the kernel makes of one write of `n` bytes (it closes a record at the end of every
/// `send` without `MSG_MORE`, and never puts more than [`MAX_RECORD`] bytes in one).
pub(crate) fn records_for(n: usize) -> u64 {
    n.div_ceil(MAX_RECORD) as u64
}

/// rustls' half of the session.
pub(crate) enum Session {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Session {
    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(k) => k.update_tx_secret(),
            Self::Server(k) => k.update_tx_secret(),
        }
    }

    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(k) => k.update_rx_secret(),
            Self::Server(k) => k.update_rx_secret(),
        }
    }

    fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), RecordError> {
        match self {
            Self::Client(k) => k
                .handle_new_session_ticket(body)
                .map_err(RecordError::BadSessionTicket),
            // Only servers send tickets.
            Self::Server(_) => Err(RecordError::UnexpectedHandshake(
                HandshakeType::NewSessionTicket,
            )),
        }
    }
}

/// A record of ours waiting for room in the socket, and what follows once it is sent.
struct Outgoing {
    record_type: u8,
    bytes: Vec<u8>,
    sent: usize,
    /// After a KeyUpdate: the new TX key, asked for by this side or by the peer.
    then_install_tx: Option<RekeyInitiator>,
}

/// Why a read or write stops: a TLS-level reason (counted, logged, the connection closed) or a
/// plain socket error (passed through).
enum Failure {
    Record(RecordError),
    Io(io::Error),
}

enum Flow {
    Continue,
    Eof,
    Data,
}

pub(crate) struct KtlsStream {
    tcp: TcpStream,
    session: Session,
    peer: SocketAddr,
    options: KtlsOptions,
    /// Records allowed under one TX key, the KeyUpdate that ends it included.
    limit: u64,
    /// Records sent under the current TX key (an upper bound: see [`records_for`]).
    tx_records: u64,
    /// Records sent over the connection's life.
    records_written: u64,
    pending: Option<Outgoing>,
    /// We answered a KeyUpdate request since our last application data: another request from
    /// the peer is answered by the same update (RFC 8446 4.6.3).
    answered_since_data: bool,
    key_updates_in_a_row: u32,
    handshakes: Handshakes,
    /// For records fetched with recvmsg (allocated on the first one).
    control_buf: Vec<u8>,
    /// Application data that arrived through the control path, served before the next read.
    leftover: Vec<u8>,
    /// `read` said EIO but recvmsg found nothing, this many times in a row.
    eio_misses: u8,
    read_closed: bool,
    write_closed: bool,
    failed: Option<KtlsClosed>,
}

impl KtlsStream {
    pub(crate) fn new(
        tcp: TcpStream,
        session: Session,
        peer: SocketAddr,
        options: KtlsOptions,
        suite_limit: u64,
        tx_seq: u64,
    ) -> Self {
        Self {
            tcp,
            session,
            peer,
            options,
            limit: options.rekey_after().min(suite_limit),
            tx_records: tx_seq,
            records_written: 0,
            pending: None,
            answered_since_data: false,
            key_updates_in_a_row: 0,
            handshakes: Handshakes::default(),
            control_buf: Vec::new(),
            leftover: Vec::new(),
            eio_misses: 0,
            read_closed: false,
            write_closed: false,
            failed: None,
        }
    }

    /// Records this connection has sent (data and control).
    pub(crate) fn records_written(&self) -> u64 {
        self.records_written
    }

    /// Sends one record of any type and waits until the socket took it. Test hook: lets a test
    /// client send what a broken or hostile peer would.
    pub(crate) async fn send_record(&mut self, record_type: u8, payload: &[u8]) -> io::Result<()> {
        self.pending = Some(Outgoing {
            record_type,
            bytes: payload.to_vec(),
            sent: 0,
            then_install_tx: None,
        });
        std::future::poll_fn(|cx| self.poll_pending(Some(cx))).await
    }

    fn closed_error(&self) -> Option<io::Error> {
        self.failed
            .clone()
            .map(|closed| io::Error::new(io::ErrorKind::InvalidData, closed))
    }

    /// Closes the connection for `e`: counted, logged once (at `debug` when the peer caused
    /// it, [`super::events::RecordErrorKind::is_peers`]), a fatal alert to the peer when it
    /// should have one (best effort: never waits), every later read and write fails alike.
    fn fail(&mut self, e: RecordError) -> io::Error {
        if self.failed.is_none() {
            let kind = e.kind();
            events::count_record_error(kind);
            if kind.is_peers() {
                debug!(peer = %self.peer, reason = kind.as_str(), error = %e, "kTLS connection closed");
            } else {
                warn!(peer = %self.peer, reason = kind.as_str(), error = %e, "kTLS connection closed");
            }
            if let Some(alert) = e.alert_to_send()
                && !self.write_closed
            {
                let alert = record::fatal_alert(alert);
                let _ = self.tcp.try_io(Interest::WRITABLE, || {
                    cmsg::send_record(self.tcp.as_fd(), record::ALERT, &alert)
                });
            }
            self.read_closed = true;
            self.write_closed = true;
            self.pending = None;
            self.failed = Some(KtlsClosed {
                reason: kind,
                message: e.to_string(),
            });
        }
        self.closed_error()
            .unwrap_or_else(|| io::Error::other("kTLS connection closed"))
    }

    fn finish(&mut self, failure: Failure) -> io::Error {
        match failure {
            Failure::Record(e) => self.fail(e),
            Failure::Io(e) => e,
        }
    }

    /// Sends the pending record. With `cx`, waits for room (registering the waker); without,
    /// tries once and leaves the rest for the next write.
    fn poll_pending(&mut self, mut cx: Option<&mut Context<'_>>) -> Poll<io::Result<()>> {
        while let Some(out) = &mut self.pending {
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                cmsg::send_record(self.tcp.as_fd(), out.record_type, &out.bytes[out.sent..])
            });
            match sent {
                Ok(n) => {
                    out.sent = (out.sent + n).min(out.bytes.len());
                    if out.sent < out.bytes.len() {
                        continue;
                    }
                    let then = out.then_install_tx;
                    self.pending = None;
                    self.tx_records += 1;
                    self.records_written += 1;
                    if let Some(initiator) = then
                        && let Err(e) = self.install_tx(initiator)
                    {
                        return Poll::Ready(Err(self.fail(e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match cx.as_mut() {
                    Some(cx) => ready!(self.tcp.poll_write_ready(cx))?,
                    None => return Poll::Pending,
                },
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn queue_key_update(&mut self, update_requested: bool, initiator: RekeyInitiator) {
        self.pending = Some(Outgoing {
            record_type: record::HANDSHAKE,
            bytes: record::key_update(update_requested).to_vec(),
            sent: 0,
            then_install_tx: Some(initiator),
        });
    }

    fn install_tx(&mut self, initiator: RekeyInitiator) -> Result<(), RecordError> {
        let (seq, secrets) = self
            .session
            .update_tx()
            .map_err(|e| rekey_failed(RekeyDirection::Tx, e))?;
        keys::set_tx(&self.tcp, seq, &secrets)
            .map_err(|e| kernel_rekey_error(RekeyDirection::Tx, e, false))?;
        self.tx_records = seq;
        // Our own rekey may have crossed the peer's request on the wire; only an answer
        // counts as one.
        if initiator == RekeyInitiator::Peer {
            self.answered_since_data = true;
        }
        events::count_rekey(RekeyDirection::Tx, initiator);
        debug!(peer = %self.peer, initiator = initiator.as_str(), "kTLS: new TX key");
        Ok(())
    }

    fn on_key_update(&mut self, update_requested: bool) -> Result<(), Failure> {
        self.key_updates_in_a_row += 1;
        if self.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
            return Err(Failure::Record(RecordError::TooManyKeyUpdates(
                MAX_KEY_UPDATES_IN_A_ROW,
            )));
        }
        if !self.options.kernel_can_rekey() {
            return Err(Failure::Record(RecordError::RekeyUnsupported {
                by_peer: true,
            }));
        }
        let (seq, secrets) = self
            .session
            .update_rx()
            .map_err(|e| Failure::Record(rekey_failed(RekeyDirection::Rx, e)))?;
        keys::set_rx(&self.tcp, seq, &secrets)
            .map_err(|e| Failure::Record(kernel_rekey_error(RekeyDirection::Rx, e, true)))?;
        events::count_rekey(RekeyDirection::Rx, RekeyInitiator::Peer);
        debug!(peer = %self.peer, update_requested, "kTLS: new RX key");
        if update_requested && !self.answered_since_data && self.pending.is_none() {
            self.queue_key_update(false, RekeyInitiator::Peer);
            // Out now if the socket has room; otherwise before our next write.
            if let Poll::Ready(Err(e)) = self.poll_pending(None) {
                return Err(Failure::Io(e));
            }
        }
        Ok(())
    }

    /// Fetches the record a read refused with EIO and acts on it.
    fn read_control(&mut self) -> Result<Flow, Failure> {
        if self.control_buf.is_empty() {
            self.control_buf = vec![0; MAX_RECORD];
        }
        let got = self.tcp.try_io(Interest::READABLE, || {
            cmsg::recv_record(self.tcp.as_fd(), &mut self.control_buf)
        });
        let got = match got {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.eio_misses += 1;
                if self.eio_misses > 1 {
                    return Err(Failure::Record(RecordError::Kernel(
                        "read reported a control record (EIO) that recvmsg does not return".into(),
                    )));
                }
                return Ok(Flow::Continue);
            }
            Err(e) => {
                return Err(match RecordError::from_read_error(&e) {
                    Some(r) => Failure::Record(r),
                    None => Failure::Io(e),
                });
            }
        };
        self.eio_misses = 0;
        if got.control_truncated {
            return Err(Failure::Record(RecordError::Kernel(
                "the record type control message was truncated".into(),
            )));
        }
        let Some(payload) = self.control_buf.get(..got.len) else {
            return Err(Failure::Record(RecordError::Kernel(
                "recvmsg reported more bytes than the buffer holds".into(),
            )));
        };
        let record_type = match got.record_type {
            Some(t) => t,
            None if got.len == 0 => {
                self.read_closed = true;
                return Ok(Flow::Eof);
            }
            None => {
                return Err(Failure::Record(RecordError::Kernel(
                    "recvmsg returned a record without its type".into(),
                )));
            }
        };
        if record_type == record::APPLICATION_DATA {
            self.leftover.extend_from_slice(payload);
            return Ok(if got.len == 0 {
                Flow::Continue
            } else {
                Flow::Data
            });
        }
        let controls =
            record::control(record_type, payload, &mut self.handshakes).map_err(Failure::Record)?;
        for control in controls {
            match control {
                Control::CloseNotify => {
                    self.read_closed = true;
                    return Ok(Flow::Eof);
                }
                Control::Ignore => {}
                Control::KeyUpdate { update_requested } => self.on_key_update(update_requested)?,
                Control::NewSessionTicket(body) => self
                    .session
                    .new_session_ticket(&body)
                    .map_err(Failure::Record)?,
            }
        }
        Ok(Flow::Continue)
    }
}

fn rekey_failed(direction: RekeyDirection, e: rustls::Error) -> RecordError {
    RecordError::RekeyFailed {
        direction,
        detail: format!("rustls: {e}"),
    }
}

/// `EBUSY` is how a kernel older than 6.14 refuses a second key.
fn kernel_rekey_error(direction: RekeyDirection, e: io::Error, by_peer: bool) -> RecordError {
    if e.raw_os_error() == Some(libc::EBUSY) {
        RecordError::RekeyUnsupported { by_peer }
    } else {
        RecordError::RekeyFailed {
            direction,
            detail: format!("the kernel refused the new key: {e}"),
        }
    }
}

mod poll;
