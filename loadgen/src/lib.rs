//! krpc-loadgen: open-loop, coordinated-omission-corrected gRPC load against krpc, recorded in
//! HdrHistograms; results as JSON and interval logs; reports that put runs side by side. A pure
//! load generator: it knows the server only through the wire (the demo and the experiment, which
//! embed servers, are in krpc-lab).

mod conn;
mod connection;
pub mod error;
pub mod grpc;
pub mod interval;
mod link;
pub mod merge;
pub mod metrics;
mod pace;
mod progress;
pub mod report;
pub mod result;
pub mod run;
pub mod workload;
