//! What a record that is not application data means, once the kernel has decrypted it and handed
//! it over with its type (`TLS_GET_RECORD_TYPE`). Pure functions over bytes the peer chose: every
//! input has an answer, none panics (the tests feed them arbitrary bytes).

use std::io;

use rustls::{AlertDescription, HandshakeType};

use super::events::{RecordErrorKind, RekeyDirection};

pub(crate) const CHANGE_CIPHER_SPEC: u8 = 20;
pub(crate) const ALERT: u8 = 21;
pub(crate) const HANDSHAKE: u8 = 22;
pub(crate) const APPLICATION_DATA: u8 = 23;

const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;
const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// The largest handshake message accepted after the handshake. A NewSessionTicket carries a
/// ticket (rustls: about 200 bytes) and extensions; 64 KiB bounds what a peer can make us hold.
const MAX_HANDSHAKE_MESSAGE: usize = 1 << 16;

/// The KeyUpdate message that answers the peer or starts our own rekey: msg_type 24, length 1,
/// then `update_requested` (1) or `update_not_requested` (0).
pub(crate) fn key_update(update_requested: bool) -> [u8; 5] {
    [KEY_UPDATE, 0, 0, 1, u8::from(update_requested)]
}

/// A fatal alert record's payload.
pub(crate) fn fatal_alert(description: AlertDescription) -> [u8; 2] {
    [ALERT_FATAL, u8::from(description)]
}

/// close_notify (RFC 8446 6.1: sent with level warning).
pub(crate) const CLOSE_NOTIFY_ALERT: [u8; 2] = [ALERT_WARNING, CLOSE_NOTIFY];

/// What the stream must do about one non-application record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// close_notify: the peer sends nothing more; reads end.
    CloseNotify,
    /// Nothing (user_canceled: a close_notify follows).
    Ignore,
    /// The peer now encrypts with its next key; it asks us to update ours too when
    /// `update_requested`.
    KeyUpdate { update_requested: bool },
    /// A NewSessionTicket body (RFC 8446 4.6.1), without its 4-byte header.
    NewSessionTicket(Vec<u8>),
}

/// Why a kTLS connection is being closed. Each variant maps to one [`RecordErrorKind`] label.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("the peer sent a fatal alert: {0:?}")]
    Alert(AlertDescription),
    #[error("the peer sent a malformed alert record ({len} bytes, level {level:?})")]
    BadAlert { len: usize, level: Option<u8> },
    #[error("the peer sent a ChangeCipherSpec record after the TLS 1.3 handshake")]
    UnexpectedCcs,
    #[error("the peer sent a malformed handshake record: {0}")]
    BadHandshake(&'static str),
    #[error("the peer sent a {0:?} handshake message after the handshake")]
    UnexpectedHandshake(HandshakeType),
    #[error("the peer sent a record of unknown content type {0}")]
    UnknownRecordType(u8),
    #[error("the peer sent more than {0} KeyUpdates without application data between them")]
    TooManyKeyUpdates(u32),
    #[error(
        "{} and this kernel cannot take a second key (kTLS rekey needs Linux 6.14 or later)",
        if *by_peer { "the peer sent a TLS 1.3 KeyUpdate" } else { "our records reached the rekey limit" }
    )]
    RekeyUnsupported { by_peer: bool },
    #[error("{direction:?} rekey failed: {detail}")]
    RekeyFailed {
        direction: RekeyDirection,
        detail: String,
    },
    #[error(
        "{records} records sent under one key (limit {limit}) and this kernel cannot rekey \
         (kTLS rekey needs Linux 6.14 or later)"
    )]
    RecordLimit { records: u64, limit: u64 },
    #[error("rustls refused the server's NewSessionTicket: {0}")]
    BadSessionTicket(rustls::Error),
    #[error("the kernel could not authenticate a record from the peer (EBADMSG)")]
    DecryptError,
    #[error("the kernel holds records that need a receive key we do not have (EKEYEXPIRED)")]
    KeyExpired,
    #[error("unexpected answer from the kernel: {0}")]
    Kernel(String),
}

impl RecordError {
    pub(crate) fn kind(&self) -> RecordErrorKind {
        match self {
            Self::Alert(_) => RecordErrorKind::Alert,
            Self::BadAlert { .. } => RecordErrorKind::BadAlert,
            Self::UnexpectedCcs => RecordErrorKind::UnexpectedCcs,
            Self::BadHandshake(_) => RecordErrorKind::BadHandshake,
            Self::UnexpectedHandshake(_) => RecordErrorKind::UnexpectedHandshake,
            Self::UnknownRecordType(_) => RecordErrorKind::UnknownRecordType,
            Self::TooManyKeyUpdates(_) => RecordErrorKind::TooManyKeyUpdates,
            Self::RekeyUnsupported { .. } => RecordErrorKind::RekeyUnsupported,
            Self::RekeyFailed { .. } => RecordErrorKind::RekeyFailed,
            Self::RecordLimit { .. } => RecordErrorKind::RecordLimit,
            Self::BadSessionTicket(_) => RecordErrorKind::BadSessionTicket,
            Self::DecryptError => RecordErrorKind::DecryptError,
            Self::KeyExpired => RecordErrorKind::KeyExpired,
            Self::Kernel(_) => RecordErrorKind::Kernel,
        }
    }

