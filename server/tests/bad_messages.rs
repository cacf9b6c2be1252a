//! Malformed protobuf at the message layer: INVALID_ARGUMENT, and the server keeps serving.

mod common;

use bytes::{Buf, BufMut, Bytes};
use common::{Options, TestServer};
use krpc_proto::v1::EchoRequest;
use krpc_transport::{TlsMode, TlsPath};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
};

/// Sends raw bytes as the message and returns the reply's raw bytes: lets a test put anything
/// on the wire inside a well-formed gRPC frame.
#[derive(Default)]
struct RawCodec;

struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument_and_serving_goes_on() {
    let server = TestServer::start(Options::tls(TlsPath::Rustls));
    let args = server.tls_args(TlsMode::Rustls);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_with_connector(args.connector().unwrap())
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    // Field 2 (payload), length-delimited, claims 100 bytes; 3 follow.
    let status = raw
        .unary(
            tonic::Request::new(Bytes::from_static(&[0x12, 100, 1, 2, 3])),
            PathAndQuery::from_static("/krpc.v1.Bench/Echo"),
            RawCodec,
        )
        .await
        .expect_err("malformed message accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed EchoRequest"),
        "{status:?}"
    );

    // The same connection and the server go on serving.
    let mut client = krpc_proto::v1::bench_client::BenchClient::new(channel);
    let reply = client
        .echo(EchoRequest {
            key: Bytes::new(),
            payload: Bytes::from_static(b"fine"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload, Bytes::from_static(b"fine"));
    server.stop().await.unwrap();
}
