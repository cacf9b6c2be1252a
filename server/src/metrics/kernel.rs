//! kTLS as the kernel and the NICs see it: whether kTLS is available, the NICs' TLS offload
//! features, and the kernel's own `/proc/net/tls_stat` counters, read at each scrape.

use std::fmt;

use krpc_transport::{KtlsSupport, NicTlsOffload};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

pub(super) const TLS_STAT: &str = "/proc/net/tls_stat";

/// kTLS availability and the kernel's own counters (`/proc/net/tls_stat`), read at each scrape.
#[derive(Debug)]
pub(super) struct KtlsCollector {
    pub(super) support: KtlsSupport,
    pub(super) tls_stat: std::path::PathBuf,
    /// The NICs' TLS offload features (ethtool), read at each scrape.
    pub(super) nics: fn() -> Vec<NicTlsOffload>,
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
pub(super) fn parse_tls_stat(text: &str) -> Vec<(&str, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

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
}
