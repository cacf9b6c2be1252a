//! What can go wrong in the lab: typed, with the cause as `source` (the binary prints the chain
//! on one line).

use std::{io, path::PathBuf};

/// Why the demo or the experiment failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The load generator failed (connect, run, results).
    #[error(transparent)]
    Loadgen(#[from] krpc_loadgen::error::LoadgenError),
    /// Client TLS settings (CA, certificates, kTLS) could not be built.
    #[error(transparent)]
    ClientTls(#[from] krpc_client::ClientError),
    /// TLS settings of the embedded servers could not be built.
    #[error(transparent)]
    Transport(#[from] krpc_transport::TransportError),
    /// An embedded server failed.
    #[error("the embedded server failed")]
    Server(#[source] krpc_server::ServerError),
    /// A thread or runtime could not start, or a thread panicked.
    #[error("{what}")]
    Runtime {
        what: &'static str,
        #[source]
        source: Option<io::Error>,
    },
    /// A server's metrics endpoint could not be read.
    #[error("cannot scrape {url}: {detail}")]
    Scrape { url: String, detail: String },
    /// A setting out of range; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// A file that should hold an experiment does not.
    #[error("{} is not a krpc-lab experiment (JSON)", path.display())]
    NotAnExperiment {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    pub(crate) fn file(action: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        Self::File {
            action,
            path: path.to_owned(),
            source,
        }
    }
}
