//! The one inventory: `ResourcePools.List{include_workloads}` — the pool
//! tree with every VM and pod side by side, each with its reservation, its
//! limits and its live usage read from its cgroup, and each pool's live
//! usage from the pool's cgroup. The VMs, pods and pool tree are read under
//! their managers' read locks held together (one snapshot; taken VMs,
//! pods, pools, the order every mutation takes them in); the cgroup files
//! are read after they are released, so a slow cgroup read never holds up
//! a mutation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::errors::Result;
use super::pods::{pod_to_proto, PodEntry};
use super::pools::State as Pools;
use super::vms::{vm_limits, VmEntry};
use super::Agent;
use stratum_api::proto;
use stratum_pool::{PoolId, WorkloadId, MIB};

impl Agent {
    /// The subtree under `root` with its workloads and live usage.
    pub fn inventory(&self, root: &str) -> Result<proto::ListResourcePoolsResponse> {
        let (mut pools, mut workloads, pool_cgroups, workload_cgroups) =
            self.inventory_snapshot(root)?;
        for (pool, path) in pools.iter_mut().zip(pool_cgroups) {
            if let (Some(status), Some(path)) = (pool.status.as_mut(), path) {
                status.live = self.live_usage(&path);
            }
        }
        for (workload, path) in workloads.iter_mut().zip(workload_cgroups) {
            workload.live = path.and_then(|p| self.live_usage(&p));
        }
        Ok(proto::ListResourcePoolsResponse { pools, workloads })
    }

    #[allow(clippy::type_complexity)]
    fn inventory_snapshot(
        &self,
        root: &str,
    ) -> Result<(
        Vec<proto::ResourcePool>,
        Vec<proto::Workload>,
        Vec<Option<PathBuf>>,
        Vec<Option<PathBuf>>,
    )> {
        self.vms.with_each(|vms| {
            self.pods.with_each(|pods| {
                let state = self.pools.read();
                let ids = super::pools::subtree_ids(&state.tree, root)?;
                let mut pools = Vec::with_capacity(ids.len());
                let mut pool_cgroups = Vec::with_capacity(ids.len());
                let mut workloads = Vec::new();
                let mut workload_cgroups = Vec::new();
                for id in &ids {
                    let pool = state.tree.to_proto(id)?;
                    pool_cgroups.push(super::pools::pool_cgroup_path(&state.tree, id).ok());
                    for workload_id in &pool.workload_ids {
                        if let Some((w, cgroup)) = workload(&state, vms, pods, id, workload_id) {
                            workloads.push(w);
                            workload_cgroups.push(cgroup);
                        }
                    }
                    pools.push(pool);
                }
                Ok((pools, workloads, pool_cgroups, workload_cgroups))
            })
        })
    }

    fn live_usage(&self, path: &std::path::Path) -> Option<proto::LiveUsage> {
        let cgroup = self.shared.cgroups.open(path).ok()?;
        cgroup.usage().ok().map(super::pods::live_usage)
    }
}

/// One workload for the inventory, with the cgroup to read its usage from
/// while it runs.
fn workload(
    state: &Pools,
    vms: &BTreeMap<String, VmEntry>,
    pods: &BTreeMap<String, PodEntry>,
    pool: &PoolId,
    id: &str,
) -> Option<(proto::Workload, Option<PathBuf>)> {
    let tracked = state.tree.workload(&WorkloadId::from(id))?;
    let running = tracked.is_admitted();
    let base = proto::Workload {
        id: id.to_string(),
        pool_id: pool.as_str().to_string(),
        running,
        reservation: Some(tracked.reservation().into()),
        ..Default::default()
    };
    if let Some(vm) = vms.get(id) {
        let spec = vm.record.spec.clone().unwrap_or_default();
        let runtime = vm.record.runtime.clone().unwrap_or_default();
        let limits = vm_limits(&spec);
        let cgroup = (running && !runtime.cgroup_path.is_empty())
            .then(|| PathBuf::from(&runtime.cgroup_path));
        return Some((
            proto::Workload {
                kind: proto::WorkloadKind::Vm as i32,
                name: spec.name.clone(),
                state: Some(proto::workload::State::VmState(runtime.state)),
                reason: runtime.reason.clone(),
                limits: Some(proto::ResourceAmounts {
                    cpu_millicores: limits.cpu_limit_millicores.unwrap_or(0),
                    memory_bytes: limits.memory_limit_bytes.unwrap_or(0),
                }),
                vcpus: spec.vcpus,
                guest_memory_bytes: spec.memory_mib.saturating_mul(MIB),
                ..base
            },
            cgroup,
        ));
    }
    let pod = pods.get(id)?;
    let view = pod_to_proto(pod);
    let status = view.status.unwrap_or_default();
    let spec = view.spec.unwrap_or_default();
    Some((
        proto::Workload {
            kind: proto::WorkloadKind::Pod as i32,
            name: spec.name.clone(),
            state: Some(proto::workload::State::PodState(status.state)),
            reason: status.reason.clone(),
            reservation: status.reservation.or(base.reservation),
            limits: status.limits,
            containers: u32::try_from(spec.containers.len()).unwrap_or(u32::MAX),
            ..base
        },
        pod.cgroup_path().map(PathBuf::from),
    ))
}
