//! `stratum.v1.ResourcePools`, with the whole-tree `List` answered from
//! bytes encoded once per change of the state.
//!
//! Listing every pool is what a Supervisor polls; at 1,000 pools building
//! and encoding the answer costs more than serving it. [`PoolsApi`] wraps
//! the generated server and answers that one call from a cache keyed by
//! the agent's state generation (which every write lock bumps): the first
//! list after a change builds the bytes, the others send them as they
//! are. Every other call, a subtree list included, goes to the generated
//! server unchanged.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Bytes, Context, Poll, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::access;
use super::auth::Caller;
use crate::agent::errors::AgentError;
use crate::agent::Agent;
use stratum_api::proto;
use stratum_api::proto::resource_pools_server::{ResourcePools, ResourcePoolsServer};

const LIST_PATH: &str = "/stratum.v1.ResourcePools/List";

pub struct PoolService(pub Arc<Agent>);

#[tonic::async_trait]
impl ResourcePools for PoolService {
    async fn create(
        &self,
        request: Request<proto::CreateResourcePoolRequest>,
    ) -> Result<Response<proto::ResourcePool>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| AgentError::InvalidArgument("spec is required".into()))?;
        access::create_in_pool(&self.0, &caller, &r.parent_id, "pools")?;
        super::blocking(&self.0, move |a| a.pools().create(&r.parent_id, &spec))
            .await
            .map(Response::new)
    }

    async fn get(
        &self,
        request: Request<proto::GetResourcePoolRequest>,
    ) -> Result<Response<proto::ResourcePool>, Status> {
        // Reads take the state's read lock only: no need for the blocking pool.
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        access::read_pool(&self.0, &caller, &id)?;
        let pool = self.0.pools().get(&id)?;
        super::durable(&self.0, Response::new(pool)).await
    }

    async fn list(
        &self,
        request: Request<proto::ListResourcePoolsRequest>,
    ) -> Result<Response<proto::ListResourcePoolsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let list = list(&self.0, &caller, request.into_inner()).await?;
        super::durable(&self.0, Response::new(list)).await
    }

    async fn update(
        &self,
        request: Request<proto::UpdateResourcePoolRequest>,
    ) -> Result<Response<proto::ResourcePool>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| AgentError::InvalidArgument("spec is required".into()))?;
        access::change_pool(&self.0, &caller, &r.id)?;
        super::blocking(&self.0, move |a| a.update_pool(&r.id, &spec))
            .await
            .map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteResourcePoolRequest>,
    ) -> Result<Response<proto::DeleteResourcePoolResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        access::change_pool(&self.0, &caller, &id)?;
        super::blocking(&self.0, move |a| a.pools().delete(&id))
            .await
            .map(|()| Response::new(proto::DeleteResourcePoolResponse {}))
    }
}

/// A subtree, or the inventory with workloads and usage: what of it the
/// caller may read.
async fn list(
    agent: &Arc<Agent>,
    caller: &Caller,
    r: proto::ListResourcePoolsRequest,
) -> Result<proto::ListResourcePoolsResponse, Status> {
    if !r.root_id.is_empty() {
        access::read_pool(agent, caller, &r.root_id)?;
    }
    let list = if r.include_workloads {
        // Reads cgroup files: off the async threads.
        super::blocking(agent, move |a| a.inventory(&r.root_id)).await?
    } else {
        proto::ListResourcePoolsResponse {
            pools: agent.pools().list(&r.root_id)?,
            ..Default::default()
        }
    };
    Ok(access::visible_pools(agent, caller, list))
}

/// The `ResourcePools` service as served: the generated server, but the
/// whole-tree `List` from [`TreeCache`].
#[derive(Clone)]
pub struct PoolsApi {
    generated: ResourcePoolsServer<PoolService>,
    agent: Arc<Agent>,
    cache: Arc<TreeCache>,
}

impl PoolsApi {
    pub fn new(agent: Arc<Agent>) -> Self {
        PoolsApi {
            generated: ResourcePoolsServer::new(PoolService(Arc::clone(&agent))),
            agent,
            cache: Arc::new(TreeCache::default()),
        }
    }
}

impl NamedService for PoolsApi {
    const NAME: &'static str = <ResourcePoolsServer<PoolService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for PoolsApi
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The cached bytes are everyone's tree: only for a caller who may
        // read all of it.
        let sees_everything = req
            .extensions()
            .get::<Caller>()
            .is_some_and(Caller::sees_everything);
        if req.uri().path() != LIST_PATH || !sees_everything {
            return self.generated.call(req);
        }
        let list = CachedList {
            agent: Arc::clone(&self.agent),
            cache: Arc::clone(&self.cache),
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(EncodedCodec);
            Ok(grpc.unary(list, req).await)
        })
    }
}

/// The whole tree's `ListResourcePoolsResponse`, encoded, and the state
/// generation it was built at.
#[derive(Default)]
pub struct TreeCache {
    encoded: Mutex<Option<(u64, Bytes)>>,
}

impl TreeCache {
    /// The encoded whole tree as of now: the cached bytes while the state
    /// has not changed since they were built, else built again.
    fn whole_tree(&self, agent: &Agent) -> Result<Bytes, AgentError> {
        let now = agent.pools().generation();
        if let Some((built_at, bytes)) = self.lock().as_ref() {
            if *built_at == now {
                return Ok(bytes.clone());
            }
        }
        let (built_at, pools) = agent.pools().list_at("")?;
        let bytes = Bytes::from(
            proto::ListResourcePoolsResponse {
                pools,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        *self.lock() = Some((built_at, bytes.clone()));
        Ok(bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, Bytes)>> {
        // Holds one value, replaced whole: a panic cannot leave it torn.
        self.encoded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `List`, answered with encoded bytes.
struct CachedList {
    agent: Arc<Agent>,
    cache: Arc<TreeCache>,
}

impl UnaryService<proto::ListResourcePoolsRequest> for CachedList {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<proto::ListResourcePoolsRequest>) -> Self::Future {
        let (agent, cache) = (Arc::clone(&self.agent), Arc::clone(&self.cache));
        Box::pin(async move {
            let caller = Caller::of(&request)?;
            let r = request.into_inner();
            let bytes = if r.root_id.is_empty() && !r.include_workloads {
                cache.whole_tree(&agent)?
            } else {
                Bytes::from(list(&agent, &caller, r).await?.encode_to_vec())
            };
            super::durable(&agent, Response::new(bytes)).await
        })
    }
}

/// Sends a message that is already encoded; decodes the request with prost.
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = proto::ListResourcePoolsRequest;
    type Encoder = EncodedEncoder;
    type Decoder = tonic_prost::ProstDecoder<proto::ListResourcePoolsRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}
