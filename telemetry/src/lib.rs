//! krpc-telemetry: what krpc's server and load generator report the same way, so their numbers
//! line up: the latency histogram layout, the Prometheus endpoint, gRPC status names, threads'
//! CPU clocks, and the one-line error a krpc binary prints. Both depend on it; it depends on neither.

pub mod cpu;
mod errors;
mod histogram;
mod http;
mod status;

pub use errors::{error_chain, usage_error};
pub use histogram::latency_histogram;
pub use http::serve_prometheus;
pub use status::{CODES, code_name};
