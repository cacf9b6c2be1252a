//! Debian's Chromium, headless: a page rendered as a person's browser would, and its DOM after
//! load (`--dump-dom`). The flags are those this kind of machine needs: no sandbox (root), no
//! GPU, and none of Chromium's own network traffic (the network is closed; without these flags
//! it retries connections at every start).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// `chromium` on PATH, or `None` after saying SKIPPED; with `KRPC_REQUIRE_CHROMIUM` set
/// (scripts/test sets it, having installed Chromium) a missing binary panics instead.
pub fn chromium_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|p| [p.join("chromium"), p.join("chromium-browser")])
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("KRPC_REQUIRE_CHROMIUM").is_none(),
            "KRPC_REQUIRE_CHROMIUM is set but `chromium` is not on PATH"
        );
        eprintln!("SKIPPED: `chromium` is not installed (scripts/test installs Debian's)");
    }
    found
}

/// Opens `page` (a local file) in headless Chromium and returns the DOM after load.
pub fn dump_dom(chromium: &Path, page: &Path) -> String {
    let profile = tempfile_dir();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "krpc-chromium-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
