//! The kernel TLS probe. It runs before any handshake: once rustls secrets are handed to a kernel
//! that refuses them, the connection is lost, so we ask the kernel first on a throwaway loopback
//! connection (TCP_ULP "tls", then TLS_TX with a zero key for each TLS 1.3 cipher). It also asks
//! whether the kernel can rekey (TLS 1.3 KeyUpdate, Linux >= 6.14): a second TLS_TX on the
//! first socket that took one, which older kernels refuse with EBUSY. (Rekeying is one kernel
//! feature for both directions; the probe never sets TLS_RX, so the kernel's receive counters,
//! `TlsRxSw` and `TlsRxRekeyOk`, only ever count real connections.)

use std::{
    io,
    net::{Ipv4Addr, TcpListener, TcpStream},
};

use nix::{
    errno::Errno,
    sys::socket::{
        setsockopt,
        sockopt::{TcpTlsTx, TcpUlp, TlsCryptoInfo},
    },
};
use rustls::{CipherSuite, SupportedCipherSuite};

/// What the kernel offers for TLS 1.3 record offload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KtlsSupport {
    aes_128_gcm: bool,
    aes_256_gcm: bool,
    chacha20_poly1305: bool,
    /// A second TLS_TX (a rekey) was accepted.
    rekey: bool,
    /// Why kTLS cannot be used, when it cannot.
    unavailable: Option<String>,
}

/// The TLS 1.3 ciphers kTLS can carry, in the order they are probed.
#[derive(Clone, Copy, Debug)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl KtlsSupport {
    /// Asks the running kernel. Never fails: any error becomes the unavailability reason.
    pub fn probe() -> Self {
        match probe_kernel() {
            Ok(support) => support,
            Err(reason) => Self::unavailable(reason),
        }
    }

    /// A kernel without kTLS, for the given reason.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            aes_128_gcm: false,
            aes_256_gcm: false,
            chacha20_poly1305: false,
            rekey: false,
            unavailable: Some(reason.into()),
        }
    }

    pub fn is_available(&self) -> bool {
        self.unavailable.is_none()
    }

    /// Whether the kernel takes new keys on a live kTLS socket, as a TLS 1.3 KeyUpdate needs
    /// (Linux >= 6.14). Without it a peer's KeyUpdate closes the connection, and so does our
    /// own rekey limit.
    pub fn can_rekey(&self) -> bool {
        self.is_available() && self.rekey
    }

    /// Why kTLS is unusable (`None` when it is usable).
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// Whether the kernel accepts keys for this (TLS 1.3) cipher suite.
    pub fn supports(&self, suite: SupportedCipherSuite) -> bool {
        match suite.suite() {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => self.aes_128_gcm,
            CipherSuite::TLS13_AES_256_GCM_SHA384 => self.aes_256_gcm,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => self.chacha20_poly1305,
            _ => false,
        }
    }

    /// The TLS 1.3 ciphers the kernel accepted, for humans: "AES-128-GCM, AES-256-GCM".
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [
            (self.aes_128_gcm, "AES-128-GCM"),
            (self.aes_256_gcm, "AES-256-GCM"),
            (self.chacha20_poly1305, "CHACHA20-POLY1305"),
        ]
        .into_iter()
        .filter_map(|(ok, name)| ok.then_some(name))
        .collect();
        if names.is_empty() {
            "no TLS 1.3 cipher".to_owned()
        } else {
            format!(
                "TLS 1.3 {}; rekey (KeyUpdate): {}",
                names.join(", "),
                if self.rekey {
                    "yes"
                } else {
                    "no, this kernel takes one key per direction (rekey needs Linux 6.14 or later)"
                }
            )
        }
    }

    #[cfg(test)]
    pub(crate) fn all_ciphers_for_test() -> Self {
        Self {
            aes_128_gcm: true,
            aes_256_gcm: true,
            chacha20_poly1305: true,
            rekey: true,
            unavailable: None,
        }
    }
}

