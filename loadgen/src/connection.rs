//! One load generator connection: a task that owns its HTTP/2 link and its histograms, sends on
//! the schedule (or, closed loop, as replies come back), records each RPC against its intended
//! send time, and hands the collector one histogram per second.
//!
//! Successes and failures are kept apart: a failed RPC goes to the error histogram, never to
//! the latency histograms (an instant failure would otherwise pass for a fast success), and is
//! counted by its gRPC code. When the link is down, RPCs due meanwhile fail at once with
//! UNAVAILABLE (open loop) or wait for it to come back (closed loop: a slot has nothing due).

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use krpc_proto::v1::{EchoRequest, EchoResponse, GetRequest, GetResponse, PutRequest, PutResponse};
use krpc_telemetry::code_name;
use rand::{SeedableRng, rngs::SmallRng};
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::{
    link::{Change, Link},
    metrics::{ConnMetrics, LoadgenMetrics},
    result::new_histogram,
    workload::{Method, Workload},
};

/// The measured window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) measure_from: Instant,
    pub(crate) end: Instant,
}

impl Window {
    fn measures(&self, intended: Instant) -> bool {
        intended >= self.measure_from && intended < self.end
    }

    /// Index of the interval (second of the measured window) `t` falls in.
    fn interval(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.measure_from).as_secs()
    }
}

/// One second's worth from one connection.
#[derive(Debug)]
pub(crate) struct IntervalReport {
    pub(crate) index: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) errors: u64,
}

pub(crate) struct ConnStats {
    /// Successful RPCs, from the intended send time.
    pub(crate) corrected: Histogram<u64>,
    /// Successful RPCs, from the actual send.
    pub(crate) uncorrected: Histogram<u64>,
    /// Every RPC that was sent: how late, against the schedule.
    pub(crate) lag: Histogram<u64>,
    /// Failed RPCs, from the intended send time.
    pub(crate) failed: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    /// RPCs that succeeded inside the measured window (whenever they were due): throughput.
    pub(crate) ok_in_window: u64,
    /// RPCs that failed inside the measured window.
    pub(crate) failed_in_window: u64,
    pub(crate) reconnects: u64,
    /// Time the link was down inside the measured window.
    pub(crate) downtime: Duration,
}

impl ConnStats {
    pub(crate) fn new() -> Self {
        Self {
            corrected: new_histogram(),
            uncorrected: new_histogram(),
            lag: new_histogram(),
            failed: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            ok_in_window: 0,
            failed_in_window: 0,
            reconnects: 0,
            downtime: Duration::ZERO,
        }
    }

    pub(crate) fn merge(&mut self, other: Self) {
        // Same bounds everywhere: adding cannot fail.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.uncorrected.add(&other.uncorrected);
        let _ = self.lag.add(&other.lag);
        let _ = self.failed.add(&other.failed);
        self.ok += other.ok;
        self.ok_in_window += other.ok_in_window;
        self.failed_in_window += other.failed_in_window;
        self.reconnects += other.reconnects;
        self.downtime += other.downtime;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(crate::result::LOWEST_US, crate::result::HIGHEST_US)
}

pub(crate) struct ConnTask {
    pub(crate) index: usize,
    pub(crate) link: Link,
    pub(crate) schedule: Option<mpsc::UnboundedReceiver<Instant>>,
    pub(crate) concurrency: usize,
    pub(crate) workload: Workload,
    pub(crate) window: Window,
    pub(crate) intervals: mpsc::UnboundedSender<IntervalReport>,
    pub(crate) metrics: Option<LoadgenMetrics>,
}

/// What came back.
struct Outcome {
    intended: Instant,
    /// `None`: never sent (the link was down).
    sent: Option<Instant>,
    done: Instant,
    method: Method,
    code: Code,
}

/// Where a connection's outcomes go.
struct Recorder {
    window: Window,
    stats: ConnStats,
    interval: Histogram<u64>,
    interval_errors: u64,
    metrics: Option<ConnMetrics>,
}

impl Recorder {
    fn record(&mut self, o: Outcome) {
        let ok = o.code == Code::Ok;
        if self.window.measures(o.done) {
            if ok {
                self.stats.ok_in_window += 1;
            } else {
                self.stats.failed_in_window += 1;
            }
        }
        if !self.window.measures(o.intended) {
            return;
        }
        let latency = micros(o.done - o.intended);
        if let Some(sent) = o.sent {
            let _ = self
                .stats
                .lag
                .record(micros(sent.saturating_duration_since(o.intended)));
        }
        if ok {
            let _ = self.stats.corrected.record(latency);
            let sent = o.sent.unwrap_or(o.intended);
            let _ = self.stats.uncorrected.record(micros(o.done - sent));
            let _ = self.interval.record(latency);
            self.stats.ok += 1;
        } else {
            let _ = self.stats.failed.record(latency);
            *self
                .stats
                .errors
                .entry(code_name(o.code).to_owned())
                .or_default() += 1;
            self.interval_errors += 1;
        }
        if let Some(m) = &mut self.metrics {
            m.record(o.method, o.code, latency);
        }
    }

