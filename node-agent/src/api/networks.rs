//! `stratum.v1.Networks`.
//!
//! Who may do what: a network that admits every namespace (none named)
//! is the admin's to make and delete, and everyone's to see; one that
//! names namespaces is made and deleted by a caller who may change all of
//! them, and seen by whoever may read one of them. A network's
//! attachments show only those of namespaces the caller may read.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::Caller;
use crate::agent::errors::AgentError;
use crate::agent::networks::network_to_proto;
use crate::agent::Agent;
use stratum_api::proto;
use stratum_api::proto::networks_server::Networks;
use stratum_net::{NetworkInfo, NetworkRecord};

pub struct NetworkService(pub Arc<Agent>);

/// Making or deleting a network that admits `namespaces`.
fn check_change(caller: &Caller, namespaces: &[String]) -> Result<(), Status> {
    if namespaces.is_empty() {
        return caller.check_admin("make or delete a network every namespace may use");
    }
    namespaces
        .iter()
        .try_for_each(|ns| caller.check_change(ns, "networks"))
}

fn may_read(caller: &Caller, record: &NetworkRecord) -> bool {
    caller.sees_everything()
        || record.namespaces.is_empty()
        || record.namespaces.iter().any(|ns| caller.may_read(ns))
}

impl NetworkService {
    /// `infos` as the caller may see them; the VMs' MACs read once.
    fn to_proto(&self, caller: &Caller, infos: &[NetworkInfo]) -> Vec<proto::Network> {
        let macs = self.0.vms().nic_macs();
        let vm_namespace = |vm: &str| {
            let pool = self.0.vms().pool_of(vm)?;
            super::access::pool_namespace(&self.0, &pool).ok()
        };
        let visible =
            |ns: Option<&str>| caller.sees_everything() || ns.is_some_and(|ns| caller.may_read(ns));
        infos
            .iter()
            .map(|info| network_to_proto(info, &macs, vm_namespace, visible))
            .collect()
    }

    fn one_to_proto(&self, caller: &Caller, info: NetworkInfo) -> proto::Network {
        self.to_proto(caller, &[info]).pop().unwrap_or_default()
    }
}

#[tonic::async_trait]
impl Networks for NetworkService {
    async fn create(
        &self,
        request: Request<proto::CreateNetworkRequest>,
    ) -> Result<Response<proto::Network>, Status> {
        let caller = Caller::of(&request)?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| AgentError::InvalidArgument("spec is required".into()))?;
        check_change(&caller, &spec.namespaces)?;
        let info = self.0.networks().create(&spec).await?;
        Ok(Response::new(self.one_to_proto(&caller, info)))
    }

    async fn get(
        &self,
        request: Request<proto::GetNetworkRequest>,
    ) -> Result<Response<proto::Network>, Status> {
        let caller = Caller::of(&request)?;
        let info = self.0.networks().get(&request.get_ref().name).await?;
        if !may_read(&caller, &info.record) {
            return Err(Status::permission_denied(format!(
                "{} may not read network {}",
                caller.name, info.record.name
            )));
        }
        let network = self.one_to_proto(&caller, info);
        super::durable(&self.0, Response::new(network)).await
    }

    async fn list(
        &self,
        request: Request<proto::ListNetworksRequest>,
    ) -> Result<Response<proto::ListNetworksResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut infos = self.0.networks().list().await?;
        infos.retain(|info| may_read(&caller, &info.record));
        let networks = self.to_proto(&caller, &infos);
        super::durable(
            &self.0,
            Response::new(proto::ListNetworksResponse { networks }),
        )
        .await
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteNetworkRequest>,
    ) -> Result<Response<proto::DeleteNetworkResponse>, Status> {
        let caller = Caller::of(&request)?;
        let name = request.into_inner().name;
        let info = self.0.networks().get(&name).await?;
        check_change(&caller, &info.record.namespaces)?;
        self.0.networks().delete(&name).await?;
        Ok(Response::new(proto::DeleteNetworkResponse {}))
    }
}
