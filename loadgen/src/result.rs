//! A run's result: what was asked, what the server said it is, what was measured. Written as
//! JSON (`--json`), read back by `report` and `merge`. Histograms travel whole, in the standard
//! HdrHistogram V2 compressed encoding (base64), so percentiles can be recomputed and results
//! from several processes added exactly.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD};
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer, V2DeflateSerializer},
};
use serde::{Deserialize, Serialize};

use crate::error::{LoadgenError, Result};

/// Latencies are recorded in microseconds, 1 µs to 60 s, 3 significant digits.
pub const LOWEST_US: u64 = 1;
pub const HIGHEST_US: u64 = 60_000_000;
pub const SIGFIG: u8 = 3;

/// The JSON format's version. 2: the latency histograms hold successful RPCs only, failures
/// have their own (`failed`), `achieved_rate` counts successes; format 1 (errors mixed into
/// the latencies) is still read.
pub const FORMAT: u32 = 2;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG).expect("valid histogram bounds")
}

/// V2 compressed, base64: the encoding HdrHistogram's tools exchange.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing to memory does not fail");
    STANDARD.encode(bytes)
}

pub fn decode_histogram(encoded: &str) -> Result<Histogram<u64>> {
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|e| LoadgenError::Histogram {
            detail: format!("not base64: {e}"),
        })?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| LoadgenError::Histogram {
            detail: format!("{e:?}"),
        })?;
    Ok(h)
}

/// Percentiles reported everywhere, as wrk2 prints them.
pub const PERCENTILES: [f64; 9] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 99.999, 99.9999, 100.0];

/// Latency summary of one histogram, microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub stdev_us: f64,
    pub max_us: u64,
    /// (percentile, µs) at each of [`PERCENTILES`].
    pub percentiles: Vec<(f64, u64)>,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            stdev_us: h.stdev(),
            max_us: h.max(),
            percentiles: PERCENTILES
                .iter()
                .map(|&p| (p, h.value_at_percentile(p)))
                .collect(),
        }
    }

    pub fn at(&self, percentile: f64) -> u64 {
        self.percentiles
            .iter()
            .find(|(p, _)| (*p - percentile).abs() < 1e-9)
            .map_or(0, |&(_, v)| v)
    }
}

/// What the target said about itself (its Info RPC).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub version: String,
    pub runtime: String,
    pub cores: u32,
    pub tls_mode: String,
    pub tls_version: String,
    pub cipher: String,
    pub ktls: bool,
    pub ktls_available: bool,
    pub strategy: String,
    pub handoff: String,
}

/// Where the load came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub hostname: String,
    pub kernel: String,
    pub cpus: usize,
    pub loadgen_version: String,
    /// Unix seconds when measurement started.
    pub started_at: f64,
}

impl Environment {
    pub fn here(started_at: f64) -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            loadgen_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at,
        }
    }
}

/// The run's settings, as recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub target: String,
    pub tls: String,
    /// `open` or `closed`.
    pub mode: String,
    /// Asked rate, RPC/s (open loop).
    pub rate: Option<f64>,
    pub arrival: Option<String>,
    pub connections: usize,
    pub concurrency: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub mix: String,
    pub payload_bytes: usize,
    pub keys: u64,
}

/// One run (or several merged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub format: u32,
    /// How this run is named in reports (default: strategy/TLS path of the target).
    pub label: String,
    pub config: ConfigRecord,
    pub server: Option<ServerRecord>,
    pub environment: Environment,
    /// Load generator processes this result combines (1 unless merged).
    pub processes: u32,
    /// Measured window, seconds.
    pub duration_s: f64,
    pub requests: u64,
    pub ok: u64,
    /// Failed RPCs by gRPC status name.
    pub errors: BTreeMap<String, u64>,
    /// RPCs that succeeded inside the measured window, per second: what the target delivered.
    pub achieved_rate: f64,
    /// The failed RPCs: their rate and latency (in no other histogram).
    #[serde(default)]
    pub failed: Failed,
    /// Connections dialled again after they broke.
    #[serde(default)]
    pub reconnects: u64,
    /// Time connections were down inside the measured window, summed over connections.
    #[serde(default)]
    pub downtime_s: f64,
    /// Successful RPCs, from the intended send time: coordinated omission corrected.
    pub latency: Latency,
    /// Successful RPCs, from the actual send time, as tools without a schedule measure.
    pub uncorrected: Latency,
    /// How late the generator sent, relative to its schedule (actual − intended send time).
    pub send_lag: Latency,
    /// Corrected latency histogram, V2 compressed, base64.
    pub histogram: String,
    pub uncorrected_histogram: String,
    pub send_lag_histogram: String,
    /// The server's buffer pool over the run, when the load generator could see it (the demo's
    /// embedded servers): where request buffers were freed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_pool: Option<PoolSummary>,
}

/// Failed RPCs of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// RPCs that failed inside the measured window, per second.
    pub rate: f64,
    /// From the intended send time to the failure.
    pub latency: Latency,
    /// Their histogram, V2 compressed, base64 (empty in format 1 results).
    pub histogram: String,
}

/// Totals of the server's pool counters (krpc_pool_* summed over cores).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSummary {
    pub allocs: u64,
    pub misses: u64,
    pub local_frees: u64,
    pub deferred_frees: u64,
    pub overflow_frees: u64,
    pub kicks: u64,
    pub outstanding: i64,
}

