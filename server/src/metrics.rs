//! Prometheus exposition: RPC latency (classic and native histograms, recorded per core), the
//! pool's counters, connections, handshake failures, the kernel's kTLS counters and build info.
//! Every metric is documented in docs/metrics.md; keep the two in step.
//!
//! Served on its own port (`--metrics-listen`) by a small HTTP/1 server on its own thread, so a
//! scrape never competes with RPCs for a core's runtime. Prometheus asking for protobuf (native
//! histograms) gets the delimited protobuf format; everyone else gets OpenMetrics text.

use std::{
    convert::Infallible,
    fmt, io,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use krpc_pool::{DRAIN_BUCKETS, FREE_NS_BUCKETS, Pool, free_ns_bound};
use krpc_transport::{KtlsSupport, NicTlsOffload, TlsPath};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, NativeHistogramConfig, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ServerInfo;

/// The methods of the Bench service, as the `method` label spells them; anything else
/// (health, reflection, unknown paths) is `other`, so a scanner cannot blow up the series count.
pub(crate) const METHODS: [&str; 6] = ["Echo", "Put", "Get", "EchoStream", "Info", "other"];

/// gRPC status code names, indexed by code number (the `code` label).
pub(crate) const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

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

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    // Classic: 25 µs to ~6.6 s, doubling. Native: factor 1.1 (schema 3), enough resolution for
    // p99.9 on loopback latencies, bounded at 160 buckets.
    Histogram::new_classic_and_native(
        exponential_buckets(25e-6, 2.0, 19),
        NativeHistogramConfig::new(1.1).max_buckets(160),
    )
}

/// The server's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
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
}

