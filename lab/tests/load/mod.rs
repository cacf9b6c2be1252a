//! The load both tests against embedded servers start from (`mod load;` in each).

use std::{net::SocketAddr, time::Duration};

use krpc_loadgen::{
    run::{Mode, RunConfig},
    workload::{Arrival, Method, Mix, Workload},
};

/// Plaintext open loop: `rate` RPC/s of 64-byte Echo over 16 keys, one connection with one RPC
/// in flight, `seconds` measured after 300 ms of warmup. Tests adjust fields from here.
pub(crate) fn config(addr: SocketAddr, rate: f64, seconds: u64) -> RunConfig {
    RunConfig {
        target: addr.to_string(),
        connector: krpc_transport::Connector::plaintext(),
        mode: Mode::Open {
            rate,
            arrival: Arrival::Uniform,
        },
        connections: 1,
        concurrency: 1,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_millis(300),
        workload: Workload::new(Mix::single(Method::Echo), 64, 16),
        label: None,
        hdr_log: None,
        progress: false,
        metrics: None,
        reconnect: true,
    }
}
