//! Reading a krpc-server's own account of a round from its Prometheus endpoint: CPU time per
//! core, RPCs served, the pool's counters and the time its free path took. The lab reads the
//! same endpoint whether the server is embedded or remote, so every figure means the same
//! thing in both cases.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// One sample line: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed text exposition.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// `GET http://{addr}/metrics?format=text`.
    pub fn fetch(addr: &str) -> Result<Self> {
        let url = format!("http://{addr}/metrics?format=text");
        let fail = |detail: String| LabError::Scrape {
            url: url.clone(),
            detail,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        let text = agent
            .get(&url)
            .call()
            .map_err(|e| fail(e.to_string()))?
            .body_mut()
            .read_to_string()
            .map_err(|e| fail(e.to_string()))?;
        Self::parse(&text).map_err(fail)
    }

    /// Parses OpenMetrics / Prometheus text (comments skipped).
    pub fn parse(text: &str) -> Result<Self, String> {
        let samples = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(i, l)| parse_line(l).map_err(|e| format!("line {}: {e}: {l:?}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(Self { samples })
    }

    /// Sum of every sample named `name` whose labels satisfy `keep`; `None` if there is none.
    pub fn sum_where(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> Option<f64> {
        let mut found = false;
        let total = self
            .samples
            .iter()
            .filter(|s| s.name == name && keep(s))
            .inspect(|_| found = true)
            .map(|s| s.value)
            .sum();
        found.then_some(total)
    }

    pub fn sum(&self, name: &str) -> Option<f64> {
        self.sum_where(name, |_| true)
    }

    /// `name` per value of `label`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            if let Some(v) = s.label(label) {
                *out.entry(v.to_owned()).or_default() += s.value;
            }
        }
        out
    }
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or_else(|| "no value".to_owned())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("label value not quoted".into());
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '"')) => break,
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c)) => value.push(c),
                                None => return Err("unterminated label value".into()),
                            },
                            Some((_, c)) => value.push(c),
                            None => return Err("unterminated label value".into()),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
        let end = end.ok_or_else(|| "unterminated label set".to_owned())?;
        rest = &body[end..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| "no value".to_owned())?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .map_err(|_| format!("value {v:?} is not a number"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Where the free-path time came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FreePathSource {
    /// `krpc_pool_free_path_seconds_total`: the pool's own estimate (sampled frees scaled to
    /// every free, plus every drain that did work, timed in full).
    Exported,
    /// A server from before that counter: the mean of its sampled frees
    /// (`krpc_pool_free_duration_seconds_sum / _count`) times its frees; drains not timed.
    SampledFrees,
}

impl FreePathSource {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Exported => {
                "krpc_pool_free_path_seconds_total (the pool's estimate: sampled frees scaled to \
                 every free, plus drains timed in full)"
            }
            Self::SampledFrees => {
                "the mean sampled free (krpc_pool_free_duration_seconds) times the frees; drains \
                 not timed (a server without krpc_pool_free_path_seconds_total)"
            }
        }
    }
}

/// CPU seconds the server spent in the pool's free path so far. The one place that knows
/// which metric holds it: the pool's own counter where the server exports it, else an estimate
/// from the sampled free durations (whatever the sampling rate: mean sample times frees).
pub fn free_path_seconds(scrape: &Scrape) -> Option<(f64, FreePathSource)> {
    if let Some(s) = scrape.sum("krpc_pool_free_path_seconds_total") {
        return Some((s, FreePathSource::Exported));
    }
    let sum = scrape.sum("krpc_pool_free_duration_seconds_sum")?;
    let samples = scrape.sum("krpc_pool_free_duration_seconds_count")?;
    let frees = ["local", "deferred", "overflow"]
        .iter()
        .filter_map(|kind| scrape.sum(&format!("krpc_pool_{kind}_frees_total")))
        .sum::<f64>();
    let mean = if samples > 0.0 { sum / samples } else { 0.0 };
    Some((mean * frees, FreePathSource::SampledFrees))
}

/// What the lab takes from one scrape of a krpc-server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerCounters {
    /// CPU seconds per core (`krpc_server_cpu_seconds_total`); empty if the server does not
    /// export it.
    pub cpu_s: BTreeMap<String, f64>,
    /// RPCs finished (`krpc_rpc_duration_seconds_count`, every method and code).
    pub rpcs: f64,
    /// Free-path CPU seconds, if exported in either form.
    pub free_path_s: Option<f64>,
    pub free_path_source: Option<FreePathSource>,
    pub pool: PoolCounters,
}

/// The pool's counters summed over cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolCounters {
    pub allocs: f64,
    pub hits: f64,
    pub misses: f64,
    pub local_frees: f64,
    pub deferred_frees: f64,
    pub overflow_frees: f64,
    pub drained: f64,
    pub kicks: f64,
}

