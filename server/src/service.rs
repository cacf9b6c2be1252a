use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use krpc_proto::v1::{
    EchoRequest, EchoResponse, GetRequest, GetResponse, InfoRequest, InfoResponse, PutRequest,
    PutResponse, TlsMode as WireTlsMode, bench_server::Bench,
};
use krpc_transport::TlsPath;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    ServerInfo,
    handoff::{Job, Owners},
    rpc_layer::ConnCtx,
    store::Store,
};

/// The Bench service: Echo, Put/Get on the in-memory store, EchoStream, Info.
///
/// Without handoff, a keyed RPC runs where it was decoded; Echo answers with a zero-copy slice
/// of the request buffer, freed on this core once tonic has encoded it. With owner handoff it
/// runs on the key's owner core, which answers with copies and frees the request buffer there.
#[derive(Clone, Debug)]
pub struct BenchService {
    info: Arc<ServerInfo>,
    store: Arc<Store>,
    owners: Option<Owners>,
}

impl BenchService {
    pub(crate) fn new(info: Arc<ServerInfo>, owners: Option<Owners>) -> Self {
        let shards = info.cores.max(1) * 16;
        let store = Store::new(shards, info.limits.store_max_bytes);
        Self {
            info,
            store: Arc::new(store),
            owners,
        }
    }

    pub(crate) fn max_message_bytes(&self) -> usize {
        self.info.max_message_bytes
    }

    pub(crate) fn limits(&self) -> &crate::Limits {
        &self.info.limits
    }
}

type EchoStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Bench for BenchService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let request = request.into_inner();
        let payload = match &self.owners {
            None => request.payload,
            Some(owners) => {
                // Only the owner may hold the request (even a clone of its key would keep the
                // buffer alive here): pick the owner first, then hand the request over.
                let owner = owners.owner_of(&request.key);
                owners.run(owner, |tx| Job::Echo(request, tx)).await?
            }
        };
        Ok(Response::new(EchoResponse { payload }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        let replaced = match &self.owners {
            None => self.store.put(&request.key, &request.value)?,
            Some(owners) => {
                // Only the owner may hold the request (even a clone of its key would keep the
                // buffer alive here): pick the owner first, then hand the request over.
                let owner = owners.owner_of(&request.key);
                owners.run(owner, |tx| Job::Put(request, tx)).await??
            }
        };
        Ok(Response::new(PutResponse { replaced }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let request = request.into_inner();
        let value = match &self.owners {
            None => self.store.get(&request.key),
            Some(owners) => {
                // Only the owner may hold the request (even a clone of its key would keep the
                // buffer alive here): pick the owner first, then hand the request over.
                let owner = owners.owner_of(&request.key);
                owners.run(owner, |tx| Job::Get(request, tx)).await?
            }
        };
        Ok(Response::new(GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    type EchoStreamStream = EchoStream;

    async fn echo_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        let replies = request
            .into_inner()
            .map(|message| message.map(|m| EchoResponse { payload: m.payload }));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let conn = request.extensions().get::<ConnCtx>().map(ConnCtx::info);
        let info = &self.info;
        let tls = conn.map_or(TlsPath::Off, |c| c.tls);
        Ok(Response::new(InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            runtime: info.runtime.as_str().to_owned(),
            cores: u32::try_from(info.cores).unwrap_or(u32::MAX),
            tls_mode: match tls {
                TlsPath::Off => WireTlsMode::Off,
                TlsPath::Rustls => WireTlsMode::Rustls,
                TlsPath::Ktls => WireTlsMode::Ktls,
            }
            .into(),
            tls_version: conn
                .and_then(|c| c.tls_version)
                .unwrap_or_default()
                .to_owned(),
            cipher: conn.and_then(|c| c.cipher).unwrap_or_default().to_owned(),
            ktls: tls == TlsPath::Ktls,
            ktls_available: info.ktls.is_available(),
            ktls_rekey: info.ktls.can_rekey(),
            ktls_unavailable_reason: info
                .ktls
                .unavailable_reason()
                .unwrap_or_default()
                .to_owned(),
            configured_tls: info.configured_tls.as_str().to_owned(),
            strategy: info.strategy.as_str().to_owned(),
            handoff: info.handoff.as_str().to_owned(),
            max_message_bytes: info.max_message_bytes as u64,
        }))
    }
}
