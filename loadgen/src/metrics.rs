//! The load generator's own metrics (`--metrics-listen`): what the client saw, labelled with
//! the target's strategy and TLS path, so a dashboard can put it next to the server's view.
//! Each connection task records into its own histogram (label `conn`): no lock shared between
//! connections.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tonic::Code;

use krpc_telemetry::code_name;

use crate::workload::Method;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
    strategy: String,
    tls: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: &'static str,
    strategy: String,
    tls: String,
    conn: String,
}

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// The load generator's registry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LoadgenMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    rpcs: Family<RpcLabels, Counter>,
    latency: HistogramFamily,
    asked: Gauge<f64, AtomicU64>,
    target: OnceLock<(String, String)>,
}

impl Default for LoadgenMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadgenMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("krpc_loadgen");
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpcs",
            "RPCs completed, by method and gRPC status",
            rpcs.clone(),
        );
        let latency = HistogramFamily::new_with_constructor(krpc_telemetry::latency_histogram);
        registry.register(
            "rpc_duration_seconds",
            "Client-side RPC latency from the intended send time (coordinated omission corrected)",
            latency.clone(),
        );
        let asked = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "asked_rate",
            "Open-loop rate asked for, RPC/s (0 in closed loop)",
            asked.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry: Arc::new(registry),
                rpcs,
                latency,
                asked,
                target: OnceLock::new(),
            }),
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }

    /// The target's strategy and TLS path, as its Info RPC said (labels of every series).
    pub(crate) fn describe_target(&self, strategy: &str, tls: &str) {
        let _ = self.inner.target.set((strategy.to_owned(), tls.to_owned()));
    }

    pub(crate) fn asked_rate(&self, rate: f64) {
        self.inner.asked.set(rate);
    }

    pub(crate) fn connection(&self, index: usize) -> ConnMetrics {
        ConnMetrics {
            metrics: self.clone(),
            conn: index.to_string(),
            counters: Default::default(),
            histograms: Default::default(),
        }
    }
}

/// One connection's handles, looked up once each.
pub(crate) struct ConnMetrics {
    metrics: LoadgenMetrics,
    conn: String,
    counters: HashMap<(Method, i32), Counter>,
    histograms: HashMap<Method, Histogram>,
}

impl ConnMetrics {
    pub(crate) fn record(&mut self, method: Method, code: Code, latency_us: u64) {
        let inner = &self.metrics.inner;
        let (strategy, tls) = inner
            .target
            .get()
            .cloned()
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        self.counters
            .entry((method, code as i32))
            .or_insert_with(|| {
                inner
                    .rpcs
                    .get_or_create(&RpcLabels {
                        method: method.as_str(),
                        code: code_name(code),
                        strategy: strategy.clone(),
                        tls: tls.clone(),
                    })
                    .clone()
            })
            .inc();
        // The latency histogram is of successful RPCs only (failures are counted above).
        if code != Code::Ok {
            return;
        }
        self.histograms
            .entry(method)
            .or_insert_with(|| {
                inner
                    .latency
                    .get_or_create(&LatencyLabels {
                        method: method.as_str(),
                        strategy,
                        tls,
                        conn: self.conn.clone(),
                    })
                    .clone()
            })
            .observe(latency_us as f64 * 1e-6);
    }
}
