//! SIGTERM during an RPC: the server stops accepting, lets the in-flight RPC finish, exits 0.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use bytes::Bytes;
use krpc_proto::v1::EchoRequest;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

const GUARD: Duration = Duration::from_secs(30);

#[tokio::test]
async fn sigterm_drains_in_flight_rpcs_then_exits_0() {
    let mut child = KillOnDrop(Some(
        Command::new(env!("CARGO_BIN_EXE_krpc-server"))
            .args(["--tls", "off", "--listen", "127.0.0.1:0", "--cores", "1"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let pid = Pid::from_raw(child.0.as_ref().unwrap().id() as i32);
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| -> String {
        loop {
            let line = lines
                .recv_timeout(GUARD)
                .expect("server log ended or stalled");
            if line.contains(needle) {
                return line;
            }
        }
    };

    let listening = wait_for("krpc-server listening");
    let addr = listening
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .expect("listening line names the address")
        .to_owned();

    let connector = krpc_transport::Connector::plaintext();
    let mut client = krpc_client::connect(&addr, connector).await.unwrap();
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .echo_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let msg = |text: &'static str| EchoRequest {
        key: Bytes::new(),
        payload: Bytes::from_static(text.as_bytes()),
    };
    requests.send(msg("before")).await.unwrap();
    assert_eq!(replies.next().await.unwrap().unwrap().payload, "before");

    kill(pid, Signal::SIGTERM).unwrap();
    wait_for("SIGTERM: draining");

    // The RPC that was in flight when the signal came still works to its end.
    requests.send(msg("after")).await.unwrap();
    assert_eq!(replies.next().await.unwrap().unwrap().payload, "after");
    drop(requests);
    assert!(replies.next().await.is_none(), "stream ends cleanly");

    wait_for("krpc-server stopped");
    let mut child = child.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// A failed assertion must not leave the server running.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
