//! krpc-server: the Bench gRPC service behind TLS off / rustls / kTLS, on a thread-per-core
//! runtime (one pinned current-thread tokio runtime and one SO_REUSEPORT listener per core) or a
//! work-stealing one. [`Server::serve`] takes already bound listeners, so tests bind port 0.

mod accept;
mod admission;
mod conn;
mod cores;
mod cpus;
mod handoff;
mod limits;
mod listen;
mod metrics;
mod rpc_layer;
mod runtime;
mod serve;
mod service;
mod store;

pub use handoff::Handoff;
pub use krpc_pool::Strategy;
pub use limits::{Limits, MaybeDuration, parse_nonzero_size, parse_size};
pub use listen::bind;
pub use rpc_layer::ConnCtx;
pub use runtime::{RuntimeMode, Server, ServerError, ServerInfo};
pub use serve::ServeTotals;
pub use service::BenchService;
