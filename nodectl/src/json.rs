//! `-o json`: the API's messages as JSON, written out by hand because
//! prost messages are not serde types.
//!
//! Keys are the .proto field names (snake_case), enums their full proto
//! names (`VM_STATE_RUNNING`), timestamps RFC 3339 strings, and 64-bit
//! integers JSON numbers (not the strings of canonical proto3 JSON), so
//! `jq` arithmetic works. Unset message fields are `null`. Bytes (log
//! messages, exec output) are text: a string with invalid UTF-8 replaced
//! by U+FFFD, and then the exact bytes beside it in `<field>_base64`.

use serde_json::{json, Map, Value};

use stratum_api::proto::{
    pull_image_progress, Image, ImageConfig, ImageLayer, ImportImageResponse, LayerPhase,
    ListImagesResponse, PullImageProgress,
};
use stratum_api::proto::{
    workload, Allocation, CgroupVersion, HostCapacity, HostInfo, ListResourcePoolsResponse,
    ListVmsResponse, LiveUsage, Quota, ResourceAmounts, ResourcePool, ResourcePoolSpec,
    ResourcePoolStatus, ResourceUsage, Shares, SharesLevel, VirtualMachine, VmEvent, VmRole,
    VmSpec, VmState, VmStatus, Workload, WorkloadKind, WorkloadUsage,
};
use stratum_api::proto::{
    ContainerSpec, ContainerState, ContainerStats, ContainerStatus, EnvVar, ExecSyncResponse,
    ListPodsResponse, LogRecord, LogStream, Pod, PodResources, PodSpec, PodState, PodStats,
    PodStatus, PortMapping, PortProtocol, RestartPolicy, RuntimeClass,
};

/// An enum's proto name, or its number when this build does not know it.
fn enum_name<E: TryFrom<i32>>(value: i32, name: fn(&E) -> &'static str) -> Value {
    match E::try_from(value) {
        Ok(e) => Value::from(name(&e)),
        Err(_) => Value::from(value),
    }
}

fn opt<T>(value: Option<&T>, to_json: fn(&T) -> Value) -> Value {
    value.map_or(Value::Null, to_json)
}

fn timestamp(ts: &prost_types::Timestamp) -> Value {
    Value::from(ts.to_string())
}

/// `Host.GetInfo`'s answer.
pub fn host_info(info: &HostInfo) -> Value {
    json!({
        "hostname": info.hostname,
        "cpus": info.cpus,
        "memory_bytes": info.memory_bytes,
        "kvm": info.kvm.as_ref().map(|k| json!({
            "present": k.present,
            "unmodified_guests": k.unmodified_guests,
            "detail": k.detail,
        })),
        "cgroup_version": enum_name(info.cgroup_version, CgroupVersion::as_str_name),
        "versions": info.versions.as_ref().map(|v| json!({
            "agent": v.agent, "vmm": v.vmm, "kernel": v.kernel, "api": v.api,
        })),
    })
}

fn amounts(a: &ResourceAmounts) -> Value {
    json!({ "cpu_millicores": a.cpu_millicores, "memory_bytes": a.memory_bytes })
}

/// `Host.GetCapacity`'s answer.
pub fn host_capacity(cap: &HostCapacity) -> Value {
    json!({
        "total": opt(cap.total.as_ref(), amounts),
        "system_reserve": opt(cap.system_reserve.as_ref(), amounts),
        "reserved": opt(cap.reserved.as_ref(), amounts),
        "unreserved": opt(cap.unreserved.as_ref(), amounts),
    })
}

fn shares(s: &Shares) -> Value {
    json!({ "level": enum_name(s.level, SharesLevel::as_str_name), "custom": s.custom })
}

fn allocation(a: &Allocation) -> Value {
    json!({
        "shares": opt(a.shares.as_ref(), shares),
        "reservation": a.reservation,
        "limit": a.limit,
        "expandable_reservation": a.expandable_reservation,
    })
}

fn quota(q: &Quota) -> Value {
    json!({
        "max_vms": q.max_vms,
        "max_vcpus": q.max_vcpus,
        "max_memory_bytes": q.max_memory_bytes,
        "max_pods": q.max_pods,
    })
}

fn pool_spec(s: &ResourcePoolSpec) -> Value {
    json!({
        "name": s.name,
        "cpu": opt(s.cpu.as_ref(), allocation),
        "memory": opt(s.memory.as_ref(), allocation),
        "quota": opt(s.quota.as_ref(), quota),
    })
}

