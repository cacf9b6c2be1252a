//! The pooled codec: each request message is copied once into a buffer from the current core's
//! pool (`krpc-pool`), and prost decodes `bytes` fields as zero-copy slices of that buffer, so
//! the buffer is freed, by the pool's strategy, wherever the last slice is dropped. Responses
//! use tonic-prost's encoder. Until a pool is installed, decoding is plain prost.

use std::{marker::PhantomData, sync::OnceLock};

use bytes::Buf;
use krpc_pool::Pool;
use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

static POOL: OnceLock<Pool> = OnceLock::new();

/// Makes every pooled decoder in this process take its buffers from `pool`. Returns false (and
/// changes nothing) when a pool is already installed.
pub fn install_pool(pool: Pool) -> bool {
    POOL.set(pool).is_ok()
}

/// The installed pool, if any.
pub fn installed_pool() -> Option<&'static Pool> {
    POOL.get()
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
        decode(POOL.get(), src).map(Some)
    }
}

/// Decodes one message from `src` (all of it), through a buffer of `pool` when given.
/// A message that is not valid protobuf is INVALID_ARGUMENT: the client sent it.
pub fn decode<U: Message + Default>(pool: Option<&Pool>, src: &mut impl Buf) -> Result<U, Status> {
    let decoded = match pool {
        Some(pool) => {
            let len = src.remaining();
            let buf = if src.chunk().len() >= len {
                let buf = pool.alloc_copy(&src.chunk()[..len]);
                src.advance(len);
                buf
            } else {
                // The message spans several HTTP/2 frames: gather it.
                let mut buf = pool.alloc(len);
                src.copy_to_slice(&mut buf);
                buf
            };
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
        let got: EchoRequest = decode(Some(&pool), &mut wire).unwrap();
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
        let status = decode::<EchoRequest>(Some(&pool), &mut wire).unwrap_err();
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
}
