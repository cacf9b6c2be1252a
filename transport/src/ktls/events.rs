//! What the kTLS connections of this process did that an operator must see: rekeys by direction
//! and initiator, and connections closed by a record the peer or the kernel sent, by reason.
//!
//! Process-wide counters, because they are rare events (a rekey every 2^24 records at most, a
//! record error once per broken connection): one relaxed atomic add each, never on the path of
//! an ordinary read or write. The server re-exports them at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};

/// Which key a rekey replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RekeyDirection {
    /// The key we encrypt with: we sent a KeyUpdate, then gave the kernel the new TLS_TX key.
    Tx,
    /// The key we decrypt with: the peer sent a KeyUpdate, we gave the kernel the new TLS_RX key.
    Rx,
}

/// Who asked for a rekey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RekeyInitiator {
    /// This side, because its records under the current key reached the rekey limit.
    Local,
    /// The peer: its own KeyUpdate (RX), or its request that we update ours (TX).
    Peer,
}

impl RekeyDirection {
    pub const ALL: [Self; 2] = [Self::Tx, Self::Rx];

    /// The `direction` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tx => "tx",
            Self::Rx => "rx",
        }
    }
}

impl RekeyInitiator {
    pub const ALL: [Self; 2] = [Self::Local, Self::Peer];

    /// The `initiator` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "self",
            Self::Peer => "peer",
        }
    }
}

/// Why a kTLS connection was closed by what came out of (or went into) the kernel. Also the
/// `reason` metric label ([`Self::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordErrorKind {
    /// The peer sent a fatal alert (its name is in the error and the log line).
    Alert,
    /// An alert record that is not exactly two bytes, or of an unknown level.
    BadAlert,
    /// A ChangeCipherSpec record after the handshake (TLS 1.3 allows none).
    UnexpectedCcs,
    /// A handshake record that does not parse (bad length, bad KeyUpdate, KeyUpdate not at the
    /// end of its record).
    BadHandshake,
    /// A well-formed handshake message that has no place after the handshake.
    UnexpectedHandshake,
    /// A record of a content type TLS 1.3 does not define.
    UnknownRecordType,
    /// More KeyUpdates in a row, without application data between them, than we accept.
    TooManyKeyUpdates,
    /// The peer sent a KeyUpdate and this kernel cannot take a second key (Linux < 6.14).
    RekeyUnsupported,
    /// The next key could not be computed or the kernel refused it.
    RekeyFailed,
    /// Our records under one key reached the limit and this kernel cannot rekey.
    RecordLimit,
    /// rustls refused a NewSessionTicket the server sent.
    BadSessionTicket,
    /// The kernel could not authenticate a record (EBADMSG; `TlsDecryptError` in tls_stat).
    DecryptError,
    /// A read while the kernel waited for a new receive key (EKEYEXPIRED).
    KeyExpired,
    /// The kernel answered in a way kTLS does not document (no record type, a truncated
    /// control message).
    Kernel,
}

impl RecordErrorKind {
    pub const ALL: [Self; 14] = [
        Self::Alert,
        Self::BadAlert,
        Self::UnexpectedCcs,
        Self::BadHandshake,
        Self::UnexpectedHandshake,
        Self::UnknownRecordType,
        Self::TooManyKeyUpdates,
        Self::RekeyUnsupported,
        Self::RekeyFailed,
        Self::RecordLimit,
        Self::BadSessionTicket,
        Self::DecryptError,
        Self::KeyExpired,
        Self::Kernel,
    ];

    /// The `reason` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::BadAlert => "bad_alert",
            Self::UnexpectedCcs => "unexpected_ccs",
            Self::BadHandshake => "bad_handshake",
            Self::UnexpectedHandshake => "unexpected_handshake",
            Self::UnknownRecordType => "unknown_record_type",
            Self::TooManyKeyUpdates => "too_many_key_updates",
            Self::RekeyUnsupported => "rekey_unsupported",
            Self::RekeyFailed => "rekey_failed",
            Self::RecordLimit => "record_limit",
            Self::BadSessionTicket => "bad_session_ticket",
            Self::DecryptError => "decrypt_error",
            Self::KeyExpired => "key_expired",
            Self::Kernel => "kernel",
        }
    }

    /// True when the peer's bytes alone caused it (what the peer sent, or a KeyUpdate this
    /// kernel cannot follow): a per-peer failure, logged at `debug` and counted, so that a
    /// peer sending bad records in a loop cannot flood the log. The rest (our own record
    /// limit, a key the kernel refused, a kernel answer kTLS does not document) are this
    /// host's to fix, and are warnings.
    pub fn is_peers(self) -> bool {
        match self {
            Self::Alert
            | Self::BadAlert
            | Self::UnexpectedCcs
            | Self::BadHandshake
            | Self::UnexpectedHandshake
            | Self::UnknownRecordType
            | Self::TooManyKeyUpdates
            | Self::RekeyUnsupported
            | Self::BadSessionTicket
            | Self::DecryptError => true,
            Self::RekeyFailed | Self::RecordLimit | Self::KeyExpired | Self::Kernel => false,
        }
    }
}

