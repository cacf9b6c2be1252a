//! Shared by the load generator's integration tests.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

pub mod fake;

use std::{net::SocketAddr, time::Duration};

use krpc_loadgen::{
    run::{Mode, RunConfig},
    workload::{Arrival, Method, Mix, Workload},
};
use krpc_transport::Connector;

/// A plaintext open-loop run against `addr`: `rate` RPC/s of 64-byte Echo over 16 keys,
/// uniform arrivals, one connection with one RPC in flight (so a stall queues everything
/// behind it), measured for `duration` after `warmup`. Tests adjust fields from here.
pub fn open_loop(addr: SocketAddr, rate: f64, duration: Duration, warmup: Duration) -> RunConfig {
    RunConfig {
        target: addr.to_string(),
        connector: Connector::plaintext(),
        mode: Mode::Open {
            rate,
            arrival: Arrival::Uniform,
        },
        connections: 1,
        concurrency: 1,
        duration,
        warmup,
        workload: Workload::new(Mix::single(Method::Echo), 64, 16),
        label: None,
        hdr_log: None,
        progress: false,
        metrics: None,
        reconnect: true,
    }
}