    /// The fatal alert we send before closing, if the peer should hear one (RFC 8446 6.2).
    pub(crate) fn alert_to_send(&self) -> Option<AlertDescription> {
        match self {
            // The peer closed already.
            Self::Alert(_) => None,
            Self::BadAlert { .. } | Self::BadHandshake(_) => Some(AlertDescription::DecodeError),
            Self::UnexpectedCcs
            | Self::UnexpectedHandshake(_)
            | Self::UnknownRecordType(_)
            | Self::TooManyKeyUpdates(_) => Some(AlertDescription::UnexpectedMessage),
            Self::DecryptError => Some(AlertDescription::BadRecordMac),
            Self::RekeyUnsupported { .. }
            | Self::RekeyFailed { .. }
            | Self::RecordLimit { .. }
            | Self::BadSessionTicket(_)
            | Self::KeyExpired
            | Self::Kernel(_) => Some(AlertDescription::InternalError),
        }
    }

    /// The read error of a kTLS socket that carries a TLS meaning, or `None` for plain socket
    /// errors (reset, broken pipe), which pass through unchanged.
    pub(crate) fn from_read_error(e: &io::Error) -> Option<Self> {
        match e.raw_os_error() {
            Some(libc::EBADMSG) => Some(Self::DecryptError),
            Some(libc::EKEYEXPIRED) => Some(Self::KeyExpired),
            _ => None,
        }
    }
}

/// An alert record (RFC 8446 6): exactly a level and a description.
pub(crate) fn alert(payload: &[u8]) -> Result<Control, RecordError> {
    match *payload {
        [ALERT_WARNING | ALERT_FATAL, CLOSE_NOTIFY] => Ok(Control::CloseNotify),
        [ALERT_WARNING, USER_CANCELED] => Ok(Control::Ignore),
        [ALERT_WARNING | ALERT_FATAL, description] => {
            Err(RecordError::Alert(AlertDescription::from(description)))
        }
        _ => Err(RecordError::BadAlert {
            len: payload.len(),
            level: payload.first().copied(),
        }),
    }
}

/// Handshake messages after the handshake, which may span records (RFC 8446 5.1), except that
/// a KeyUpdate must end its record.
#[derive(Debug, Default)]
pub(crate) struct Handshakes {
    /// Bytes of a message whose end has not arrived yet.
    partial: Vec<u8>,
}

impl Handshakes {
    /// The messages that one handshake record completes, in order.
    pub(crate) fn record(&mut self, payload: &[u8]) -> Result<Vec<Control>, RecordError> {
        if self.partial.len() + payload.len() > MAX_HANDSHAKE_MESSAGE + 4 {
            return Err(RecordError::BadHandshake("message longer than 64 KiB"));
        }
        self.partial.extend_from_slice(payload);
        let mut out = Vec::new();
        let mut pos = 0;
        while let [typ, a, b, c, rest @ ..] = &self.partial[pos..] {
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(RecordError::BadHandshake("message longer than 64 KiB"));
            }
            let Some(body) = rest.get(..len) else {
                break; // continued in a later record
            };
            pos += 4 + len;
            match *typ {
                KEY_UPDATE => {
                    let update_requested = match *body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(RecordError::BadHandshake("invalid KeyUpdate")),
                    };
                    if pos != self.partial.len() {
                        return Err(RecordError::BadHandshake(
                            "KeyUpdate not at the end of its record",
                        ));
                    }
                    out.push(Control::KeyUpdate { update_requested });
                }
                NEW_SESSION_TICKET => out.push(Control::NewSessionTicket(body.to_vec())),
                other => return Err(RecordError::UnexpectedHandshake(HandshakeType::from(other))),
            }
        }
        self.partial.drain(..pos);
        Ok(out)
    }
}

