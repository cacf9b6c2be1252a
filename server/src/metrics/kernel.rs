//! kTLS as the kernel and the NICs see it: whether kTLS is available and can rekey, the NICs'
//! TLS offload features, the kernel's own `/proc/net/tls_stat` counters, and what krpc's kTLS
//! connections did (rekeys, connections closed by a record, records written), read at each
//! scrape.

use std::fmt;

use krpc_transport::{
    KtlsCounters, KtlsSupport, NicTlsOffload, RecordErrorKind, RekeyDirection, RekeyInitiator,
    TlsPath,
};
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
    /// This process's kTLS rekeys and record errors (`krpc_transport::ktls_counters`).
    pub(super) counters: fn() -> KtlsCounters,
    /// TLS records written by closed connections (`krpc_transport::tls_records_written`).
    pub(super) records: fn(TlsPath) -> u64,
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
        let rekey = ConstGauge::new(i64::from(available && self.support.can_rekey()));
        rekey.encode(encoder.encode_descriptor(
            "ktls_rekey_supported",
            "1 when the kernel takes new kTLS keys on a live socket (TLS 1.3 KeyUpdate, Linux >= 6.14), else 0",
            None,
            rekey.metric_type(),
        )?)?;
        self.encode_connection_counters(&mut encoder)?;
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

impl KtlsCollector {
    /// What krpc's own connections did: rekeys, closes for a record, records written.
    fn encode_connection_counters(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let counters = (self.counters)();
        let mut family = encoder.encode_descriptor(
            "ktls_rekeys",
            "kTLS key changes: direction tx (we sent a KeyUpdate, new TLS_TX key) or rx (the peer did, new TLS_RX key); initiator self (our record limit) or peer",
            None,
            MetricType::Counter,
        )?;
        for direction in RekeyDirection::ALL {
            for initiator in RekeyInitiator::ALL {
                ConstCounter::new(counters.rekeys(direction, initiator)).encode(
                    family.encode_family(&[
                        ("direction", direction.as_str()),
                        ("initiator", initiator.as_str()),
                    ])?,
                )?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "ktls_record_errors",
            "kTLS connections closed because of a record the peer sent or the kernel refused, by reason",
            None,
            MetricType::Counter,
        )?;
        for kind in RecordErrorKind::ALL {
            ConstCounter::new(counters.record_errors(kind))
                .encode(family.encode_family(&[("reason", kind.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "tls_records_written",
            "TLS records written by connections that have closed (ceil(bytes / 16 KiB) per write, plus kTLS control records), by TLS path",
            None,
            MetricType::Counter,
        )?;
        for path in [TlsPath::Rustls, TlsPath::Ktls] {
            ConstCounter::new((self.records)(path))
                .encode(family.encode_family(&[("tls", path.as_str())])?)?;
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
            counters: KtlsCounters::default,
            records: |_| 0,
        });
        assert!(text.contains("krpc_ktls_available 0\n"), "{text}");
        assert!(text.contains("krpc_ktls_rekey_supported 0\n"), "{text}");
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
            "TlsCurrTxSw 2\nTlsCurrRxSw 1\nTlsCurrTxDevice 0\nTlsTxSw 17\nTlsDecryptError 3\n\
             TlsRxRekeyOk 4\nTlsTxRekeyOk 5\nTlsRxRekeyReceived 4\n",
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
            counters: KtlsCounters::default,
            records: |_| 0,
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
        // The kernel's rekey counters (Linux >= 6.14) go through like every other.
        assert!(
            text.contains("krpc_kernel_tls_events_total{stat=\"TlsRxRekeyOk\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("krpc_kernel_tls_events_total{stat=\"TlsTxRekeyOk\"} 5\n"),
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
    fn krpc_ktls_counters_are_exported_with_every_label() {
        let text = encode(KtlsCollector {
            support: KtlsSupport::unavailable("test"),
            tls_stat: "/nonexistent/tls_stat".into(),
            nics: Vec::new,
            counters: || {
                KtlsCounters::default()
                    .with_rekeys(RekeyDirection::Rx, RekeyInitiator::Peer, 7)
                    .with_rekeys(RekeyDirection::Tx, RekeyInitiator::Local, 2)
                    .with_record_errors(RecordErrorKind::RekeyUnsupported, 1)
            },
            records: |path| match path {
                TlsPath::Ktls => 1234,
                _ => 99,
            },
        });
        for line in [
            "krpc_ktls_rekeys_total{direction=\"rx\",initiator=\"peer\"} 7\n",
            "krpc_ktls_rekeys_total{direction=\"tx\",initiator=\"self\"} 2\n",
            "krpc_ktls_rekeys_total{direction=\"tx\",initiator=\"peer\"} 0\n",
            "krpc_ktls_record_errors_total{reason=\"rekey_unsupported\"} 1\n",
            "krpc_ktls_record_errors_total{reason=\"unexpected_ccs\"} 0\n",
            "krpc_tls_records_written_total{tls=\"ktls\"} 1234\n",
            "krpc_tls_records_written_total{tls=\"rustls\"} 99\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
        let reasons = text
            .lines()
            .filter(|l| l.starts_with("krpc_ktls_record_errors_total{"))
            .count();
        assert_eq!(reasons, RecordErrorKind::ALL.len(), "{text}");
    }
}
