//! Malformed protobuf at the message layer: INVALID_ARGUMENT, and the server keeps serving.

mod common;

use bytes::Bytes;
use common::{Options, RawCodec, TestServer};
use krpc_proto::v1::EchoRequest;
use krpc_transport::{TlsMode, TlsPath};
use tonic::codegen::http::uri::PathAndQuery;

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
