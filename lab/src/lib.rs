//! krpc-lab: where krpc-server and krpc-loadgen meet. Fresh krpc-servers embedded in this
//! process (or remote ones), driven by the load generator: the experiment (configurations
//! interleaved in rounds, every figure a median with its interval, differences claimed only
//! beyond noise) and the demo, the README's first command, on the same engine. The server and
//! the load generator know nothing of each other; this crate does.

pub mod cpus;
pub mod demo;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod html;
pub mod record;
pub mod scrape;
pub mod stats;
pub mod summary;
pub mod text;
mod words;
