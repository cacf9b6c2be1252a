//! Test support: Debian's `prometheus` as a child process on a free loopback port, its
//! readiness, and instant queries through its HTTP API. The process is killed (by PID) and
//! reaped when the handle drops, so a failing test never leaves it behind. And Debian's
//! `chromium`, headless, for what a report looks like once a browser has loaded it.

mod chromium;

pub use chromium::{chromium_binary, dump_dom};

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One scrape job: name, targets (`host:port`), and query parameters for the scrape URL.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    pub targets: Vec<SocketAddr>,
    pub params: Vec<(String, String)>,
}

impl Job {
    pub fn new(name: &str, targets: &[SocketAddr]) -> Self {
        Self {
            name: name.to_owned(),
            targets: targets.to_vec(),
            params: Vec::new(),
        }
    }

    pub fn param(mut self, key: &str, value: &str) -> Self {
        self.params.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// `prometheus` on PATH, or `None` after saying SKIPPED; with `KRPC_REQUIRE_PROMETHEUS` set
/// (scripts/test sets it, having installed Prometheus) a missing binary panics instead.
pub fn prometheus_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("KRPC_REQUIRE_PROMETHEUS").is_none(),
            "KRPC_REQUIRE_PROMETHEUS is set but `prometheus` is not on PATH"
        );
        eprintln!("SKIPPED: `prometheus` is not installed (scripts/test installs Debian's)");
    }
    found
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One series of an instant query: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

impl Prometheus {
    /// Starts Prometheus with native histograms on (it then scrapes protobuf), scraping every
    /// second, data in `dir`; waits until it is ready.
    pub fn start(binary: &Path, dir: &Path, jobs: &[Job]) -> Self {
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for job in jobs {
            config.push_str(&format!("  - job_name: {}\n", job.name));
            if !job.params.is_empty() {
                config.push_str("    params:\n");
                for (k, v) in &job.params {
                    config.push_str(&format!("      {k}: [{v}]\n"));
                }
            }
            let list: Vec<String> = job.targets.iter().map(|t| format!("'{t}'")).collect();
            config.push_str(&format!(
                "    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        // A free loopback port: bound, read, released, handed over.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--enable-feature=native-histograms")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let prometheus = Self { child, addr, log };
        let url = format!("http://{addr}/-/ready");
        let deadline = Instant::now() + Duration::from_secs(60);
        while ureq::get(&url).call().is_err() {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready after 60 s; its log:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query. Panics on a query Prometheus rejects (a bad expression is a bug).
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let body = match ureq::get(&url).query("query", promql).call() {
            Ok(mut r) => r.body_mut().read_to_string().unwrap(),
            Err(e) => panic!("query {promql:?} failed: {e}"),
        };
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "success", "{promql}: {body}");
        json["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// `label` value → sample value, for queries that aggregate by one label.
    pub fn query_by(&self, promql: &str, label: &str) -> BTreeMap<String, f64> {
        self.query(promql)
            .into_iter()
            .map(|(labels, v)| (labels.get(label).cloned().unwrap_or_default(), v))
            .collect()
    }
}
