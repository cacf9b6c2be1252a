//! Bad input at the message layer, beyond malformed protobuf (bad_messages.rs): a message over
//! `--max-message-bytes` is RESOURCE_EXHAUSTED without touching the pool; an unknown method is
//! UNIMPLEMENTED; the connection and the server go on serving.

mod common;

use bytes::Bytes;
use common::{Options, RawCodec, TestServer};
use krpc_proto::v1::{EchoRequest, bench_client::BenchClient};
use krpc_transport::TlsPath;
use tonic::{Code, codegen::http::uri::PathAndQuery};

const LIMIT: usize = 1024;

fn echo(len: usize) -> EchoRequest {
    EchoRequest {
        key: Bytes::new(),
        payload: Bytes::from(vec![1u8; len]),
    }
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_and_the_pool_is_untouched() {
    let server = TestServer::start(Options {
        max_message_bytes: LIMIT,
        ..Options::tls(TlsPath::Off)
    });
    let mut client = BenchClient::new(server.plain_channel().await);
    client.echo(echo(100)).await.unwrap();
    let before = server.server.pool().snapshot().total().allocs;

    let status = client.echo(echo(LIMIT + 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-message-bytes 1024"),
        "{status:?}"
    );
    // Streaming: the refusal comes in the trailers, rewritten the same way.
    let status = match client
        .echo_stream(tokio_stream::iter([echo(LIMIT * 4)]))
        .await
    {
        Err(status) => status,
        Ok(replies) => replies.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        server.server.pool().snapshot().total().allocs,
        before,
        "refused before decoding: no pool buffer taken"
    );

    // The same connection goes on serving, and the refusals are counted by code.
    let reply = client.echo(echo(LIMIT - 10)).await.unwrap().into_inner();
    assert_eq!(reply.payload.len(), LIMIT - 10);
    let text = server.scrape();
    assert!(
        text.lines()
            .any(|l| l.starts_with("krpc_rpc_duration_seconds_count{")
                && l.contains("method=\"Echo\"")
                && l.contains("code=\"RESOURCE_EXHAUSTED\"")),
        "{text}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_method_is_unimplemented_and_serving_goes_on() {
    let server = TestServer::start(Options::tls(TlsPath::Off));
    let channel = server.plain_channel().await;
    let mut raw = tonic::client::Grpc::new(channel.clone());
    for path in ["/krpc.v1.Bench/Nope", "/no.such.Service/Echo"] {
        raw.ready().await.unwrap();
        let status = raw
            .unary(
                tonic::Request::new(Bytes::from_static(b"")),
                PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
    let mut client = BenchClient::new(channel);
    assert_eq!(
        client
            .echo(echo(5))
            .await
            .unwrap()
            .into_inner()
            .payload
            .len(),
        5
    );
    // Unknown paths share one label value: a scanner cannot create series at will.
    let text = server.scrape();
    assert!(
        text.lines()
            .any(|l| l.starts_with("krpc_rpc_duration_seconds_count{")
                && l.contains("method=\"other\"")
                && l.contains("code=\"UNIMPLEMENTED\"")),
        "{text}"
    );
    server.stop().await.unwrap();
}
