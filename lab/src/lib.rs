//! krpc-lab: where krpc-server and krpc-loadgen meet. Fresh krpc-servers embedded in this
//! process, driven by the load generator: the demo (the README's first command) and the
//! experiment. The server and the load generator know nothing of each other; this crate does.

pub mod demo;
pub mod error;
