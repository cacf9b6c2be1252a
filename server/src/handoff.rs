//! Cross-core handoff (`--handoff owner`): Echo, Put and Get run on the core that owns
//! hash(key), as in shard-per-core databases. Each owner is one task on its core's runtime that
//! owns its shard of the store outright (a plain `HashMap`, no lock: nothing else can reach it)
//! and takes jobs from a channel. The request, and with it the pooled buffer it was decoded
//! into, is dropped on the owner: the user-space "freed on another cpu" of the kernel commit.
//!
//! A queue is bounded twice: in jobs (the channel) and in request bytes (`--owner-queue-bytes`,
//! a semaphore whose permits travel with the job and are given back once the owner has
//! dropped the request). A handler waits for room, which holds its stream, which holds the
//! client back through HTTP/2 flow control: backpressure, not memory.

use std::{
    fmt,
    hash::{BuildHasher, RandomState},
    str::FromStr,
};

use std::sync::Arc;

use bytes::Bytes;
use krpc_proto::v1::{EchoRequest, GetRequest, PutRequest};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::Status;

use crate::store::{OwnedShard, StoreFull};

/// Where a keyed RPC runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// On the core that decoded it.
    None,
    /// On the core that owns hash(key).
    Owner,
}

impl Handoff {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Owner => "owner",
        }
    }
}

impl FromStr for Handoff {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "owner" => Ok(Self::Owner),
            other => Err(format!(
                "unknown handoff {other:?} (expected none or owner)"
            )),
        }
    }
}

impl fmt::Display for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Work for an owner. The reply goes back on the oneshot; the request is dropped on the owner.
#[derive(Debug)]
pub(crate) enum Job {
    Echo(EchoRequest, oneshot::Sender<Bytes>),
    Put(PutRequest, oneshot::Sender<Result<bool, StoreFull>>),
    Get(GetRequest, oneshot::Sender<Option<Bytes>>),
}

impl Job {
    /// Bytes the job's request holds (its message, as encoded).
    fn bytes(&self) -> usize {
        match self {
            Self::Echo(r, _) => r.encoded_len(),
            Self::Put(r, _) => r.encoded_len(),
            Self::Get(r, _) => r.encoded_len(),
        }
    }
}

/// A job with its share of the queue's byte budget.
#[derive(Debug)]
pub(crate) struct Queued {
    job: Job,
    _bytes: OwnedSemaphorePermit,
}

/// The senders to every owner. Cloned into the service; owners stop when all clones are gone.
#[derive(Clone, Debug)]
pub(crate) struct Owners {
    hasher: RandomState,
    senders: Vec<mpsc::Sender<Queued>>,
    /// Per owner: request bytes that may be queued (`--owner-queue-bytes`).
    room: Vec<Arc<Semaphore>>,
    queue_bytes: usize,
}

/// Jobs queued per owner before senders wait: backpressure, not unbounded memory.
const QUEUE: usize = 1024;

/// Where each owner runs: its queue and its share of the store.
#[derive(Debug)]
pub(crate) struct OwnerJobs {
    jobs: mpsc::Receiver<Queued>,
    store_max_bytes: usize,
}

impl Owners {
    /// `n` owners, each queueing at most `queue_bytes` of requests and storing at most
    /// `store_max_bytes / n`; run each [`OwnerJobs`] with [`run_owner`] on its core.
    pub(crate) fn new(
        n: usize,
        queue_bytes: usize,
        store_max_bytes: usize,
    ) -> (Self, Vec<OwnerJobs>) {
        let n = n.max(1);
        // A semaphore counts at most MAX_PERMITS; far above any sane queue.
        let queue_bytes = queue_bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel(QUEUE)).unzip();
        let jobs = receivers
            .into_iter()
            .map(|jobs| OwnerJobs {
                jobs,
                store_max_bytes: store_max_bytes / n,
            })
            .collect();
        (
            Self {
                hasher: RandomState::new(),
                senders,
                room: (0..n)
                    .map(|_| Arc::new(Semaphore::new(queue_bytes)))
                    .collect(),
                queue_bytes,
            },
            jobs,
        )
    }

    pub(crate) fn owner_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) % self.senders.len() as u64) as usize
    }

    /// Runs `job` on `owner` (see [`Self::owner_of`]) and waits for its reply.
    pub(crate) async fn run<T>(
        &self,
        owner: usize,
        job: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        let job = job(tx);
        // A request larger than the whole budget waits for an empty queue, then goes alone.
        let bytes = job.bytes().clamp(1, self.queue_bytes) as u32;
        let stopped = || Status::unavailable("the key's owner core has stopped");
        let permit = self.room[owner]
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| stopped())?;
        self.senders[owner]
            .send(Queued {
                job,
                _bytes: permit,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await
            .map_err(|_| Status::internal("the key's owner core dropped the request"))
    }
}

