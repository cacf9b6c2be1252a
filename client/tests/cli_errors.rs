//! The `krpc` CLI on bad input: one line, the right exit status, nothing else.

use std::process::Command;

fn krpc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_krpc"))
        .args(args)
        .env("KRPC_DEV_CERTS", "/nonexistent/krpc-dev-certs")
        .output()
        .unwrap()
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for args in [
        &["--bogus", "info"][..],
        &["--tls", "ssl3", "info"],
        &["frobnicate"],
    ] {
        let out = krpc(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("krpc: "), "{stderr}");
    }
}

#[test]
fn missing_ca_says_what_to_pass() {
    let out = krpc(&["--tls", "rustls", "info"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--ca FILE") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

#[test]
fn unreachable_server_is_one_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let out = krpc(&["--tls", "off", "--addr", "127.0.0.1:1", "info"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cannot connect to 127.0.0.1:1"), "{stderr}");
}
