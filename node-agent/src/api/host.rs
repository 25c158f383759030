//! `stratum.v1.Host`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::agent::Agent;
use stratum_api::proto;
use stratum_api::proto::host_server::Host;

pub struct HostService(pub Arc<Agent>);

#[tonic::async_trait]
impl Host for HostService {
    async fn get_info(
        &self,
        _: Request<proto::GetHostInfoRequest>,
    ) -> Result<Response<proto::HostInfo>, Status> {
        super::blocking(&self.0, |a| Ok(a.host_info()))
            .await
            .map(Response::new)
    }

    async fn get_capacity(
        &self,
        _: Request<proto::GetHostCapacityRequest>,
    ) -> Result<Response<proto::HostCapacity>, Status> {
        let capacity = super::blocking(&self.0, |a| Ok(a.host_capacity())).await?;
        super::durable(&self.0, Response::new(capacity)).await
    }
}
