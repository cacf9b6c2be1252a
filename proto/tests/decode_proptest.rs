//! Untrusted bytes into the pooled decoder: whatever arrives (garbage, truncated or valid
//! protobuf, in one chunk or split across HTTP/2 frames), `decode` returns the message or an
//! INVALID_ARGUMENT, never panics, and once the results are dropped the pool's books balance:
//! every buffer it handed out came back. Every strategy. (cargo-fuzz needs a nightly toolchain;
//! proptest runs on stable, in `cargo test`.)

use bytes::{Buf, Bytes};
use krpc_pool::{Config, Pool, Strategy as Free};
use krpc_proto::{
    codec::{DecodeCtx, decode},
    v1::{EchoRequest, PutRequest},
};
use proptest::prelude::*;
use prost::Message;

/// Bytes that are sometimes valid messages: arbitrary bytes, or an encoded message with some
/// bytes flipped or cut off.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    let message = (
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..4096),
    )
        .prop_map(|(key, payload)| {
            EchoRequest {
                key: key.into(),
                payload: payload.into(),
            }
            .encode_to_vec()
        });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..8192),
        message.clone(),
        (message.clone(), any::<prop::sample::Index>())
            .prop_map(|(m, cut)| m[..cut.index(m.len() + 1)].to_vec()),
        (message, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut m, at, x)| {
            if !m.is_empty() {
                let i = at.index(m.len());
                m[i] ^= x | 1;
            }
            m
        }),
    ]
}

/// Decodes `bytes` as `U` from one contiguous chunk, or split at `split` into two (a message
/// spread over two HTTP/2 DATA frames), through `ctx`.
fn decode_split<U: Message + Default>(
    ctx: &DecodeCtx,
    bytes: &[u8],
    split: Option<usize>,
) -> Result<U, tonic::Status> {
    match split {
        None => decode(Some(ctx), &mut Bytes::copy_from_slice(bytes)),
        Some(at) => {
            let at = at % (bytes.len() + 1);
            let mut chained =
                Bytes::copy_from_slice(&bytes[..at]).chain(Bytes::copy_from_slice(&bytes[at..]));
            decode(Some(ctx), &mut chained)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_decode_or_fail_cleanly_and_the_pool_balances(
        strategy in prop::sample::select(Free::ALL.to_vec()),
        inputs in proptest::collection::vec((wire(), proptest::option::of(any::<usize>())), 1..16),
    ) {
        let pool = Pool::new(Config::new(strategy, 1));
        let core = pool.register_current_thread(0).unwrap();
        let ctx = match strategy {
            Free::PerConn => DecodeCtx::conn(pool.conn()),
            _ => DecodeCtx::pool(pool.clone()),
        };
        let mut kept = Vec::new();
        for (bytes, split) in &inputs {
            // Plain prost is the reference: the pooled decoder agrees with it on every input.
            let reference = EchoRequest::decode(&bytes[..]);
            match decode_split::<EchoRequest>(&ctx, bytes, *split) {
                Ok(message) => {
                    prop_assert_eq!(reference.as_ref().ok(), Some(&message));
                    kept.push(message);
                }
                Err(status) => {
                    prop_assert!(reference.is_err(), "pooled decode failed where prost did not");
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                }
            }
            // Another message type over the same bytes: no panic either.
            let _ = decode_split::<PutRequest>(&ctx, bytes, *split);
        }
        drop(kept);
        drop(ctx);
        drop(core);
        prop_assert_eq!(pool.snapshot().check_balanced(), Ok(()));
    }
}
