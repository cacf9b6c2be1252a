//! An experiment as written to JSON: what was asked, where it ran, and every trial (one
//! configuration, one load, one round) with the load generator's whole result and the server's
//! own counters over the measured window. Figures are derived from the trials on reading, so
//! nothing in the file is a summary that could disagree with its data.

use std::{collections::BTreeMap, fmt, path::Path, str::FromStr};

use krpc_loadgen::result::{Environment, RunResult};
use serde::{Deserialize, Serialize};

use crate::{
    cpus::CpuPlan,
    error::{LabError, Result},
    scrape::{FreePathSource, PoolCounters},
};

/// The JSON format's version.
pub const FORMAT: u32 = 1;

/// A load point: closed loop (saturation) or a fixed open-loop rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// RPC/s; `None` is closed loop.
    pub rate: Option<f64>,
}

impl Load {
    pub const CLOSED: Load = Load { rate: None };

    pub fn is_closed(&self) -> bool {
        self.rate.is_none()
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rate {
            None => f.write_str("closed loop"),
            Some(r) => write!(f, "{r} RPC/s"),
        }
    }
}

impl FromStr for Load {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "closed" => Ok(Self::CLOSED),
            r => match r.parse::<f64>() {
                Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Self { rate: Some(rate) }),
                _ => Err(format!(
                    "{s:?} is neither `closed` nor a positive rate in RPC/s (example: closed,5000)"
                )),
            },
        }
    }
}

/// One server configuration, as recorded. The settings are those the lab started it with;
/// for a remote server they are absent (its trials' results hold its Info reply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub label: String,
    pub strategy: Option<String>,
    pub handoff: Option<String>,
    pub defer_max: Option<usize>,
    pub cores: Option<usize>,
    pub runtime: Option<String>,
    /// `host:port` of a server the lab did not start (`--remote`); `None`: embedded, fresh
    /// for every trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

/// How every trial loaded its server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadSettings {
    pub connections: usize,
    pub concurrency: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub mix: String,
    pub payload_bytes: usize,
    pub keys: u64,
    pub loadgen_threads: usize,
}

/// What the server said changed over a trial's measured window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerDelta {
    /// Seconds between the two scrapes.
    pub window_s: f64,
    /// CPU seconds per core; empty when the server does not export its CPU clocks.
    pub cpu_s: BTreeMap<String, f64>,
    /// RPCs the server finished.
    pub rpcs: f64,
    /// CPU seconds in the pool's free path.
    pub free_path_s: Option<f64>,
    pub pool: PoolCounters,
}

/// One configuration under one load in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub round: usize,
    /// Place in its round (the order rotates from round to round).
    pub position: usize,
    pub config: String,
    pub load: Load,
    pub server: ServerDelta,
    /// CPU seconds of the load generator's threads over the same window.
    pub loadgen_cpu_s: Option<f64>,
    /// The load generator's result: latencies (histograms included), throughput, errors.
    pub result: RunResult,
}

impl Trial {
    pub fn server_cpu_s(&self) -> Option<f64> {
        (!self.server.cpu_s.is_empty()).then(|| self.server.cpu_s.values().sum())
    }

    /// Per RPC the server finished in the window, in microseconds.
    fn per_rpc_us(&self, seconds: Option<f64>) -> Option<f64> {
        let s = seconds?;
        (self.server.rpcs > 0.0).then(|| s / self.server.rpcs * 1e6)
    }

    pub fn server_cpu_per_rpc_us(&self) -> Option<f64> {
        self.per_rpc_us(self.server_cpu_s())
    }

    pub fn loadgen_cpu_per_rpc_us(&self) -> Option<f64> {
        self.per_rpc_us(self.loadgen_cpu_s)
    }

    /// Free-path time as a share of the server's CPU time (0..1).
    pub fn free_path_share(&self) -> Option<f64> {
        let cpu = self.server_cpu_s()?;
        (cpu > 0.0).then_some(self.server.free_path_s? / cpu)
    }

    /// Cores' worth of CPU the server used (CPU seconds per second).
    pub fn server_busy_cores(&self) -> Option<f64> {
        (self.server.window_s > 0.0).then_some(self.server_cpu_s()? / self.server.window_s)
    }

    pub fn loadgen_busy_cores(&self) -> Option<f64> {
        (self.server.window_s > 0.0).then_some(self.loadgen_cpu_s? / self.server.window_s)
    }
}

/// A whole experiment (or demo).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub format: u32,
    /// `experiment` or `demo`.
    pub kind: String,
    /// The command line that ran it.
    pub command: String,
    pub configs: Vec<ConfigRecord>,
    /// The label every other configuration is compared with.
    pub baseline: String,
    pub loads: Vec<Load>,
    pub rounds: usize,
    pub load_settings: LoadSettings,
    /// TLS path the connections took (`off`, `rustls`, `ktls`).
    pub tls: String,
    pub cpus: CpuPlan,
    /// Each trial against a server started for it (embedded), or not (remote).
    pub fresh_servers: bool,
    pub free_path_source: Option<FreePathSource>,
    /// `release` or `debug`: figures from a debug build do not represent krpc.
    pub build: String,
    pub environment: Environment,
    pub wall_s: f64,
    pub trials: Vec<Trial>,
}

impl Experiment {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LabError::file("read", path, e))?;
        serde_json::from_str(&text).map_err(|source| LabError::NotAnExperiment {
            path: path.to_owned(),
            source,
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        // Plain data (strings, numbers, maps with string keys): serializing cannot fail.
        let json = serde_json::to_string_pretty(self).expect("experiments serialize");
        std::fs::write(path, json + "\n").map_err(|e| LabError::file("write", path, e))
    }

    /// Trials of `config` under `load`, in round order.
    pub fn trials_of(&self, config: &str, load: Load) -> Vec<&Trial> {
        self.trials
            .iter()
            .filter(|t| t.config == config && t.load == load)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_parse_from_the_flag() {
        assert_eq!("closed".parse::<Load>(), Ok(Load::CLOSED));
        assert_eq!("5000".parse::<Load>().unwrap().rate, Some(5000.0));
        assert_eq!(Load { rate: Some(5000.0) }.to_string(), "5000 RPC/s");
        for bad in ["0", "-3", "fast", "inf"] {
            assert!(bad.parse::<Load>().is_err(), "{bad}");
        }
    }
}
