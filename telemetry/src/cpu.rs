//! CPU time of chosen threads, read from their own CPU clocks (`CLOCK_THREAD_CPUTIME_ID`: the
//! scheduler's exact on-CPU nanoseconds, user and system), whether they run or sleep, from any
//! thread of the process. The server exports its runtime threads' clocks per core; the lab
//! reads the load generator's. No sampling, no `/proc` parsing.
//!
//! Another thread's clock is reached the way glibc's `pthread_getcpuclockid` does: the kernel's
//! clock id for "thread `tid`, scheduler clock" is `(!tid << 3) | CPUCLOCK_PERTHREAD_MASK (4) |
//! CPUCLOCK_SCHED (2)` (include/linux/posix-timers.h), valid for threads of the calling
//! process. A thread that has exited cannot be read, so a thread hands its last reading over
//! when its [`ThreadClockGuard`] drops: totals never go backwards.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use nix::{
    time::{ClockId, clock_gettime},
    unistd::gettid,
};

/// The kernel's CPU clock id of thread `tid` (scheduler time: user + system).
fn thread_clock(tid: i32) -> ClockId {
    const CPUCLOCK_PERTHREAD_MASK: i32 = 4;
    const CPUCLOCK_SCHED: i32 = 2;
    ClockId::from_raw((!tid << 3) | CPUCLOCK_PERTHREAD_MASK | CPUCLOCK_SCHED)
}

fn duration(ts: nix::sys::time::TimeSpec) -> Duration {
    Duration::new(
        ts.tv_sec().max(0) as u64,
        ts.tv_nsec().clamp(0, 999_999_999) as u32,
    )
}

/// CPU time thread `tid` (of this process) has used so far.
pub fn thread_cpu_time(tid: i32) -> io::Result<Duration> {
    clock_gettime(thread_clock(tid))
        .map(duration)
        .map_err(io::Error::from)
}

/// CPU time the calling thread has used so far.
pub fn current_thread_cpu_time() -> Duration {
    // CLOCK_THREAD_CPUTIME_ID of the calling thread always exists on Linux.
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, duration)
}

/// A set of threads whose CPU time is read together, each under a label (a core index, a
/// role). Cheap to clone; clones share the set.
#[derive(Clone, Debug, Default)]
pub struct ThreadClocks {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    live: Vec<Live>,
    /// CPU time of threads that have left the set, by label.
    retired: BTreeMap<String, Duration>,
}

#[derive(Debug)]
struct Live {
    id: u64,
    label: String,
    tid: i32,
    /// The thread's clock when it registered: only time after it counts.
    start: Duration,
    /// The latest reading: what counts if the thread vanishes unannounced.
    last: Duration,
}

impl ThreadClocks {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Readings stay consistent even if a reader panicked: take the data as it is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the calling thread under `label` until the guard drops (keep the guard on the
    /// thread: its drop takes the thread's final reading).
    pub fn register_current(&self, label: impl Into<String>) -> ThreadClockGuard {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let label = label.into();
        // CPU time before registration does not count: the thread is measured from now on.
        let start = current_thread_cpu_time();
        inner.retired.entry(label.clone()).or_default();
        inner.live.push(Live {
            id,
            label,
            tid: gettid().as_raw(),
            start,
            last: start,
        });
        ThreadClockGuard {
            clocks: self.clone(),
            id,
            start,
            _not_send: std::marker::PhantomData,
        }
    }

    /// CPU time per label since each thread registered: threads that left plus live ones.
    pub fn read(&self) -> BTreeMap<String, Duration> {
        let mut inner = self.lock();
        let mut out = inner.retired.clone();
        for live in &mut inner.live {
            if let Ok(now) = thread_cpu_time(live.tid) {
                live.last = now;
            }
            *out.entry(live.label.clone()).or_default() += live.last.saturating_sub(live.start);
        }
        out
    }

    /// CPU time of every thread of the set.
    pub fn total(&self) -> Duration {
        self.read().values().sum()
    }
}

/// A thread's membership of a [`ThreadClocks`] set; dropping it (on that thread) moves the
/// thread's final CPU time into the set's retired total.
#[derive(Debug)]
pub struct ThreadClockGuard {
    clocks: ThreadClocks,
    id: u64,
    start: Duration,
    /// The final reading is the calling thread's own clock: keep the guard on its thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ThreadClockGuard {
    fn drop(&mut self) {
        let used = current_thread_cpu_time();
        let mut inner = self.clocks.lock();
        if let Some(i) = inner.live.iter().position(|l| l.id == self.id) {
            let live = inner.live.swap_remove(i);
            *inner.retired.entry(live.label).or_default() += used.saturating_sub(self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::mpsc, thread, time::Instant};

    fn spin(d: Duration) {
        let until = Instant::now() + d;
        let mut x = 0u64;
        while Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    #[test]
    fn another_threads_clock_is_read_while_it_runs_and_kept_after_it_exits() {
        let clocks = ThreadClocks::new();
        let (ready, wait) = mpsc::channel();
        let (go_on, stop) = mpsc::channel::<()>();
        let worker = thread::spawn({
            let clocks = clocks.clone();
            move || {
                let _guard = clocks.register_current("worker");
                let start = current_thread_cpu_time();
                spin(Duration::from_millis(30));
                ready.send(current_thread_cpu_time() - start).unwrap();
                stop.recv().unwrap();
            }
        });
        let own = wait.recv().unwrap();
        // The worker now blocks: what this thread reads of its clock is what the worker's
        // own clock said, to within the few microseconds around the send.
        let seen = clocks.read()["worker"];
        assert!(own > Duration::from_millis(1), "{own:?}");
        let gap = seen.abs_diff(own);
        assert!(
            gap < Duration::from_millis(2),
            "read {seen:?}, own clock {own:?}"
        );
        go_on.send(()).unwrap();
        worker.join().unwrap();
        let after = clocks.read()["worker"];
        assert!(
            after >= seen,
            "a thread's time never goes backwards: {after:?} < {seen:?}"
        );
        assert!(
            after - seen < Duration::from_millis(2),
            "{after:?} after {seen:?}"
        );
        assert_eq!(clocks.total(), after);
    }

    #[test]
    fn time_before_registration_does_not_count() {
        let clocks = ThreadClocks::new();
        spin(Duration::from_millis(20));
        let before = current_thread_cpu_time();
        let guard = clocks.register_current("me");
        drop(guard);
        let counted = clocks.read()["me"];
        assert!(
            counted < before,
            "{counted:?} counted of {before:?} used before"
        );
    }
}
