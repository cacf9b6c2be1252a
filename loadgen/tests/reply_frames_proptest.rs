//! Untrusted bytes into the load generator's gRPC reply parser: any body either decodes as the
//! reply or is an INTERNAL status, and never panics; a well-formed frame always decodes; any
//! grpc-status header value gives a status or OK, never a panic.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use krpc_loadgen::grpc::{encode_request, grpc_status, parse_reply};
use krpc_proto::v1::EchoResponse;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_body_parses_or_is_internal(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        match parse_reply::<EchoResponse>(Bytes::from(body)) {
            Ok(_) => {}
            Err(status) => prop_assert_eq!(status.code(), tonic::Code::Internal),
        }
    }

    #[test]
    fn a_frame_prefix_with_any_length_and_flag_is_checked(
        flag in any::<u8>(),
        len in any::<u32>(),
        rest in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut body = vec![flag];
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&rest);
        let parsed = parse_reply::<EchoResponse>(Bytes::from(body));
        if flag != 0 || len as usize != rest.len() {
            prop_assert!(parsed.is_err());
        }
    }

    #[test]
    fn well_formed_replies_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let reply = EchoResponse { payload: payload.into() };
        let parsed = parse_reply::<EchoResponse>(encode_request(&reply));
        prop_assert_eq!(parsed.ok(), Some(reply));
    }

    #[test]
    fn any_grpc_status_value_is_a_status(value in proptest::collection::vec(any::<u8>(), 0..16)) {
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", value);
            headers.insert("grpc-message", HeaderValue::from_static("%ZZ%"));
            let _ = grpc_status(&headers);
        }
    }
}
