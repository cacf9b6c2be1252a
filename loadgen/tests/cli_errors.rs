//! `krpc-loadgen` on bad input: a bad flag is one line and exit 2; bad values and bad files
//! are one clear error and exit 1; nothing is written.

use std::process::{Command, Output};

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_krpc-loadgen"))
        .args(args)
        .env("KRPC_DEV_CERTS", "/nonexistent/krpc-dev-certs")
        .output()
        .unwrap()
}

/// Runs `args`; asserts exit status `code` and one stderr line, prefixed, that says `says`.
fn assert_one_line_error(args: &[&str], code: i32, says: &str) {
    let out = loadgen(args);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("krpc-loadgen: "), "{err}");
    assert!(err.contains(says), "{args:?}: {err}");
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for (args, says) in [
        (&["run"][..], "--rate"),
        (
            &["run", "--rate", "10", "--closed-loop"],
            "cannot be used with",
        ),
        (
            &["run", "--rate", "10", "--method", "post"],
            "expected echo",
        ),
        (
            &["run", "--rate", "10", "--max-error-rate", "1.5"],
            "between 0 and 1",
        ),
        (
            &["run", "--rate", "10", "--method", "echo:x"],
            "whole number",
        ),
        (
            &["run", "--rate", "10", "--arrival", "bursty"],
            "uniform or poisson",
        ),
        (&["run", "--rate", "10", "--duration", "ten"], "--duration"),
        (&["run", "--rate", "10", "--keys", "0"], "--keys"),
        (&["report"], "RESULTS"),
        (&["merge", "a.json"], "--out"),
        (
            &[
                "merge",
                "a.json",
                "--out",
                "m.json",
                "--hdr-log-out",
                "m.hlog",
            ],
            "--hdr-log",
        ),
    ] {
        assert_one_line_error(args, 2, says);
    }
}

#[test]
fn bad_values_and_files_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "[1, 2, 3]").unwrap();
    let junk = junk.to_str().unwrap();
    let html = dir.path().join("r.html");
    let merged = dir.path().join("m.json");
    for (args, says) in [
        (
            vec![
                "run",
                "--tls",
                "off",
                "--addr",
                "127.0.0.1:1",
                "--rate",
                "0",
            ],
            "--rate must be a positive number",
        ),
        (
            vec![
                "run",
                "--tls",
                "off",
                "--addr",
                "127.0.0.1:1",
                "--rate",
                "10",
            ],
            "cannot connect to 127.0.0.1:1",
        ),
        (
            vec![
                "report",
                "/nonexistent/a.json",
                "--html",
                html.to_str().unwrap(),
            ],
            "cannot read /nonexistent/a.json",
        ),
        (
            vec!["report", junk, "--html", html.to_str().unwrap()],
            "is not a krpc-loadgen result",
        ),
        (
            vec!["merge", junk, "--out", merged.to_str().unwrap()],
            "is not a krpc-loadgen result",
        ),
    ] {
        assert_one_line_error(&args, 1, says);
    }
    assert!(
        !html.exists() && !merged.exists(),
        "nothing written on error"
    );
}