fn resource_usage(u: &ResourceUsage) -> Value {
    json!({
        "charged_to_parent": u.charged_to_parent,
        "reserved_by_children": u.reserved_by_children,
        "unreserved": u.unreserved,
    })
}

fn workload_usage(u: &WorkloadUsage) -> Value {
    json!({
        "workloads": u.workloads,
        "running_workloads": u.running_workloads,
        "vms": u.vms,
        "vcpus": u.vcpus,
        "memory_bytes": u.memory_bytes,
        "pods": u.pods,
        "pods_without_memory_limit": u.pods_without_memory_limit,
    })
}

fn live_usage(u: &LiveUsage) -> Value {
    json!({
        "cpu_usage_ns": u.cpu_usage_ns,
        "memory_current_bytes": u.memory_current_bytes,
        "oom_kills": u.oom_kills,
        "memory_limit_hits": u.memory_limit_hits,
    })
}

fn pool_status(s: &ResourcePoolStatus) -> Value {
    json!({
        "cpu": opt(s.cpu.as_ref(), resource_usage),
        "memory": opt(s.memory.as_ref(), resource_usage),
        "usage": opt(s.usage.as_ref(), workload_usage),
        "live": opt(s.live.as_ref(), live_usage),
    })
}

/// One `ResourcePool`.
pub fn pool(p: &ResourcePool) -> Value {
    json!({
        "id": p.id,
        "parent_id": p.parent_id,
        "spec": opt(p.spec.as_ref(), pool_spec),
        "status": opt(p.status.as_ref(), pool_status),
        "child_pool_ids": p.child_pool_ids,
        "workload_ids": p.workload_ids,
    })
}

/// `ResourcePools.List`'s answer (`workloads` is empty unless asked for).
pub fn pools(resp: &ListResourcePoolsResponse) -> Value {
    json!({
        "pools": resp.pools.iter().map(pool).collect::<Vec<_>>(),
        "workloads": resp.workloads.iter().map(workload).collect::<Vec<_>>(),
    })
}

/// One `Workload` of the inventory. The `state` oneof is its set member:
/// `vm_state` or `pod_state`.
pub fn workload(w: &Workload) -> Value {
    let mut v = json!({
        "id": w.id,
        "kind": enum_name(w.kind, WorkloadKind::as_str_name),
        "name": w.name,
        "pool_id": w.pool_id,
        "reason": w.reason,
        "running": w.running,
        "reservation": opt(w.reservation.as_ref(), amounts),
        "limits": opt(w.limits.as_ref(), amounts),
        "live": opt(w.live.as_ref(), live_usage),
        "vcpus": w.vcpus,
        "guest_memory_bytes": w.guest_memory_bytes,
        "containers": w.containers,
    });
    let (key, state) = match w.state {
        Some(workload::State::VmState(s)) => ("vm_state", enum_name(s, VmState::as_str_name)),
        Some(workload::State::PodState(s)) => ("pod_state", enum_name(s, PodState::as_str_name)),
        None => return v,
    };
    if let Some(map) = v.as_object_mut() {
        map.insert(key.into(), state);
    }
    v
}

fn labels(map: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect::<Map<_, _>>(),
    )
}

fn vm_spec(s: &VmSpec) -> Value {
    json!({
        "name": s.name,
        "pool_id": s.pool_id,
        "role": enum_name(s.role, VmRole::as_str_name),
        "vcpus": s.vcpus,
        "memory_mib": s.memory_mib,
        "kernel": s.kernel,
        "initrd": s.initrd,
        "cmdline": s.cmdline,
        "disks": s.disks.iter().map(|d| json!({
            "base_image": d.base_image, "read_only": d.read_only, "serial": d.serial,
        })).collect::<Vec<_>>(),
        "nics": s.nics.iter().map(|n| json!({ "tap_name": n.tap_name, "mac": n.mac }))
            .collect::<Vec<_>>(),
        "labels": labels(&s.labels),
        "cpu_reservation_millicores": s.cpu_reservation_millicores,
        "cpu_limit_millicores": s.cpu_limit_millicores,
        "cpu_shares": opt(s.cpu_shares.as_ref(), shares),
        "memory_reservation_mib": s.memory_reservation_mib,
    })
}

