//! `krpc-server` on bad flags: one line on stderr naming the problem, exit status 2, nothing
//! started (no port taken, no certificates written).

use std::process::Command;

fn server(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_krpc-server"))
        .args(args)
        .env("KRPC_DEV_CERTS", "/nonexistent/krpc-dev-certs")
        .output()
        .unwrap()
}

#[test]
fn bad_pool_and_message_flags_exit_2_with_one_line() {
    for (args, says) in [
        (&["--strategy", "lifo"][..], "per-core"),
        (&["--handoff", "everywhere"], "none or owner"),
        (&["--defer-max", "0"], "--defer-max"),
        (&["--pool-cap-bytes", "lots"], "not a size"),
        (&["--max-message-bytes", "0"], "at least 1 byte"),
        (&["--max-message-bytes", "4XB"], "not a size"),
        (&["--metrics-listen", "localhost"], "--metrics-listen"),
    ] {
        let out = server(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("krpc-server: "), "{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn a_taken_metrics_port_is_one_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = server(&[
        "--tls",
        "off",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &addr,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (--metrics-listen)")),
        "{stderr}"
    );
}
