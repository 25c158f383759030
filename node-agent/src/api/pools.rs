//! `stratum.v1.ResourcePools`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::agent::errors::AgentError;
use crate::agent::Agent;
use stratum_api::proto;
use stratum_api::proto::resource_pools_server::ResourcePools;

pub struct PoolService(pub Arc<Agent>);

#[tonic::async_trait]
impl ResourcePools for PoolService {
    async fn create(
        &self,
        request: Request<proto::CreateResourcePoolRequest>,
    ) -> Result<Response<proto::ResourcePool>, Status> {
        let r = request.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| AgentError::InvalidArgument("spec is required".into()))?;
        super::blocking(&self.0, move |a| a.create_pool(&r.parent_id, &spec))
            .await
            .map(Response::new)
    }

    async fn get(
        &self,
        request: Request<proto::GetResourcePoolRequest>,
    ) -> Result<Response<proto::ResourcePool>, Status> {
        // Reads take the state's read lock only: no need for the blocking pool.
        let id = request.into_inner().id;
        let pool = self.0.get_pool(&id)?;
        super::durable(&self.0, Response::new(pool)).await
    }

    async fn list(
        &self,
        request: Request<proto::ListResourcePoolsRequest>,
    ) -> Result<Response<proto::ListResourcePoolsResponse>, Status> {
        let r = request.into_inner();
        if r.include_workloads {
            // Reads cgroup files: off the async threads.
            let inventory = super::blocking(&self.0, move |a| a.inventory(&r.root_id)).await?;
            return super::durable(&self.0, Response::new(inventory)).await;
        }
        let pools = self.0.list_pools(&r.root_id)?;
        let list = proto::ListResourcePoolsResponse {
            pools,
            ..Default::default()
        };
        super::durable(&self.0, Response::new(list)).await
    }

    async fn update(
        &self,
        request: Request<proto::UpdateResourcePoolRequest>,
    ) -> Result<Response<proto::ResourcePool>, Status> {
        let r = request.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| AgentError::InvalidArgument("spec is required".into()))?;
        super::blocking(&self.0, move |a| a.update_pool(&r.id, &spec))
            .await
            .map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteResourcePoolRequest>,
    ) -> Result<Response<proto::DeleteResourcePoolResponse>, Status> {
        let id = request.into_inner().id;
        super::blocking(&self.0, move |a| a.delete_pool(&id))
            .await
            .map(|()| Response::new(proto::DeleteResourcePoolResponse {}))
    }
}
