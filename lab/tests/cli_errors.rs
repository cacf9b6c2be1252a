//! `krpc-lab` on bad input: a bad flag is one line and exit 2; a bad value or file is one clear
//! error and exit 1; nothing is run.

use std::process::Command;

fn assert_one_line_error(args: &[&str], code: i32, says: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_krpc-lab"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("krpc-lab: "), "{err}");
    assert!(err.contains(says), "{args:?}: {err}");
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for (args, says) in [
        (
            &["experiment", "--loads", "fast"][..],
            "neither `closed` nor a positive rate",
        ),
        (&["experiment", "--rounds", "1"], "--rounds"),
        (&["experiment", "--strategies", "lifo"], "per-core"),
        (
            &["experiment", "--server-cpus", "a-b"],
            "not a CPU or a range",
        ),
        (
            &["experiment", "--remote", "per-core"],
            "LABEL=GRPC_ADDR,METRICS_ADDR",
        ),
        (&["experiment", "--handoff", "sometimes"], "none or owner"),
        (&["demo", "--rate", "fast"], "--rate"),
        (&["report"], "JSON"),
    ] {
        assert_one_line_error(args, 2, says);
    }
}

#[test]
fn bad_values_and_files_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"format\": 1}").unwrap();
    for (args, says) in [
        (
            vec!["experiment", "--baseline", "nope", "--out", out],
            "--baseline \"nope\" is not one of the configurations",
        ),
        (
            vec!["experiment", "--server-cpus", "1000", "--out", out],
            "--server-cpus: CPU 1000 is not one this process may use",
        ),
        (
            vec!["experiment", "--duration", "10ms", "--out", out],
            "--duration must be at least 500ms",
        ),
        (
            vec!["report", "/nonexistent/x.json"],
            "cannot read /nonexistent/x.json",
        ),
        (
            vec!["report", junk.to_str().unwrap()],
            "is not a krpc-lab experiment",
        ),
    ] {
        assert_one_line_error(&args, 1, says);
    }
    assert!(
        !dir.path().join("out").join("experiment.json").exists(),
        "nothing written on error"
    );
}
