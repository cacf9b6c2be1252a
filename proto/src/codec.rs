//! The pooled codec: each request message is copied once into a buffer from the current core's
//! pool (`krpc-pool`), and prost decodes `bytes` fields as zero-copy slices of that buffer, so
//! the buffer is freed, by the pool's strategy, wherever the last slice is dropped. Responses
//! use tonic-prost's encoder.
//!
//! Which pool (and, under `per-conn`, which connection) a decode uses is a [`DecodeCtx`] that
//! the server scopes around each request's future and response body ([`DecodeCtx::scope`],
//! [`DecodeCtx::sync_scope`]): several servers, each with its own pool, can share a process.
//! Outside any scope, decoding is plain prost.

use std::{future::Future, marker::PhantomData, sync::Arc};

use bytes::Buf;
use krpc_pool::{ConnHandle, Pool};
use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// Where the pooled decoder takes its buffers from. One per connection: cloning it (once per
/// request and per body poll) touches only that connection's reference count, never a count
/// shared by every core, such as the pool's.
#[derive(Clone, Debug)]
pub struct DecodeCtx(Arc<Source>);

/// What a [`DecodeCtx`] draws from.
#[derive(Debug)]
pub enum Source {
    /// The calling thread's core of this pool.
    Pool(Pool),
    /// This connection's handle (`per-conn`): its defer list is drained before each decode,
    /// the receive work of the connection.
    Conn(ConnHandle),
}

tokio::task_local! {
    static DECODE_CTX: DecodeCtx;
}

impl DecodeCtx {
    /// A connection's context drawing from the calling core's part of `pool`.
    pub fn pool(pool: Pool) -> Self {
        Self(Arc::new(Source::Pool(pool)))
    }

    /// A connection's context drawing through its own handle (`per-conn`).
    pub fn conn(handle: ConnHandle) -> Self {
        Self(Arc::new(Source::Conn(handle)))
    }

    pub fn source(&self) -> &Source {
        &self.0
    }

    /// Runs `fut` with this context for every pooled decode it does.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        DECODE_CTX.scope(self, fut)
    }

    /// Runs `f` with this context (for decodes done while a response body is polled:
    /// streaming requests are decoded there).
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        DECODE_CTX.sync_scope(self, f)
    }
}

/// A tonic codec: tonic-prost's encoder, the pooled decoder.
#[derive(Debug)]
pub struct PooledCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for PooledCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for PooledCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = PooledDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        PooledDecoder(PhantomData)
    }
}

/// Decodes messages of type `U` from pooled buffers.
#[derive(Debug)]
pub struct PooledDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for PooledDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_in_scope(src).map(Some)
    }
}

/// Decodes with the scoped [`DecodeCtx`]; outside any scope (a client, a test), plain prost.
fn decode_in_scope<U: Message + Default>(src: &mut impl Buf) -> Result<U, Status> {
    match DECODE_CTX.try_with(|ctx| decode(Some(ctx), &mut *src)) {
        Ok(decoded) => decoded,
        Err(_) => decode(None, src),
    }
}

