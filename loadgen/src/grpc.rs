//! gRPC over HTTP/2, the parts a load generator must get right and that read untrusted bytes:
//! the request and reply framing (a 5-byte prefix, one message), grpc-status from headers or
//! trailers, and what a failed HTTP/2 stream or connection means in gRPC terms
//! (PROTOCOL-HTTP2.md, "Errors": RST_STREAM codes map to gRPC codes; a connection that is lost
//! or sent GOAWAY fails its calls with UNAVAILABLE, as a gRPC channel does).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use prost::Message;
use tonic::{Code, Status};

/// One request message in its gRPC frame: uncompressed flag, big-endian length, message.
pub fn encode_request(request: &impl Message) -> Bytes {
    let len = request.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(len as u32);
    // Encoding into a buffer with room for `encoded_len` bytes cannot fail.
    request
        .encode(&mut frame)
        .expect("a buffer sized by encoded_len has room");
    frame.freeze()
}

/// A unary reply body: exactly one uncompressed gRPC message, decoded as `R`. Anything else,
/// whatever the bytes, is an INTERNAL status (never a panic).
pub fn parse_reply<R: Message + Default>(mut reply: Bytes) -> Result<R, Status> {
    if reply.len() < 5 {
        return Err(Status::internal(format!(
            "reply of {} bytes is shorter than a gRPC frame prefix",
            reply.len()
        )));
    }
    match reply.get_u8() {
        0 => {}
        1 => {
            return Err(Status::internal(
                "reply is compressed, but no compression was negotiated",
            ));
        }
        flag => {
            return Err(Status::internal(format!(
                "reply has compressed-flag {flag} (valid: 0, 1)"
            )));
        }
    }
    let len = reply.get_u32() as usize;
    if reply.len() != len {
        return Err(Status::internal(format!(
            "reply frame says {len} bytes, {} came",
            reply.len()
        )));
    }
    R::decode(reply).map_err(|e| Status::internal(format!("reply does not decode: {e}")))
}

/// `None` for grpc-status 0 or no grpc-status header; the error otherwise. A grpc-status that
/// is not a number is UNKNOWN, as the spec says of statuses it does not define.
pub fn grpc_status(headers: &HeaderMap) -> Option<Status> {
    let value = headers.get("grpc-status")?;
    let code = match value.to_str().ok().and_then(|v| v.parse::<i32>().ok()) {
        Some(0) => return None,
        Some(code) => Code::from(code),
        None => Code::Unknown,
    };
    // The message arrives percent-encoded; tonic decodes it the standard way.
    let message = Status::from_header_map(headers)
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    Some(Status::new(code, message))
}

/// gRPC's mapping of HTTP statuses without grpc-status (the spec's table).
pub fn http_code(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The gRPC code of a stream reset with `reason` (PROTOCOL-HTTP2.md, "Errors").
pub fn reset_code(reason: h2::Reason) -> Code {
    match reason {
        // The server did not process the request: safe to retry.
        h2::Reason::REFUSED_STREAM => Code::Unavailable,
        h2::Reason::CANCEL => Code::Cancelled,
        // "with additional error detail indicating that too many requests were sent"
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        // NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT,
        // FRAME_SIZE_ERROR, COMPRESSION_ERROR, CONNECT_ERROR, and codes it does not know.
        _ => Code::Internal,
    }
}

/// How an HTTP/2 failure ended a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The stream was reset (by the server, or by our h2 for its protocol error).
    Reset(h2::Reason),
    /// The connection is gone (socket error, EOF) or going (GOAWAY sent or received).
    Connection,
    /// Our side refused something locally (an h2 library error with a reason).
    Local(h2::Reason),
}

impl Failure {
    pub fn of(e: &h2::Error) -> Self {
        if e.is_io() || e.is_go_away() {
            return Self::Connection;
        }
        match e.reason() {
            Some(reason) if e.is_reset() => Self::Reset(reason),
            Some(reason) => Self::Local(reason),
            // No reason: the connection was closed under the call (h2's user errors).
            None => Self::Connection,
        }
    }

    pub fn code(self) -> Code {
        match self {
            Self::Reset(reason) => reset_code(reason),
            Self::Connection => Code::Unavailable,
            Self::Local(_) => Code::Internal,
        }
    }
}

/// The gRPC status of an HTTP/2 error.
pub fn h2_status(e: h2::Error) -> Status {
    Status::new(Failure::of(&e).code(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use krpc_proto::v1::EchoResponse;

    #[test]
    fn grpc_status_is_read_from_headers_or_trailers() {
        let mut h = HeaderMap::new();
        assert!(grpc_status(&h).is_none(), "no grpc-status yet");
        h.insert("grpc-status", "0".parse().unwrap());
        assert!(grpc_status(&h).is_none(), "0 is OK");
        h.insert("grpc-status", "8".parse().unwrap());
        h.insert("grpc-message", "too%20large".parse().unwrap());
        let s = grpc_status(&h).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "too large");
        h.insert("grpc-status", "eight".parse().unwrap());
        assert_eq!(grpc_status(&h).unwrap().code(), Code::Unknown);
    }

    #[test]
    fn http_statuses_map_as_the_grpc_spec_says() {
        assert_eq!(http_code(http::StatusCode::NOT_FOUND), Code::Unimplemented);
        assert_eq!(http_code(http::StatusCode::BAD_GATEWAY), Code::Unavailable);
        assert_eq!(http_code(http::StatusCode::IM_A_TEAPOT), Code::Unknown);
    }

    #[test]
    fn rst_stream_codes_map_as_the_grpc_spec_says() {
        use h2::Reason as R;
        let table = [
            (R::NO_ERROR, Code::Internal),
            (R::PROTOCOL_ERROR, Code::Internal),
            (R::INTERNAL_ERROR, Code::Internal),
            (R::FLOW_CONTROL_ERROR, Code::Internal),
            (R::SETTINGS_TIMEOUT, Code::Internal),
            (R::FRAME_SIZE_ERROR, Code::Internal),
            (R::REFUSED_STREAM, Code::Unavailable),
            (R::CANCEL, Code::Cancelled),
            (R::COMPRESSION_ERROR, Code::Internal),
            (R::CONNECT_ERROR, Code::Internal),
            (R::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
            (R::INADEQUATE_SECURITY, Code::PermissionDenied),
            (R::HTTP_1_1_REQUIRED, Code::Internal),
        ];
        for (reason, code) in table {
            assert_eq!(reset_code(reason), code, "{reason:?}");
            assert_eq!(Failure::Reset(reason).code(), code);
        }
        assert_eq!(Failure::Connection.code(), Code::Unavailable);
        assert_eq!(Failure::Local(R::PROTOCOL_ERROR).code(), Code::Internal);
    }

    #[test]
    fn a_reply_frame_is_one_uncompressed_message() {
        let message = EchoResponse {
            payload: Bytes::from_static(b"hi"),
        };
        let frame = encode_request(&message);
        assert_eq!(parse_reply::<EchoResponse>(frame.clone()).unwrap(), message);
        let mut compressed = frame.to_vec();
        compressed[0] = 1;
        let err = parse_reply::<EchoResponse>(compressed.into()).unwrap_err();
        assert!(err.message().contains("compressed"), "{err:?}");
        let mut long = frame.to_vec();
        long.push(0);
        assert_eq!(
            parse_reply::<EchoResponse>(long.into()).unwrap_err().code(),
            Code::Internal
        );
        assert!(parse_reply::<EchoResponse>(Bytes::from_static(&[0, 0])).is_err());
    }
}
