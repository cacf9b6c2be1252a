//! Admission: the connection and handshake caps, shared by every core's accept loop, and a
//! log that speaks at most once per interval. A peer over a cap is refused fast (closed with
//! RST before anything is read from it), counted, and summed into the next log line, so a flood
//! costs one accept and one close per connection and never a log line each.

use std::{
    fs::File,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

/// A counted slot (a connection, or a handshake in progress), given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A cap on things in use at once, shared by every core.
#[derive(Clone, Debug)]
pub(crate) struct Cap {
    in_use: Arc<AtomicUsize>,
    max: usize,
}

impl Cap {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            in_use: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or `None` when all `max` are taken.
    pub(crate) fn try_take(&self) -> Option<Slot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.in_use.clone()))
    }

    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

/// Closes a connection the server will not serve, with RST (SO_LINGER 0): no FIN handshake,
/// no TIME_WAIT left behind on the server for each refused peer of a flood.
pub(crate) fn refuse(tcp: TcpStream) {
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
    drop(tcp);
}

/// Lets one log line through per interval and counts the events in between, so that a flood
/// of the same failure is one line with a count.
#[derive(Debug)]
pub(crate) struct Throttle {
    epoch: Instant,
    interval: Duration,
    /// Milliseconds since `epoch` before which nothing is logged.
    next_ms: AtomicU64,
    /// Events since the last line.
    pending: AtomicU64,
}

impl Throttle {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            interval,
            next_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Counts one event; `Some(n)` when a line should be logged now, for `n` events (this one
    /// and those held back since the last line).
    pub(crate) fn event(&self) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        let until = now + self.interval.as_millis() as u64;
        // One caller wins the interval; the others keep counting.
        self.next_ms
            .compare_exchange(next, until, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

/// One file descriptor held back for the moment the process runs out (EMFILE): closing it lets
/// the accept loop take the next pending connection and close it at once, so clients in the
/// backlog are told no instead of hanging, and the loop does not spin on the same error.
#[derive(Debug)]
pub(crate) struct ReserveFd(Option<File>);

impl ReserveFd {
    pub(crate) fn new() -> Self {
        Self(File::open("/dev/null").ok())
    }

    /// Gives the descriptor back to the process; [`Self::restore`] takes it again.
    pub(crate) fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    pub(crate) fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}

/// Whether an accept error means the process (EMFILE) or system (ENFILE) is out of file
/// descriptors, or the kernel out of socket memory (ENOBUFS, ENOMEM).
pub(crate) fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE
            || code == nix::libc::ENFILE
            || code == nix::libc::ENOBUFS
            || code == nix::libc::ENOMEM
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_hands_out_at_most_max_slots_and_takes_them_back() {
        let cap = Cap::new(2);
        let a = cap.try_take().unwrap();
        let b = cap.try_take().unwrap();
        assert!(cap.try_take().is_none());
        assert_eq!(cap.in_use(), 2);
        drop(a);
        let c = cap.try_take().unwrap();
        drop((b, c));
        assert_eq!(cap.in_use(), 0);
    }

    #[test]
    fn a_throttle_logs_once_per_interval_with_the_count() {
        let throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.event(), Some(1), "the first event is logged");
        for _ in 0..99 {
            assert_eq!(throttle.event(), None);
        }
        assert_eq!(throttle.pending.load(Ordering::Relaxed), 99);
        let open = Throttle::new(Duration::ZERO);
        assert_eq!(open.event(), Some(1));
        assert_eq!(open.event(), Some(1));
    }

    #[test]
    fn the_reserve_descriptor_can_be_released_and_restored() {
        let mut fd = ReserveFd::new();
        assert!(fd.release());
        assert!(!fd.release());
        fd.restore();
        assert!(fd.release());
    }

    #[test]
    fn emfile_is_out_of_resources_and_refused_is_not() {
        let emfile = std::io::Error::from_raw_os_error(nix::libc::EMFILE);
        assert!(out_of_resources(&emfile));
        let refused = std::io::Error::from_raw_os_error(nix::libc::ECONNABORTED);
        assert!(!out_of_resources(&refused));
    }
}
