//! The open loop's schedule: intended send times at the asked rate (uniform or Poisson),
//! dealt round robin to the connections. A thread of its own that sleeps with `nanosleep`
//! (about 50 µs of slack), not on tokio's millisecond timer.

use std::{
    thread,
    time::{Duration, Instant},
};

use rand::{SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, Exp};
use tokio::sync::mpsc;

use crate::workload::Arrival;

/// The schedule: intended send times from `start` until `end`, dealt round robin.
pub(crate) fn pace(
    rate: f64,
    arrival: Arrival,
    start: Instant,
    end: Instant,
    connections: Vec<mpsc::UnboundedSender<Instant>>,
) {
    let mut rng = SmallRng::from_os_rng();
    let exp = Exp::new(rate).expect("rate checked positive");
    let mut poisson_offset = 0.0f64;
    // The i-th send time. Uniform: computed from i, not accumulated, so rounding never drifts
    // the count (exactly rate x duration sends).
    let mut time_of = |i: usize| match arrival {
        Arrival::Uniform => start + Duration::from_secs_f64(i as f64 / rate),
        Arrival::Poisson => {
            if i > 0 {
                poisson_offset += exp.sample(&mut rng);
            }
            start + Duration::from_secs_f64(poisson_offset)
        }
    };
    let mut i = 0usize;
    let mut next = time_of(0);
    loop {
        let now = Instant::now();
        while next <= now {
            if next >= end {
                return;
            }
            // A connection that has gone (its task failed) just misses its share.
            let _ = connections[i % connections.len()].send(next);
            i += 1;
            next = time_of(i);
        }
        if next >= end {
            return;
        }
        thread::sleep(next - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_schedule_keeps_rate_and_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let start = Instant::now();
        pace(
            2000.0,
            Arrival::Uniform,
            start,
            start + Duration::from_millis(500),
            vec![tx, tx2],
        );
        let mut times = Vec::new();
        while let Ok(t) = rx.try_recv() {
            times.push(t);
        }
        let mut other = Vec::new();
        while let Ok(t) = rx2.try_recv() {
            other.push(t);
        }
        assert_eq!(times.len() + other.len(), 1000);
        assert_eq!(times.len(), 500, "dealt round robin");
        assert!(
            times
                .windows(2)
                .all(|w| w[1] - w[0] == Duration::from_secs_f64(1.0 / 1000.0))
        );
    }

    #[test]
    fn poisson_schedule_has_the_asked_mean_rate() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        pace(
            20_000.0,
            Arrival::Poisson,
            start,
            start + Duration::from_millis(500),
            vec![tx],
        );
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        // 10,000 expected; Poisson sd is 100.
        assert!((9_500..10_500).contains(&n), "{n}");
    }
}