fn vm_status(s: &VmStatus) -> Value {
    json!({
        "state": enum_name(s.state, VmState::as_str_name),
        "reason": s.reason,
        "pid": s.pid,
        "created_at": opt(s.created_at.as_ref(), timestamp),
        "started_at": opt(s.started_at.as_ref(), timestamp),
        "reservation": opt(s.reservation.as_ref(), amounts),
    })
}

/// One `VirtualMachine`.
pub fn vm(v: &VirtualMachine) -> Value {
    json!({
        "id": v.id,
        "spec": opt(v.spec.as_ref(), vm_spec),
        "status": opt(v.status.as_ref(), vm_status),
    })
}

/// `VirtualMachines.List`'s answer.
pub fn vms(resp: &ListVmsResponse) -> Value {
    json!({ "vms": resp.vms.iter().map(vm).collect::<Vec<_>>() })
}

/// One `VmEvent` (a line of `vm watch -o json`).
pub fn vm_event(e: &VmEvent) -> Value {
    json!({
        "vm_id": e.vm_id,
        "old_state": enum_name(e.old_state, VmState::as_str_name),
        "new_state": enum_name(e.new_state, VmState::as_str_name),
        "reason": e.reason,
        "timestamp": opt(e.timestamp.as_ref(), timestamp),
    })
}

fn image_config(c: &ImageConfig) -> Value {
    json!({
        "entrypoint": c.entrypoint,
        "cmd": c.cmd,
        "env": c.env,
        "working_dir": c.working_dir,
        "user": c.user,
        "exposed_ports": c.exposed_ports,
        "labels": labels(&c.labels),
    })
}

fn image_layer(l: &ImageLayer) -> Value {
    json!({
        "digest": l.digest,
        "media_type": l.media_type,
        "size_bytes": l.size_bytes,
        "diff_id": l.diff_id,
    })
}

/// An `Image`.
pub fn image(i: &Image) -> Value {
    json!({
        "id": i.id,
        "manifest_digest": i.manifest_digest,
        "references": i.references,
        "size_bytes": i.size_bytes,
        "layers": i.layers.iter().map(image_layer).collect::<Vec<_>>(),
        "config": opt(i.config.as_ref(), image_config),
        "stored_at": opt(i.stored_at.as_ref(), timestamp),
        "users": i.users,
    })
}

/// `ImageService.List`'s answer.
pub fn images(resp: &ListImagesResponse) -> Value {
    json!({ "images": resp.images.iter().map(image).collect::<Vec<_>>() })
}

/// `ImageService.Import`'s answer.
pub fn imported(resp: &ImportImageResponse) -> Value {
    json!({ "images": resp.images.iter().map(image).collect::<Vec<_>>() })
}

/// One event of `ImageService.Pull`.
pub fn pull_progress(p: &PullImageProgress) -> Value {
    match &p.event {
        Some(pull_image_progress::Event::Resolved(r)) => json!({ "resolved": {
            "reference": r.reference,
            "manifest_digest": r.manifest_digest,
            "layers": r.layers,
            "total_bytes": r.total_bytes,
        }}),
        Some(pull_image_progress::Event::Layer(l)) => json!({ "layer": {
            "digest": l.digest,
            "total_bytes": l.total_bytes,
            "done_bytes": l.done_bytes,
            "phase": enum_name(l.phase, LayerPhase::as_str_name),
        }}),
        Some(pull_image_progress::Event::Image(i)) => json!({ "image": image(i) }),
        None => Value::Null,
    }
}

fn port_mapping(p: &PortMapping) -> Value {
    json!({
        "host_port": p.host_port,
        "container_port": p.container_port,
        "protocol": enum_name(p.protocol, PortProtocol::as_str_name),
        "host_ip": p.host_ip,
    })
}

fn env_var(e: &EnvVar) -> Value {
    json!({ "name": e.name, "value": e.value })
}

fn pod_resources(r: &PodResources) -> Value {
    json!({
        "requests": opt(r.requests.as_ref(), amounts),
        "limits": opt(r.limits.as_ref(), amounts),
    })
}

fn container_spec(c: &ContainerSpec) -> Value {
    json!({
        "name": c.name,
        "image": c.image,
        "command": c.command,
        "args": c.args,
        "env": c.env.iter().map(env_var).collect::<Vec<_>>(),
        "working_dir": c.working_dir,
        "limits": opt(c.limits.as_ref(), amounts),
    })
}

