//! Which namespace each object a call names belongs to, and the
//! [`Caller`] checks the services make with it (the policy itself is in
//! [`super::auth`]).
//!
//! A namespace is a top-level pool: a pool's is the top-level pool above
//! it (or itself), a VM's and a pod's the one above their pool. An id that
//! names nothing is NOT_FOUND here already, as the call itself would say.
//! Pools, VMs and pods never move between pools and ids are never reused,
//! so a check made before the call still holds when it runs.

use std::collections::{HashMap, HashSet};

use tonic::Status;

use super::auth::Caller;
use crate::agent::pools::pool_id_or_root;
use crate::agent::Agent;
use stratum_api::proto;

/// The root pool's namespace: the host's, no user's.
const ROOT_NAMESPACE: &str = "root";

/// The namespace of pool `id` ([`ROOT_NAMESPACE`] for the root pool).
pub fn pool_namespace(agent: &Agent, id: &str) -> Result<String, Status> {
    Ok(agent.pools().namespace_of(&pool_id_or_root(id))?)
}

fn vm_namespace(agent: &Agent, id: &str) -> Result<String, Status> {
    let pool = agent
        .vms()
        .pool_of(id)
        .ok_or_else(|| Status::not_found(format!("no VM {id}")))?;
    pool_namespace(agent, &pool)
}

/// The namespace of pod `id`.
pub fn pod_namespace(agent: &Agent, id: &str) -> Result<String, Status> {
    let pod = agent.pods().get_pod(id)?;
    Ok(pod.status.map(|s| s.namespace).unwrap_or_default())
}

pub fn read_pool(agent: &Agent, caller: &Caller, id: &str) -> Result<(), Status> {
    if caller.sees_everything() {
        return Ok(());
    }
    caller.check_read(&pool_namespace(agent, id)?, "pools")
}

/// Changing or deleting a pool. A user's namespace pool itself is not
/// theirs to change: its size is what the admin gave the namespace.
pub fn change_pool(agent: &Agent, caller: &Caller, id: &str) -> Result<(), Status> {
    let namespace = pool_namespace(agent, id)?;
    caller.check_change(&namespace, "pools")?;
    if namespace == id {
        caller.check_admin(&format!("change the namespace pool {id} itself"))?;
    }
    Ok(())
}

/// Making something (a pool, a VM, a pod) in pool `pool`.
pub fn create_in_pool(
    agent: &Agent,
    caller: &Caller,
    pool: &str,
    what: &str,
) -> Result<(), Status> {
    let namespace = pool_namespace(agent, pool)?;
    if namespace == ROOT_NAMESPACE && what == "pools" {
        return caller.check_admin("create a namespace (a pool directly below root)");
    }
    caller.check_change(&namespace, what)
}

/// A user's pods run only the images its namespace may use: host images
/// and those pulled for that namespace. An image that is not stored is
/// left to the call (NOT_FOUND there).
pub fn images_usable<'a>(
    agent: &Agent,
    caller: &Caller,
    namespace: &str,
    images: impl IntoIterator<Item = &'a str>,
) -> Result<(), Status> {
    if caller.role == stratum_api::certs::Role::Admin {
        return Ok(());
    }
    for name in images {
        if let Ok(image) = agent.images().get_image(name) {
            if !agent.images().owners().usable_in(&image.id, namespace) {
                return Err(Status::permission_denied(format!(
                    "image {name} was not pulled for namespace {namespace}: pull it there first"
                )));
            }
        }
    }
    Ok(())
}

pub fn read_vm(agent: &Agent, caller: &Caller, id: &str) -> Result<(), Status> {
    if caller.sees_everything() {
        return Ok(());
    }
    caller.check_read(&vm_namespace(agent, id)?, "VMs")
}

pub fn change_vm(agent: &Agent, caller: &Caller, id: &str) -> Result<(), Status> {
    caller.check_change(&vm_namespace(agent, id)?, "VMs")
}

/// A snapshot belongs to the namespace its VM was in when it was taken.
fn snapshot_namespace(agent: &Agent, id: &str) -> Result<String, Status> {
    agent
        .vms()
        .snapshot_namespace(id)
        .ok_or_else(|| Status::not_found(format!("no snapshot {id}")))
}

