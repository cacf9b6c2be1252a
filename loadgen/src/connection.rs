//! One load generator connection: a task that owns its HTTP/2 connection and its histograms,
//! sends on the schedule (or, closed loop, as replies come back), records each RPC against its
//! intended send time, and hands the collector one histogram per second.

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
    conn::GrpcConn,
    metrics::LoadgenMetrics,
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
    pub(crate) corrected: Histogram<u64>,
    pub(crate) uncorrected: Histogram<u64>,
    pub(crate) lag: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    /// RPCs that completed inside the measured window (whenever they were due): throughput.
    pub(crate) completed_in_window: u64,
}

impl ConnStats {
    pub(crate) fn new() -> Self {
        Self {
            corrected: new_histogram(),
            uncorrected: new_histogram(),
            lag: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            completed_in_window: 0,
        }
    }

    pub(crate) fn merge(&mut self, other: Self) {
        // Same bounds everywhere: adding cannot fail.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.uncorrected.add(&other.uncorrected);
        let _ = self.lag.add(&other.lag);
        self.ok += other.ok;
        self.completed_in_window += other.completed_in_window;
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
    pub(crate) client: GrpcConn,
    pub(crate) schedule: Option<mpsc::UnboundedReceiver<Instant>>,
    pub(crate) concurrency: usize,
    pub(crate) workload: Workload,
    pub(crate) window: Window,
    pub(crate) intervals: mpsc::UnboundedSender<IntervalReport>,
    pub(crate) metrics: Option<LoadgenMetrics>,
}

/// What came back: (intended, sent, done, method, status code).
type Outcome = (Instant, Instant, Instant, Method, Code);

/// After the end, in-flight RPCs get this long to finish; the rest count as CANCELLED.
const DRAIN: Duration = Duration::from_secs(30);

pub(crate) async fn connection(task: ConnTask) -> ConnStats {
    let ConnTask {
        index,
        client,
        mut schedule,
        concurrency,
        workload,
        window,
        intervals,
        metrics,
    } = task;
    let mut rng = SmallRng::from_os_rng();
    let mut stats = ConnStats::new();
    let mut interval = new_histogram();
    let mut interval_errors = 0u64;
    let mut interval_index = 0u64;
    let mut in_flight = FuturesUnordered::new();
    let mut queued: VecDeque<Instant> = VecDeque::new();
    let mut metrics = metrics.map(|m| m.connection(index));
    let closed_loop = schedule.is_none();
    let issue = |intended: Instant, rng: &mut SmallRng| {
        let client = client.clone();
        let method = workload.mix.pick(rng);
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
            let code = status.err().map_or(Code::Ok, |s| s.code());
            (intended, sent, Instant::now(), method, code) as Outcome
        }
    };
    if closed_loop {
        let now = Instant::now();
        for _ in 0..concurrency {
            in_flight.push(issue(now, &mut rng));
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
            Some((intended, sent, done, method, code)) = in_flight.next() => {
                if window.measures(done) {
                    stats.completed_in_window += 1;
                }
                if window.measures(intended) {
                    let latency = micros(done - intended);
                    let _ = stats.corrected.record(latency);
                    let _ = stats.uncorrected.record(micros(done - sent));
                    let _ = stats.lag.record(micros(sent.saturating_duration_since(intended)));
                    let _ = interval.record(latency);
                    if code == Code::Ok {
                        stats.ok += 1;
                    } else {
                        *stats.errors.entry(code_name(code).to_owned()).or_default() += 1;
                        interval_errors += 1;
                    }
                    if let Some(m) = &mut metrics {
                        m.record(method, code, latency);
                    }
                }
                let now = Instant::now();
                if closed_loop {
                    if now < window.end {
                        in_flight.push(issue(now, &mut rng));
                    }
                } else if let Some(intended) = queued.pop_front() {
                    in_flight.push(issue(intended, &mut rng));
                }
            }
            next = recv(&mut schedule) => match next {
                Some(intended) if in_flight.len() < concurrency => {
                    in_flight.push(issue(intended, &mut rng));
                }
                Some(intended) => queued.push_back(intended),
                None => schedule = None,
            },
            _ = tick.tick() => {
                let now_index = window.interval(Instant::now());
                if now_index > interval_index && Instant::now() <= window.end + Duration::from_secs(1) {
                    let _ = intervals.send(IntervalReport {
                        index: interval_index,
                        latency: std::mem::replace(&mut interval, new_histogram()),
                        errors: std::mem::take(&mut interval_errors),
                    });
                    interval_index = now_index;
                }
            }
            () = &mut drain_deadline => {
                // The server holds these past any reasonable time: count, do not wait forever.
                let stuck = (in_flight.len() + queued.len()) as u64;
                if stuck > 0 {
                    *stats.errors.entry(code_name(Code::Cancelled).to_owned()).or_default() += stuck;
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
    if !interval.is_empty() || interval_errors > 0 {
        let _ = intervals.send(IntervalReport {
            index: interval_index,
            latency: interval,
            errors: interval_errors,
        });
    }
    stats
}

async fn recv(schedule: &mut Option<mpsc::UnboundedReceiver<Instant>>) -> Option<Instant> {
    match schedule {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
