//! The handshake driver against tokio-rustls peers, on loopback, without kernel TLS: what it
//! must leave in the socket for the kernel is checked byte for byte.

use std::{sync::Arc, time::Duration};

use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::{ClientTls, DevCerts, Identity, KtlsSupport, ServerTls, TlsPath, Trust};

struct Pki {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pki(path: TlsPath) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let paths = DevCerts::generate(&[]).unwrap().write(dir.path()).unwrap();
    let support = KtlsSupport::all_ciphers_for_test();
    let server = ServerTls {
        identity: Identity::from_pem_files(&paths.server_cert, &paths.server_key).unwrap(),
        client_ca: None,
    }
    .config(path, &support)
    .unwrap();
    let client = ClientTls {
        trust: Trust::ca_file(&paths.ca_cert).unwrap(),
        identity: None,
    }
    .config(path, &support)
    .unwrap();
    Pki { server, client }
}

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// The header and length of each of the next `n` records in the socket.
async fn raw_records(tcp: &mut TcpStream, n: usize) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut header = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut header))
            .await
            .expect("record header in time")
            .unwrap();
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut body = vec![0u8; len];
        tcp.read_exact(&mut body).await.unwrap();
        out.push((header[0], len));
    }
    out
}

/// A TLS 1.3 record of `n` plaintext bytes: inner content type byte and 16-byte AEAD tag.
const fn sealed(n: usize) -> usize {
    n + 1 + 16
}

#[tokio::test]
async fn server_stops_at_the_clients_finished() {
    let pki = pki(TlsPath::Ktls);
    let (client_tcp, mut server_tcp) = pair().await;
    let connector = tokio_rustls::TlsConnector::from(pki.client.clone());
    let client = tokio::spawn(async move {
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, client_tcp).await.unwrap();
        // Right behind the Finished: the bytes the kernel, not the driver, must read.
        tls.write_all(b"hello").await.unwrap();
        tls.flush().await.unwrap();
        tls
    });
    let conn = rustls::server::UnbufferedServerConnection::new(pki.server.clone()).unwrap();
    let done = drive(&mut server_tcp, conn).await.unwrap();
    // The two NewSessionTickets (one flight, one record) went out under the application key;
    // nothing came in under it.
    assert_eq!(done.tx_seq, 1);
    assert_eq!(done.secrets.rx.0, 0);
    assert_eq!(
        done.kernel.protocol_version(),
        rustls::ProtocolVersion::TLSv1_3
    );
    assert_eq!(raw_records(&mut server_tcp, 1).await, vec![(23, sealed(5))]);
    let _client = client.await.unwrap();
}

#[tokio::test]
async fn client_stops_at_its_finished_and_leaves_the_tickets() {
    let pki = pki(TlsPath::Ktls);
    let (mut client_tcp, server_tcp) = pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let server = tokio::spawn(async move {
        let mut tls = acceptor.accept(server_tcp).await.unwrap();
        tls.write_all(b"hi").await.unwrap();
        tls.flush().await.unwrap();
        tls
    });
    let conn = rustls::client::UnbufferedClientConnection::new(
        pki.client.clone(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let done = drive(&mut client_tcp, conn).await.unwrap();
    assert_eq!(
        done.secrets.rx.0, 0,
        "no record under the server's key was read"
    );
    assert_eq!(done.tx_seq, 0);
    // The tickets' record and the application data, both sealed: the kernel's to read.
    let records = raw_records(&mut client_tcp, 2).await;
    assert!(records.iter().all(|(t, _)| *t == 23), "{records:?}");
    assert!(records[0].1 > 100, "two tickets: {records:?}");
    assert_eq!(records[1].1, sealed(2));
    let _server = server.await.unwrap();
}

#[tokio::test]
async fn plaintext_on_the_tls_port_is_refused_at_once() {
    let pki = pki(TlsPath::Ktls);
    let (mut client_tcp, mut server_tcp) = pair().await;
    // An HTTP/2 client that forgot TLS: it sends its preface and waits.
    client_tcp
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let conn = rustls::server::UnbufferedServerConnection::new(pki.server).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), drive(&mut server_tcp, conn))
        .await
        .expect("refused without waiting for more bytes")
        .err()
        .expect("not TLS");
    assert!(err.to_string().contains("does not speak TLS"), "{err}");
}

#[tokio::test]
async fn a_peer_that_hangs_up_mid_handshake_is_a_clear_error() {
    let pki = pki(TlsPath::Ktls);
    let (mut client_tcp, mut server_tcp) = pair().await;
    // A ClientHello header announcing 512 bytes, then nothing.
    client_tcp.write_all(&[22, 3, 1, 2, 0, 1]).await.unwrap();
    drop(client_tcp);
    let conn = rustls::server::UnbufferedServerConnection::new(pki.server).unwrap();
    let err = drive(&mut server_tcp, conn).await.err().expect("closed");
    assert!(matches!(err, HandshakeError::Closed), "{err:?}");
    // A garbage ClientHello body: rustls' own error, no panic.
    let (mut client_tcp, mut server_tcp) = pair().await;
    client_tcp
        .write_all(&[22, 3, 1, 0, 4, 1, 0, 0, 0])
        .await
        .unwrap();
    let conn = rustls::server::UnbufferedServerConnection::new(pki_server()).unwrap();
    let err = drive(&mut server_tcp, conn).await.err().expect("garbage");
    assert!(matches!(err, HandshakeError::Tls(_)), "{err:?}");
}

fn pki_server() -> Arc<rustls::ServerConfig> {
    pki(TlsPath::Ktls).server
}