impl PoolCounters {
    /// `self - before`, counter by counter.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            allocs: self.allocs - before.allocs,
            hits: self.hits - before.hits,
            misses: self.misses - before.misses,
            local_frees: self.local_frees - before.local_frees,
            deferred_frees: self.deferred_frees - before.deferred_frees,
            overflow_frees: self.overflow_frees - before.overflow_frees,
            drained: self.drained - before.drained,
            kicks: self.kicks - before.kicks,
        }
    }

    pub fn frees(&self) -> f64 {
        self.local_frees + self.deferred_frees + self.overflow_frees
    }
}

impl ServerCounters {
    pub fn from_scrape(scrape: &Scrape) -> Self {
        let pool = |name: &str| scrape.sum(name).unwrap_or(0.0);
        let free = free_path_seconds(scrape);
        Self {
            cpu_s: scrape.by_label("krpc_server_cpu_seconds_total", "core"),
            rpcs: scrape.sum("krpc_rpc_duration_seconds_count").unwrap_or(0.0),
            free_path_s: free.map(|(s, _)| s),
            free_path_source: free.map(|(_, src)| src),
            pool: PoolCounters {
                allocs: pool("krpc_pool_allocs_total"),
                hits: pool("krpc_pool_hits_total"),
                misses: pool("krpc_pool_misses_total"),
                local_frees: pool("krpc_pool_local_frees_total"),
                deferred_frees: pool("krpc_pool_deferred_frees_total"),
                overflow_frees: pool("krpc_pool_overflow_frees_total"),
                drained: pool("krpc_pool_drained_buffers_total"),
                kicks: pool("krpc_pool_kicks_total"),
            },
        }
    }

    pub fn cpu_total(&self) -> Option<f64> {
        (!self.cpu_s.is_empty()).then(|| self.cpu_s.values().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP krpc_server_cpu_seconds CPU time
# TYPE krpc_server_cpu_seconds counter
krpc_server_cpu_seconds_total{core="0"} 1.5
krpc_server_cpu_seconds_total{core="1"} 0.5
krpc_rpc_duration_seconds_count{method="Echo",code="OK",strategy="local",tls="off",core="0"} 300
krpc_rpc_duration_seconds_count{method="Put",code="OK",strategy="local",tls="off",core="1"} 100
krpc_rpc_duration_seconds_bucket{method="Put",le="+Inf"} 100
krpc_pool_allocs_total{strategy="local",core="0"} 250
krpc_pool_allocs_total{strategy="local",core="1"} 150
krpc_pool_misses_total{strategy="local",core="1"} 7
krpc_pool_local_frees_total{strategy="local",core="0"} 390
krpc_pool_overflow_frees_total{strategy="local",core="1"} 10
krpc_pool_free_duration_seconds_sum{strategy="local",core="0"} 0.001
krpc_pool_free_duration_seconds_sum{strategy="local",core="1"} 0.002
krpc_pool_free_duration_seconds_count{strategy="local",core="0"} 2
krpc_pool_free_duration_seconds_count{strategy="local",core="1"} 4
krpc_build_info{version="0.1.0",note="a \"quoted\" label, with a comma"} 1
# EOF
"#;

    #[test]
    fn the_servers_exposition_parses_into_its_counters() {
        let scrape = Scrape::parse(TEXT).unwrap();
        let c = ServerCounters::from_scrape(&scrape);
        assert_eq!(c.cpu_s["0"], 1.5);
        assert_eq!(c.cpu_total(), Some(2.0));
        assert_eq!(c.rpcs, 400.0);
        assert_eq!(c.pool.allocs, 400.0);
        assert_eq!(c.pool.misses, 7.0);
        // A server without the pool's own counter: the mean sample (3 ms / 6) times 400 frees.
        assert_eq!(c.free_path_source, Some(FreePathSource::SampledFrees));
        assert!(
            (c.free_path_s.unwrap() - 0.2).abs() < 1e-12,
            "{:?}",
            c.free_path_s
        );
        let info = scrape
            .samples
            .iter()
            .find(|s| s.name == "krpc_build_info")
            .unwrap();
        assert_eq!(info.label("note"), Some("a \"quoted\" label, with a comma"));
        assert_eq!(
            scrape.sum("krpc_rpc_duration_seconds_bucket"),
            Some(100.0),
            "+Inf bucket parsed"
        );
    }

    #[test]
    fn the_pools_own_free_path_counter_wins_when_exported() {
        let text = format!(
            "{TEXT}krpc_pool_free_path_seconds_total{{core=\"0\",strategy=\"local\"}} 0.25\n"
        );
        let scrape = Scrape::parse(&text).unwrap();
        assert_eq!(
            free_path_seconds(&scrape),
            Some((0.25, FreePathSource::Exported))
        );
    }

    #[test]
    fn a_server_without_cpu_clocks_has_no_cpu_figures_and_garbage_is_an_error() {
        let c = ServerCounters::from_scrape(&Scrape::parse("krpc_pool_allocs_total 3\n").unwrap());
        assert_eq!(c.cpu_total(), None);
        assert_eq!(c.free_path_s, None);
        for bad in [
            "x{a=b} 1",
            "x{a=\"b} 1",
            "x{a=\"b\"",
            "x not-a-number",
            "lonely",
        ] {
            assert!(Scrape::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