pub fn read_snapshot(agent: &Agent, caller: &Caller, id: &str) -> Result<(), Status> {
    if caller.sees_everything() {
        return Ok(());
    }
    caller.check_read(&snapshot_namespace(agent, id)?, "snapshots")
}

/// Deleting a snapshot, or cloning it (its clones go in its pool, so
/// making VMs there is checked too).
pub fn change_snapshot(agent: &Agent, caller: &Caller, id: &str) -> Result<(), Status> {
    caller.check_change(&snapshot_namespace(agent, id)?, "snapshots")
}

/// The snapshots of `snapshots` the caller may read.
pub fn visible_snapshots(
    agent: &Agent,
    caller: &Caller,
    snapshots: Vec<proto::VmSnapshot>,
) -> Vec<proto::VmSnapshot> {
    if caller.sees_everything() {
        return snapshots;
    }
    snapshots
        .into_iter()
        .filter(|s| snapshot_namespace(agent, &s.id).is_ok_and(|ns| caller.may_read(&ns)))
        .collect()
}

pub fn read_pod(agent: &Agent, caller: &Caller, id: &str) -> Result<(), Status> {
    if caller.sees_everything() {
        return Ok(());
    }
    caller.check_read(&pod_namespace(agent, id)?, "pods")
}

pub fn change_pod(agent: &Agent, caller: &Caller, id: &str) -> Result<(), Status> {
    caller.check_change(&pod_namespace(agent, id)?, "pods")
}

/// Whether the caller may read VM `vm`: for filtering lists and events,
/// where a VM gone meanwhile is simply not shown.
pub fn may_read_vm(agent: &Agent, caller: &Caller, vm: &str) -> bool {
    caller.sees_everything() || vm_namespace(agent, vm).is_ok_and(|ns| caller.may_read(&ns))
}

/// The VMs of `vms` the caller may read.
pub fn visible_vms(
    agent: &Agent,
    caller: &Caller,
    vms: Vec<proto::VirtualMachine>,
) -> Vec<proto::VirtualMachine> {
    if caller.sees_everything() {
        return vms;
    }
    let mut namespaces: HashMap<String, bool> = HashMap::new();
    vms.into_iter()
        .filter(|vm| {
            let pool = vm.spec.as_ref().map(|s| s.pool_id.as_str()).unwrap_or("");
            *namespaces
                .entry(pool.to_string())
                .or_insert_with(|| pool_namespace(agent, pool).is_ok_and(|ns| caller.may_read(&ns)))
        })
        .collect()
}

/// The pods of `pods` the caller may read.
pub fn visible_pods(caller: &Caller, pods: Vec<proto::Pod>) -> Vec<proto::Pod> {
    if caller.sees_everything() {
        return pods;
    }
    pods.into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| caller.may_read(&s.namespace))
        })
        .collect()
}

/// The pools (and, of an inventory, the workloads in them) the caller may
/// read. `list.pools` is depth-first, each parent before its children, so
/// a pool's namespace is known from its parent's by the time it comes.
pub fn visible_pools(
    agent: &Agent,
    caller: &Caller,
    mut list: proto::ListResourcePoolsResponse,
) -> proto::ListResourcePoolsResponse {
    if caller.sees_everything() {
        return list;
    }
    let root = pool_id_or_root("").to_string();
    let mut namespace_of: HashMap<String, String> = HashMap::new();
    let mut visible: HashSet<String> = HashSet::new();
    for pool in &list.pools {
        let namespace = if pool.parent_id == root {
            Some(pool.id.clone())
        } else if let Some(ns) = namespace_of.get(&pool.parent_id) {
            Some(ns.clone())
        } else {
            // A subtree list starts below its namespace pool.
            pool_namespace(agent, &pool.id).ok()
        };
        if let Some(namespace) = namespace {
            if caller.may_read(&namespace) {
                visible.insert(pool.id.clone());
            }
            namespace_of.insert(pool.id.clone(), namespace);
        }
    }
    list.pools.retain(|p| visible.contains(&p.id));
    list.workloads.retain(|w| visible.contains(&w.pool_id));
    list
}