fn probe_kernel() -> Result<KtlsSupport, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("probe could not open a loopback socket: {e}"))?;
    let mut support = KtlsSupport::unavailable("");
    let mut last_refusal = None;
    for cipher in [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ] {
        let first = !(support.aes_128_gcm || support.aes_256_gcm || support.chacha20_poly1305);
        let ok = match probe_cipher(&listener, cipher, first)? {
            Ok(rekey) => {
                support.rekey |= rekey;
                true
            }
            Err(e) => {
                last_refusal = Some(e);
                false
            }
        };
        match cipher {
            Cipher::Aes128Gcm => support.aes_128_gcm = ok,
            Cipher::Aes256Gcm => support.aes_256_gcm = ok,
            Cipher::Chacha20Poly1305 => support.chacha20_poly1305 = ok,
        }
    }
    if support.aes_128_gcm || support.aes_256_gcm || support.chacha20_poly1305 {
        support.unavailable = None;
        Ok(support)
    } else {
        Err(format!(
            "the kernel has the TLS ULP but refused TLS_TX for every TLS 1.3 cipher (last error: {})",
            last_refusal.map_or_else(|| "none".to_owned(), |e| e.to_string())
        ))
    }
}

/// Outer error: the kernel has no usable TLS ULP at all. Inner error: this cipher is refused.
/// Inner `Ok`: with `check_rekey`, whether the kernel also took a second key (a rekey).
fn probe_cipher(
    listener: &TcpListener,
    cipher: Cipher,
    check_rekey: bool,
) -> Result<Result<bool, Errno>, String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("probe socket has no address: {e}"))?;
    let stream = TcpStream::connect(addr)
        .map_err(|e| format!("probe could not connect on loopback: {e}"))?;
    // The peer must exist for the connection to be established; it is never read.
    let (_peer, _) = listener
        .accept()
        .map_err(|e| format!("probe could not accept on loopback: {e}"))?;
    setsockopt(&stream, TcpUlp::default(), b"tls").map_err(|e| ulp_refused(e.into()))?;
    let info = crypto_info(cipher);
    if let Err(e) = setsockopt(&stream, TcpTlsTx, &info) {
        return Ok(Err(e));
    }
    // Nothing is ever sent on this socket, so setting the key again is harmless; a kernel before
    // 6.14 answers EBUSY. Once per probe: it counts in the kernel's TlsTxRekeyOk.
    Ok(Ok(
        check_rekey && setsockopt(&stream, TcpTlsTx, &info).is_ok()
    ))
}

fn ulp_refused(e: io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOENT) {
        "setsockopt(TCP_ULP, \"tls\") failed with ENOENT: this kernel has no TLS upper-layer \
         protocol (the tls module is not loaded, or the kernel was built without CONFIG_TLS)"
            .to_owned()
    } else {
        format!("setsockopt(TCP_ULP, \"tls\") failed: {e}")
    }
}

/// A zero key: the socket is thrown away, only the kernel's acceptance matters.
fn crypto_info(cipher: Cipher) -> TlsCryptoInfo {
    let info = |cipher_type| libc::tls_crypto_info {
        version: libc::TLS_1_3_VERSION,
        cipher_type,
    };
    match cipher {
        Cipher::Aes128Gcm => TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
            info: info(libc::TLS_CIPHER_AES_GCM_128),
            iv: [0; 8],
            key: [0; 16],
            salt: [0; 4],
            rec_seq: [0; 8],
        }),
        Cipher::Aes256Gcm => TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
            info: info(libc::TLS_CIPHER_AES_GCM_256),
            iv: [0; 8],
            key: [0; 32],
            salt: [0; 4],
            rec_seq: [0; 8],
        }),
        Cipher::Chacha20Poly1305 => {
            TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                iv: [0; 12],
                key: [0; 32],
                salt: [],
                rec_seq: [0; 8],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe agrees with a direct look at the kernel: whether TCP_ULP "tls" is accepted.
    #[test]
    fn probe_matches_the_kernel() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _peer = listener.accept().unwrap();
        let ulp = setsockopt(&stream, TcpUlp::default(), b"tls");

        let support = KtlsSupport::probe();
        match ulp {
            Err(Errno::ENOENT) => {
                let reason = support.unavailable_reason().expect("no ULP, yet available");
                assert!(
                    reason.contains("ENOENT") && reason.contains("CONFIG_TLS"),
                    "{reason}"
                );
            }
            Err(e) => assert!(!support.is_available(), "ULP refused ({e}) yet available"),
            Ok(()) => assert!(
                support.is_available() || support.unavailable_reason().unwrap().contains("TLS_TX"),
                "{support:?}"
            ),
        }
    }
}
