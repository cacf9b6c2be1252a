//! The server's own CPU time per core, from each runtime thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`, read at scrape time by krpc-telemetry): CPU per RPC, measured by
//! the server itself, so it holds against a remote server as well as an embedded one.

use std::fmt;

use krpc_telemetry::cpu::ThreadClocks;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

/// Reads the runtime threads' CPU clocks at each scrape.
#[derive(Debug)]
pub(super) struct CpuCollector {
    pub(super) clocks: ThreadClocks,
}

impl Collector for CpuCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "server_cpu_seconds",
            "CPU time (user + system) of the runtime thread of each pool core, from its own CPU clock",
            None,
            MetricType::Counter,
        )?;
        let mut per_core: Vec<(usize, f64)> = self
            .clocks
            .read()
            .into_iter()
            .filter_map(|(core, t)| Some((core.parse().ok()?, t.as_secs_f64())))
            .collect();
        per_core.sort_by_key(|&(core, _)| core);
        for (core, seconds) in per_core {
            let core = core.to_string();
            ConstCounter::new(seconds).encode(family.encode_family(&[("core", core.as_str())])?)?;
        }
        Ok(())
    }
}
