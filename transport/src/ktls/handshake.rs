//! The TLS handshake of a kTLS connection. It runs through rustls' unbuffered API, because only
//! an unbuffered connection can become a [`KernelConnection`] (the part of rustls that keeps the
//! key schedule, for KeyUpdates and session tickets, once the kernel has the records).
//!
//! Reads are record-exact: a 5-byte header, then exactly the record it announces. Whatever the
//! peer sends after its last handshake record (a client's first HTTP/2 bytes, a server's
//! NewSessionTickets) stays in the socket for the kernel to decrypt; a byte read here would be a
//! byte the kernel never sees.

use std::{io, ops::DerefMut};

use rustls::{
    ExtractedSecrets,
    client::{ClientConnectionData, UnbufferedClientConnection},
    kernel::KernelConnection,
    server::{ServerConnectionData, UnbufferedServerConnection},
    unbuffered::{
        ConnectionState, EncodeError, EncodeTlsData, UnbufferedConnectionCommon, UnbufferedStatus,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A TLS 1.3 ciphertext record carries at most 2^14 + 256 bytes (RFC 8446 5.2).
const MAX_CIPHERTEXT: usize = (1 << 14) + 256;
const HEADER: usize = 5;

/// Why a kTLS handshake did not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS handshake failed")]
    Tls(#[source] rustls::Error),
    #[error("socket error during the TLS handshake")]
    Io(#[source] io::Error),
    #[error("the peer closed the connection during the TLS handshake")]
    Closed,
    #[error("{0}")]
    Protocol(&'static str),
}

impl From<HandshakeError> for io::Error {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Io(e) => e,
            HandshakeError::Tls(e) => io::Error::new(io::ErrorKind::InvalidData, e),
            HandshakeError::Closed => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            HandshakeError::Protocol(_) => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// Both kinds of unbuffered connection, as the driver needs them.
pub(crate) trait Unbuffered:
    DerefMut<Target = UnbufferedConnectionCommon<Self::Data>>
{
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn into_kernel(self)
    -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }

    fn into_kernel(
        self,
    ) -> Result<(ExtractedSecrets, KernelConnection<ServerConnectionData>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }

    fn into_kernel(
        self,
    ) -> Result<(ExtractedSecrets, KernelConnection<ClientConnectionData>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

/// A finished handshake: the secrets for the kernel and what rustls keeps.
pub(crate) struct Handshaken<Data> {
    pub(crate) secrets: ExtractedSecrets,
    pub(crate) kernel: KernelConnection<Data>,
    /// Records we sent under the application traffic key during the handshake (the server's
    /// NewSessionTickets): they count towards that key's limit.
    pub(crate) tx_seq: u64,
}

enum Next {
    Again,
    Transmit,
    Read,
    Done,
}

/// Runs the handshake of `conn` over `tcp` to the point where the kernel can take the records.
pub(crate) async fn drive<C: Unbuffered>(
    tcp: &mut TcpStream,
    mut conn: C,
) -> Result<Handshaken<C::Data>, HandshakeError> {
    let mut incoming = Vec::with_capacity(HEADER + MAX_CIPHERTEXT);
    let mut outgoing = Vec::new();
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming);
        let next = match state.map_err(HandshakeError::Tls)? {
            ConnectionState::EncodeTlsData(mut data) => {
                encode(&mut data, &mut outgoing)?;
                Next::Again
            }
            ConnectionState::TransmitTlsData(data) => {
                // Sent right below, before rustls is asked anything else.
                data.done();
                Next::Transmit
            }
            ConnectionState::BlockedHandshake => Next::Read,
            ConnectionState::WriteTraffic(_) => Next::Done,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(HandshakeError::Closed);
            }
            ConnectionState::ReadTraffic(_) | ConnectionState::ReadEarlyData(_) => {
                return Err(HandshakeError::Protocol(
                    "application data before the handshake finished",
                ));
            }
            _ => return Err(HandshakeError::Protocol("unexpected TLS handshake state")),
        };
        incoming.drain(..discard);
        match next {
            Next::Again => {}
            Next::Transmit => {
                tcp.write_all(&outgoing).await.map_err(HandshakeError::Io)?;
                outgoing.clear();
            }
            // A server that may send before the client's Finished (half-RTT data) is writable
            // while still handshaking; ours is not configured so, but the handshake is only
            // over when both directions are.
            Next::Done if !conn.is_handshaking() => break,
            Next::Read | Next::Done => read_record(tcp, &mut incoming).await?,
        }
    }
    if !incoming.is_empty() {
        return Err(HandshakeError::Protocol(
            "bytes left after the TLS handshake that the kernel would never see",
        ));
    }
    let (secrets, kernel) = conn.into_kernel().map_err(HandshakeError::Tls)?;
    let tx_seq = secrets.tx.0;
    Ok(Handshaken {
        secrets,
        kernel,
        tx_seq,
    })
}

fn encode<Data>(
    data: &mut EncodeTlsData<'_, Data>,
    outgoing: &mut Vec<u8>,
) -> Result<(), HandshakeError> {
    let start = outgoing.len();
    let needed = match data.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(size)) => size.required_size,
        Err(EncodeError::AlreadyEncoded) => {
            return Err(HandshakeError::Protocol("rustls encoded a record twice"));
        }
    };
    outgoing.resize(start + needed, 0);
    let written = data
        .encode(&mut outgoing[start..])
        .map_err(|_| HandshakeError::Protocol("rustls could not encode a handshake record"))?;
    outgoing.truncate(start + written);
    Ok(())
}

/// Appends exactly one record to `incoming`.
async fn read_record(tcp: &mut TcpStream, incoming: &mut Vec<u8>) -> Result<(), HandshakeError> {
    let start = incoming.len();
    incoming.resize(start + HEADER, 0);
    read_exact(tcp, &mut incoming[start..]).await?;
    let header = &incoming[start..];
    // Content type 20..=23 and a 3.x legacy version: anything else is not TLS at all
    // (plaintext HTTP/2 on the TLS port starts "PRI *"). rustls would say so too, but only
    // after the body this header claims, which such a peer never sends.
    if !(20..=23).contains(&header[0]) || header[1] != 3 {
        return Err(HandshakeError::Protocol(
            "the peer does not speak TLS (the first bytes are not a TLS record header)",
        ));
    }
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(HandshakeError::Protocol(
            "the peer sent a record longer than TLS allows",
        ));
    }
    incoming.resize(start + HEADER + len, 0);
    read_exact(tcp, &mut incoming[start + HEADER..]).await
}

async fn read_exact(tcp: &mut TcpStream, buf: &mut [u8]) -> Result<(), HandshakeError> {
    match tcp.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HandshakeError::Closed),
        Err(e) => Err(HandshakeError::Io(e)),
    }
}

#[cfg(test)]
mod tests;