    /// An RPC due while the link is down: it fails now, unsent.
    fn unavailable(&mut self, intended: Instant, method: Method) {
        self.record(Outcome {
            intended,
            sent: None,
            done: Instant::now(),
            method,
            code: Code::Unavailable,
        });
    }
}

/// After the end, in-flight RPCs get this long to finish; the rest count as CANCELLED.
const DRAIN: Duration = Duration::from_secs(30);

pub(crate) async fn connection(task: ConnTask) -> ConnStats {
    let ConnTask {
        index,
        mut link,
        mut schedule,
        concurrency,
        workload,
        window,
        intervals,
        metrics,
    } = task;
    let mut rng = SmallRng::from_os_rng();
    let mut rec = Recorder {
        window,
        stats: ConnStats::new(),
        interval: new_histogram(),
        interval_errors: 0,
        metrics: metrics.map(|m| m.connection(index)),
    };
    let mut interval_index = 0u64;
    let mut in_flight = FuturesUnordered::new();
    let mut queued: VecDeque<Instant> = VecDeque::new();
    let closed_loop = schedule.is_none();
    // Closed loop: slots that wait for the link to come back.
    let mut idle_slots = 0usize;
    let issue =
        |client: &crate::conn::GrpcConn, intended: Instant, method: Method, rng: &mut SmallRng| {
            let client = client.clone();
            let key = workload.key(rng);
            let payload = workload.payload.clone();
            async move {
                let sent = Instant::now();
                let status = match method {
                    Method::Echo => client
                        .unary::<EchoResponse>(
                            "/krpc.v1.Bench/Echo",
                            &EchoRequest {
                                key,
                                payload: payload.clone(),
                            },
                        )
                        .await
                        .and_then(|reply| {
                            // An echo that is not the payload is a wrong answer, not a success.
                            if reply.payload == payload {
                                Ok(())
                            } else {
                                Err(Status::data_loss("the echo differs from the payload"))
                            }
                        }),
                    Method::Put => client
                        .unary::<PutResponse>(
                            "/krpc.v1.Bench/Put",
                            &PutRequest {
                                key,
                                value: payload,
                            },
                        )
                        .await
                        .map(drop),
                    Method::Get => client
                        .unary::<GetResponse>("/krpc.v1.Bench/Get", &GetRequest { key })
                        .await
                        .map(drop),
                };
                Outcome {
                    intended,
                    sent: Some(sent),
                    done: Instant::now(),
                    method,
                    code: status.err().map_or(Code::Ok, |s| s.code()),
                }
            }
        };
    if closed_loop {
        let now = Instant::now();
        for _ in 0..concurrency {
            let method = workload.mix.pick(&mut rng);
            match link.up() {
                Some(client) => in_flight.push(issue(client, now, method, &mut rng)),
                None => idle_slots += 1,
            }
        }
    }
    let mut tick = tokio::time::interval_at(
        (window.measure_from + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let drain_deadline = tokio::time::sleep_until((window.end + DRAIN).into());
    tokio::pin!(drain_deadline);
    loop {
        tokio::select! {
            biased;
            Some(outcome) = in_flight.next() => {
                rec.record(outcome);
                let now = Instant::now();
                if closed_loop {
                    if now < window.end {
                        let method = workload.mix.pick(&mut rng);
                        match link.up() {
                            Some(client) => in_flight.push(issue(client, now, method, &mut rng)),
                            None => idle_slots += 1,
                        }
                    }
                } else if let Some(intended) = queued.pop_front() {
                    let method = workload.mix.pick(&mut rng);
                    match link.up() {
                        Some(client) => in_flight.push(issue(client, intended, method, &mut rng)),
                        None => rec.unavailable(intended, method),
                    }
                }
            }
            change = link.changed() => match change {
                Change::Down => {
                    // Nothing queued can be sent now: it was due, it fails.
                    while let Some(intended) = queued.pop_front() {
                        rec.unavailable(intended, workload.mix.pick(&mut rng));
                    }
                }
                Change::Up => {
                    let now = Instant::now();
                    let slots = std::mem::take(&mut idle_slots);
                    if now < window.end && let Some(client) = link.up() {
                        for _ in 0..slots {
                            let method = workload.mix.pick(&mut rng);
                            in_flight.push(issue(client, now, method, &mut rng));
                        }
                    }
                }
            },
            next = recv(&mut schedule) => match next {
                Some(intended) => {
                    let method = workload.mix.pick(&mut rng);
                    match link.up() {
                        None => rec.unavailable(intended, method),
                        Some(client) if in_flight.len() < concurrency => {
                            in_flight.push(issue(client, intended, method, &mut rng));
                        }
                        Some(_) => queued.push_back(intended),
                    }
                }
                None => schedule = None,
            },
            _ = tick.tick() => {
                let now_index = window.interval(Instant::now());
                if now_index > interval_index && Instant::now() <= window.end + Duration::from_secs(1) {
                    let _ = intervals.send(IntervalReport {
                        index: interval_index,
                        latency: std::mem::replace(&mut rec.interval, new_histogram()),
                        errors: std::mem::take(&mut rec.interval_errors),
                    });
                    interval_index = now_index;
                }
            }
            () = &mut drain_deadline => {
                // The server holds these past any reasonable time: count, do not wait forever.
                let stuck = (in_flight.len() + queued.len()) as u64;
                if stuck > 0 {
                    *rec.stats.errors.entry(code_name(Code::Cancelled).to_owned()).or_default() += stuck;
                }
                break;
            }
        }
        let schedule_done = schedule.is_none() && (closed_loop || queued.is_empty());
        if schedule_done && in_flight.is_empty() && (!closed_loop || Instant::now() >= window.end) {
            break;
        }
    }
    // The last, partial second.
    if !rec.interval.is_empty() || rec.interval_errors > 0 {
        let _ = intervals.send(IntervalReport {
            index: interval_index,
            latency: rec.interval,
            errors: rec.interval_errors,
        });
    }
    let mut stats = rec.stats;
    stats.reconnects = link.reconnects();
    stats.downtime = link.downtime_within(window.measure_from, window.end);
    stats
}

async fn recv(schedule: &mut Option<mpsc::UnboundedReceiver<Instant>>) -> Option<Instant> {
    match schedule {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
