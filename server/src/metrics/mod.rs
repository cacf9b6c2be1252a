//! Prometheus exposition: RPC latency (classic and native histograms, recorded per core), the
//! pool's counters, connections (admission, refusals, closes by reason), handshake failures,
//! the kernel's kTLS counters and build info.
//! Every metric is documented in docs/metrics.md; keep the two in step.
//!
//! Served on its own port (`--metrics-listen`) by krpc-telemetry's small HTTP/1 server on its own
//! thread, so a scrape never competes with RPCs for a core's runtime. Prometheus asking for protobuf (native
//! histograms) gets the delimited protobuf format; everyone else gets OpenMetrics text.

mod admission;
mod cpu;
mod kernel;
mod pool;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use krpc_pool::Pool;
use krpc_transport::TlsPath;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};

use krpc_telemetry::{
    CODES,
    cpu::{ThreadClockGuard, ThreadClocks},
    latency_histogram,
};

use crate::{ServerInfo, accept::Admission, accept::Refusal, conn::Reason};

/// The methods of the Bench service, as the `method` label spells them; anything else
/// (health, reflection, unknown paths) is `other`, so a scanner cannot blow up the series count.
pub(crate) const METHODS: [&str; 6] = ["Echo", "Put", "Get", "EchoStream", "Info", "other"];

/// Index into [`METHODS`] for a request path.
pub(crate) fn method_index(path: &str) -> usize {
    path.strip_prefix("/krpc.v1.Bench/")
        .and_then(|m| METHODS[..5].iter().position(|&known| known == m))
        .unwrap_or(METHODS.len() - 1)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
    strategy: &'static str,
    tls: &'static str,
    core: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    tls: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// The server's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    rpc: HistogramFamily,
    /// Per core (and one slot for threads that are no core), per method, per code: the
    /// histogram, looked up in the family once and then touched only by that core.
    cells: Box<[[[OnceLock<Histogram>; CODES.len()]; METHODS.len()]]>,
    strategy: &'static str,
    tls: &'static str,
    open: Family<TlsLabels, Gauge>,
    accepted: Family<TlsLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    closed: Family<ReasonLabels, Counter>,
    accept_errors: Family<KindLabels, Counter>,
    cut_off: Counter,
    /// The runtime threads, by pool core: `krpc_server_cpu_seconds_total`.
    cpu: ThreadClocks,
}

