//! Development certificates: a CA, a server certificate for localhost (plus any names given) and
//! a client certificate for mTLS, all signed by that CA.

use std::{
    fs,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::TransportError;

/// PEM texts of a generated development PKI.
#[derive(Debug)]
pub struct DevCerts {
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// Where [`DevCerts::write`] puts each file in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCertPaths {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl DevCertPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    /// Where the server writes, and the client looks for, development certificates when none
    /// are given: `$KRPC_DEV_CERTS`, else `$XDG_DATA_HOME/krpc/dev-certs`, else
    /// `~/.local/share/krpc/dev-certs`.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("KRPC_DEV_CERTS")
            .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("krpc/dev-certs")))
            .or_else(|| var("HOME").map(|h| h.join(".local/share/krpc/dev-certs")))
    }

    /// True when every file is present (a previous run generated them).
    pub fn all_exist(&self) -> bool {
        [
            &self.ca_cert,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ]
        .iter()
        .all(|p| p.is_file())
    }
}

/// Names every development server certificate carries.
pub(crate) const DEFAULT_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl DevCerts {
    /// Generates a fresh CA and leaf certificates. The server certificate's SANs are localhost,
    /// 127.0.0.1 and ::1 plus `extra_names` (DNS names or IP addresses).
    pub fn generate(extra_names: &[String]) -> Result<Self, TransportError> {
        // rcgen takes any string as a DNS name; a certificate nobody can match helps no one.
        for name in extra_names {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(TransportError::ServerName { name: name.clone() });
            }
        }
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own per CA (from its public key; byte 0 is the point format), as mkcert does: two development CAs with one
        // name would make a verifier try the wrong one and report a bad signature instead of an
        // unknown issuer.
        let id: String = ca_key.public_key_raw()[1..5]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("krpc development CA {id}"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names: Vec<String> = DEFAULT_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
        names.extend(extra_names.iter().cloned());
        let (server_cert, server_key) = leaf(
            names,
            "krpc server",
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        )?;
        let (client_cert, client_key) = leaf(
            vec!["krpc-client".to_owned()],
            "krpc client",
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        )?;
        Ok(Self {
            ca_cert: ca_cert.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }

    /// Writes the five PEM files into `dir` (created if needed); keys are readable by the
    /// owner only.
    pub fn write(&self, dir: &Path) -> Result<DevCertPaths, TransportError> {
        fs::create_dir_all(dir).map_err(|source| TransportError::WriteFile {
            path: dir.to_owned(),
            source,
        })?;
        let paths = DevCertPaths::in_dir(dir);
        for (path, pem, secret) in [
            (&paths.ca_cert, &self.ca_cert, false),
            (&paths.server_cert, &self.server_cert, false),
            (&paths.server_key, &self.server_key, true),
            (&paths.client_cert, &self.client_cert, false),
            (&paths.client_key, &self.client_key, true),
        ] {
            write_file(path, pem, secret).map_err(|source| TransportError::WriteFile {
                path: path.clone(),
                source,
            })?;
        }
        Ok(paths)
    }
}

fn leaf(
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), TransportError> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_file(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, Trust};

    #[test]
    fn generated_files_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DevCerts::generate(&["krpc.example".to_owned()])
            .unwrap()
            .write(dir.path())
            .unwrap();
        assert!(paths.all_exist());
        let server = Identity::from_pem_files(&paths.server_cert, &paths.server_key).unwrap();
        assert_eq!(server.chain.len(), 1);
        Identity::from_pem_files(&paths.client_cert, &paths.client_key).unwrap();
        assert!(matches!(Trust::ca_file(&paths.ca_cert).unwrap(), Trust::Roots(r) if r.len() == 1));
        let mode = std::fs::metadata(&paths.server_key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn a_bad_name_is_refused() {
        let err = DevCerts::generate(&["not a name!".to_owned()]).unwrap_err();
        assert!(
            matches!(&err, TransportError::ServerName { name } if name == "not a name!"),
            "{err}"
        );
    }
}
