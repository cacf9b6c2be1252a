//! Cross-core handoff (`--handoff owner`): Echo, Put and Get run on the core that owns
//! hash(key), as in shard-per-core databases. Each owner is one task on its core's runtime that
//! owns its shard of the store outright (a plain `HashMap`, no lock: nothing else can reach it)
//! and takes jobs from a channel. The request, and with it the pooled buffer it was decoded
//! into, is dropped on the owner: the user-space "freed on another cpu" of the kernel commit.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, RandomState},
    str::FromStr,
};

use bytes::Bytes;
use krpc_proto::v1::{EchoRequest, GetRequest, PutRequest};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

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
    Put(PutRequest, oneshot::Sender<bool>),
    Get(GetRequest, oneshot::Sender<Option<Bytes>>),
}

/// The senders to every owner. Cloned into the service; owners stop when all clones are gone.
#[derive(Clone, Debug)]
pub(crate) struct Owners {
    hasher: RandomState,
    senders: Vec<mpsc::Sender<Job>>,
}

/// Jobs queued per owner before senders wait: backpressure, not unbounded memory.
const QUEUE: usize = 1024;

impl Owners {
    /// `n` owners; run each receiver with [`run_owner`] on its core.
    pub(crate) fn new(n: usize) -> (Self, Vec<mpsc::Receiver<Job>>) {
        let (senders, receivers) = (0..n.max(1)).map(|_| mpsc::channel(QUEUE)).unzip();
        (
            Self {
                hasher: RandomState::new(),
                senders,
            },
            receivers,
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
        self.senders[owner]
            .send(job(tx))
            .await
            .map_err(|_| Status::unavailable("the key's owner core has stopped"))?;
        rx.await
            .map_err(|_| Status::internal("the key's owner core dropped the request"))
    }
}

/// An owner: serves jobs until every sender is gone. Its shard lives and dies here.
pub(crate) async fn run_owner(mut jobs: mpsc::Receiver<Job>) {
    let mut shard: HashMap<Bytes, Bytes> = HashMap::new();
    while let Some(job) = jobs.recv().await {
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
                let key = Bytes::copy_from_slice(&request.key);
                let value = Bytes::copy_from_slice(&request.value);
                drop(request);
                let _ = reply.send(shard.insert(key, value).is_some());
            }
            Job::Get(request, reply) => {
                let value = shard.get(&request.key[..]).cloned();
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
        let (owners, receivers) = Owners::new(3);
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
        assert!(
            !owners
                .run(owner, |tx| Job::Put(put(b"a"), tx))
                .await
                .unwrap()
        );
        assert!(
            owners
                .run(owner, |tx| Job::Put(put(b"b"), tx))
                .await
                .unwrap()
        );
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