impl Metrics {
    /// Metrics for a server with `info`, reading pool counters from `pool` at each scrape.
    pub(crate) fn new(info: &ServerInfo, tls: TlsPath, pool: Pool, admission: Admission) -> Self {
        let mut registry = Registry::with_prefix("krpc");
        let rpc = HistogramFamily::new_with_constructor(latency_histogram);
        registry.register(
            "rpc_duration_seconds",
            "Server-side RPC duration, from request headers to the end of the response",
            rpc.clone(),
        );
        let open = Family::<TlsLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Connections past the handshake and not yet closed",
            open.clone(),
        );
        let accepted = Family::<TlsLabels, Counter>::default();
        registry.register(
            "connections_accepted",
            "Connections that completed the handshake",
            accepted.clone(),
        );
        let handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "handshake_failures",
            "Connections dropped during the handshake, by reason",
            handshake_failures.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept, before anything was read, by reason",
            refused.clone(),
        );
        let closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections past the handshake that closed, by reason",
            closed.clone(),
        );
        let accept_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accept calls, by kind",
            accept_errors.clone(),
        );
        let cut_off = Counter::default();
        registry.register(
            "rpcs_cut_off",
            "RPCs in flight on connections the server closed (shutdown or GOAWAY grace expired)",
            cut_off.clone(),
        );
        // Every label value exists from the start, at 0, so rates and alerts need no absent().
        for why in Refusal::ALL {
            drop(refused.get_or_create(&ReasonLabels {
                reason: why.as_str(),
            }));
        }
        for why in Reason::ALL {
            drop(closed.get_or_create(&ReasonLabels {
                reason: why.as_str(),
            }));
        }
        registry.register_collector(Box::new(admission::AdmissionCollector {
            admission,
            limits: info.limits.clone(),
        }));
        registry.register(
            "build",
            "Version and configuration of this server",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("runtime", info.runtime.as_str().to_owned()),
                ("strategy", info.strategy.as_str().to_owned()),
                ("handoff", info.handoff.as_str().to_owned()),
                ("tls", tls.as_str().to_owned()),
            ]),
        );
        registry.register_collector(Box::new(pool::PoolCollector {
            pool,
            strategy: info.strategy.as_str(),
        }));
        registry.register_collector(Box::new(kernel::KtlsCollector {
            support: info.ktls.clone(),
            tls_stat: kernel::TLS_STAT.into(),
            nics: krpc_transport::nic_tls_offload,
            counters: krpc_transport::ktls_counters,
            records: krpc_transport::tls_records_written,
        }));
        let cpu = ThreadClocks::new();
        registry.register_collector(Box::new(cpu::CpuCollector {
            clocks: cpu.clone(),
        }));
        let slots = pool_slots(info);
        Self {
            inner: Arc::new(Inner {
                registry: Arc::new(registry),
                rpc,
                cells: (0..slots).map(|_| Default::default()).collect(),
                strategy: info.strategy.as_str(),
                tls: tls.as_str(),
                open,
                accepted,
                handshake_failures,
                refused,
                closed,
                accept_errors,
                cut_off,
                cpu,
            }),
        }
    }

    /// Records one RPC. `core` is the recording thread's core (`None`: no core); each core
    /// has its own histograms, so the histogram's lock is never contended.
    pub(crate) fn record_rpc(&self, core: Option<usize>, method: usize, code: usize, d: Duration) {
        let inner = &*self.inner;
        let slot = core
            .filter(|&c| c + 1 < inner.cells.len())
            .unwrap_or(inner.cells.len() - 1);
        let code = code.min(CODES.len() - 1);
        let histogram = inner.cells[slot][method][code].get_or_init(|| {
            let labels = RpcLabels {
                method: METHODS[method],
                code: CODES[code],
                strategy: inner.strategy,
                tls: inner.tls,
                core: if slot + 1 == inner.cells.len() {
                    "none".to_owned()
                } else {
                    slot.to_string()
                },
            };
            inner.rpc.get_or_create(&labels).clone()
        });
        histogram.observe(d.as_secs_f64());
    }

    /// A connection finished its handshake; the guard counts it open until dropped.
    pub(crate) fn connection_opened(&self, tls: TlsPath) -> OpenConnection {
        let labels = TlsLabels { tls: tls.as_str() };
        self.inner.accepted.get_or_create(&labels).inc();
        let gauge = self.inner.open.get_or_create(&labels).clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    pub(crate) fn handshake_failed(&self, reason: &'static str) {
        self.inner
            .handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn connection_refused(&self, why: Refusal) {
        self.inner
            .refused
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc();
    }

    pub(crate) fn connection_closed(&self, why: Reason, cut_off: usize) {
        self.inner
            .closed
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc();
        if cut_off > 0 {
            self.inner.cut_off.inc_by(cut_off as u64);
        }
    }

    pub(crate) fn accept_error(&self, kind: &'static str) {
        self.inner
            .accept_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Counts the calling thread's CPU time as pool core `core`'s until the guard drops (keep
    /// it on the thread).
    pub(crate) fn runtime_thread(&self, core: usize) -> ThreadClockGuard {
        self.inner.cpu.register_current(core.to_string())
    }

    /// The registry behind these metrics.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }
}

/// Per-core histogram slots: every pool core, plus one for threads that are none.
fn pool_slots(info: &ServerInfo) -> usize {
    info.pool_cores() + 1
}

/// Keeps `krpc_connections_open` counted while the connection lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(METHODS[method_index("/krpc.v1.Bench/Echo")], "Echo");
        assert_eq!(
            METHODS[method_index("/krpc.v1.Bench/EchoStream")],
            "EchoStream"
        );
        assert_eq!(METHODS[method_index("/krpc.v1.Bench/Nope")], "other");
        assert_eq!(
            METHODS[method_index("/grpc.health.v1.Health/Check")],
            "other"
        );
    }
}
