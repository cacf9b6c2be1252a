use std::{io, path::PathBuf};

/// Errors from building TLS configurations and resolving the TLS mode.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// `--tls ktls` was asked for but the kernel probe found kTLS unusable.
    #[error(
        "--tls ktls: kernel TLS is not available: {reason}; \
         fix: `modprobe tls` (or run a kernel built with CONFIG_TLS), or use --tls auto|rustls"
    )]
    KtlsUnavailable {
        /// What the probe saw.
        reason: String,
    },
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {what} file {path}")]
    ReadFile {
        /// Which file: "certificate", "private key", "CA".
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: no {what} found in PEM file")]
    EmptyPem { what: &'static str, path: PathBuf },
    /// A PEM file could not be parsed.
    #[error("{path}: invalid PEM ({what})")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration (bad key, no usable cipher suite, ...).
    #[error("invalid TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// The client CA bundle could not be turned into a verifier.
    #[error("invalid client CA bundle")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// A name given for a certificate or as the server name is not a valid DNS name or IP address.
    #[error("invalid server name {name:?}")]
    ServerName { name: String },
    /// Development certificate generation failed.
    #[error("cannot generate development certificates")]
    CertGen(#[from] rcgen::Error),
    /// Writing development certificates failed.
    #[error("cannot write {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
