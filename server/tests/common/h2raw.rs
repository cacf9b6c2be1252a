//! A raw HTTP/2 client for hostile tests: frames are written byte by byte as RFC 9113 lays
//! them out (HPACK: literal fields without indexing, no Huffman), so a test can send what no
//! well-behaved library would: floods, half frames, broken header blocks.

use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The client preface and an empty SETTINGS frame.
pub fn hello() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = pairs
        .iter()
        .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

pub fn ping(data: u64) -> Vec<u8> {
    frame(PING, 0, 0, &data.to_be_bytes())
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 5.1), `first` holding the pattern bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, new name (RFC 7541 6.2.2), no Huffman.
pub fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_int(&mut out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(&mut out, 0, 7, value.len());
    out.extend_from_slice(value);
    out
}

/// The header block of a gRPC request to `path`, then `extra` fields.
pub fn grpc_headers(path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", &b"POST"[..]),
        (":scheme", b"http"),
        (":path", path.as_bytes()),
        (":authority", b"localhost"),
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        block.extend(literal(name, value));
    }
    block
}

pub const ECHO: &str = "/krpc.v1.Bench/Echo";

/// HEADERS opening `stream` for Echo, request body to follow.
pub fn open_echo(stream: u32) -> Vec<u8> {
    frame(HEADERS, END_HEADERS, stream, &grpc_headers(ECHO, &[]))
}

/// A gRPC message: the 5-byte prefix (compressed flag, length), then `message`.
pub fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// An EchoRequest with `payload` (field 2, length-delimited), as protobuf.
pub fn echo_request(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 128, "a one-byte varint length");
    let mut out = vec![0x12, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

/// A whole Echo RPC on `stream`: headers, one message, end of stream.
pub fn echo_rpc(stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = open_echo(stream);
    out.extend(frame(
        DATA,
        END_STREAM,
        stream,
        &grpc_message(&echo_request(payload)),
    ));
    out
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// What a connection received, and how it ended.
#[derive(Debug, Default)]
pub struct Received {
    pub frames: Vec<Frame>,
    /// The server closed the connection (EOF or reset) before the reader stopped.
    pub closed: bool,
    pending: Vec<u8>,
}

impl Received {
    fn parse(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        loop {
            if self.pending.len() < 9 {
                return;
            }
            let len =
                u32::from_be_bytes([0, self.pending[0], self.pending[1], self.pending[2]]) as usize;
            if self.pending.len() < 9 + len {
                return;
            }
            let head: Vec<u8> = self.pending.drain(..9 + len).collect();
            self.frames.push(Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload: head[9..].to_vec(),
            });
        }
    }

    pub fn goaway(&self) -> Option<u32> {
        self.frames
            .iter()
            .find(|f| f.kind == GOAWAY)
            .and_then(Frame::error_code)
    }

    pub fn resets(&self, code: u32) -> usize {
        self.frames
            .iter()
            .filter(|f| f.kind == RST_STREAM && f.error_code() == Some(code))
            .count()
    }

    /// DATA received on `stream`, concatenated.
    pub fn data(&self, stream: u32) -> Vec<u8> {
        self.frames
            .iter()
            .filter(|f| f.kind == DATA && f.stream == stream)
            .flat_map(|f| f.payload.iter().copied())
            .collect()
    }
}

/// Reads frames until the server closes the connection, `until` says enough, or `guard`
/// passes with nothing new (then `closed` is false).
pub async fn read_frames(
    io: &mut (impl AsyncRead + Unpin),
    guard: Duration,
    mut until: impl FnMut(&Received) -> bool,
) -> Received {
    let mut got = Received::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if until(&got) {
            return got;
        }
        match tokio::time::timeout(guard, io.read(&mut buf)).await {
            Err(_) => return got,
            Ok(Ok(0)) | Ok(Err(_)) => {
                got.closed = true;
                return got;
            }
            Ok(Ok(n)) => got.parse(&buf[..n]),
        }
    }
}

/// Writes `bytes`; false when the server closed the connection (or stopped reading for
/// `guard`) first.
pub async fn send(io: &mut (impl AsyncWrite + Unpin), bytes: &[u8], guard: Duration) -> bool {
    matches!(
        tokio::time::timeout(guard, io.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// A plaintext connection that has said hello (if the server let it: a refused connection
/// may be reset before the hello is written; reading it tells).
pub async fn connect_h2c(addr: std::net::SocketAddr) -> TcpStream {
    try_connect_h2c(addr).await.unwrap()
}

/// [`connect_h2c`] that reports a connection reset while connecting (a refusal that came back
/// before `connect` returned).
pub async fn try_connect_h2c(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await?;
    let _ = tcp.write_all(&hello()).await;
    Ok(tcp)
}
