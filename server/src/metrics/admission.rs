//! Admission gauges, read at each scrape: connections and handshakes in use, next to their caps.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

use crate::{Limits, accept::Admission};

#[derive(Debug)]
pub(super) struct AdmissionCollector {
    pub(super) admission: Admission,
    pub(super) limits: Limits,
}

impl Collector for AdmissionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let gauges: [(&str, &str, i64); 4] = [
            (
                "connections_in_use",
                "Connections counted against --max-connections: accepted, handshakes included, not yet closed",
                self.admission.connections.in_use() as i64,
            ),
            (
                "connections_max",
                "--max-connections",
                i64::from(self.limits.max_connections),
            ),
            (
                "handshakes_in_progress",
                "TLS handshakes under way, counted against --max-handshakes",
                self.admission.handshakes.in_use() as i64,
            ),
            (
                "handshakes_max",
                "--max-handshakes",
                i64::from(self.limits.max_handshakes),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        Ok(())
    }
}
