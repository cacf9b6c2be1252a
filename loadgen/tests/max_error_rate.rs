//! `--max-error-rate R`: the exit status says whether more than R of the RPCs failed (3), so CI
//! can gate on it; the summary says what failed either way.

mod common;

use common::fake::{FakeServer, Reply};

/// `krpc-loadgen run` against `addr` at 500 RPC/s for 1 s with `--max-error-rate max`.
async fn loadgen(addr: std::net::SocketAddr, max: &str) -> std::process::Output {
    let addr = addr.to_string();
    let max = max.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_krpc-loadgen"))
            .args([
                "run",
                "--tls",
                "off",
                "--addr",
                &addr,
                "--rate",
                "500",
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--connections",
                "1",
                "--quiet",
                "--max-error-rate",
                &max,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_status_says_whether_the_error_rate_was_over_the_limit() {
    // One call in ten fails with INTERNAL: an error rate of 10%.
    let server = FakeServer::start(|n| {
        if n % 10 == 0 {
            Reply::Status(13)
        } else {
            Reply::Ok
        }
    })
    .await;
    let over = loadgen(server.addr, "0.05").await;
    let stderr = String::from_utf8_lossy(&over.stderr);
    assert_eq!(over.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("is over --max-error-rate 0.05"), "{stderr}");
    let stdout = String::from_utf8_lossy(&over.stdout);
    assert!(stdout.contains("errors: INTERNAL 50"), "{stdout}");

    let under = loadgen(server.addr, "0.2").await;
    assert_eq!(
        under.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&under.stderr)
    );
}