/// A snapshot of this process's kTLS counters ([`ktls_counters`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KtlsCounters {
    rekeys: [[u64; 2]; 2],
    errors: [u64; RecordErrorKind::ALL.len()],
}

impl KtlsCounters {
    /// Rekeys of `direction` that `initiator` asked for.
    pub fn rekeys(&self, direction: RekeyDirection, initiator: RekeyInitiator) -> u64 {
        self.rekeys[direction as usize][initiator as usize]
    }

    /// Connections closed for `kind`.
    pub fn record_errors(&self, kind: RecordErrorKind) -> u64 {
        self.errors[kind as usize]
    }

    /// These counts with `n` rekeys of `direction` by `initiator` (for exporters' tests).
    pub fn with_rekeys(
        mut self,
        direction: RekeyDirection,
        initiator: RekeyInitiator,
        n: u64,
    ) -> Self {
        self.rekeys[direction as usize][initiator as usize] = n;
        self
    }

    /// These counts with `n` record errors of `kind` (for exporters' tests).
    pub fn with_record_errors(mut self, kind: RecordErrorKind, n: u64) -> Self {
        self.errors[kind as usize] = n;
        self
    }

    /// One line for humans: `rekeys tx/self 3, tx/peer 0, rx/peer 3; record errors: none`.
    pub fn describe(&self) -> String {
        let mut out = String::from("rekeys");
        for (i, (d, w)) in [
            (RekeyDirection::Tx, RekeyInitiator::Local),
            (RekeyDirection::Tx, RekeyInitiator::Peer),
            (RekeyDirection::Rx, RekeyInitiator::Local),
            (RekeyDirection::Rx, RekeyInitiator::Peer),
        ]
        .into_iter()
        .enumerate()
        {
            let sep = if i == 0 { " " } else { ", " };
            let n = self.rekeys(d, w);
            out.push_str(&format!("{sep}{}/{} {n}", d.as_str(), w.as_str()));
        }
        let errors: Vec<String> = RecordErrorKind::ALL
            .iter()
            .filter(|k| self.record_errors(**k) > 0)
            .map(|k| format!("{} {}", k.as_str(), self.record_errors(*k)))
            .collect();
        out.push_str("; record errors: ");
        out.push_str(&if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        });
        out
    }
}

struct Counters {
    rekeys: [[AtomicU64; 2]; 2],
    errors: [AtomicU64; RecordErrorKind::ALL.len()],
}

static COUNTERS: Counters = Counters {
    rekeys: [const { [const { AtomicU64::new(0) }; 2] }; 2],
    errors: [const { AtomicU64::new(0) }; RecordErrorKind::ALL.len()],
};

/// What the kTLS connections of this process have done so far.
pub fn ktls_counters() -> KtlsCounters {
    let mut out = KtlsCounters::default();
    for (d, row) in COUNTERS.rekeys.iter().enumerate() {
        for (i, n) in row.iter().enumerate() {
            out.rekeys[d][i] = n.load(Ordering::Relaxed);
        }
    }
    for (i, n) in COUNTERS.errors.iter().enumerate() {
        out.errors[i] = n.load(Ordering::Relaxed);
    }
    out
}

pub(crate) fn count_rekey(direction: RekeyDirection, initiator: RekeyInitiator) {
    COUNTERS.rekeys[direction as usize][initiator as usize].fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_record_error(kind: RecordErrorKind) {
    COUNTERS.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_indices_match_all() {
        for (i, k) in RecordErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?} out of order in ALL");
        }
        let mut labels: Vec<_> = RecordErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RecordErrorKind::ALL.len());
        for (i, d) in RekeyDirection::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
        for (i, w) in RekeyInitiator::ALL.iter().enumerate() {
            assert_eq!(*w as usize, i);
        }
    }

    #[test]
    fn counts_show_in_snapshots_and_descriptions() {
        // Counters are process-wide and other tests may count too: compare differences.
        let before = ktls_counters();
        count_rekey(RekeyDirection::Rx, RekeyInitiator::Peer);
        count_record_error(RecordErrorKind::UnexpectedCcs);
        let after = ktls_counters();
        assert_eq!(
            after.rekeys(RekeyDirection::Rx, RekeyInitiator::Peer)
                - before.rekeys(RekeyDirection::Rx, RekeyInitiator::Peer),
            1
        );
        assert_eq!(
            after.record_errors(RecordErrorKind::UnexpectedCcs)
                - before.record_errors(RecordErrorKind::UnexpectedCcs),
            1
        );
        let line = after.describe();
        assert!(
            line.contains("rx/peer ") && line.contains("unexpected_ccs "),
            "{line}"
        );
        assert_eq!(
            KtlsCounters::default().describe(),
            "rekeys tx/self 0, tx/peer 0, rx/self 0, rx/peer 0; record errors: none"
        );
    }
}
