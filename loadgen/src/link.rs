//! A connection task's link to the server: up, or down and reconnecting, the way a gRPC channel
//! does it (gRPC's connection-backoff.md): after a failed attempt wait `backoff`, then multiply
//! it by 1.6 with ±20% jitter, up to a maximum; a successful connection resets it. The first
//! wait is 100 ms rather than gRPC's 1 s: the load generator is there to measure how long the
//! server was away, not to add a second of its own. Calls due while the link is down fail at
//! once with UNAVAILABLE, as calls on a channel in TRANSIENT_FAILURE do.

use std::{
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

use krpc_transport::Connector;
use rand::Rng;

use crate::conn::GrpcConn;

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MULTIPLIER: f64 = 1.6;
const JITTER: f64 = 0.2;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// One connection attempt (TCP, TLS, HTTP/2 handshake) gets this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// gRPC's exponential backoff with jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self {
            next: INITIAL_BACKOFF,
        }
    }

    /// The wait before the next attempt (jittered), and the one after it grows.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.next;
        self.next = base.mul_f64(MULTIPLIER).min(MAX_BACKOFF);
        base.mul_f64(1.0 + rng.random_range(-JITTER..=JITTER))
    }

    pub(crate) fn reset(&mut self) {
        self.next = INITIAL_BACKOFF;
    }
}

type Attempt = Pin<Box<dyn Future<Output = Option<GrpcConn>> + Send>>;

/// What a link did, as [`Link::changed`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Down,
    Up,
}

/// A connection that may break and be replaced.
pub(crate) struct Link {
    target: String,
    connector: Connector,
    reconnect: bool,
    conn: Option<GrpcConn>,
    backoff: Backoff,
    attempt: Option<Attempt>,
    /// When the link went down, for each time it did, and when it came back.
    outages: Vec<(Instant, Option<Instant>)>,
    reconnects: u64,
}

impl Link {
    pub(crate) fn new(
        conn: GrpcConn,
        target: String,
        connector: Connector,
        reconnect: bool,
    ) -> Self {
        Self {
            target,
            connector,
            reconnect,
            conn: Some(conn),
            backoff: Backoff::new(),
            attempt: None,
            outages: Vec::new(),
            reconnects: 0,
        }
    }

    /// The connection, while it works.
    pub(crate) fn up(&self) -> Option<&GrpcConn> {
        self.conn.as_ref().filter(|c| !c.is_broken())
    }

    /// Waits for the link to go down, or (reconnecting) to come back up. Cancel-safe: a
    /// connection attempt in progress is kept for the next call.
    pub(crate) async fn changed(&mut self) -> Change {
        if let Some(conn) = &self.conn {
            conn.broken().await;
            self.conn = None;
            self.outages.push((Instant::now(), None));
            return Change::Down;
        }
        if !self.reconnect {
            return std::future::pending().await;
        }
        loop {
            let attempt = match &mut self.attempt {
                Some(attempt) => attempt,
                None => {
                    let delay = self.backoff.next_delay(&mut rand::rng());
                    let (target, connector) = (self.target.clone(), self.connector.clone());
                    self.attempt.insert(Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        let connect = GrpcConn::connect(&target, &connector);
                        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                            Ok(Ok(conn)) => Some(conn),
                            Ok(Err(error)) => {
                                tracing::debug!(error = %krpc_telemetry::error_chain(&error), "reconnect failed");
                                None
                            }
                            Err(_) => None,
                        }
                    }))
                }
            };
            let connected = attempt.await;
            self.attempt = None;
            if let Some(conn) = connected {
                self.conn = Some(conn);
                self.backoff.reset();
                self.reconnects += 1;
                if let Some((_, end)) = self.outages.last_mut() {
                    *end = Some(Instant::now());
                }
                return Change::Up;
            }
        }
    }

    /// Connections made again after the link went down.
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Time the link was down within `[from, to)` (an outage still going counts up to `to`).
    pub(crate) fn downtime_within(&self, from: Instant, to: Instant) -> Duration {
        self.outages
            .iter()
            .map(|&(down, up)| {
                let (start, end) = (down.max(from), up.unwrap_or(to).min(to));
                end.saturating_duration_since(start)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::SmallRng};

    use super::*;

    #[test]
    fn backoff_grows_by_1_6_with_jitter_up_to_the_maximum_and_resets() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut backoff = Backoff::new();
        let mut base = INITIAL_BACKOFF.as_secs_f64();
        for _ in 0..20 {
            let d = backoff.next_delay(&mut rng).as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{d} vs {base}"
            );
            base = (base * MULTIPLIER).min(MAX_BACKOFF.as_secs_f64());
        }
        assert_eq!(base, MAX_BACKOFF.as_secs_f64());
        backoff.reset();
        let d = backoff.next_delay(&mut rng);
        assert!(d <= INITIAL_BACKOFF.mul_f64(1.2));
    }
}
