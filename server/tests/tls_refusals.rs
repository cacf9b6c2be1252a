//! What TLS refuses, and how clearly: mTLS without a client certificate, a server certificate
//! from another CA, and `--tls ktls` on a kernel without kernel TLS.

mod common;

use bytes::Bytes;
use common::{Options, TestServer, chain};
use krpc_proto::v1::EchoRequest;
use krpc_transport::{DevCerts, KtlsSupport, TlsMode, TlsPath};

fn echo() -> EchoRequest {
    EchoRequest {
        key: Bytes::new(),
        payload: Bytes::from_static(b"ping"),
    }
}

#[tokio::test]
async fn mtls_accepts_a_client_certificate_and_refuses_its_absence() {
    let server = TestServer::start(Options {
        mtls: true,
        ..Options::tls(TlsPath::Rustls)
    });

    let with_cert = server.with_client_cert(server.tls_args(TlsMode::Rustls));
    let mut client = server.client(&with_cert).await.unwrap();
    let reply = client.echo(echo()).await.unwrap().into_inner();
    assert_eq!(reply.payload, Bytes::from_static(b"ping"));

    // TLS 1.3: the client finishes its side of the handshake before the server checks the
    // (missing) certificate, so the refusal shows either at connect or at the first RPC, as a
    // closed connection. Either way, no RPC gets through.
    let without = server.tls_args(TlsMode::Rustls);
    if let Ok(mut client) = server.client(&without).await {
        let status = client
            .echo(echo())
            .await
            .expect_err("an RPC without a client certificate succeeded under mTLS");
        assert_ne!(status.code(), tonic::Code::Ok);
    }
    // And the server keeps serving the client that has a certificate.
    let reply = client.echo(echo()).await.unwrap().into_inner();
    assert_eq!(reply.payload, Bytes::from_static(b"ping"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_clearly() {
    let server = TestServer::start(Options::tls(TlsPath::Rustls));
    let other = tempfile::tempdir().unwrap();
    let other_ca = DevCerts::generate(&[])
        .unwrap()
        .write(other.path())
        .unwrap()
        .ca_cert;
    let mut args = server.tls_args(TlsMode::Rustls);
    args.ca = Some(other_ca);

    let err = server
        .client(&args)
        .await
        .expect_err("untrusted server accepted");
    let text = chain(&err);
    assert!(
        text.contains("TLS handshake with 127.0.0.1 failed"),
        "{text}"
    );
    assert!(text.contains("UnknownIssuer"), "{text}");
    server.stop().await.unwrap();
}

#[test]
fn ktls_mode_on_a_kernel_without_ktls_names_cause_and_fix() {
    let support = KtlsSupport::probe();
    if support.is_available() {
        eprintln!("skipped: this kernel has kTLS (the ktls-vm test covers this kernel)");
        return;
    }
    // Library: the client refuses to build a connector.
    let args = krpc_client::TlsArgs {
        tls: TlsMode::Ktls,
        ca: None,
        client_cert: None,
        client_key: None,
        insecure: true,
        server_name: None,
    };
    let err = args
        .connector()
        .expect_err("ktls accepted without kernel TLS")
        .to_string();
    assert!(
        err.contains("modprobe tls") && err.contains("CONFIG_TLS"),
        "{err}"
    );

    // Binary: the server stops at start-up with one line, before binding anything.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krpc-server"))
        .args(["--tls", "ktls", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("kernel TLS is not available"), "{stderr}");
    assert!(
        stderr.contains("ENOENT") && stderr.contains("modprobe tls"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for args in [
        &["--tls", "tls13"][..],
        &["--runtime", "fibers"],
        &["--cores", "x"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_krpc-server"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("krpc-server: "), "{stderr}");
    }
}
