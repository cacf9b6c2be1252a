//! rustls configurations: TLS 1.3 only, ALPN `h2`, ring as the one crypto provider, cipher suites
//! restricted to what the kernel can carry when the connection will move to kTLS.

use std::{fmt, path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, ring},
    pki_types::{
        CertificateDer, PrivateKeyDer, ServerName, UnixTime,
        pem::{self, PemObject},
    },
    server::WebPkiClientVerifier,
};

use crate::{ALPN_H2, KtlsSupport, TlsPath, TransportError};

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        Ok(Self {
            chain: load_certs(cert, "certificate")?,
            key: load_key(key)?,
        })
    }
}

/// How a client decides to trust the server.
pub enum Trust {
    /// Verify the server against these CA certificates.
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any server certificate (signatures are still checked). For development only.
    Insecure,
}

impl Trust {
    /// Trust the CAs in a PEM file.
    pub fn ca_file(path: &Path) -> Result<Self, TransportError> {
        read_ca_file(path).map(Self::Roots)
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Roots(roots) => write!(f, "Roots({} certificates)", roots.len()),
            Self::Insecure => f.write_str("Insecure"),
        }
    }
}

/// Reads the CA certificates of a PEM file (for `--ca` and `--client-ca`).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    load_certs(path, "CA")
}

/// Server-side TLS settings.
#[derive(Debug)]
pub struct ServerTls {
    pub identity: Identity,
    /// When set, clients must present a certificate issued by one of these CAs (mTLS).
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
}

impl ServerTls {
    /// The rustls configuration for connections carried by `path` (never `TlsPath::Off`).
    pub fn config(
        self,
        path: TlsPath,
        support: &KtlsSupport,
    ) -> Result<Arc<ServerConfig>, TransportError> {
        let provider = provider(path, support);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match self.client_ca {
            Some(cas) => {
                let mut roots = RootCertStore::empty();
                for ca in cas {
                    roots.add(ca)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(self.identity.chain, self.identity.key)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        if path == TlsPath::Ktls {
            // rustls hands the session to `rustls::kernel` only with extraction enabled. Tickets
            // stay on (rustls' default, 2): a kTLS client passes them back to rustls.
            config.enable_secret_extraction = true;
        }
        Ok(Arc::new(config))
    }
}

/// Client-side TLS settings.
#[derive(Debug)]
pub struct ClientTls {
    pub trust: Trust,
    /// Presented when the server asks for a client certificate (mTLS).
    pub identity: Option<Identity>,
}

impl ClientTls {
    /// The rustls configuration for connections carried by `path` (never `TlsPath::Off`).
    pub fn config(
        self,
        path: TlsPath,
        support: &KtlsSupport,
    ) -> Result<Arc<ClientConfig>, TransportError> {
        let provider = provider(path, support);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match self.trust {
            Trust::Roots(cas) => {
                let mut roots = RootCertStore::empty();
                for ca in cas {
                    roots.add(ca)?;
                }
                builder.with_root_certificates(roots)
            }
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider))),
        };
        let mut config = match self.identity {
            Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        if path == TlsPath::Ktls {
            config.enable_secret_extraction = true;
        }
        Ok(Arc::new(config))
    }
}

/// ring with TLS 1.3 suites only; for kTLS, only the suites the kernel accepted in the probe.
fn provider(path: TlsPath, support: &KtlsSupport) -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites.retain(|suite| {
        suite.tls13().is_some() && (path != TlsPath::Ktls || support.supports(*suite))
    });
    Arc::new(provider)
}

fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e, what, path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e, what, path))?;
    if certs.is_empty() {
        return Err(TransportError::EmptyPem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TransportError::EmptyPem {
            what: "private key",
            path: path.to_owned(),
        },
        e => pem_error(e, "private key", path),
    })
}

fn pem_error(e: pem::Error, what: &'static str, path: &Path) -> TransportError {
    match e {
        pem::Error::Io(source) => TransportError::ReadFile {
            what,
            path: path.to_owned(),
            source,
        },
        source => TransportError::BadPem {
            what,
            path: path.to_owned(),
            source,
        },
    }
}

/// `--insecure`: any certificate is accepted, but handshake signatures are still verified so
/// the connection is at least bound to the key the server presented.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ktls_configs_offer_only_what_the_kernel_accepts() {
        let none = KtlsSupport::unavailable("test");
        let all = KtlsSupport::all_ciphers_for_test();
        assert_eq!(provider(TlsPath::Rustls, &none).cipher_suites.len(), 3);
        assert_eq!(provider(TlsPath::Ktls, &all).cipher_suites.len(), 3);
        assert!(provider(TlsPath::Ktls, &none).cipher_suites.is_empty());
    }

    #[test]
    fn unreadable_and_empty_pem_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = Trust::ca_file(&missing).unwrap_err();
        assert!(
            matches!(err, TransportError::ReadFile { what: "CA", .. }),
            "{err:?}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a pem file\n").unwrap();
        let err = Trust::ca_file(&empty).unwrap_err();
        assert!(matches!(err, TransportError::EmptyPem { .. }), "{err:?}");
        let err = Identity::from_pem_files(&empty, &empty).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
    }
}