/// An owner: serves jobs until every sender is gone. Its shard lives and dies here.
pub(crate) async fn run_owner(owner: OwnerJobs) {
    let OwnerJobs {
        mut jobs,
        store_max_bytes,
    } = owner;
    let mut shard = OwnedShard::new(store_max_bytes);
    // The job's share of the queue (`_bytes`) goes back at the end of each turn, after the
    // request has been dropped.
    while let Some(Queued { job, _bytes }) = jobs.recv().await {
        // Replies are copies: the request buffer must not outlive the request (a stored slice
        // would pin the whole buffer in the store). The request is dropped *before* the reply
        // goes out, so its free is pushed before the origin core wakes for the reply: that
        // core drains it when it next parks instead of leaving it pending while idle.
        match job {
            Job::Echo(request, reply) => {
                let payload = Bytes::copy_from_slice(&request.payload);
                drop(request);
                let _ = reply.send(payload);
            }
            Job::Put(request, reply) => {
                let stored = shard.put(&request.key, &request.value);
                drop(request);
                let _ = reply.send(stored);
            }
            Job::Get(request, reply) => {
                let value = shard.get(&request.key[..]);
                drop(request);
                let _ = reply.send(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn owners_store_and_echo_copies() {
        let (owners, receivers) = Owners::new(3, 1 << 20, 3 << 20);
        let tasks: Vec<_> = receivers
            .into_iter()
            .map(|rx| tokio::spawn(run_owner(rx)))
            .collect();
        let key = Bytes::from_static(b"k1");
        let put = |value: &'static [u8]| PutRequest {
            key: key.clone(),
            value: Bytes::from_static(value),
        };
        let owner = owners.owner_of(&key);
        let stored = owners.run(owner, |tx| Job::Put(put(b"a"), tx)).await;
        assert_eq!(stored.unwrap(), Ok(false));
        let stored = owners.run(owner, |tx| Job::Put(put(b"b"), tx)).await;
        assert_eq!(stored.unwrap(), Ok(true), "replaced");
        let got = owners
            .run(owner, |tx| Job::Get(GetRequest { key: key.clone() }, tx))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"b"[..]));
        let payload = Bytes::from(vec![9u8; 40]);
        let echoed = owners
            .run(owners.owner_of(b"x"), |tx| {
                Job::Echo(
                    EchoRequest {
                        key: Bytes::from_static(b"x"),
                        payload: payload.clone(),
                    },
                    tx,
                )
            })
            .await
            .unwrap();
        assert_eq!(echoed, payload);
        assert_ne!(echoed.as_ptr(), payload.as_ptr(), "a copy, not a slice");
        drop(owners);
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_queue_holds_at_most_its_bytes_and_the_store_its_share() {
        let request = |n: usize| EchoRequest {
            key: Bytes::new(),
            payload: Bytes::from(vec![1u8; n]),
        };
        let size = request(80).encoded_len();
        let (owners, mut jobs) = Owners::new(1, 100, 2 * crate::store::cost(b"k", &[0; 10]));
        let (first, second) = {
            let owners = owners.clone();
            let a = tokio::spawn({
                let owners = owners.clone();
                async move { owners.run(0, |tx| Job::Echo(request(80), tx)).await }
            });
            let b =
                tokio::spawn(async move { owners.run(0, |tx| Job::Echo(request(80), tx)).await });
            (a, b)
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // The owner is not running yet: one job is queued, the other waits for room (it holds
        // what is left of the budget, as a fair semaphore's waiter does).
        assert!(
            size > 50,
            "two requests of {size} bytes must not fit in 100"
        );
        assert_eq!(owners.senders[0].capacity(), QUEUE - 1, "one job queued");
        assert!(!first.is_finished() && !second.is_finished());
        assert_eq!(owners.room[0].available_permits(), 0);
        let owner = tokio::spawn(run_owner(jobs.remove(0)));
        assert_eq!(first.await.unwrap().unwrap().len(), 80);
        assert_eq!(second.await.unwrap().unwrap().len(), 80);
        assert_eq!(
            owners.room[0].available_permits(),
            100,
            "all room given back"
        );
        // One owner holds the whole store budget here: two 10-byte values, not three.
        let put = |key: &'static [u8]| PutRequest {
            key: Bytes::from_static(key),
            value: Bytes::from(vec![0u8; 10]),
        };
        for key in [&b"a"[..], b"b"] {
            let stored = owners.run(0, |tx| Job::Put(put(key), tx)).await.unwrap();
            assert_eq!(stored, Ok(false));
        }
        let full = owners.run(0, |tx| Job::Put(put(b"c"), tx)).await.unwrap();
        assert!(full.is_err(), "{full:?}");
        drop(owners);
        owner.await.unwrap();
    }

    #[test]
    fn handoff_names() {
        assert_eq!("owner".parse::<Handoff>(), Ok(Handoff::Owner));
        assert!(
            "all"
                .parse::<Handoff>()
                .unwrap_err()
                .contains("none or owner")
        );
    }
}
