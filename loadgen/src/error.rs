//! What can go wrong in the load generator's library: typed, with the path or target it is
//! about and the underlying cause as `source` (the binary prints the chain on one line).

use std::{io, path::PathBuf};

/// Why a run, a report or a merge failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A setting out of range; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// The target is not `host:port`.
    #[error("target {target:?} is not host:port")]
    Target { target: String },
    /// TCP connect or TLS handshake failed (the error names the address).
    #[error(transparent)]
    Connect(#[from] krpc_transport::ConnectError),
    /// The HTTP/2 connection could not start.
    #[error("HTTP/2 handshake with {target} failed")]
    Http2 {
        target: String,
        #[source]
        source: h2::Error,
    },
    /// Client TLS settings (CA, certificates, kTLS) could not be built.
    #[error(transparent)]
    ClientTls(#[from] krpc_client::ClientError),
    /// A thread or runtime could not start, or a task panicked.
    #[error("{what}")]
    Runtime {
        what: &'static str,
        #[source]
        source: Option<io::Error>,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file that should hold a result does not.
    #[error("{} is not a krpc-loadgen result (JSON)", path.display())]
    NotAResult {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A result written by another version of the format.
    #[error("{} has result format {found}, this krpc-loadgen reads format {}", path.display(), crate::result::FORMAT)]
    Format { path: PathBuf, found: u32 },
    /// A file that should hold an interval log does not.
    #[error("{} is not an HdrHistogram interval log: {detail}", path.display())]
    NotALog { path: PathBuf, detail: String },
    /// An encoded histogram that does not decode (or does not fit krpc's bounds).
    #[error("histogram does not decode: {detail}")]
    Histogram { detail: String },
    /// `merge` without inputs.
    #[error("nothing to merge: give at least one result file")]
    NothingToMerge,
    /// `merge` over runs of different workloads.
    #[error(
        "results ran different workloads ({first} vs {other}): merging them would mix up latencies"
    )]
    DifferentWorkloads { first: String, other: String },
}

pub type Result<T, E = LoadgenError> = std::result::Result<T, E>;

impl LoadgenError {
    pub(crate) fn file(action: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        Self::File {
            action,
            path: path.to_owned(),
            source,
        }
    }
}