/// Decodes one message from `src` (all of it), through a pooled buffer when `ctx` is given.
/// A message that is not valid protobuf is INVALID_ARGUMENT: the client sent it.
pub fn decode<U: Message + Default>(
    ctx: Option<&DecodeCtx>,
    src: &mut impl Buf,
) -> Result<U, Status> {
    let decoded = match ctx {
        Some(ctx) => {
            let len = src.remaining();
            let contiguous = src.chunk().len() >= len;
            let buf = match (ctx.source(), contiguous) {
                (Source::Pool(pool), true) => pool.alloc_copy(&src.chunk()[..len]),
                (Source::Pool(pool), false) => pool.alloc(len),
                (Source::Conn(conn), contiguous) => {
                    conn.drain();
                    if contiguous {
                        conn.alloc_copy(&src.chunk()[..len])
                    } else {
                        conn.alloc(len)
                    }
                }
            };
            let mut buf = buf;
            if contiguous {
                src.advance(len);
            } else {
                // The message spans several HTTP/2 frames: gather it.
                src.copy_to_slice(&mut buf);
            }
            U::decode(buf.into_bytes())
        }
        None => U::decode(src),
    };
    decoded.map_err(|e| {
        let name = std::any::type_name::<U>()
            .rsplit("::")
            .next()
            .unwrap_or("message");
        Status::invalid_argument(format!("malformed {name}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use krpc_pool::{Config, Strategy};

    use super::*;
    use crate::v1::EchoRequest;

    #[test]
    fn bytes_fields_are_slices_of_one_pooled_buffer() {
        let pool = Pool::new(Config::new(Strategy::PerCore, 1));
        let core = pool.register_current_thread(0).unwrap();
        let sent = EchoRequest {
            key: Bytes::from_static(b"user:42"),
            payload: Bytes::from(vec![7u8; 300]),
        };
        let mut wire = Bytes::from(sent.encode_to_vec());
        let got: EchoRequest = decode(Some(&DecodeCtx::pool(pool.clone())), &mut wire).unwrap();
        assert_eq!(got, sent);
        assert_eq!(wire.remaining(), 0);
        // Both fields borrow the one buffer: a single allocation, alive until both are gone.
        let s = pool.snapshot();
        assert_eq!((s.cores[0].allocs, s.cores[0].outstanding), (1, 1));
        // Zero copy: the fields sit in the buffer exactly where they sat on the wire (key data
        // at offset 2; payload data at 12, after its tag and 2-byte length).
        let gap = got.payload.as_ptr() as usize - got.key.as_ptr() as usize;
        assert_eq!(gap, 10);
        drop(got.key);
        assert_eq!(
            pool.snapshot().cores[0].outstanding,
            1,
            "the payload keeps it alive"
        );
        drop(got.payload);
        drop(core);
        pool.snapshot().check_balanced().unwrap();
    }

    #[test]
    fn malformed_protobuf_is_invalid_argument_and_frees_the_buffer() {
        let pool = Pool::new(Config::new(Strategy::Local, 1));
        let core = pool.register_current_thread(0).unwrap();
        // Field 2 (payload), length-delimited, claims 100 bytes but 3 follow.
        let mut wire = Bytes::from_static(&[0x12, 100, 1, 2, 3]);
        let status =
            decode::<EchoRequest>(Some(&DecodeCtx::pool(pool.clone())), &mut wire).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("malformed EchoRequest"),
            "{}",
            status.message()
        );
        drop(core);
        pool.snapshot().check_balanced().unwrap();
        // Without a pool: the same verdict.
        let mut wire = Bytes::from_static(&[0x12, 100, 1, 2, 3]);
        let status = decode::<EchoRequest>(None, &mut wire).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn per_conn_context_drains_the_connection_before_decoding() {
        let pool = Pool::new(Config::new(Strategy::PerConn, 1));
        let core = pool.register_current_thread(0).unwrap();
        let ctx = DecodeCtx::conn(pool.conn());
        let pending = |ctx: &DecodeCtx| match ctx.source() {
            Source::Conn(conn) => conn.pending(),
            Source::Pool(_) => unreachable!("a per-conn context"),
        };
        let wire = EchoRequest {
            key: Bytes::from_static(b"k"),
            payload: Bytes::from_static(b"p"),
        }
        .encode_to_vec();
        let first: EchoRequest = decode(Some(&ctx), &mut Bytes::from(wire.clone())).unwrap();
        drop(first);
        assert_eq!(pending(&ctx), 1, "freed onto the connection's list");
        let second: EchoRequest = decode(Some(&ctx), &mut Bytes::from(wire)).unwrap();
        assert_eq!(pending(&ctx), 0, "drained by the next receive");
        assert_eq!(pool.snapshot().cores[0].hits, 1, "and reused");
        drop((second, ctx, core));
        pool.snapshot().check_balanced().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_decoder_uses_the_scoped_context_and_plain_prost_outside() {
        let pool = Pool::new(Config::new(Strategy::Local, 1));
        let core = pool.register_current_thread(0).unwrap();
        let wire = Bytes::from(
            EchoRequest {
                key: Bytes::new(),
                payload: Bytes::from_static(b"x"),
            }
            .encode_to_vec(),
        );
        let in_scope = DecodeCtx::pool(pool.clone())
            .scope(async { decode_via_tonic(wire.clone()) })
            .await;
        assert_eq!(pool.snapshot().cores[0].allocs, 1);
        let outside = decode_via_tonic(wire);
        assert_eq!(pool.snapshot().cores[0].allocs, 1, "no scope, no pool");
        assert_eq!(in_scope, outside);
        drop((in_scope, core));
        pool.snapshot().check_balanced().unwrap();
    }

    fn decode_via_tonic(wire: Bytes) -> EchoRequest {
        decode_in_scope(&mut wire.clone()).unwrap()
    }
}