/// What one non-application record asks of the stream.
pub(crate) fn control(
    record_type: u8,
    payload: &[u8],
    handshakes: &mut Handshakes,
) -> Result<Vec<Control>, RecordError> {
    match record_type {
        ALERT => alert(payload).map(|c| vec![c]),
        HANDSHAKE => handshakes.record(payload),
        CHANGE_CIPHER_SPEC => Err(RecordError::UnexpectedCcs),
        other => Err(RecordError::UnknownRecordType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts() {
        assert_eq!(alert(&[1, 0]).unwrap(), Control::CloseNotify);
        assert_eq!(alert(&[2, 0]).unwrap(), Control::CloseNotify);
        assert_eq!(alert(&[1, 90]).unwrap(), Control::Ignore);
        let e = alert(&[2, 40]).unwrap_err();
        assert_eq!(e.kind(), RecordErrorKind::Alert);
        assert!(e.to_string().contains("HandshakeFailure"), "{e}");
        assert_eq!(e.alert_to_send(), None);
        for bad in [&[][..], &[2], &[2, 40, 0, 0], &[3, 0], &[0, 10]] {
            let e = alert(bad).unwrap_err();
            assert_eq!(e.kind(), RecordErrorKind::BadAlert, "{bad:?}");
            assert_eq!(e.alert_to_send(), Some(AlertDescription::DecodeError));
        }
    }

    #[test]
    fn key_updates_must_end_their_record() {
        let mut h = Handshakes::default();
        assert_eq!(
            h.record(&key_update(true)).unwrap(),
            vec![Control::KeyUpdate {
                update_requested: true
            }]
        );
        assert_eq!(
            h.record(&key_update(false)).unwrap(),
            vec![Control::KeyUpdate {
                update_requested: false
            }]
        );
        // Two KeyUpdates in one record: the first does not end it.
        let two = [key_update(false), key_update(false)].concat();
        let e = Handshakes::default().record(&two).unwrap_err();
        assert!(e.to_string().contains("end of its record"), "{e}");
        for bad in [
            [24, 0, 0, 1, 2].as_slice(),
            &[24, 0, 0, 0],
            &[24, 0, 0, 2, 0, 0],
        ] {
            let e = Handshakes::default().record(bad).unwrap_err();
            assert_eq!(e.kind(), RecordErrorKind::BadHandshake, "{bad:?}");
        }
    }

    #[test]
    fn tickets_may_span_records_and_share_one() {
        let ticket = |n: u8| [&[4, 0, 0, 3][..], &[n, n, n]].concat();
        let mut h = Handshakes::default();
        let both = [ticket(1), ticket(2)].concat();
        assert_eq!(
            h.record(&both[..5]).unwrap(),
            Vec::<Control>::new(),
            "incomplete"
        );
        assert_eq!(
            h.record(&both[5..]).unwrap(),
            vec![
                Control::NewSessionTicket(vec![1, 1, 1]),
                Control::NewSessionTicket(vec![2, 2, 2])
            ]
        );
        // A ticket then a KeyUpdate that ends the record is fine.
        let mixed = [ticket(3), key_update(false).to_vec()].concat();
        assert_eq!(h.record(&mixed).unwrap().len(), 2);
    }

    #[test]
    fn other_records_and_messages_are_errors() {
        let mut h = Handshakes::default();
        let e = control(CHANGE_CIPHER_SPEC, &[1], &mut h).unwrap_err();
        assert_eq!(e.kind(), RecordErrorKind::UnexpectedCcs);
        let e = control(99, &[], &mut h).unwrap_err();
        assert_eq!(e.kind(), RecordErrorKind::UnknownRecordType);
        // A ClientHello after the handshake.
        let e = control(HANDSHAKE, &[1, 0, 0, 1, 0], &mut h).unwrap_err();
        assert_eq!(e.kind(), RecordErrorKind::UnexpectedHandshake);
        assert!(e.to_string().contains("ClientHello"), "{e}");
        // A length that no record could complete is refused before it is buffered.
        let e = Handshakes::default()
            .record(&[4, 0xff, 0xff, 0xff])
            .unwrap_err();
        assert_eq!(e.kind(), RecordErrorKind::BadHandshake);
        let mut big = Handshakes::default();
        let chunk = vec![0u8; 16384];
        let mut first = vec![4, 0, 0xff, 0xff];
        first.extend_from_slice(&chunk[4..]);
        big.record(&first).unwrap();
        for _ in 0..3 {
            big.record(&chunk).unwrap();
        }
        let e = big.record(&chunk).unwrap_err();
        assert!(e.to_string().contains("64 KiB"), "{e}");
    }

    /// Arbitrary record types and payloads, one after another into the same reassembly buffer:
    /// every one has an answer and nothing panics.
    #[test]
    fn arbitrary_records_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut h = Handshakes::default();
        for _ in 0..20_000 {
            let typ = [20, 21, 22, 22, 22, 23, (next() & 0xff) as u8][(next() % 7) as usize];
            let len = (next() % 12) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if typ == HANDSHAKE && len >= 4 && next() % 2 == 0 {
                // Plausible headers: known types, small lengths.
                payload[0] = [4, 24, 1, 8][(next() % 4) as usize];
                payload[1] = 0;
                payload[2] = 0;
                payload[3] = (next() % 6) as u8;
            }
            match control(typ, &payload, &mut h) {
                Ok(_) => {}
                Err(e) => {
                    let _ = (e.kind(), e.alert_to_send(), e.to_string());
                    h = Handshakes::default();
                }
            }
        }
    }
}