fn pod_spec(s: &PodSpec) -> Value {
    json!({
        "name": s.name,
        "pool_id": s.pool_id,
        "namespace": s.namespace,
        "hostname": s.hostname,
        "labels": labels(&s.labels),
        "port_mappings": s.port_mappings.iter().map(port_mapping).collect::<Vec<_>>(),
        "runtime_class": enum_name(s.runtime_class, RuntimeClass::as_str_name),
        "resources": opt(s.resources.as_ref(), pod_resources),
        "restart_policy": enum_name(s.restart_policy, RestartPolicy::as_str_name),
        "containers": s.containers.iter().map(container_spec).collect::<Vec<_>>(),
    })
}

fn container_status(c: &ContainerStatus) -> Value {
    json!({
        "name": c.name,
        "id": c.id,
        "state": enum_name(c.state, ContainerState::as_str_name),
        "reason": c.reason,
        "exit_code": c.exit_code,
        "restart_count": c.restart_count,
        "restart_at": opt(c.restart_at.as_ref(), timestamp),
        "image_id": c.image_id,
        "pid": c.pid,
        "created_at": opt(c.created_at.as_ref(), timestamp),
        "started_at": opt(c.started_at.as_ref(), timestamp),
        "finished_at": opt(c.finished_at.as_ref(), timestamp),
    })
}

fn pod_status(s: &PodStatus) -> Value {
    json!({
        "state": enum_name(s.state, PodState::as_str_name),
        "reason": s.reason,
        "namespace": s.namespace,
        "ip": s.ip,
        "reservation": opt(s.reservation.as_ref(), amounts),
        "limits": opt(s.limits.as_ref(), amounts),
        "created_at": opt(s.created_at.as_ref(), timestamp),
        "started_at": opt(s.started_at.as_ref(), timestamp),
        "finished_at": opt(s.finished_at.as_ref(), timestamp),
        "containers": s.containers.iter().map(container_status).collect::<Vec<_>>(),
    })
}

/// One `Pod`.
pub fn pod(p: &Pod) -> Value {
    json!({
        "id": p.id,
        "spec": opt(p.spec.as_ref(), pod_spec),
        "status": opt(p.status.as_ref(), pod_status),
    })
}

/// `PodService.ListPods`' answer.
pub fn pods(resp: &ListPodsResponse) -> Value {
    json!({ "pods": resp.pods.iter().map(pod).collect::<Vec<_>>() })
}

fn container_stats(c: &ContainerStats) -> Value {
    json!({ "name": c.name, "usage": opt(c.usage.as_ref(), live_usage) })
}

/// `PodService.Stats`' answer.
pub fn pod_stats(s: &PodStats) -> Value {
    json!({
        "pod_id": s.pod_id,
        "read_at": opt(s.read_at.as_ref(), timestamp),
        "pod": opt(s.pod.as_ref(), live_usage),
        "containers": s.containers.iter().map(container_stats).collect::<Vec<_>>(),
    })
}

/// Puts `bytes` in `map` under `key` as text, and, when it is not UTF-8,
/// its exact bytes under `<key>_base64` too.
fn insert_bytes(map: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            map.insert(key.into(), Value::from(text));
        }
        Err(_) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            map.insert(key.into(), Value::from(text));
            map.insert(format!("{key}_base64"), Value::from(base64(bytes)));
        }
    }
}

/// Standard base64 with padding (RFC 4648 section 4), as proto3 JSON
/// writes bytes.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One `LogRecord` (a line of `pod logs -o json`).
pub fn log_record(r: &LogRecord) -> Value {
    let mut map = Map::new();
    map.insert("time".into(), opt(r.time.as_ref(), timestamp));
    map.insert("stream".into(), enum_name(r.stream, LogStream::as_str_name));
    map.insert("partial".into(), Value::from(r.partial));
    insert_bytes(&mut map, "message", &r.message);
    Value::Object(map)
}

/// `PodService.ExecSync`'s answer.
pub fn exec_result(r: &ExecSyncResponse) -> Value {
    let mut map = Map::new();
    insert_bytes(&mut map, "stdout", &r.stdout);
    insert_bytes(&mut map, "stderr", &r.stderr);
    map.insert("exit_code".into(), Value::from(r.exit_code));
    Value::Object(map)
}
