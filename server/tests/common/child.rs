//! krpc-server as a child process: its own RSS, file descriptors and exit status can be
//! watched, and SIGTERM / SIGKILL sent, which an in-process server cannot offer.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// How long to wait for the server to say something before the test fails.
pub const LOG_GUARD: Duration = Duration::from_secs(30);

pub struct ServerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    /// Scrapes over one kept-alive connection: its descriptor in the server stays the same
    /// one, so descriptor counts compare.
    agent: ureq::Agent,
    /// Every line the server logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
    _certs: tempfile::TempDir,
}

impl ServerProcess {
    /// `krpc-server --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --cores 1 ARGS` (ARGS
    /// may name another `--cores`), with
    /// development certificates in a temporary directory. `fd_limit` runs it under
    /// `ulimit -n`.
    pub fn start(args: &[&str], fd_limit: Option<u32>) -> Self {
        let certs = tempfile::tempdir().unwrap();
        let bin = env!("CARGO_BIN_EXE_krpc-server");
        let mut base = vec!["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
        if !args.contains(&"--cores") {
            base.extend(["--cores", "1"]);
        }
        let mut command = match fd_limit {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("bash");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                c
            }
        };
        command
            .args(base)
            .args(args)
            .env("KRPC_DEV_CERTS", certs.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line.clone());
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let mut server = Self {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            metrics_addr: "0.0.0.0:0".parse().unwrap(),
            lines,
            agent: ureq::Agent::new_with_defaults(),
            log,
            _certs: certs,
        };
        let listening = server.wait_for("krpc-server listening");
        let field = |name: &str| {
            listening
                .split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {listening:?}"))
                .to_owned()
        };
        server.addr = field("addr=").parse().unwrap();
        server.metrics_addr = field("metrics=http://")
            .trim_end_matches("/metrics")
            .parse()
            .unwrap();
        server
    }

    /// The development CA the server's certificate chains to.
    pub fn ca(&self) -> std::path::PathBuf {
        self._certs.path().join("ca.pem")
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + LOG_GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "the server never logged {needle:?}; its log:\n{}",
                    self.log.lock().unwrap().join("\n")
                ),
            }
        }
    }

    /// Log lines so far that contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// `(VmRSS, VmHWM)` in KiB: resident memory now, and its peak since the start.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// What the open file descriptors are (`socket:[…]`, `/dev/null`, …), sorted.
    pub fn fd_targets(&self) -> Vec<String> {
        let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        targets.sort();
        targets
    }

    /// `GET /metrics` as text.
    pub fn scrape(&self) -> String {
        self.agent
            .get(&format!("http://{}/metrics", self.metrics_addr))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// The sum of one metric's samples (`name` with or without labels).
    pub fn metric(&self, name: &str) -> i64 {
        super::sum_series(&self.scrape(), name)
    }

    /// One sample: `name{label="value"}`.
    pub fn metric_with(&self, name: &str, label: &str, value: &str) -> i64 {
        let text = self.scrape();
        let needle = format!("{label}=\"{value}\"");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter(|l| l.contains(&needle))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as i64)
            .sum()
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// Waits for the server to exit (at most `guard`).
    pub fn wait_exit(&mut self, guard: Duration) -> ExitStatus {
        let deadline = Instant::now() + guard;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {guard:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    /// A failed assertion must not leave the server running.
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