impl PoolSummary {
    /// `part` as a percentage of all frees.
    pub fn share_of_frees(&self, part: u64) -> f64 {
        let frees = self.local_frees + self.deferred_frees + self.overflow_frees;
        if frees == 0 {
            0.0
        } else {
            100.0 * part as f64 / frees as f64
        }
    }
}

impl RunResult {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| LoadgenError::file("read", path, e))?;
        let result: Self =
            serde_json::from_str(&text).map_err(|source| LoadgenError::NotAResult {
                path: path.to_owned(),
                source,
            })?;
        if !(1..=FORMAT).contains(&result.format) {
            return Err(LoadgenError::Format {
                path: path.to_owned(),
                found: result.format,
            });
        }
        Ok(result)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        // Plain data (strings, numbers, maps with string keys): serializing cannot fail.
        let json = serde_json::to_string_pretty(self).expect("results serialize");
        std::fs::write(path, json + "\n").map_err(|e| LoadgenError::file("write", path, e))
    }

    pub fn histogram(&self) -> Result<Histogram<u64>> {
        decode_histogram(&self.histogram)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Failed RPCs as a fraction of those due in the window (0 when none were).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.error_count() as f64 / self.requests as f64
        }
    }

    /// Whether the target kept up with the asked rate (open loop): achieved within 2%.
    pub fn kept_up(&self) -> bool {
        self.config
            .rate
            .is_none_or(|asked| self.achieved_rate >= 0.98 * asked)
    }

    /// The wrk2-style text summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "{} @ {} (tls {}{})",
            self.label,
            c.target,
            self.server
                .as_ref()
                .map_or(c.tls.as_str(), |s| s.tls_mode.as_str()),
            self.server
                .as_ref()
                .map(|s| format!(
                    ", server {} strategy {} handoff {}",
                    s.runtime, s.strategy, s.handoff
                ))
                .unwrap_or_default()
        );
        let load = match c.rate {
            Some(rate) => format!(
                "open loop at {rate} RPC/s ({})",
                c.arrival.as_deref().unwrap_or("uniform")
            ),
            None => "closed loop".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} connections x {} in flight, {load}, {} with {} B payloads over {} keys, {:.1} s measured after {:.1} s warmup",
            c.connections,
            c.concurrency,
            c.mix,
            c.payload_bytes,
            c.keys,
            self.duration_s,
            c.warmup_s
        );
        let _ = writeln!(
            out,
            "  Latency distribution (HdrHistogram, from the intended send time: corrected for coordinated omission)"
        );
        for &(p, v) in &self.latency.percentiles {
            let name = if p >= 100.0 {
                "    max".to_owned()
            } else {
                format!("{p:>7.4}%")
            };
            let _ = writeln!(out, "  {name}  {}", fmt_us(v));
        }
        let _ = writeln!(
            out,
            "  mean {} stdev {}",
            fmt_us(self.latency.mean_us as u64),
            fmt_us(self.latency.stdev_us as u64)
        );
        let u = &self.uncorrected;
        let _ = writeln!(
            out,
            "  uncorrected (from the actual send): p50 {} p99 {} p99.9 {} max {}",
            fmt_us(u.at(50.0)),
            fmt_us(u.at(99.0)),
            fmt_us(u.at(99.9)),
            fmt_us(u.max_us)
        );
        let l = &self.send_lag;
        let _ = writeln!(
            out,
            "  generator send lag behind schedule: p50 {} p99 {} max {}",
            fmt_us(l.at(50.0)),
            fmt_us(l.at(99.0)),
            fmt_us(l.max_us)
        );
        let _ = writeln!(
            out,
            "  {} requests due in {:.2} s; in that window {:.1} RPC/s succeeded{} and {:.1} RPC/s failed",
            self.requests,
            self.duration_s,
            self.achieved_rate,
            c.rate.map(|r| format!(" of {r} asked")).unwrap_or_default(),
            self.failed.rate
        );
        if self.errors.is_empty() {
            let _ = writeln!(out, "  errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            let f = &self.failed.latency;
            let _ = writeln!(
                out,
                "  errors: {} ({:.3}% of requests); failed RPCs took p50 {} p99 {} max {} (not in the latencies above)",
                list.join(", "),
                100.0 * self.error_rate(),
                fmt_us(f.at(50.0)),
                fmt_us(f.at(99.0)),
                fmt_us(f.max_us)
            );
        }
        if self.reconnects > 0 || self.downtime_s > 0.0 {
            let _ = writeln!(
                out,
                "  connections: {} reconnects, {:.3} s down in the window (summed over connections)",
                self.reconnects, self.downtime_s
            );
        }
        if !self.kept_up() {
            let _ = writeln!(
                out,
                "  WARNING: the target did not keep up: {:.1} RPC/s achieved of {} asked; the corrected latencies include the queueing this caused",
                self.achieved_rate,
                c.rate.unwrap_or_default()
            );
        }
        out
    }
}

/// `123us`, `4.56ms`, `1.234s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.3}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_through_the_v2_encoding() {
        let mut h = new_histogram();
        for v in [1, 50, 1000, 123_456, 59_000_000] {
            h.record(v).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back, h);
        assert!(decode_histogram("not base64!").is_err());
        assert!(decode_histogram("aGVsbG8=").is_err());
    }

    #[test]
    fn durations_print_in_readable_units() {
        assert_eq!(fmt_us(999), "999us");
        assert_eq!(fmt_us(1_500), "1.50ms");
        assert_eq!(fmt_us(2_345_678), "2.346s");
    }
}
