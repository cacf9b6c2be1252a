use std::{fmt, str::FromStr};

use crate::{KtlsSupport, TransportError};

/// The TLS mode a user asks for (`--tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Plaintext HTTP/2 (h2c).
    Off,
    /// TLS 1.3 in user space (rustls) for the whole connection.
    Rustls,
    /// Handshake in rustls, then records in the kernel; refuse to start without kernel TLS.
    Ktls,
    /// kTLS where the kernel probe says it works, rustls otherwise.
    Auto,
}

impl TlsMode {
    /// Decides what connections will actually use, given what the kernel offers.
    ///
    /// `Ktls` on a kernel without kTLS is an error (the user asked for it explicitly); `Auto`
    /// falls back to rustls.
    pub fn resolve(self, support: &KtlsSupport) -> Result<TlsPath, TransportError> {
        match self {
            Self::Off => Ok(TlsPath::Off),
            Self::Rustls => Ok(TlsPath::Rustls),
            Self::Ktls => match support.unavailable_reason() {
                None => Ok(TlsPath::Ktls),
                Some(reason) => Err(TransportError::KtlsUnavailable {
                    reason: reason.to_owned(),
                }),
            },
            Self::Auto if support.is_available() => Ok(TlsPath::Ktls),
            Self::Auto => Ok(TlsPath::Rustls),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Rustls => "rustls",
            Self::Ktls => "ktls",
            Self::Auto => "auto",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "rustls" => Ok(Self::Rustls),
            "ktls" => Ok(Self::Ktls),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown TLS mode {other:?} (expected off, rustls, ktls or auto)"
            )),
        }
    }
}

/// What carries a connection's records once the mode is resolved. Also the `tls` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsPath {
    /// No TLS.
    Off,
    /// rustls encrypts in user space.
    Rustls,
    /// The kernel encrypts (TLS_SW, or the NIC with TLS_HW).
    Ktls,
}

impl TlsPath {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Rustls => "rustls",
            Self::Ktls => "ktls",
        }
    }
}

impl fmt::Display for TlsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_mode_and_rejects_others() {
        for mode in [TlsMode::Off, TlsMode::Rustls, TlsMode::Ktls, TlsMode::Auto] {
            assert_eq!(mode.as_str().parse::<TlsMode>(), Ok(mode));
        }
        let err = "tls13".parse::<TlsMode>().unwrap_err();
        assert!(err.contains("tls13") && err.contains("auto"), "{err}");
    }

    #[test]
    fn ktls_mode_refuses_a_kernel_without_ktls_and_auto_falls_back() {
        let missing = KtlsSupport::unavailable("no ULP");
        let err = TlsMode::Ktls.resolve(&missing).unwrap_err().to_string();
        assert!(
            err.contains("no ULP") && err.contains("modprobe tls"),
            "{err}"
        );
        assert_eq!(TlsMode::Auto.resolve(&missing).unwrap(), TlsPath::Rustls);
        assert_eq!(TlsMode::Rustls.resolve(&missing).unwrap(), TlsPath::Rustls);
        assert_eq!(TlsMode::Off.resolve(&missing).unwrap(), TlsPath::Off);

        let present = KtlsSupport::all_ciphers_for_test();
        assert_eq!(TlsMode::Ktls.resolve(&present).unwrap(), TlsPath::Ktls);
        assert_eq!(TlsMode::Auto.resolve(&present).unwrap(), TlsPath::Ktls);
    }
}
