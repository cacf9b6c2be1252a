//! Session keys into the kernel: the TLS upper-layer protocol on the socket, then `TLS_TX` and
//! `TLS_RX` from rustls' traffic secrets. Setting them again later is a rekey (Linux >= 6.14,
//! TLS 1.3 only, same cipher); older kernels answer `EBUSY`.

use std::{io, os::fd::AsFd};

use nix::sys::socket::{
    setsockopt,
    sockopt::{TcpTlsRx, TcpTlsTx, TcpUlp, TlsCryptoInfo},
};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

/// Turns on the TLS upper-layer protocol, then hands the kernel both directions' keys.
pub(crate) fn attach(socket: &impl AsFd, secrets: ExtractedSecrets) -> io::Result<()> {
    setsockopt(socket, TcpUlp::default(), b"tls")?;
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    set_tx(socket, tx_seq, &tx)?;
    set_rx(socket, rx_seq, &rx)
}

/// The key we encrypt with, starting at record sequence number `seq`.
pub(crate) fn set_tx(
    socket: &impl AsFd,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> io::Result<()> {
    Ok(setsockopt(socket, TcpTlsTx, &crypto_info(seq, secrets)?)?)
}

/// The key we decrypt with, starting at record sequence number `seq`.
pub(crate) fn set_rx(
    socket: &impl AsFd,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> io::Result<()> {
    Ok(setsockopt(socket, TcpTlsRx, &crypto_info(seq, secrets)?)?)
}

/// The kernel's `tls12_crypto_info_*` for a TLS 1.3 key. For AES-GCM the kernel splits
/// rustls' 12-byte IV into a 4-byte salt and an 8-byte explicit part; ChaCha20 takes all 12.
fn crypto_info(seq: u64, secrets: &ConnectionTrafficSecrets) -> io::Result<TlsCryptoInfo> {
    let info = |cipher_type| libc::tls_crypto_info {
        version: libc::TLS_1_3_VERSION,
        cipher_type,
    };
    let rec_seq = seq.to_be_bytes();
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "key or IV of unexpected length",
        )
    };
    Ok(match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            let (salt, iv) = iv.as_ref().split_at(4);
            TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: info(libc::TLS_CIPHER_AES_GCM_128),
                iv: iv.try_into().map_err(|_| bad())?,
                key: key.as_ref().try_into().map_err(|_| bad())?,
                salt: salt.try_into().map_err(|_| bad())?,
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let (salt, iv) = iv.as_ref().split_at(4);
            TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: info(libc::TLS_CIPHER_AES_GCM_256),
                iv: iv.try_into().map_err(|_| bad())?,
                key: key.as_ref().try_into().map_err(|_| bad())?,
                salt: salt.try_into().map_err(|_| bad())?,
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                iv: iv.as_ref().try_into().map_err(|_| bad())?,
                key: key.as_ref().try_into().map_err(|_| bad())?,
                salt: [],
                rec_seq,
            })
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "cipher suite without a kTLS mapping",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use rustls::crypto::cipher::{AeadKey, Iv};

    use super::*;

    #[test]
    fn iv_split_and_sequence_number() {
        let iv: [u8; 12] = std::array::from_fn(|i| i as u8);
        let secrets = ConnectionTrafficSecrets::Aes128Gcm {
            key: AeadKey::from([7u8; 32]),
            iv: Iv::new(iv),
        };
        // AeadKey::from takes 32 bytes and keeps the length given by the suite; a 32-byte key
        // is not an AES-128 key.
        assert!(crypto_info(0, &secrets).is_err());
        let secrets = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from([7u8; 32]),
            iv: Iv::new(iv),
        };
        let TlsCryptoInfo::Chacha20Poly1305(c) = crypto_info(0x0102, &secrets).unwrap() else {
            panic!("wrong cipher");
        };
        assert_eq!(c.iv, iv);
        assert_eq!(c.rec_seq, [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(c.info.version, libc::TLS_1_3_VERSION);
    }
}
