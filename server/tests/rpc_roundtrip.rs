//! Every RPC of the Bench service round-trips in plaintext and rustls, on both runtimes, and
//! health checking and reflection answer.

mod common;

use bytes::Bytes;
use common::{Options, TestServer};
use krpc_proto::v1::{self, EchoRequest, GetRequest, InfoRequest, PutRequest};
use krpc_server::RuntimeMode;
use krpc_transport::{TlsMode, TlsPath};
use tokio_stream::StreamExt;

async fn exercise(server: &TestServer, mode: TlsMode) -> v1::InfoResponse {
    let mut client = server.client(&server.tls_args(mode)).await.unwrap();

    for size in [0usize, 1, 100, 16 * 1024, 200 * 1024] {
        let payload = Bytes::from((0..size).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
        let reply = client
            .echo(EchoRequest {
                key: Bytes::from_static(b"k"),
                payload: payload.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.payload, payload, "echo of {size} bytes");
    }

    let put = |value: &'static [u8]| PutRequest {
        key: Bytes::from_static(b"answer"),
        value: Bytes::from_static(value),
    };
    assert!(!client.put(put(b"41")).await.unwrap().into_inner().replaced);
    assert!(client.put(put(b"42")).await.unwrap().into_inner().replaced);
    let got = client
        .get(GetRequest {
            key: Bytes::from_static(b"answer"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
    assert_eq!(got.value, Bytes::from_static(b"42"));
    let missing = client
        .get(GetRequest {
            key: Bytes::from_static(b"nope"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.found && missing.value.is_empty());

    let requests: Vec<EchoRequest> = (0..50u32)
        .map(|i| EchoRequest {
            key: Bytes::new(),
            payload: Bytes::from(i.to_be_bytes().to_vec()),
        })
        .collect();
    let replies: Vec<Bytes> = client
        .echo_stream(tokio_stream::iter(requests.clone()))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().payload)
        .collect()
        .await;
    let sent: Vec<Bytes> = requests.into_iter().map(|r| r.payload).collect();
    assert_eq!(replies, sent, "EchoStream answers every message, in order");

    client.info(InfoRequest {}).await.unwrap().into_inner()
}

#[tokio::test]
async fn plaintext_round_trips() {
    let server = TestServer::start(Options::tls(TlsPath::Off));
    let info = exercise(&server, TlsMode::Off).await;
    assert_eq!(info.tls_mode(), v1::TlsMode::Off);
    assert_eq!(info.tls_version, "");
    assert!(!info.ktls);
    assert_eq!(info.runtime, "thread-per-core");
    assert_eq!(info.cores, 2);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rustls_round_trips_over_tls13() {
    let server = TestServer::start(Options::tls(TlsPath::Rustls));
    let info = exercise(&server, TlsMode::Rustls).await;
    assert_eq!(info.tls_mode(), v1::TlsMode::Rustls);
    assert_eq!(info.tls_version, "TLSv1_3");
    assert!(info.cipher.starts_with("TLS13_"), "{}", info.cipher);
    assert!(!info.ktls);
    assert_eq!(info.configured_tls, "rustls");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn work_stealing_runtime_round_trips() {
    let server = TestServer::start(Options {
        runtime: RuntimeMode::WorkStealing,
        ..Options::tls(TlsPath::Rustls)
    });
    let info = exercise(&server, TlsMode::Rustls).await;
    assert_eq!(info.runtime, "work-stealing");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_describe_the_service() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let server = TestServer::start(Options::tls(TlsPath::Rustls));
    let connector = server.tls_args(TlsMode::Rustls).connector().unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();

    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: krpc_proto::BENCH_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&krpc_proto::BENCH_SERVICE.to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}