impl Metrics {
    /// Metrics for a server with `info`, reading pool counters from `pool` at each scrape.
    pub fn new(info: &ServerInfo, tls: TlsPath, pool: Pool) -> Self {
        let mut registry = Registry::with_prefix("krpc");
        let rpc = HistogramFamily::new_with_constructor(rpc_histogram);
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
        registry.register_collector(Box::new(PoolCollector {
            pool,
            strategy: info.strategy.as_str(),
        }));
        registry.register_collector(Box::new(KtlsCollector {
            support: info.ktls.clone(),
            tls_stat: TLS_STAT.into(),
            nics: krpc_transport::nic_tls_offload,
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

    /// The registry behind these metrics.
    pub fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }
}

/// OpenMetrics text.
fn encode_text(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Prometheus' delimited protobuf (the format with native histograms).
fn encode_protobuf(registry: &Registry) -> Result<Vec<u8>, String> {
    prometheus_client::encoding::prometheus_protobuf::encode_to_vec(registry)
        .map_err(|e| format!("{e:?}"))
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

/// Reads the pool's exact per-core counters at each scrape.
#[derive(Debug)]
struct PoolCollector {
    pool: Pool,
    strategy: &'static str,
}

type CoreLabels<'a> = [(&'static str, &'a str); 2];

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let snapshot = self.pool.snapshot();
        let cores: Vec<String> = (0..snapshot.cores.len()).map(|c| c.to_string()).collect();
        let labels = |core: usize| -> CoreLabels<'_> {
            [("strategy", self.strategy), ("core", cores[core].as_str())]
        };
        type Field = fn(&krpc_pool::CoreStats) -> u64;
        let counters: [(&str, &str, Field); 11] = [
            (
                "pool_allocs",
                "Buffers handed out (pooled and large)",
                |c| c.allocs,
            ),
            ("pool_hits", "Allocations served from a free list", |c| {
                c.hits
            }),
            (
                "pool_misses",
                "Allocations that found the free list empty and went to the allocator",
                |c| c.misses,
            ),
            (
                "pool_large_allocs",
                "Allocations above the largest size class (64 KiB), served by the allocator",
                |c| c.large_allocs,
            ),
            (
                "pool_local_frees",
                "Frees straight onto a free list (the freeing core's, or the global one)",
                |c| c.local_frees,
            ),
            (
                "pool_deferred_frees",
                "Frees pushed on a defer list (another core's, or the connection's)",
                |c| c.deferred_frees,
            ),
            (
                "pool_overflow_frees",
                "Frees returned to the allocator (memory cap, full defer list, large buffer, no owner)",
                |c| c.overflow_frees,
            ),
            (
                "pool_drained_buffers",
                "Deferred buffers moved back to a free list by a drain",
                |c| c.drained,
            ),
            (
                "pool_drain_trimmed_buffers",
                "Drained buffers returned to the allocator because the free list was at its cap",
                |c| c.drain_trimmed,
            ),
            ("pool_drains", "Drain calls, empty ones included", |c| {
                c.drain_calls
            }),
            (
                "pool_kicks",
                "Wake-ups sent to a core because its defer list reached defer_max/2",
                |c| c.kicks,
            ),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (core, stats) in snapshot.cores.iter().enumerate() {
                ConstCounter::new(field(stats)).encode(family.encode_family(&labels(core))?)?;
            }
        }
        type Signed = fn(&krpc_pool::CoreStats) -> i64;
        let gauges: [(&str, &str, Signed); 3] = [
            (
                "pool_cached_bytes",
                "Bytes held in the core's free lists",
                |c| c.bytes_cached,
            ),
            (
                "pool_outstanding_buffers",
                "Buffers allocated on this core and not yet freed",
                |c| c.outstanding,
            ),
            (
                "pool_deferred_pending_buffers",
                "Buffers freed for this core that wait on its defer list",
                |c| c.deferred_frees as i64 - c.drained as i64,
            ),
        ];
        for (name, help, field) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (core, stats) in snapshot.cores.iter().enumerate() {
                ConstGauge::new(field(stats)).encode(family.encode_family(&labels(core))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "pool_drain_batch_buffers",
            "Buffers moved per drain call (empty drains in the first bucket)",
            None,
            MetricType::Histogram,
        )?;
        for (core, stats) in snapshot.cores.iter().enumerate() {
            // Bucket i holds batches of 2^(i-1) .. 2^i - 1 buffers (0 for i = 0).
            let buckets: Vec<(f64, u64)> = (0..DRAIN_BUCKETS)
                .map(|i| {
                    let le = if i + 1 == DRAIN_BUCKETS {
                        f64::INFINITY
                    } else {
                        ((1u64 << i) - 1) as f64
                    };
                    (le, stats.drain_batches[i])
                })
                .collect();
            let count = stats.drain_batches.iter().sum();
            family
                .encode_family(&labels(core))?
                .encode_histogram::<NoLabelSet>(stats.drained as f64, count, &buckets, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "pool_free_duration_seconds",
            "Duration of the free path (the strategy), one free in 64 per thread timed",
            None,
            MetricType::Histogram,
        )?;
        for (core, stats) in snapshot.cores.iter().enumerate() {
            let buckets: Vec<(f64, u64)> = (0..FREE_NS_BUCKETS)
                .map(|i| {
                    let le = free_ns_bound(i).map_or(f64::INFINITY, |ns| ns as f64 * 1e-9);
                    (le, stats.free_ns_buckets[i])
                })
                .collect();
            let count = stats.free_ns_buckets.iter().sum();
            family
                .encode_family(&labels(core))?
                .encode_histogram::<NoLabelSet>(
                    stats.free_ns_sum as f64 * 1e-9,
                    count,
                    &buckets,
                    None,
                )?;
        }
        let unregistered = ConstCounter::new(snapshot.unregistered_allocs);
        unregistered.encode(encoder.encode_descriptor(
            "pool_unregistered_allocs",
            "Allocations on threads that are no core of the pool (plain heap buffers)",
            None,
            unregistered.metric_type(),
        )?)?;
        Ok(())
    }
}

/// kTLS availability and the kernel's own counters (`/proc/net/tls_stat`), read at each scrape.
#[derive(Debug)]
struct KtlsCollector {
    support: KtlsSupport,
    tls_stat: std::path::PathBuf,
    /// The NICs' TLS offload features (ethtool), read at each scrape.
    nics: fn() -> Vec<NicTlsOffload>,
}

impl Collector for KtlsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        // Without the file the module is not loaded: kTLS is not available, whatever the probe
        // at start said (it could have been unloaded since).
        let stats = std::fs::read_to_string(&self.tls_stat).ok();
        let available = self.support.is_available() && stats.is_some();
        let gauge = ConstGauge::new(i64::from(available));
        gauge.encode(encoder.encode_descriptor(
            "ktls_available",
            "1 when the kernel accepts kTLS sessions (TCP_ULP tls and TLS_TX work), else 0",
            None,
            gauge.metric_type(),
        )?)?;
        let nics = (self.nics)();
        for (name, help, field) in [
            (
                "nic_tls_offload_available",
                "1 when the interface can do kTLS record crypto itself (ethtool feature tls-hw-{tx,rx}-offload)",
                (|n: &NicTlsOffload, tx: bool| if tx { n.tx_available } else { n.rx_available })
                    as fn(&NicTlsOffload, bool) -> bool,
            ),
            (
                "nic_tls_offload_active",
                "1 when that offload is switched on (ethtool -K IFACE tls-hw-tx-offload on)",
                |n: &NicTlsOffload, tx: bool| if tx { n.tx_active } else { n.rx_active },
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for nic in &nics {
                for (direction, tx) in [("tx", true), ("rx", false)] {
                    ConstGauge::new(i64::from(field(nic, tx))).encode(family.encode_family(
                        &[("iface", nic.iface.as_str()), ("direction", direction)],
                    )?)?;
                }
            }
        }
        let Some(stats) = stats else { return Ok(()) };
        let parsed = parse_tls_stat(&stats);
        let offload = ConstGauge::new(i64::from(parsed.iter().any(|(name, value)| {
            name.starts_with("TlsCurr") && name.ends_with("Device") && *value > 0
        })));
        offload.encode(encoder.encode_descriptor(
            "ktls_device_offload_active",
            "1 when the kernel reports at least one kTLS session offloaded to a NIC (TlsCurr*Device > 0)",
            None,
            offload.metric_type(),
        )?)?;
        let (current, events): (Vec<_>, Vec<_>) = parsed
            .into_iter()
            .partition(|(name, _)| name.starts_with("TlsCurr"));
        let mut family = encoder.encode_descriptor(
            "kernel_tls_current",
            "The kernel's /proc/net/tls_stat TlsCurr* values (sessions open now), by stat name",
            None,
            MetricType::Gauge,
        )?;
        for (name, value) in &current {
            ConstGauge::new(*value as i64).encode(family.encode_family(&[("stat", *name)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "kernel_tls_events",
            "The kernel's other /proc/net/tls_stat counters (sessions opened, errors), by stat name",
            None,
            MetricType::Counter,
        )?;
        for (name, value) in &events {
            ConstCounter::new(*value).encode(family.encode_family(&[("stat", *name)])?)?;
        }
        Ok(())
    }
}

/// `/proc/net/tls_stat`: one `Name<whitespace>value` per line. Lines that do not parse are
/// skipped (a kernel adding a field must not break the scrape).
pub(crate) fn parse_tls_stat(text: &str) -> Vec<(&str, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((name, value))
        })
        .collect()
}

const TLS_STAT: &str = "/proc/net/tls_stat";

const PROTOBUF: &str = "application/vnd.google.protobuf";

/// Serves `registry` as `GET /metrics` on `listener` until `shutdown`, on the calling thread
/// (its own current-thread runtime): protobuf for Prometheus, OpenMetrics text for the rest.
/// The load generator serves its own metrics with it too.
pub fn serve_prometheus(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(respond(&registry, &req)) }
                });
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await
                {
                    debug!(%peer, %error, "metrics connection ended with an error");
                }
            });
        }
    })
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"Prometheus metrics are at /metrics\n"),
        );
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"use GET\n"),
        );
    }
    // `?format=text|protobuf` overrides negotiation: Prometheus before 2.45 keeps only the
    // native half of a histogram scraped as protobuf, so a second job asks for text.
    let forced = req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| match kv {
            "format=text" => Some(false),
            "format=protobuf" => Some(true),
            _ => None,
        })
    });
    let wants_protobuf = forced.unwrap_or_else(|| {
        req.headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains(PROTOBUF) && v.contains("io.prometheus.client.MetricFamily"))
    });
    let encoded = if wants_protobuf {
        encode_protobuf(registry).map(|body| {
            (
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
                Bytes::from(body),
            )
        })
    } else {
        encode_text(registry)
            .map(|text| {
                (
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    Bytes::from(text),
                )
            })
            .map_err(|e| e.to_string())
    };
    match encoded {
        Ok((content_type, body)) => reply(StatusCode::OK, content_type, body),
        Err(error) => {
            warn!(%error, "cannot encode metrics");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                Bytes::from(format!("cannot encode metrics: {error}\n")),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_stat_parses_and_skips_junk() {
        let text = "TlsCurrTxSw                     \t2\nTlsTxSw 17\nnot-a-line\nTlsNew x\n";
        assert_eq!(
            parse_tls_stat(text),
            vec![("TlsCurrTxSw", 2), ("TlsTxSw", 17)]
        );
    }

    fn encode(collector: KtlsCollector) -> String {
        let mut registry = Registry::with_prefix("krpc");
        registry.register_collector(Box::new(collector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn without_tls_stat_only_ktls_available_0_is_exported() {
        let text = encode(KtlsCollector {
            support: KtlsSupport::probe(),
            tls_stat: "/nonexistent/tls_stat".into(),
            nics: Vec::new,
        });
        assert!(text.contains("krpc_ktls_available 0\n"), "{text}");
        assert!(!text.contains("krpc_kernel_tls"), "{text}");
        assert!(!text.contains("device_offload"), "{text}");
    }

    #[test]
    fn tls_stat_counters_are_reexported_by_kind() {
        let dir = std::env::temp_dir().join(format!("krpc-tls-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tls_stat");
        std::fs::write(
            &file,
            "TlsCurrTxSw 2\nTlsCurrRxSw 1\nTlsCurrTxDevice 0\nTlsTxSw 17\nTlsDecryptError 3\n",
        )
        .unwrap();
        let text = encode(KtlsCollector {
            support: KtlsSupport::unavailable("test"),
            tls_stat: file,
            nics: || {
                vec![NicTlsOffload {
                    iface: "eth9".into(),
                    tx_available: true,
                    tx_active: false,
                    rx_available: false,
                    rx_active: false,
                }]
            },
        });
        std::fs::remove_dir_all(&dir).unwrap();
        // The probe said no: not available, whatever the file says.
        assert!(text.contains("krpc_ktls_available 0\n"), "{text}");
        assert!(
            text.contains("krpc_ktls_device_offload_active 0\n"),
            "{text}"
        );
        assert!(
            text.contains("krpc_kernel_tls_current{stat=\"TlsCurrTxSw\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("krpc_kernel_tls_events_total{stat=\"TlsTxSw\"} 17\n"),
            "{text}"
        );
        assert!(
            text.contains("krpc_kernel_tls_events_total{stat=\"TlsDecryptError\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("krpc_nic_tls_offload_available{iface=\"eth9\",direction=\"tx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("krpc_nic_tls_offload_active{iface=\"eth9\",direction=\"tx\"} 0\n"),
            "{text}"
        );
    }

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
